"""HTTP for the registry client: one aiohttp session per pull, retries, redirects and proxies.

Everything about *how* bytes move lives here; *what* is asked for lives in client.py.

- Timeouts bound connecting, each read (a stall), and the response-header phase (status line,
  headers and any number of ``1xx`` responses); whole documents and whole blobs get their own
  deadlines in client.py (a blob's grows with its size, see :meth:`TransportSettings.blob_deadline`).
- Connection errors, 5xx and 429 are retried with exponential backoff (``Retry-After`` is
  honoured, within a cap); the number of tries is bounded.
- Redirects are followed here, hop by hop, so that each hop gets its own proxy decision and
  TLS context, an ``Authorization`` header only on the origin it was meant for, and no
  HTTPS → HTTP downgrade.
- aiohttp failures become :mod:`guestpull.errors` classes with messages that name the cause
  (an unknown CA, a plain-HTTP server on an HTTPS candidate, a malformed response, ...) and the
  hop that failed; nothing from aiohttp or yarl leaves this module (httpx's rule).
- Bodies read whole (:func:`read_body`) are read to EOF under a cap: ``content.read(n)``
  returns what happens to be buffered, not ``n`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yarl import URL

from guestpull import __version__, tls
from guestpull.errors import GuestpullError, NetworkError, PullTimeoutError, TLSError, clip, shown

if TYPE_CHECKING:
    from cryptography import x509  # only to explain a TLS failure; imported lazily by tls


@contextlib.contextmanager
def _system_roots_not_loaded() -> Iterator[None]:
    """While active, no SSLContext loads the system CA bundle (``set_default_verify_paths``).

    aiohttp builds two default contexts when ``aiohttp.connector`` is imported, each parsing
    the system bundle (~20 ms apiece, issue 15).  Every request here passes a context of its
    own (:meth:`Transport._ssl_for`, tls.py), so they are never used; built without roots,
    aiohttp's *verified* default stays CERT_REQUIRED with hostname checks and trusts nothing:
    were it ever used, the handshake would fail, never pass unverified.  Its unverified default
    is CERT_NONE either way (the roots play no part in it).  A context another thread built in
    this window would trust nothing too: it fails closed.
    """
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the inherited C method again


# After everything else: the package's __init__ imports this module before client.py, so
# this is the process's first aiohttp import on the pull path (an earlier one, e.g. a test
# server's, just means aiohttp's contexts were built as usual).
with _system_roots_not_loaded():
    import aiohttp

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
#: Response status line and each header: 8 KiB, as nginx's default large_client_header_buffers
#: and aiohttp's own default (set here so the limit is ours, not an accident of a version).
MAX_HEADER_LINE = 8190
#: Response headers per response: a registry sends about a dozen.
MAX_HEADERS = 128
# Go's net/http answers a plain request on a TLS port with this 400 body.
_GO_TLS_PORT_BODY = b"client sent an http request to an https server"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is tried again."""

    attempts: int = 4
    first_delay: float = 0.5
    max_delay: float = 10.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return min(self.first_delay * (2 ** (failures - 1)), self.max_delay)


@dataclass(frozen=True)
class TransportSettings:
    """Every time bound of the network path; docs/threat-model.md explains each value."""

    connect_timeout: float = 30.0
    #: A stall: no byte at all for this long.
    read_timeout: float = 120.0
    #: Status line and headers of one hop, ``1xx`` responses included (aiohttp skips any
    #: number of them, so an endless ``100 Continue`` stream would otherwise never end).
    response_timeout: float = 30.0
    #: A whole small document (ping, manifest, index, token), retries and redirects included.
    document_timeout: float = 60.0
    #: A blob's deadline is ``blob_grace + size / min_rate``: a slow drip cannot hold a pull.
    min_rate: float = 32 * 1024
    blob_grace: float = 30.0
    connection_limit: int = 16
    max_redirects: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = f"guestpull/{__version__}"

    def blob_deadline(self, size: int) -> float:
        """Seconds a blob of ``size`` bytes may take, retries included."""
        return self.blob_grace + size / self.min_rate


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """Bound the whole block; PullTimeoutError naming ``what`` when it runs out."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise PullTimeoutError(f"{what}: not done within {seconds:g} s") from None


async def read_body(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, read to EOF under a cap; NetworkError if the connection breaks or lies.

    Returns at most ``limit + 1`` bytes, so the caller can tell "too large" from "exactly
    the limit".  A body shorter than its ``Content-Length`` is a NetworkError.
    """
    try:
        data = await read_at_most(response.content, limit + 1)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise NetworkError(f"{what}: the connection broke while reading: {_error_text(err)}") from None
    length = response.content_length
    if length is not None and len(data) <= limit and len(data) != length:
        raise NetworkError(f"{what}: got {len(data)} of the {length} bytes announced")
    return data


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``stream``: fewer only at EOF."""
    chunks: list[bytes] = []
    received = 0
    while received < limit:
        chunk = await stream.read(limit - received)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


# --- proxies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """``[image.image_pull_proxy]``: a proxy per scheme, and hosts that bypass both."""

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: object | None) -> ProxySettings:
        """From a ``config.ImagePullProxy`` (or anything with the same three attributes)."""
        if config is None:
            return cls()
        no_proxy = getattr(config, "no_proxy", None) or ""
        entries = no_proxy if isinstance(no_proxy, (list, tuple)) else no_proxy.split(",")
        return cls(
            https_proxy=getattr(config, "https_proxy", None) or None,
            http_proxy=getattr(config, "http_proxy", None) or None,
            no_proxy=tuple(e.strip() for e in entries if e.strip()),
        )

    def proxy_for(self, url: URL) -> str | None:
        """The proxy URL for a request to ``url``, or None for a direct connection."""
        proxy = self.https_proxy if url.scheme == "https" else self.http_proxy
        if not proxy or no_proxy_matches(url.host or "", url.port, self.no_proxy):
            return None
        return proxy


def no_proxy_matches(host: str, port: int | None, entries: Sequence[str]) -> bool:
    """Whether ``host`` is exempt from the proxy, with reqwest ``NoProxy`` semantics.

    An entry is ``*`` (everything), an IP address, a CIDR, or a domain name that matches
    itself and its subdomains (a leading ``.`` makes no difference).  An entry may carry a
    ``:port``, which must then equal the request's port.
    """
    host = host.strip("[]").lower().rstrip(".")
    host_ip = _ip_or_none(host)
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if host_ip is not None:
            if _ip_entry_matches(host_ip, entry):
                return True
            continue
        domain = entry.lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        close = entry.find("]")
        rest = entry[close + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return entry[1:close], port
    if entry.count(":") == 1:
        name, _, digits = entry.partition(":")
        if digits.isdigit():
            return name, int(digits)
    return entry, None


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_entry_matches(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return ip in network


# --- the transport -------------------------------------------------------------------------


def authority(url: URL) -> str:
    """``host[:port]`` as an image reference writes it (IPv6 in brackets, port if explicit)."""
    host = url.host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def new_session(settings: TransportSettings) -> aiohttp.ClientSession:
    """The one ClientSession a pull uses, with the settings registry blobs need."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.connection_limit),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        ),
        # The bytes we hash must be the bytes on the wire.
        auto_decompress=False,
        # Re-quoting breaks presigned blob-storage redirect URLs.
        requote_redirect_url=False,
        # Proxies come from image_pull_proxy only, never the environment or ~/.netrc.
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": settings.user_agent},
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_LINE,
        max_headers=MAX_HEADERS,
    )


class Transport:
    """Sends GET/HEAD requests for one pull; owns the session's retry and redirect rules."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        trust: tls.TrustConfig,
        proxies: ProxySettings | None = None,
        settings: TransportSettings | None = None,
    ) -> None:
        self.session = session
        self.trust = trust
        self.proxies = proxies or ProxySettings()
        self.settings = settings or TransportSettings()

    @contextlib.asynccontextmanager
    async def request(
        self,
        url: URL,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        retry: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request (following redirects, retrying transient failures); yield the response.

        ``authorization`` is sent to ``url``'s origin only.  The response is yielded whatever
        its status; a 5xx or 429 is yielded only once the retries are used up.
        """
        policy = self.settings.retry
        tries = policy.attempts if retry else 1
        for attempt in range(1, tries + 1):
            last = attempt == tries
            try:
                response = await self._follow(url, method, headers or {}, authorization)
            except _HopFailed as failed:
                if last or not _retryable_exception(failed.error):
                    raise await self.describe(failed.error, failed.url, origin=url) from None
                log.debug("retrying %s after %s", _safe(url), type(failed.error).__name__)
                await asyncio.sleep(policy.delay(attempt))
                continue
            if not last and _retryable_status(response.status):
                delay = policy.delay(attempt, _retry_after(response.headers.get("Retry-After")))
                response.release()
                log.debug("retrying %s after HTTP %s", _safe(url), response.status)
                await asyncio.sleep(delay)
                continue
            try:
                await self._check_tls_port(response, url)
                yield response
            except (aiohttp.ClientError, TimeoutError) as err:
                # A body read by the caller broke in a way it did not handle itself.
                raise await self.describe(err, response.url, origin=url) from None
            finally:
                response.release()
            return

    async def _follow(
        self, url: URL, method: str, headers: Mapping[str, str], authorization: str | None
    ) -> aiohttp.ClientResponse:
        origin = url.origin()
        hop = url
        for _ in range(self.settings.max_redirects + 1):
            send = dict(headers)
            if authorization and hop.origin() == origin:
                send["Authorization"] = authorization
            response = await self._send(method, hop, send)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            response.release()
            hop = _redirect_target(hop, location)
        raise NetworkError(f"too many redirects (more than {self.settings.max_redirects}) fetching {_safe(url)}")

    async def _send(self, method: str, hop: URL, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """One hop; its failure is tagged with the hop so the message blames the right server."""
        try:
            # Status line and headers, however many 1xx responses come first, in bounded time.
            async with asyncio.timeout(self.settings.response_timeout):
                return await self.session.request(
                    method,
                    hop,
                    headers=headers,
                    allow_redirects=False,
                    proxy=(proxy := self.proxies.proxy_for(hop)),
                    ssl=self._ssl_for(hop, proxy),
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            # ValueError: aiohttp refuses to send, e.g. a header value holding CR/LF.
            raise _HopFailed(hop, err) from None

    def _ssl_for(self, url: URL, proxy: str | None) -> ssl.SSLContext | bool:
        """The TLS context for ``url``; aiohttp also uses it for the TLS to an ``https://`` proxy.

        A plain-HTTP registry through an ``https://`` proxy gets the proxy's context: with
        ``False`` aiohttp would talk to that proxy over unverified TLS.
        """
        if url.scheme == "https":
            return self.trust.context_for(authority(url))
        if proxy is not None and proxy.lower().startswith("https://"):
            return self.trust.context_for(authority(URL(proxy)))
        return False

    async def _check_tls_port(self, response: aiohttp.ClientResponse, url: URL) -> None:
        if response.url.scheme != "http" or response.status != 400:
            return
        body = await read_at_most(response.content, 4096)
        if _GO_TLS_PORT_BODY in body.lower():
            raise tls.tls_server_error(authority(response.url))

    async def describe(self, err: BaseException, url: URL, *, origin: URL | None = None) -> GuestpullError:
        """Turn an aiohttp/OS failure at ``url`` into a GuestpullError naming the cause.

        ``origin``: the URL first asked for, named too when ``url`` is a redirect target.
        """
        described = await self._describe(err, url)
        if origin is not None and url.origin() != origin.origin():
            described.message += f" (after a redirect from {_safe(origin)})"
        return described

    async def _describe(self, err: BaseException, url: URL) -> GuestpullError:
        host = authority(url)
        if isinstance(err, ValueError) and not isinstance(err, aiohttp.ClientError):
            return NetworkError(f"cannot send the request to {host}: {clip(err)}")
        if isinstance(err, aiohttp.ClientResponseError):
            # aiohttp's parser refused the response: header too long, too many headers, bad
            # status line (the "status" is aiohttp's 400, not the server's).
            return NetworkError(f"malformed HTTP response from {host}: {clip(' '.join(str(err.message).split()))}")
        if isinstance(err, aiohttp.ClientPayloadError):
            return NetworkError(f"malformed HTTP body from {host}: {_error_text(err)}")
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            cert_error = err.certificate_error
            if isinstance(cert_error, ssl.SSLCertVerificationError):
                peer = await self._peer_certificate(url)
                return tls.verification_error(cert_error, host, peer)
            return TLSError(f"TLS: certificate verification failed for {host}: {cert_error}")
        if isinstance(err, aiohttp.ClientSSLError):
            os_error = getattr(err, "os_error", None) or err
            if isinstance(os_error, ssl.SSLError):
                return tls.handshake_error(os_error, host)
            return TLSError(f"TLS handshake with {host} failed: {os_error}")
        if url.scheme == "http" and isinstance(
            err, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError)
        ) and await self._speaks_tls(url):
            return tls.tls_server_error(host)
        if url.scheme == "https" and isinstance(err, aiohttp.ClientOSError) and "[SSL:" in str(err):
            alert = tls.client_certificate_alert(
                str(err), host, have_certificate=self.trust.has_client_certificate(host)
            )
            return alert or TLSError(f"TLS connection to {host} failed: {err}")
        if url.scheme == "https" and isinstance(err, aiohttp.ServerDisconnectedError):
            problem = await self._client_certificate_problem(url)
            if problem is not None:
                return problem
        if isinstance(err, TimeoutError):
            return NetworkError(f"timed out talking to {host} ({_safe(url)})")
        if isinstance(err, aiohttp.ClientProxyConnectionError):
            return NetworkError(f"cannot connect to the proxy for {host}: {_os_reason(err)}")
        if isinstance(err, aiohttp.ClientConnectorError):
            return NetworkError(f"cannot connect to {host}: {_os_reason(err)}")
        if isinstance(err, aiohttp.ClientHttpProxyError):
            return NetworkError(f"the proxy refused the connection to {host}: HTTP {err.status}")
        return NetworkError(f"connection to {host} failed: {_error_text(err)}")

    async def _peer_certificate(self, url: URL) -> x509.Certificate | None:
        # Through a proxy we would have to CONNECT again just for a better message: skip it.
        if self.proxies.proxy_for(url) is not None or url.host is None:
            return None
        return await tls.fetch_peer_certificate(url.host, url.port or 443)

    async def _client_certificate_problem(self, url: URL) -> GuestpullError | None:
        if self.proxies.proxy_for(url) is not None or url.host is None:
            return None
        registry = authority(url)
        return await tls.client_certificate_problem(
            url.host, url.port or 443, self.trust.context_for(registry), registry=registry,
            have_certificate=self.trust.has_client_certificate(registry),
        )

    async def _speaks_tls(self, url: URL) -> bool:
        if self.proxies.proxy_for(url) is not None or url.host is None:
            return False
        return await tls.speaks_tls(url.host, url.port or 80, timeout=2.0)


class _HopFailed(Exception):
    """One hop of a request failed; carries the hop URL for the message."""

    def __init__(self, url: URL, error: BaseException) -> None:
        super().__init__(str(error))
        self.url = url
        self.error = error


def _redirect_target(hop: URL, location: str) -> URL:
    """The URL a redirect points at, refused unless it is HTTP(S) and keeps HTTPS."""
    try:
        target = hop.join(URL(location, encoded=True))
        # yarl parses lazily: touch every part aiohttp will use, so a bad port fails here.
        scheme, host, _ = target.scheme, target.host, target.port
    except ValueError:
        raise NetworkError(f"refused a redirect from {_safe(hop)} to an invalid URL {shown(location)}") from None
    if scheme not in ("http", "https") or not host:
        raise NetworkError(
            f"refused a redirect from {_safe(hop)} to {shown(location)}: only http(s) URLs with a host"
        )
    if hop.scheme == "https" and scheme != "https":
        raise TLSError(
            f"refused a redirect from {_safe(hop)} to {_safe(target)}: "
            "it would leave HTTPS for plain HTTP"
        )
    return target


def _retryable_exception(err: BaseException) -> bool:
    # A response aiohttp could not parse is the server's doing, not the weather.
    if isinstance(err, (aiohttp.ClientResponseError, ValueError)):
        return False
    # TLS and certificate failures are configuration, not weather: retrying cannot help.
    if isinstance(err, (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)):
        return False
    # A TLS alert (e.g. a refused client certificate) arrives as a plain ClientOSError.
    return not (isinstance(err, aiohttp.ClientOSError) and "[SSL:" in str(err))


def _retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, but float("²") fails
        return float(value)
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    return None


def _os_reason(err: aiohttp.ClientConnectorError) -> str:
    os_error = err.os_error
    return os_error.strerror or str(os_error) if os_error else str(err)


def _safe(url: URL) -> str:
    """A URL fit for messages: no userinfo, no query (presigned URLs carry secrets there)."""
    try:
        text = str(url.with_user(None).with_query(None).with_fragment(None))
    except ValueError:  # a relative or host-less URL (file:///…) has no user to drop
        text = str(url.with_query(None).with_fragment(None)) if not url.user else "<a URL>"
    return clip(text)


def _error_text(err: BaseException) -> str:
    return clip(f"{type(err).__name__}: {err}")


safe_url = _safe
