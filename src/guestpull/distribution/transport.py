"""HTTP for the registry client: one keep-alive session per pull, retries, redirects and proxies.

Everything about *how* bytes move lives here (on :mod:`guestpull.httpclient`); *what* is asked
for lives in client.py.

- Timeouts bound connecting, each read (a stall), and the response-header phase (status line,
  headers and any number of ``1xx`` responses); whole documents and whole blobs get their own
  deadlines in client.py (a blob's grows with its size, see :meth:`TransportSettings.blob_deadline`).
- Connection errors, 5xx and 429 are retried with exponential backoff (``Retry-After`` is
  honoured, within a cap); the number of tries is bounded.
- Redirects are followed here, hop by hop, so that each hop gets its own proxy decision and
  TLS context, an ``Authorization`` header only on the origin it was meant for, and no
  HTTPS → HTTP downgrade.
- HTTP client failures become :mod:`guestpull.errors` classes with messages that name the
  cause (an unknown CA, a plain-HTTP server on an HTTPS candidate, a malformed response, ...)
  and the hop that failed; nothing from the HTTP client or the URL parser leaves this module.
- Bodies read whole (:func:`read_body`) are read to EOF under a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guestpull.url import URL

from guestpull import __version__, httpclient, tls
from guestpull.errors import GuestpullError, NetworkError, PullTimeoutError, TLSError, clip, shown
from guestpull.httpclient import Response

if TYPE_CHECKING:
    from cryptography import x509  # only to explain a TLS failure; imported lazily by tls


log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
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
    #: Status line and headers of one hop, ``1xx`` responses included (the client skips any
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


async def read_body(response: Response, limit: int, what: str) -> bytes:
    """The whole body, read to EOF under a cap; NetworkError if the connection breaks or lies.

    Returns at most ``limit + 1`` bytes, so the caller can tell "too large" from "exactly
    the limit".  A body shorter than its ``Content-Length`` is a NetworkError.
    """
    try:
        return await read_at_most(response, limit + 1)
    except (httpclient.HTTPError, TimeoutError) as err:
        raise NetworkError(f"{what}: the connection broke while reading: {_error_text(err)}") from None


async def read_at_most(response: Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body: fewer only at its end."""
    chunks: list[bytes] = []
    received = 0
    while received < limit:
        chunk = await response.read(limit - received)
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


def new_session(settings: TransportSettings) -> httpclient.Session:
    """The one HTTP session a pull uses (its connections are kept alive between requests).

    The client sends ``Accept-Encoding: identity`` (the bytes hashed are the bytes on the
    wire), never reads proxies from the environment or ``~/.netrc``, keeps no cookies and
    sends redirect URLs exactly as the server wrote them (presigned URLs break if re-quoted).
    """
    return httpclient.Session(httpclient.SessionSettings(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        connection_limit=settings.connection_limit,
        user_agent=settings.user_agent,
    ))


class Transport:
    """Sends GET/HEAD requests for one pull; owns the session's retry and redirect rules."""

    def __init__(
        self,
        session: httpclient.Session,
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
    ) -> AsyncIterator[Response]:
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
                await self._check_tls_port(response)
                yield response
            except (httpclient.HTTPError, TimeoutError) as err:
                # A body read by the caller broke in a way it did not handle itself.
                raise await self.describe(err, response.url, origin=url) from None
            finally:
                response.release()
            return

    async def _follow(
        self, url: URL, method: str, headers: Mapping[str, str], authorization: str | None
    ) -> Response:
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

    async def _send(self, method: str, hop: URL, headers: Mapping[str, str]) -> Response:
        """One hop; its failure is tagged with the hop so the message blames the right server."""
        try:
            proxy = self._proxy_for(hop)
            # Status line and headers, however many 1xx responses come first, in bounded time.
            async with asyncio.timeout(self.settings.response_timeout):
                return await self.session.request(
                    method, hop, headers=headers,
                    ssl_context=self._ssl_for(hop),
                    proxy=proxy,
                    proxy_ssl=self._ssl_for(proxy) if proxy is not None else None,
                )
        except (httpclient.HTTPError, TimeoutError) as err:
            raise _HopFailed(hop, err) from None

    def _proxy_for(self, hop: URL) -> URL | None:
        proxy = self.proxies.proxy_for(hop)
        if proxy is None:
            return None
        try:
            url = URL(proxy)
            usable = url.scheme in ("http", "https") and bool(url.host) and url.port is not None
        except ValueError:
            usable = False
        if not usable:
            raise httpclient.InvalidRequest("the image_pull_proxy for it is not an http:// or https:// URL")
        return url

    def _ssl_for(self, url: URL) -> ssl.SSLContext | None:
        """The TLS context for an ``https`` server or ``https://`` proxy: each gets its own, so a
        client certificate configured for a registry is never offered to the proxy in front of it."""
        return self.trust.context_for(authority(url)) if url.scheme == "https" else None

    async def _check_tls_port(self, response: Response) -> None:
        if response.url.scheme != "http" or response.status != 400:
            return
        body = await read_at_most(response, 4096)
        if _GO_TLS_PORT_BODY in body.lower():
            raise tls.tls_server_error(authority(response.url))

    async def describe(self, err: BaseException, url: URL, *, origin: URL | None = None) -> GuestpullError:
        """Turn an HTTP client/OS failure at ``url`` into a GuestpullError naming the cause.

        ``origin``: the URL first asked for, named too when ``url`` is a redirect target.
        """
        described = await self._describe(err, url)
        if origin is not None and url.origin() != origin.origin():
            described.message += f" (after a redirect from {_safe(origin)})"
        return described

    async def _describe(self, err: BaseException, url: URL) -> GuestpullError:
        host = authority(url)
        if isinstance(err, httpclient.InvalidRequest):
            return NetworkError(f"cannot send the request to {host}: {clip(err)}")
        if isinstance(err, httpclient.TLSFailed):
            return await self._tls_failure(err, url)
        if url.scheme == "http" and isinstance(
            err, (httpclient.Disconnected, httpclient.MalformedResponse, httpclient.BodyError)
        ) and await self._speaks_tls(url):
            return tls.tls_server_error(host)
        if isinstance(err, httpclient.MalformedResponse):
            return NetworkError(f"malformed HTTP response from {host}: {clip(' '.join(str(err).split()))}")
        if isinstance(err, httpclient.BodyError) and err.malformed:
            return NetworkError(f"malformed HTTP body from {host}: {clip(err)}")
        if url.scheme == "https" and isinstance(err, httpclient.Disconnected):
            problem = await self._after_handshake(err, url)
            if problem is not None:
                return problem
        if isinstance(err, TimeoutError):
            return NetworkError(f"timed out talking to {host} ({_safe(url)})")
        if isinstance(err, httpclient.ConnectFailed):
            if err.proxy:
                return NetworkError(f"cannot connect to the proxy for {host}: {clip(err)}")
            return NetworkError(f"cannot connect to {host}: {clip(err)}")
        if isinstance(err, httpclient.ProxyRefused):
            return NetworkError(f"the proxy refused the connection to {host}: HTTP {err.status}")
        return NetworkError(f"connection to {host} failed: {_error_text(err)}")

    async def _tls_failure(self, err: httpclient.TLSFailed, url: URL) -> TLSError:
        proxy = self._proxy_for(url) if err.proxy else None
        peer_url = proxy or url
        host = authority(peer_url)
        cause = err.ssl_error
        if isinstance(cause, ssl.SSLCertVerificationError):
            peer = await self._peer_certificate(peer_url, through_proxy=proxy is None)
            failure = tls.verification_error(cause, host, peer)
        else:
            failure = tls.client_certificate_alert(
                str(cause), host, have_certificate=self.trust.has_client_certificate(host)
            ) or tls.handshake_error(cause, host)
        if proxy is not None:
            failure.message += f" (the image_pull_proxy in front of {authority(url)})"
        return failure

    async def _after_handshake(self, err: httpclient.Disconnected, url: URL) -> GuestpullError | None:
        """A TLS 1.3 server checks our client certificate after the handshake: its refusal
        arrives as an alert on the first read, or just as a closed connection."""
        host = authority(url)
        if isinstance(err.cause, ssl.SSLError):
            alert = tls.client_certificate_alert(
                str(err.cause), host, have_certificate=self.trust.has_client_certificate(host)
            )
            return alert or TLSError(f"TLS connection to {host} failed: {err.cause}")
        return await self._client_certificate_problem(url)

    async def _peer_certificate(self, url: URL, *, through_proxy: bool = True) -> x509.Certificate | None:
        # Through a proxy we would have to CONNECT again just for a better message: skip it.
        if (through_proxy and self.proxies.proxy_for(url) is not None) or url.host is None:
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
        target = hop.join(URL(location))  # ValueError for a bad host or port, at once
        scheme, host = target.scheme, target.host
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
    # A response that cannot be parsed is the server's doing, not the weather; a request
    # that cannot be sent, TLS and certificate failures are configuration: retrying cannot help.
    if isinstance(err, (httpclient.MalformedResponse, httpclient.InvalidRequest, httpclient.TLSFailed)):
        return False
    # A TLS alert after the handshake (e.g. a refused client certificate).
    return not (isinstance(err, httpclient.Disconnected) and isinstance(err.cause, ssl.SSLError))


def _retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, but float("²") fails
        return float(value)
    import email.utils  # only for an HTTP-date, which registries rarely send (~4 ms of imports)

    with contextlib.suppress(TypeError, ValueError, OverflowError):
        when = email.utils.parsedate_to_datetime(value)
        return max(when.timestamp() - time.time(), 0.0)
    return None


def _safe(url: URL) -> str:
    """A URL fit for messages: no userinfo, no query (presigned URLs carry secrets there)."""
    try:
        text = str(url.without_userinfo().with_query(None).without_fragment())
    except ValueError:  # a relative or host-less URL (file:///…) has no user to drop
        text = str(url.with_query(None).without_fragment()) if not url.user else "<a URL>"
    return clip(text)


def _error_text(err: BaseException) -> str:
    return clip(f"{type(err).__name__}: {err}")


safe_url = _safe
