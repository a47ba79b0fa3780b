"""Trust for registry connections: SSL contexts, client certificates, and naming TLS failures.

The rules (see DESIGN.md "No downgrade"):

- the system roots are always trusted; ``extra_root_certificates`` are *added* to them;
- an intermediate CA given as an extra root is an anchor on its own (``VERIFY_X509_PARTIAL_CHAIN``);
- the hostname must be in the certificate's SANs: no Common Name fallback; an IP address
  registry is checked against the IP SANs (OpenSSL does that when ``server_hostname`` is an IP);
- verification is never turned off.  The only unverified handshake here is
  :func:`fetch_peer_certificate`, which reads the server's certificate to explain a failure
  and sends no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guestpull.errors import ConfigError, Location, TLSError

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported only to explain a failure: a pull that succeeds never needs it,
# and it costs a guest ~15 MiB of memory and ~50 ms of start-up.

# OpenSSL X509_V_ERR_* codes we explain in words (openssl/x509_vfy.h).
_UNABLE_TO_GET_ISSUER_CERT = 2
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_SELF_SIGNED_CERT_IN_CHAIN = 19
_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
_INVALID_PURPOSE = 26
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64

_UNKNOWN_ISSUER_CODES = {
    _UNABLE_TO_GET_ISSUER_CERT,
    _UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    _UNABLE_TO_VERIFY_LEAF_SIGNATURE,
}

_MARK_INSECURE_HINT = (
    "if this registry really serves plain HTTP, add a registry rule with insecure = true "
    '(e.g. [[registry]] location = "{registry}" insecure = true) to registry_config or the '
    "file named by registry_configuration_uri"
)


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate chain and its private key, both PEM, for one registry (mTLS)."""

    registry: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


class _Preload:
    """A context with the system roots, being built in a background thread for the next taker."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        # Not a daemon: the interpreter joins it before it finalizes, so OpenSSL is never
        # torn down under a thread still parsing certificates.
        self.thread = threading.Thread(target=self._build, name="guestpull-system-roots")

    def _build(self) -> None:
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):  # the taker builds again, and reports
            self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


_preload: _Preload | None = None
_preload_lock = threading.Lock()


def preload_system_roots() -> None:
    """Start loading the system CA bundle now, in a thread, for a process about to speak HTTPS.

    OpenSSL parses the bundle (~20 ms) with the GIL released, so a CLI pull imports its
    machinery and reads its configuration meanwhile (issue 15).  The next shared context
    :func:`new_ssl_context` builds takes it; the roots it trusts are exactly those it would
    have loaded itself.
    """
    global _preload
    with _preload_lock:
        if _preload is None:
            _preload = _Preload()
            _preload.thread.start()


def _system_roots_context() -> ssl.SSLContext:
    global _preload
    with _preload_lock:
        preload, _preload = _preload, None
    if preload is not None:
        preload.thread.join()
        if preload.context is not None:
            return preload.context
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def new_ssl_context(
    extra_root_certificates: Sequence[str] = (),
    *,
    client_certificate: ClientCertificate | None = None,
    source: str | None = None,
) -> ssl.SSLContext:
    """An SSLContext that trusts the system roots plus ``extra_root_certificates`` (PEM strings).

    ``source`` names the file the roots came from, for error messages.
    """
    ctx = _system_roots_context()
    ctx.hostname_checks_common_name = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    for index, pem in enumerate(extra_root_certificates):
        _add_root(ctx, pem, index, source)
    if client_certificate is not None:
        load_client_certificate(ctx, client_certificate)
    return ctx


def _add_root(ctx: ssl.SSLContext, pem: str, index: int, source: str | None) -> None:
    where = Location(file=source, field=f"image.extra_root_certificates[{index}]")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError("not a PEM certificate (no BEGIN CERTIFICATE line)", location=where)
    try:
        # cadata with several PEM blocks adds every block, as reqwest does for a chain.
        ctx.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(f"cannot load the certificate: {err}", location=where) from None


def load_client_certificate(ctx: ssl.SSLContext, cert: ClientCertificate) -> None:
    """Load a client certificate and key into ``ctx`` without writing the key to any file system.

    ``load_cert_chain`` only takes paths, so the PEMs go into anonymous memory files
    (``memfd_create``) opened through ``/proc/self/fd``; they vanish when closed.
    """
    where = Location(field=f"image.client_certificates[registry={cert.registry}]")
    try:
        with _memfd("guestpull-client-cert", cert.cert_pem) as cert_path, _memfd(
            "guestpull-client-key", cert.key_pem
        ) as key_path:
            ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as err:
        # The OpenSSL reason ("KEY_VALUES_MISMATCH", "PEM lib") never contains key material.
        raise ConfigError(
            f"cannot load the client certificate and key: {err.reason or err}", location=where
        ) from None


@contextlib.contextmanager
def _memfd(name: str, data: bytes) -> Iterator[str]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class TrustConfig:
    """The SSL contexts for one pull: one shared context, plus one per registry with a client cert.

    Contexts are built once and reused, because loading the system roots costs ~20 ms.  The
    shared one is built on first use (:meth:`prepare`, or the first HTTPS request): a pull from
    plain-HTTP registries never loads the system bundle.  The extra roots are still checked
    here, so a bad one refuses every pull, HTTP or not, as it always did.
    """

    def __init__(
        self,
        extra_root_certificates: Sequence[str] = (),
        client_certificates: Sequence[ClientCertificate] = (),
        *,
        source: str | None = None,
    ) -> None:
        self._roots = list(extra_root_certificates)
        self._source = source
        check_roots(self._roots, source)
        self._default: ssl.SSLContext | None = None
        self._building = threading.Lock()  # prepare() runs in a thread, context_for() on the loop
        self._per_registry: Mapping[str, ssl.SSLContext] = {
            c.registry: new_ssl_context(self._roots, client_certificate=c, source=source)
            for c in client_certificates
        }

    def has_client_certificate(self, registry: str) -> bool:
        return registry in self._per_registry

    def context_for(self, registry: str) -> ssl.SSLContext:
        """The context for ``registry`` (``host[:port]`` as in the image reference)."""
        return self._per_registry.get(registry) or self.prepare()

    def prepare(self) -> ssl.SSLContext:
        """The shared context, built now if it is not yet (blocking: call it in a thread)."""
        with self._building:
            if self._default is None:
                self._default = new_ssl_context(self._roots, source=self._source)
            return self._default


def check_roots(extra_root_certificates: Sequence[str], source: str | None = None) -> None:
    """The ConfigError :func:`new_ssl_context` would raise for these roots, without loading the
    system bundle."""
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for index, pem in enumerate(extra_root_certificates):
        _add_root(bare, pem, index, source)


# --- naming failures -----------------------------------------------------------------------


def describe_certificate(cert: x509.Certificate) -> str:
    """A one-line human description: subject, issuer, SANs and validity."""
    return (
        f"subject {_name(cert.subject)}, issued by {_name(cert.issuer)}, "
        f"covers {', '.join(certificate_names(cert)) or 'no names (no subjectAltName)'}, "
        f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def certificate_names(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    """The DNS and IP subjectAltNames of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _name(name: x509.Name) -> str:
    from cryptography.x509.oid import NameOID

    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return f'"{value.decode(errors="replace") if isinstance(value, bytes) else value}"'
    return f'"{name.rfc4514_string()}"' if len(name) else '"(empty)"'


def verification_error(
    err: ssl.SSLCertVerificationError, host: str, peer: x509.Certificate | None
) -> TLSError:
    """Turn an OpenSSL verification failure into a TLSError a human can act on."""
    code = err.verify_code
    about = f" ({describe_certificate(peer)})" if peer is not None else ""
    if code in _UNKNOWN_ISSUER_CODES:
        issuer = _name(peer.issuer) if peer is not None else "its issuer"
        return TLSError(
            f"TLS: the certificate of {host} was issued by an unknown issuer: "
            f"no trusted CA for {issuer}{about}",
            hint=f"add the CA certificate of {issuer} to image.extra_root_certificates",
        )
    if code == _DEPTH_ZERO_SELF_SIGNED_CERT or code == _SELF_SIGNED_CERT_IN_CHAIN:
        what = "is self-signed" if code == _DEPTH_ZERO_SELF_SIGNED_CERT else "chains to a self-signed CA"
        return TLSError(
            f"TLS: the certificate of {host} {what} and is not trusted{about}",
            hint="add that certificate (or its CA) to image.extra_root_certificates",
        )
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        kind = "IP address" if code == _IP_ADDRESS_MISMATCH else "host name"
        covers = ", ".join(certificate_names(peer)) if peer is not None else "other names"
        return TLSError(
            f"TLS: the certificate of {host} does not cover the {kind} {_host_only(host)}; "
            f"it covers {covers or 'no names (no subjectAltName; the Common Name is not used)'}"
            f"{about}",
            hint="reissue the server certificate with this name in subjectAltName",
        )
    if code == _CERT_HAS_EXPIRED:
        return TLSError(f"TLS: the certificate of {host} has expired{about}")
    if code == _CERT_NOT_YET_VALID:
        return TLSError(f"TLS: the certificate of {host} is not yet valid{about}")
    if code == _INVALID_PURPOSE:
        return TLSError(
            f"TLS: the certificate of {host} is not valid for a TLS server "
            f"(key usage / extended key usage){about}"
        )
    return TLSError(f"TLS: certificate verification failed for {host}: {err.verify_message}{about}")


def handshake_error(err: ssl.SSLError, host: str) -> TLSError:
    """A TLS failure that is not a certificate verification failure."""
    reason = err.reason or str(err)
    if looks_like_plain_http(err):
        return plain_http_error(host)
    return TLSError(f"TLS handshake with {host} failed: {reason}")


def looks_like_plain_http(err: BaseException) -> bool:
    """True if an SSL error means the server answered a ClientHello with plain text."""
    reason = getattr(err, "reason", None) or str(err)
    return any(
        marker in reason.upper()
        for marker in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE")
    )


def plain_http_error(host: str) -> TLSError:
    return TLSError(
        f"TLS: {host} speaks plain HTTP, not HTTPS; guestpull never falls back to HTTP on its own",
        hint=_MARK_INSECURE_HINT.format(registry=host),
    )


def tls_server_error(host: str) -> TLSError:
    """An HTTP (insecure) candidate met a server that speaks TLS."""
    return TLSError(
        f"{host} speaks HTTPS (TLS), but a registry rule marks it insecure = true (plain HTTP)",
        hint=f"remove insecure = true from the rule for {host}, and add its CA to "
        "image.extra_root_certificates if it is private",
    )


def _host_only(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


async def fetch_peer_certificate(
    host: str, port: int, *, server_hostname: str | None = None, timeout: float = 5.0
) -> x509.Certificate | None:
    """Read the server's certificate without verifying it, only to explain a failure.

    No request is sent and nothing the server says is used except its certificate.
    Returns None when the server cannot be reached or sends no certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=server_hostname or _sni_name(host)
            )
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    from cryptography import x509

    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        return x509.load_der_x509_certificate(der) if der else None
    except ValueError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()


_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")


def client_certificate_alert(reason: str, registry: str, *, have_certificate: bool) -> TLSError | None:
    """The TLSError for a server alert about our client certificate, or None for other alerts."""
    if not any(alert in reason.upper() for alert in _CLIENT_CERT_ALERTS):
        return None
    if not have_certificate:
        return TLSError(
            f"TLS: {registry} requires a client certificate and none is configured for it",
            hint=f'add [[image.client_certificates]] with registry = "{registry}"',
        )
    return TLSError(f"TLS: {registry} rejected our client certificate ({reason.strip()})")


async def client_certificate_problem(
    host: str, port: int, ctx: ssl.SSLContext, *, registry: str, have_certificate: bool,
    timeout: float = 3.0,
) -> TLSError | None:
    """Explain a server that hung up after the handshake: did it refuse our client certificate?

    With TLS 1.3 the server checks the client certificate after the handshake, and the client
    may report only "server disconnected".  This handshakes again with the same (verifying)
    context and reads the server's alert.  No request is sent.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=_sni_name(host)
            )
            try:
                await reader.read(1)
            finally:
                writer.close()
    except ssl.SSLError as err:
        return client_certificate_alert(err.reason or str(err), registry, have_certificate=have_certificate)
    except (OSError, TimeoutError):
        return None
    return None


async def speaks_tls(host: str, port: int, *, timeout: float = 5.0) -> bool:
    """True if a TLS handshake with ``host:port`` completes (certificate not checked)."""
    return await fetch_peer_certificate(host, port, timeout=timeout) is not None


def _sni_name(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


async def verified_chain(
    host: str, port: int, ctx: ssl.SSLContext, *, timeout: float = 5.0
) -> list[bytes]:
    """The chain ``ctx`` verified for ``host:port``, leaf first and trust anchor last (DER).

    Only handshakes (no request is sent), with the same verifying context a pull uses, so
    the last certificate is the root (or the intermediate given as an extra root) that made
    the server trusted.  Empty when the handshake fails or this Python cannot report it.
    """
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=_sni_name(host) or host
            )
    except (OSError, ssl.SSLError, TimeoutError):
        return []
    try:
        return _verified_chain_der(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()


def _verified_chain_der(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    # Public from Python 3.13 (DER bytes); before that only on the private _sslobj, as
    # _ssl.Certificate objects.
    if ssl_object is None:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in getter()]
