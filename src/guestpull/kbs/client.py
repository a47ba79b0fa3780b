"""The ``cc_kbc`` KBC: fetch ``kbs://`` resources from the KBS with the attestation agent's token.

The protocol (coco-behaviour.md §9.2, upstream ``kbs_protocol`` ``token_client.rs``):

* ``GET <[kbc] url>/kbs/v0/<plugin>/<path>[?query]`` with ``Authorization: Bearer <token>``;
* 200: a flattened JWE encrypted to the TEE key that came with the token (:mod:`.jwe`);
* 401: the token is refreshed and the GET tried again, 3 GETs in all.  Trustee answers 401
  for a resource that does not exist *or* that its policy does not release, so the final
  error says both;
* 404 (an unknown plugin or a bad path): not found; any other status: an HTTP error.

Beyond upstream: the token is also refreshed once its ``exp`` has passed (upstream waits for
the 401), a connection failure or 502/503/504 is retried twice, every response is bounded in
size and time, redirects are refused (they would carry the token elsewhere), and the KBS's
certificate must chain to the system roots or ``[kbc] kbs_cert`` — never to the registries'
``extra_root_certificates``: a registry CA must not be able to impersonate the KBS.

Resources are cached in memory only, for :attr:`KbsSettings.cache_ttl` seconds (see
docs/kbs.md "Caching"); nothing of a resource or a token is written to disk or logged.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import ssl
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guestpull.url import URL

from guestpull import __version__, httpclient, tls
from guestpull.errors import (
    AuthError,
    ConfigError,
    GuestpullError,
    HTTPStatusError,
    Location,
    NetworkError,
    NotFoundError,
    PullTimeoutError,
    TLSError,
    UnsupportedError,
    clip,
)
from guestpull.kbs.jwe import decrypt_response
from guestpull.kbs.token import KbsToken, TeeKey, TokenProvider, printable
from guestpull.resources.uri import KbsResourceUri, check_kbs_url
from guestpull.strictjson import load_json

if TYPE_CHECKING:
    from guestpull.config import KbcConfig

log = logging.getLogger(__name__)

CC_KBC = "cc_kbc"
#: GETs per resource, each after a fresh token when the previous one got a 401 (upstream: 3).
GET_ATTEMPTS = 3
#: Resources are configuration files, keys and credentials: far below this.
MAX_RESOURCE_SIZE = 16 << 20
_RETRY_STATUSES = (502, 503, 504)
_KBS_CERT_HINT = "put the KBS's CA certificate (PEM) in cdh.toml [kbc] kbs_cert"


@dataclass(frozen=True)
class KbsSettings:
    """How to reach the KBS.  ``source`` names the configuration file, for messages."""

    url: str
    kbs_cert: str | None = None
    source: str | None = None
    #: Seconds for one request, connection to last byte (upstream's reqwest timeout: 60 s).
    timeout: float = 60.0
    max_response: int = MAX_RESOURCE_SIZE
    #: Extra tries after a connection failure or a 502/503/504, and the pause before each.
    transient_retries: int = 2
    retry_delay: float = 0.5
    #: Seconds a fetched resource is served from memory; 0 fetches every time.
    cache_ttl: float = 300.0

    def __post_init__(self) -> None:
        where = Location(file=self.source, field="kbc.url")
        try:
            object.__setattr__(self, "url", check_kbs_url(self.url))
        except ConfigError as err:
            raise ConfigError(err.message, location=where, hint=err.hint) from None

    @classmethod
    def from_kbc_config(cls, kbc: KbcConfig, *, source: str | None = None, **kwargs: Any) -> KbsSettings:
        # An empty kbs_cert (upstream's example config has kbs_cert = "") adds no root.
        cert = kbc.kbs_cert if kbc.kbs_cert and kbc.kbs_cert.strip() else None
        return cls(kbc.url, cert, source, **kwargs)

    def ssl_context(self) -> ssl.SSLContext:
        """System roots plus ``kbs_cert``; ConfigError naming ``kbc.kbs_cert`` if it is not PEM."""
        try:
            return tls.new_ssl_context([self.kbs_cert] if self.kbs_cert else [])
        except ConfigError as err:
            raise ConfigError(err.message, location=Location(file=self.source, field="kbc.kbs_cert")) from None


class CcKbc:
    """Fetches and decrypts KBS resources; one per resolver (it caches the token)."""

    name = CC_KBC

    def __init__(self, settings: KbsSettings, token_provider: TokenProvider) -> None:
        self.settings = settings
        self._provider = token_provider
        self._credentials: tuple[KbsToken, TeeKey] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._cache: dict[str, tuple[float, bytes]] = {}
        # One token refresh at a time, per event loop (a lock belongs to one loop).
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    async def get(self, resource: KbsResourceUri, uri: str) -> bytes:
        cached = self._cache.get(uri)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        data = await self._fetch(resource, uri)
        if self.settings.cache_ttl > 0:
            self._cache[uri] = (time.monotonic() + self.settings.cache_ttl, data)
        return data

    async def _fetch(self, resource: KbsResourceUri, uri: str) -> bytes:
        url = URL(self.settings.url + resource.request_path)
        details: list[str] = []
        for attempt in range(1, GET_ATTEMPTS + 1):
            token, key = await self._token_for(uri, refresh_after=None)
            status, body = await self._get(url, token, uri)
            if status == 200:
                return decrypt_response(body, key, uri)
            if status != 401:
                raise _status_error(status, body, uri, url)
            details.append(_detail(body))
            log.info("KBS answered 401 for %s (attempt %d of %d); getting a new token",
                     uri, attempt, GET_ATTEMPTS)
            if attempt < GET_ATTEMPTS:
                await self._token_for(uri, refresh_after=token)
        said = next((d for d in reversed(details) if d), "")
        raise AuthError(
            f"KBS resource {uri} not found or not released to this guest: the KBS at "
            f"{_origin(url)} answered 401 to {GET_ATTEMPTS} requests, each with a new token"
            + (f"; it said: {said}" if said else ""),
            hint="check that the resource exists in the KBS and that its resource policy "
            "releases it to this guest's attestation (Trustee answers 401 for both)",
        )

    async def _token_for(self, uri: str, *, refresh_after: KbsToken | None) -> tuple[KbsToken, TeeKey]:
        """:meth:`_token`, with a failure naming the resource it was for."""
        try:
            return await self._token(refresh_after=refresh_after)
        except GuestpullError as err:
            raise _for_uri(err, uri) from None

    async def _token(self, *, refresh_after: KbsToken | None) -> tuple[KbsToken, TeeKey]:
        """The cached token, or a new one if there is none, it expired, or it is ``refresh_after``."""
        async with self._lock():
            current = self._credentials
            stale = current is None or current[0].expired() or current[0] is refresh_after
            if stale:
                self._credentials = current = await self._provider.get_token()
            assert current is not None
            return current

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def _get(self, url: URL, token: KbsToken, uri: str) -> tuple[int, bytes]:
        """One GET (with transient retries): the status and the bounded body."""
        retries = self.settings.transient_retries
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                async with asyncio.timeout(self.settings.timeout):
                    status, body = await self._get_once(url, token, uri, read=last)
                if status not in _RETRY_STATUSES or last:
                    return status, body
            except TimeoutError:
                raise PullTimeoutError(
                    f"the KBS at {_origin(url)} did not answer {uri} within "
                    f"{self.settings.timeout:g} s") from None
            except httpclient.HTTPError as err:
                failure = await _connection_error(err, url)
                if last or isinstance(failure, TLSError):
                    raise failure from None
            await asyncio.sleep(self.settings.retry_delay * (attempt + 1))
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _get_once(self, url: URL, token: KbsToken, uri: str, *, read: bool) -> tuple[int, bytes]:
        """The status, and the body unless it is a transient failure that will be retried.

        Redirects are not followed: they would carry the token elsewhere.
        """
        async with _session(self.settings.timeout) as session:
            response = await session.request(
                "GET", url, headers={"Authorization": f"Bearer {token.text}"},
                ssl_context=self._ssl_for(url))
            try:
                if response.status in _RETRY_STATUSES and not read:
                    return response.status, b""
                return response.status, await self._read(response, uri)
            finally:
                response.release()

    def _ssl_for(self, url: URL) -> ssl.SSLContext | None:
        if url.scheme != "https":
            return None
        if self._ssl is None:
            self._ssl = self.settings.ssl_context()
        return self._ssl

    async def _read(self, response: httpclient.Response, uri: str) -> bytes:
        limit = self.settings.max_response
        length = response.content_length
        if length is not None and length > limit:
            raise UnsupportedError(
                f"the KBS response for {uri} is {length} bytes; resources are limited to "
                f"{_size(limit)}")
        body = bytearray()
        # read(n) returns what has arrived, up to n: loop until EOF or one byte past the limit.
        while len(body) <= limit:
            chunk = await response.read(limit + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > limit:
            raise UnsupportedError(
                f"the KBS response for {uri} is larger than {_size(limit)}, the limit for resources")
        return bytes(body)


def _for_uri(err: GuestpullError, uri: str) -> GuestpullError:
    """The same error (class, location, hint) with "cannot fetch <uri>: " in front."""
    named = copy.copy(err)
    named.message = f"cannot fetch {uri}: {err.message}"
    named.args = (named.message,)
    return named


def _session(timeout: float) -> httpclient.Session:
    # A session per request: the resolver may be used from several event loops (the sync
    # adapter runs one per call), and a session belongs to one.  No proxy, no cookies.
    return httpclient.Session(httpclient.SessionSettings(
        connect_timeout=timeout, read_timeout=timeout, user_agent=f"guestpull/{__version__} cc_kbc"))


async def _connection_error(err: httpclient.HTTPError, url: URL) -> GuestpullError:
    host = f"{url.host}:{url.port}"  # as the TLS messages name a server
    if isinstance(err, httpclient.TLSFailed):
        cause = err.ssl_error
        if isinstance(cause, ssl.SSLCertVerificationError) and url.host:
            peer = await tls.fetch_peer_certificate(url.host, url.port or 443)
            explained = tls.verification_error(cause, host, peer)
            return TLSError(f"{explained.message} (the KBS)", hint=_KBS_CERT_HINT)
        if tls.looks_like_plain_http(cause):
            return TLSError(f"TLS: the KBS at {host} speaks plain HTTP, not HTTPS",
                            hint="use an http:// [kbc] url only if that is really intended")
        return TLSError(f"TLS handshake with the KBS at {host} failed: {cause}")
    if isinstance(err, httpclient.ConnectFailed):
        return NetworkError(f"cannot connect to the KBS at {_origin(url)}: {err}",
                            hint="check cdh.toml [kbc] url")
    return NetworkError(f"the connection to the KBS at {_origin(url)} failed: {type(err).__name__}: {err}")


def _status_error(status: int, body: bytes, uri: str, url: URL) -> GuestpullError:
    detail = _detail(body)
    said = f"; it said: {detail}" if detail else ""
    if status == 404:
        return NotFoundError(
            f"KBS resource {uri} not found: the KBS at {_origin(url)} answered 404{said}",
            hint="Trustee answers 404 for an unknown plugin or a malformed path")
    return HTTPStatusError(
        f"the KBS at {_origin(url)} answered HTTP {status} for {uri}{said}", status=status)


def _detail(body: bytes) -> str:
    """The ``detail`` of a KBS error body ``{"type", "detail"}``, printable and truncated."""
    try:
        doc = load_json(body, "KBS error")
    except ConfigError:
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if not isinstance(detail, str):
        return ""
    return clip(printable(detail))


def _origin(url: URL) -> str:
    return str(url.origin())


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and limit % (1 << 20) == 0 else f"{limit} bytes"
