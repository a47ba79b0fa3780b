"""Test certificates on ``cryptography``: CA chains and the edge cases the TLS code must meet.

Everything is ECDSA P-256, because key generation is then a fraction of a millisecond.
Server certificates carry a *non-critical* SAN and a non-empty subject: that is the shape real
CAs issue, and the one ``cryptography``'s webpki-style verifier accepts (trustme's critical SAN
is rejected by it, see python-stack.md §3).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")

_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertPaths:
    """Where :meth:`CertChain.write` put the PEM files."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertChain:
    """A root CA and a certificate it issued (directly or through an intermediate).

    ``cert_pem`` holds the leaf followed by any intermediate, ready for a server to present.
    """

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path) -> CertPaths:
        """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` (0600) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = CertPaths(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        paths.ca.write_bytes(self.ca_cert_pem)
        paths.cert.write_bytes(self.cert_pem)
        paths.key.touch(mode=0o600)
        paths.key.write_bytes(self.key_pem)
        return paths

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.cert_pem)[0]

    @property
    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_cert_pem)


def make_ca_chain(
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    intermediate: bool = False,
    common_name: str = "guestpull test server",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> CertChain:
    """A root CA → (optional intermediate CA) → CA:false serverAuth certificate for ``hosts``."""
    root_key = _new_key()
    root = _build(
        subject=_name("guestpull test root CA"),
        issuer=None,
        public_key=root_key.public_key(),
        signing_key=root_key,
        ca=True,
    )
    issuer_cert, issuer_key = root, root_key
    chain_tail: list[x509.Certificate] = []
    if intermediate:
        mid_key = _new_key()
        mid = _build(
            subject=_name("guestpull test intermediate CA"),
            issuer=root,
            public_key=mid_key.public_key(),
            signing_key=root_key,
            ca=True,
        )
        issuer_cert, issuer_key = mid, mid_key
        chain_tail.append(mid)
    leaf_key = _new_key()
    leaf = _build(
        subject=_name(common_name),
        issuer=issuer_cert,
        public_key=leaf_key.public_key(),
        signing_key=issuer_key,
        ca=False,
        hosts=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        not_before=not_before,
        not_after=not_after,
    )
    return CertChain(
        ca_cert_pem=_cert_pem(root),
        ca_key_pem=_key_pem(root_key),
        cert_pem=b"".join(_cert_pem(c) for c in [leaf, *chain_tail]),
        key_pem=_key_pem(leaf_key),
    )


def make_self_signed(
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    ca: bool,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    san: bool = True,
) -> CertChain:
    """A self-signed server certificate; it is its own CA (``ca_cert_pem == cert_pem``).

    ``ca=True`` is the shape OpenSSL and Go accept but rustls rejects (CaUsedAsEndEntity);
    ``ca=False`` is the workaround the CoCo docs give.  ``san=False`` leaves only the CN
    (the first host), which Go and rustls refuse.  Pass dates in the past or future for
    expired or not-yet-valid variants.
    """
    key = _new_key()
    cert = _build(
        subject=_name(hosts[0] if hosts else "guestpull self-signed"),
        issuer=None,
        public_key=key.public_key(),
        signing_key=key,
        ca=ca,
        hosts=hosts if san else (),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        not_before=not_before,
        not_after=not_after,
    )
    pem, key_pem = _cert_pem(cert), _key_pem(key)
    return CertChain(ca_cert_pem=pem, ca_key_pem=key_pem, cert_pem=pem, key_pem=key_pem)


def make_leaf_signed_by(chain: CertChain, hosts: Sequence[str] = DEFAULT_HOSTS) -> CertChain:
    """Another CA:false server certificate issued by ``chain``'s root CA."""
    return _issue_from_root(chain, _name(hosts[0] if hosts else "leaf"), hosts=hosts, server=True)


def make_client_cert(chain: CertChain, name: str) -> CertChain:
    """A clientAuth certificate (CN and SAN ``name``) issued by ``chain``'s root CA, for mTLS.

    The SAN is there because webpki-style verifiers (``cryptography``'s) require one.
    """
    return _issue_from_root(chain, _name(name), hosts=(name,), server=False)


def _issue_from_root(
    chain: CertChain, subject: x509.Name, *, hosts: Sequence[str], server: bool
) -> CertChain:
    ca_cert = chain.ca_cert
    ca_key = serialization.load_pem_private_key(chain.ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the chain's CA key is not an EC key made by guestpull_testkit.certs")
    key = _new_key()
    cert = _build(
        subject=subject,
        issuer=ca_cert,
        public_key=key.public_key(),
        signing_key=ca_key,
        ca=False,
        hosts=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return CertChain(
        ca_cert_pem=chain.ca_cert_pem,
        ca_key_pem=chain.ca_key_pem,
        cert_pem=_cert_pem(cert),
        key_pem=_key_pem(key),
    )


def _build(
    *,
    subject: x509.Name,
    issuer: x509.Certificate | None,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    hosts: Iterable[str] = (),
    usage: x509.ObjectIdentifier | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """One certificate.  ``issuer=None`` means self-signed."""
    now = datetime.datetime.now(datetime.UTC)
    start = not_before or min(now, not_after or now) - _ONE_DAY
    end = not_after or max(start, now) + 30 * _ONE_DAY
    hosts = list(hosts)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    builder = builder.add_extension(_key_usage(ca=ca), critical=True)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # digitalSignature everywhere: an ECDSA TLS server needs it, and so does a self-signed
    # CA:true server cert, which OpenSSL otherwise refuses as "unsuitable certificate purpose".
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "guestpull tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
