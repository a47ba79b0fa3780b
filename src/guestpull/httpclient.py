"""HTTP/1.1 on asyncio: the client the registry and KBS paths talk through.

Just what a pull needs — GET and HEAD, keep-alive connections, ``http://`` and ``https://``
proxies — with every limit set here: the response head (status line, header lines, header
count, ``1xx`` responses), body framing (``Content-Length``, chunked, close-delimited) and
each read's stall time.  What to send where, redirects, retries and messages stay with the
callers (distribution/transport.py, kbs/client.py).

Why not aiohttp: importing it took ~70 ms of a ~0.3 s small-image pull (issue 15), most of it
for a server, a cookie jar, multipart and tracing the pull never uses.  The parser here is
small enough to read whole, and every failure leaves as one of the :class:`HTTPError`
classes below (or ``TimeoutError`` for a stall), never as a half-parsed response.

Bytes are kept as they arrive (no copy into a shared buffer) and handed on in those pieces:
a blob crosses this module without being copied.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from guestpull.url import URL

#: Status line and each header line, as nginx's large_client_header_buffers (8 KiB).
MAX_LINE = 8190
#: Header fields per response (and trailer fields per chunked body).
MAX_HEADERS = 128
#: A connection stops reading from the socket while this much is buffered and unread.
HIGH_WATER = 1 << 20
#: A kept-alive connection unused this long is closed, not reused (Go's default is 90 s; a
#: registry or load balancer may have dropped it already, and a long-lived service should
#: not hold sockets to registries it no longer talks to).
IDLE_TIMEOUT = 60.0
_NO_BODY_STATUSES = frozenset({204, 304})
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FORBIDDEN_IN_VALUES = frozenset(b"\r\n\x00")


# --- errors -------------------------------------------------------------------------------


class HTTPError(Exception):
    """Something went wrong below HTTP semantics; the callers turn it into a GuestpullError."""


class InvalidRequest(HTTPError, ValueError):
    """The request cannot be sent as asked (a header value holding CR/LF, a bad URL)."""


class ConnectFailed(HTTPError):
    """No TCP connection to the server (or to the proxy, when ``proxy`` is set)."""

    def __init__(self, os_error: OSError, *, proxy: bool = False) -> None:
        super().__init__(os_error.strerror or str(os_error))
        self.os_error = os_error
        self.proxy = proxy


class ProxyRefused(HTTPError):
    """The proxy answered ``CONNECT`` with something other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the proxy answered CONNECT with HTTP {status}")
        self.status = status


class TLSFailed(HTTPError):
    """The TLS handshake failed: ``ssl_error`` says why (a ``SSLCertVerificationError`` when
    the certificate did not verify); ``proxy`` when it was the handshake with an https proxy."""

    def __init__(self, ssl_error: ssl.SSLError, *, proxy: bool = False) -> None:
        super().__init__(str(ssl_error))
        self.ssl_error = ssl_error
        self.proxy = proxy


class MalformedResponse(HTTPError):
    """The status line or a header is not HTTP/1.1, or breaks a limit."""


class Disconnected(HTTPError):
    """The server closed the connection (or it broke) before a whole response head arrived.

    ``cause``: the OSError it broke with, if any (an ``ssl.SSLError`` carries a TLS alert);
    ``before_response``: not one byte of a response had arrived.
    """

    def __init__(self, message: str, cause: BaseException | None = None, *,
                 before_response: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.before_response = before_response


class BodyError(HTTPError):
    """The body broke off before its end, or its framing (chunks) is malformed."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


# --- headers ------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Response headers: names case-insensitive; ``get`` gives a field's first value."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self.fields = list(fields)
        self._first: dict[str, str] = {}
        for name, value in self.fields:
            self._first.setdefault(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [value for field_name, value in self.fields if field_name.lower() == lower]

    def __repr__(self) -> str:
        return f"Headers({self.fields!r})"


# --- one connection's received bytes ------------------------------------------------------


class _Received(asyncio.Protocol):
    """The bytes one connection received, in the pieces they arrived in, with flow control."""

    def __init__(self, read_timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._read_timeout = read_timeout

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        if self._size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # what the connection reads

    @property
    def idle_clean(self) -> bool:
        """Nothing unread, no EOF, no error: fit to carry the next request."""
        return not self._chunks and not self._eof and self._error is None

    @property
    def buffered(self) -> bool:
        return bool(self._chunks)

    async def chunk(self, limit: int) -> bytes:
        """The next received bytes, at most ``limit``; ``b""`` at EOF."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait()
        data = self._chunks.popleft()
        if len(data) > limit:
            self._chunks.appendleft(data[limit:])
            data = data[:limit]
        self._size -= len(data)
        self._resume_if_drained()
        return data

    def _resume_if_drained(self) -> None:
        if self._paused and self._size <= HIGH_WATER // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    @property
    def buffered_size(self) -> int:
        return self._size

    def skip(self, count: int) -> None:
        """Drop the next ``count`` received bytes, all of which have arrived."""
        while count:
            data = self._chunks.popleft()
            if len(data) > count:
                self._chunks.appendleft(data[count:])
                data = data[:count]
            count -= len(data)
            self._size -= len(data)
        self._resume_if_drained()

    def unread(self, data: bytes) -> None:
        if data:
            self._chunks.appendleft(data)
            self._size += len(data)

    async def line(self, limit: int, what: str) -> bytes:
        """One line ending in LF (CRLF or a bare LF), without its ending; at most ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self.chunk(limit + 2 - size)
            if not data:
                raise _Eof(b"".join(parts))
            end = data.find(b"\n")
            if end >= 0:
                self.unread(data[end + 1 :])
                parts.append(data[:end])
                line = b"".join(parts)
                line = line[:-1] if line.endswith(b"\r") else line
                if len(line) > limit:
                    raise MalformedResponse(f"{what} longer than {limit} bytes")
                return line
            parts.append(data)
            size += len(data)
            if size > limit + 1:
                raise MalformedResponse(f"{what} longer than {limit} bytes")

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._waiter
        finally:
            self._waiter = None


class _Eof(Exception):
    """The connection ended inside a line; ``partial`` is what arrived of it."""

    def __init__(self, partial: bytes) -> None:
        super().__init__()
        self.partial = partial


# --- connections --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a request's connection goes: the server, and the proxy in between if any."""

    scheme: str
    host: str
    port: int
    tls: ssl.SSLContext | None
    proxy: URL | None = None
    proxy_ssl: ssl.SSLContext | None = None

    @property
    def tunnel(self) -> bool:
        """HTTPS through a proxy: a ``CONNECT`` tunnel, TLS to the server inside it."""
        return self.proxy is not None and self.scheme == "https"

    @property
    def key(self) -> tuple[object, ...]:
        # Contexts by identity: a connection verified with one context is not lent to another.
        return (self.scheme, self.host, self.port, str(self.proxy) if self.proxy else None,
                id(self.tls), id(self.proxy_ssl))


@dataclass(eq=False)
class _Connection:
    route_key: tuple[object, ...]
    received: _Received
    reused: bool = False
    #: When it was last put back in the pool (``time.monotonic()``).
    idle_since: float = 0.0

    @property
    def transport(self) -> asyncio.Transport:
        assert self.received.transport is not None
        return self.received.transport

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        # Registries keep nothing per connection: no TLS close_notify to wait for.
        transport = self.received.transport
        if transport is not None:
            transport.abort()


# --- responses ----------------------------------------------------------------------------


@dataclass(eq=False)
class Response:
    """A response whose head has arrived; read its body with :meth:`read` or :meth:`chunks`."""

    url: URL
    status: int
    reason: str
    version: tuple[int, int]
    headers: Headers
    #: The ``Content-Length`` framing the body, None for a chunked or close-delimited one.
    content_length: int | None
    _body: _Body
    _done: Callable[[Response, bool], None] = field(repr=False)
    _released: bool = field(default=False, repr=False)

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (what has arrived); ``b""`` at its end."""
        return await self._body.read(limit)

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in, each at most ``limit`` bytes."""
        while chunk := await self._body.read(limit):
            yield chunk

    def release(self) -> None:
        """Done with this response: its connection is kept for the next request if the body
        was read to its end (or the rest of it has already arrived: a ``401`` or ``GET /v2/``
        body nobody reads), closed otherwise.  Safe to call twice."""
        if not self._released:
            self._released = True
            self._done(self, self._body.finished or self._body.skip_arrived())


class _Body:
    """The body of one response, as its framing delimits it."""

    def __init__(self, received: _Received) -> None:
        self.received = received
        self.finished = False

    async def read(self, limit: int) -> bytes:
        raise NotImplementedError

    def skip_arrived(self) -> bool:
        """Discard the rest of the body if all of it has arrived; whether the body is done."""
        return self.finished


class _EmptyBody(_Body):
    def __init__(self, received: _Received) -> None:
        super().__init__(received)
        self.finished = True

    async def read(self, limit: int) -> bytes:
        return b""


class _LengthBody(_Body):
    def __init__(self, received: _Received, length: int) -> None:
        super().__init__(received)
        self.length = length
        self.left = length
        self.finished = length == 0

    async def read(self, limit: int) -> bytes:
        if self.left == 0:
            return b""
        data = await _body_chunk(self.received, min(limit, self.left))
        if not data:
            raise BodyError(f"the connection closed after {self.length - self.left} of the "
                            f"{self.length} bytes announced")
        self.left -= len(data)
        self.finished = self.left == 0
        return data

    def skip_arrived(self) -> bool:
        if not self.finished and self.received.buffered_size >= self.left:
            self.received.skip(self.left)
            self.left = 0
            self.finished = True
        return self.finished


class _UntilCloseBody(_Body):
    async def read(self, limit: int) -> bytes:
        data = await _body_chunk(self.received, limit)
        self.finished = not data
        return data


class _ChunkedBody(_Body):
    def __init__(self, received: _Received) -> None:
        super().__init__(received)
        self.left = 0  # of the current chunk

    async def read(self, limit: int) -> bytes:
        if self.finished:
            return b""
        if self.left == 0:
            self.left = await self._next_size()
            if self.left == 0:
                await self._trailers()
                self.finished = True
                return b""
        data = await _body_chunk(self.received, min(limit, self.left))
        if not data:
            raise BodyError("the connection closed inside a chunk")
        self.left -= len(data)
        if self.left == 0 and await self._line("chunk end"):
            raise BodyError("malformed chunked body: a chunk is longer than its size", malformed=True)
        return data

    async def _next_size(self) -> int:
        line = await self._line("chunk size line")
        digits = line.split(b";", 1)[0].strip()
        if not digits or len(digits) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in digits):
            raise BodyError(f"malformed chunked body: chunk size {_shown(digits)}", malformed=True)
        return int(digits, 16)

    async def _trailers(self) -> None:
        for _ in range(MAX_HEADERS + 1):
            if not await self._line("trailer line"):
                return
        raise BodyError(f"malformed chunked body: more than {MAX_HEADERS} trailer fields", malformed=True)

    async def _line(self, what: str) -> bytes:
        try:
            return await self.received.line(MAX_LINE, what)
        except _Eof:
            raise BodyError(f"the connection closed inside the chunked body ({what})") from None
        except MalformedResponse as err:
            raise BodyError(f"malformed chunked body: {err}", malformed=True) from None
        except TimeoutError:
            raise
        except OSError as err:
            raise BodyError(f"the connection broke: {_error_text(err)}") from None


async def _body_chunk(received: _Received, limit: int) -> bytes:
    try:
        return await received.chunk(limit)
    except TimeoutError:
        raise
    except OSError as err:
        raise BodyError(f"the connection broke: {_error_text(err)}") from None


# --- the session --------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionSettings:
    connect_timeout: float = 30.0
    #: A stall: no byte at all for this long while a response is awaited or read.
    read_timeout: float = 120.0
    #: Connections in use at once; more requests wait for one.
    connection_limit: int = 16
    user_agent: str = "guestpull"


class Session:
    """Keep-alive connections for one pull (or one service), and the requests sent on them."""

    def __init__(self, settings: SessionSettings | None = None) -> None:
        self.settings = settings or SessionSettings()
        self._idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._in_use: set[_Connection] = set()
        self._slots = asyncio.Semaphore(self.settings.connection_limit)
        self._closed = False

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in list(self._in_use):
            connection.close()
        await asyncio.sleep(0)  # let the transports report connection_lost

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy: URL | None = None,
        proxy_ssl: ssl.SSLContext | None = None,
    ) -> Response:
        """Send one request and return once its response head arrived (``1xx`` skipped).

        ``ssl_context`` verifies an ``https`` server; ``proxy_ssl`` an ``https://`` proxy.
        The caller must :meth:`Response.release` the response.
        """
        if self._closed:
            raise RuntimeError("the HTTP session is closed")
        route = _route(url, ssl_context, proxy, proxy_ssl)
        head = self._request_head(method, url, route, headers or {})
        await self._slots.acquire()
        try:
            return await self._exchange(method, url, route, head)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, method: str, url: URL, route: Route, head: bytes) -> Response:
        # A kept-alive connection the server closed meanwhile fails before any byte of the
        # response: a GET or HEAD is then sent again once, on a new connection.
        connection = self._take_idle(route)
        if connection is not None:
            try:
                return await self._send(connection, method, url, head)
            except Disconnected as err:
                if not err.before_response:
                    raise
        connection = await self._connect(route)
        return await self._send(connection, method, url, head)

    async def _send(self, connection: _Connection, method: str, url: URL, head: bytes) -> Response:
        self._in_use.add(connection)
        try:
            connection.send(head)
            return await self._response(connection, method, url)
        except BaseException:
            self._in_use.discard(connection)
            connection.close()
            raise

    def _take_idle(self, route: Route) -> _Connection | None:
        self._close_stale()
        connections = self._idle.get(route.key)
        while connections:
            connection = connections.pop()
            if connection.received.idle_clean:
                connection.reused = True
                return connection
            connection.close()
        return None

    def _keep_idle(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.route_key, []).append(connection)

    def _close_stale(self) -> None:
        """Close the pooled connections idle for longer than IDLE_TIMEOUT, for every route."""
        oldest = time.monotonic() - IDLE_TIMEOUT
        for key, connections in list(self._idle.items()):
            fresh = [c for c in connections if c.idle_since >= oldest]
            for connection in connections:
                if connection.idle_since < oldest:
                    connection.close()
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    def _request_head(self, method: str, url: URL, route: Route, headers: Mapping[str, str]) -> bytes:
        if route.proxy is not None and not route.tunnel:
            target = str(url.without_userinfo().without_fragment())  # absolute-form, to the proxy
        else:
            target = url.path_qs
        lines = [f"{method} {target} HTTP/1.1", f"Host: {url.authority}",
                 f"User-Agent: {self.settings.user_agent}", "Accept-Encoding: identity"]
        fields = dict(headers)
        if route.proxy is not None and not route.tunnel and (auth := _proxy_authorization(route.proxy)):
            fields["Proxy-Authorization"] = auth
        for name, value in fields.items():
            _check_field(name, value)
            lines.append(f"{name}: {value}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequest("a header or the URL holds a character HTTP cannot carry") from None

    # --- connecting ---

    async def _connect(self, route: Route) -> _Connection:
        received = _Received(self.settings.read_timeout)
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self._open(route, received)
        except TimeoutError:
            _abort(received)
            raise TimeoutError(f"connecting to {route.host}:{route.port} took more than "
                               f"{self.settings.connect_timeout:g} s") from None
        except BaseException:
            _abort(received)
            raise
        return _Connection(route.key, received)

    async def _open(self, route: Route, received: _Received) -> None:
        loop = asyncio.get_running_loop()
        if route.proxy is None:
            await _create_connection(loop, received, route.host, route.port, route.tls, proxy=False)
            return
        proxy_host = route.proxy.host or ""
        proxy_port = route.proxy.port or (443 if route.proxy.scheme == "https" else 80)
        await _create_connection(loop, received, proxy_host, proxy_port, route.proxy_ssl, proxy=True)
        if route.tunnel:
            await self._connect_tunnel(route, received)
            assert received.transport is not None and route.tls is not None
            try:
                received.transport = await loop.start_tls(
                    received.transport, received, route.tls, server_hostname=route.host)
            except ssl.SSLError as err:
                raise TLSFailed(err) from None
            except OSError as err:
                raise ConnectFailed(err) from None

    async def _connect_tunnel(self, route: Route, received: _Received) -> None:
        assert route.proxy is not None and received.transport is not None
        authority = _authority(route.host, route.port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}",
                 f"User-Agent: {self.settings.user_agent}"]
        if auth := _proxy_authorization(route.proxy):
            lines.append(f"Proxy-Authorization: {auth}")
        received.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, _, _, _ = await _read_head(received)
        if not 200 <= status <= 299:
            raise ProxyRefused(status)
        if received.buffered:
            raise MalformedResponse("the proxy sent bytes after its CONNECT answer")

    # --- the response ---

    async def _response(self, connection: _Connection, method: str, url: URL) -> Response:
        received = connection.received
        status, reason, version, headers = await _read_head(received, reused=connection.reused)
        framing = _framing(method, status, headers)
        keep = version == (1, 1) and not _has_token(headers, "connection", "close")
        body: _Body
        if framing is None:
            body = _EmptyBody(received)
        elif framing == "chunked":
            body = _ChunkedBody(received)
        elif isinstance(framing, int):
            body = _LengthBody(received, framing)
        else:
            body, keep = _UntilCloseBody(received), False

        def done(response: Response, finished: bool) -> None:
            self._in_use.discard(connection)
            self._slots.release()
            if keep and finished and not self._closed and received.idle_clean:
                self._keep_idle(connection)
            else:
                connection.close()

        return Response(url, status, reason, version, headers,
                        framing if isinstance(framing, int) else None, body, done)


def _route(url: URL, ssl_context: ssl.SSLContext | None, proxy: URL | None,
           proxy_ssl: ssl.SSLContext | None) -> Route:
    if url.scheme not in ("http", "https") or not url.host or url.port is None:
        raise InvalidRequest(f"cannot send a request to {url.scheme}:// URLs without a host")
    if url.scheme == "https" and ssl_context is None:
        raise InvalidRequest("an https request needs a TLS context")
    if proxy is not None:
        if proxy.scheme not in ("http", "https") or not proxy.host:
            raise InvalidRequest("a proxy must be an http:// or https:// URL with a host")
        if proxy.scheme == "https" and proxy_ssl is None:
            raise InvalidRequest("an https:// proxy needs a TLS context")
    return Route(url.scheme, url.host, url.port, ssl_context if url.scheme == "https" else None,
                 proxy, proxy_ssl if proxy is not None and proxy.scheme == "https" else None)


async def _create_connection(
    loop: asyncio.AbstractEventLoop, received: _Received, host: str, port: int,
    context: ssl.SSLContext | None, *, proxy: bool,
) -> None:
    try:
        await loop.create_connection(
            lambda: received, host, port, ssl=context,
            server_hostname=host if context is not None else None,
            happy_eyeballs_delay=0.25,
        )
    except ssl.SSLError as err:
        raise TLSFailed(err, proxy=proxy) from None
    except OSError as err:
        raise ConnectFailed(err, proxy=proxy) from None


def _abort(received: _Received) -> None:
    if received.transport is not None:
        received.transport.abort()


async def _read_head(received: _Received, *, reused: bool = False) -> tuple[int, str, tuple[int, int], Headers]:
    """Status, reason, version and headers of the next final (non-1xx) response."""
    while True:
        status, reason, version = _status_line(await _head_line(received, "status line", first=True, reused=reused))
        reused = False
        fields: list[tuple[str, str]] = []
        while line := await _head_line(received, "header line"):
            if len(fields) == MAX_HEADERS:
                raise MalformedResponse(f"more than {MAX_HEADERS} header fields")
            fields.append(_header_field(line))
        if status == 101:
            raise MalformedResponse("101 Switching Protocols to a request that asked for no upgrade")
        if status >= 200:
            return status, reason, version, Headers(fields)


async def _head_line(received: _Received, what: str, *, first: bool = False, reused: bool = False) -> bytes:
    try:
        return await received.line(MAX_LINE, what)
    except _Eof as eof:
        if first and not eof.partial:
            raise Disconnected("the server closed the connection without a response",
                               before_response=True) from None
        raise Disconnected("the server closed the connection inside the response head") from None
    except TimeoutError:
        raise
    except OSError as err:
        # A reset on a kept-alive connection, before any answer: the server had closed it.
        raise Disconnected(f"the connection broke: {_error_text(err)}", err,
                           before_response=first and reused) from None


def _status_line(line: bytes) -> tuple[int, str, tuple[int, int]]:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() or code[0] == 0x30:
        raise MalformedResponse(f"bad status line {_shown(line)}")
    if any(c < 0x20 and c != 0x09 or c == 0x7F for c in reason):
        raise MalformedResponse(f"bad status line {_shown(line)}")
    return int(code), reason.decode("latin-1"), (1, version[-1] - 0x30)


def _header_field(line: bytes) -> tuple[str, str]:
    name, colon, value = line.partition(b":")
    if not colon or not name or any(c not in _TOKEN_CHARS for c in name):
        # Also an obs-fold continuation (a line starting with whitespace): refused, as RFC 9112 allows.
        raise MalformedResponse(f"bad header line {_shown(line)}")
    value = value.strip(b" \t")
    if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
        raise MalformedResponse(f"control character in header {_shown(name)}")
    # UTF-8 where it is (a Location or realm with non-ASCII bytes keeps them when re-quoted);
    # anything else survives as surrogates, to be refused by whoever reads the value.
    return name.decode("ascii"), value.decode("utf-8", "surrogateescape")


def _framing(method: str, status: int, headers: Headers) -> int | str | None:
    """How the body ends: None (no body), a length, ``"chunked"`` or ``"close"`` (RFC 9112 §6.3)."""
    if method == "HEAD" or status in _NO_BODY_STATUSES:
        return None
    codings = [c.strip().lower() for v in headers.get_all("Transfer-Encoding") for c in v.split(",")]
    lengths = {v.strip() for value in headers.get_all("Content-Length") for v in value.split(",")}
    if codings:
        # Both framings at once is how responses are smuggled: refused, not guessed.
        if lengths:
            raise MalformedResponse("both Transfer-Encoding and Content-Length")
        if codings != ["chunked"]:
            raise MalformedResponse(f"unsupported Transfer-Encoding {_shown(', '.join(codings).encode())}")
        return "chunked"
    if not lengths:
        return "close"
    if len(lengths) > 1:
        raise MalformedResponse("conflicting Content-Length values")
    (length,) = lengths
    if not length.isascii() or not length.isdigit() or len(length) > 18:
        raise MalformedResponse(f"bad Content-Length {_shown(length.encode())}")
    return int(length)


def _has_token(headers: Headers, name: str, token: str) -> bool:
    return any(t.strip().lower() == token for v in headers.get_all(name) for t in v.split(","))


def _check_field(name: str, value: str) -> None:
    if not name or any(ord(c) > 127 or ord(c) not in _TOKEN_CHARS for c in name):
        raise InvalidRequest(f"invalid header name {name!r}")
    if any(ord(c) in _FORBIDDEN_IN_VALUES for c in value):
        raise InvalidRequest(f"the value of header {name} holds CR, LF or NUL")


def _proxy_authorization(proxy: URL) -> str | None:
    if proxy.user is None:
        return None
    credentials = f"{unquote(proxy.user)}:{unquote(proxy.password or '')}"
    return "Basic " + base64.b64encode(credentials.encode()).decode("ascii")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shown(data: bytes, limit: int = 60) -> str:
    text = repr(data[:limit])[2:-1]
    return f"'{text}…'" if len(data) > limit else f"'{text}'"


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"
