"""guestpull.httpclient against scripted servers on 127.0.0.1: framing, limits, keep-alive,
proxies and failures, each answered byte by byte as a server (or an attacker) would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from guestpull.url import URL

from guestpull import httpclient
from guestpull.httpclient import Session, SessionSettings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server whose every connection runs ``handler``; records request heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(reader, writer)
        writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


@contextlib.asynccontextmanager
async def serving(handler: Callable[[Scripted, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                  ) -> AsyncIterator[tuple[Scripted, URL]]:
    scripted = Scripted(lambda r, w: handler(scripted, r, w))
    server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield scripted, URL(f"http://127.0.0.1:{port}/v2/")
        server.close()


def answer(*responses: bytes, close: bool = True):
    """A handler reading one request per response and sending it."""
    async def handle(s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await s.head(reader)
            writer.write(response)
            await writer.drain()
        if not close:
            await reader.read()  # until the client hangs up
    return handle


async def get_body(url: URL, session: Session | None = None, **kwargs) -> tuple[httpclient.Response, bytes]:
    own = session is None
    session = session or Session(SessionSettings(read_timeout=5))
    try:
        response = await session.request("GET", url, **kwargs)
        try:
            parts = [chunk async for chunk in response.chunks(1 << 20)]
        finally:
            response.release()
        return response, b"".join(parts)
    finally:
        if own:
            await session.close()


async def test_content_length_body_and_request_head() -> None:
    async with serving(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")) as (s, url):
        response, body = await get_body(URL(f"{url}x%20y?q=a%2Fb"), headers={"Accept": "x/y"})
    assert (response.status, response.reason, body, response.content_length) == (200, "OK", b"hello", 5)
    assert response.headers["x-A"] == "1" and response.headers.get_all("X-A") == ["1", "2"]
    head = s.heads[0].decode()
    assert head.startswith("GET /v2/x%20y?q=a%2Fb HTTP/1.1\r\n")  # sent as written
    assert f"Host: 127.0.0.1:{url.port}\r\n" in head and "Accept: x/y\r\n" in head
    assert "Accept-Encoding: identity\r\n" in head  # the bytes hashed are the bytes on the wire


async def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with serving(answer(raw)) as (_, url):
        response, body = await get_body(url)
    assert body == b"hello world" and response.content_length is None


async def test_close_delimited_body() -> None:
    async with serving(answer(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")) as (_, url):
        _, body = await get_body(url)
    assert body == b"until the end"


async def test_informational_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    async with serving(answer(raw)) as (_, url):
        response, body = await get_body(url)
    assert (response.status, body) == (204, b"")


async def test_keep_alive_reuses_the_connection() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answer(ok, ok, ok, close=False)) as (s, url):
        async with Session() as session:
            bodies = [(await get_body(url, session))[1] for _ in range(3)]
    assert bodies == [b"ok"] * 3 and s.connections == 1


async def test_connection_close_and_unread_bodies_are_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    async with serving(answer(closing)) as (s, url):
        async with Session() as session:
            for _ in range(2):
                assert (await get_body(url, session))[1] == b"ok"
            response = await session.request("GET", url)
            response.release()  # body never read: the connection cannot carry another request
            assert (await get_body(url, session))[1] == b"ok"
    assert s.connections == 4


async def test_bytes_after_a_body_make_the_connection_unusable() -> None:
    async with serving(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE",
                              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=False)) as (s, url):
        async with Session() as session:
            assert (await get_body(url, session))[1] == b"ok"
            await asyncio.sleep(0.05)
            assert (await get_body(url, session))[1] == b"ok"
    assert s.connections == 2


async def test_a_kept_connection_the_server_closed_is_replaced_once() -> None:
    async def handle(s: Scripted, reader, writer) -> None:
        await s.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if s.connections == 1:
            await reader.readuntil(b"\r\n\r\n")  # the second request on it: hang up unanswered
            return
        await reader.read()

    async with serving(handle) as (s, url):
        async with Session() as session:
            assert (await get_body(url, session))[1] == b"ok"
            assert (await get_body(url, session))[1] == b"ok"
    assert s.connections == 2


@pytest.mark.parametrize(("raw", "error", "words"), [
    (b"HTTP/1.1 2x0 WHAT\r\n\r\n", httpclient.MalformedResponse, "bad status line"),
    (b"ICY 200 OK\r\n\r\n", httpclient.MalformedResponse, "bad status line"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000 + b"\r\n\r\n", httpclient.MalformedResponse, "longer than"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 129 + b"\r\n", httpclient.MalformedResponse, "more than 128"),
    (b"HTTP/1.1 200 OK\r\nBad Name: y\r\n\r\n", httpclient.MalformedResponse, "bad header line"),
    (b"HTTP/1.1 200 OK\r\n folded: y\r\n\r\n", httpclient.MalformedResponse, "bad header line"),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", httpclient.MalformedResponse, "control character"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
     httpclient.MalformedResponse, "both"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", httpclient.MalformedResponse,
     "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", httpclient.MalformedResponse, "bad content-length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", httpclient.MalformedResponse, "unsupported"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", httpclient.MalformedResponse, "101"),
    (b"HTTP/1.1 200 OK\r\nContent-", httpclient.Disconnected, "inside the response head"),
    (b"", httpclient.Disconnected, "without a response"),
])
async def test_malformed_heads_are_refused(raw: bytes, error: type[Exception], words: str) -> None:
    async with serving(answer(raw)) as (_, url), Session() as session:
        with pytest.raises(error) as info:
            await session.request("GET", url)
    assert words in str(info.value).lower()


@pytest.mark.parametrize(("raw", "malformed", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", False, "after 5 of the 10 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True, "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 16 + b"\r\n", True, "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", True, "longer than its size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", False, "inside a chunk"),
])
async def test_broken_bodies_are_body_errors(raw: bytes, malformed: bool, words: str) -> None:
    async with serving(answer(raw)) as (_, url):
        with pytest.raises(httpclient.BodyError) as info:
            await get_body(url)
    assert info.value.malformed is malformed and words in str(info.value)


async def test_a_stalled_response_times_out() -> None:
    async def stall(s: Scripted, reader, writer) -> None:
        await s.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(5)

    async with serving(stall) as (_, url), Session(SessionSettings(read_timeout=0.2)) as session:
        response = await session.request("GET", url)
        assert await response.read(100) == b"abc"
        with pytest.raises(TimeoutError):
            await response.read(100)
        response.release()


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00"])
async def test_header_injection_is_refused_before_sending(value: str) -> None:
    async with serving(answer(b"HTTP/1.1 200 OK\r\n\r\n")) as (s, url), Session() as session:
        with pytest.raises(httpclient.InvalidRequest):
            await session.request("GET", url, headers={"Authorization": value})
    assert s.connections == 0


async def test_connection_refused_is_connect_failed() -> None:
    async with serving(answer()) as (_, url):
        pass  # the port is free again
    async with Session() as session:
        with pytest.raises(httpclient.ConnectFailed) as info:
            await session.request("GET", url)
    assert not info.value.proxy


async def test_http_through_a_proxy_uses_absolute_form_and_proxy_credentials() -> None:
    async with serving(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as (proxy, proxy_url):
        proxy_with_user = URL(f"http://u%20s:p%3Aw@{proxy_url.authority}")
        _, body = await get_body(URL("http://registry.invalid:5000/v2/x?y=1"), proxy=proxy_with_user)
    head = proxy.heads[0].decode()
    assert body == b"ok" and head.startswith("GET http://registry.invalid:5000/v2/x?y=1 HTTP/1.1\r\n")
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'u s:p:w').decode()}\r\n" in head
    assert "Host: registry.invalid:5000\r\n" in head


async def test_https_through_a_proxy_tunnels_and_a_refusal_is_typed() -> None:
    async with serving(answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")) as (proxy, proxy_url):
        async with Session() as session:
            with pytest.raises(httpclient.ProxyRefused) as info:
                import ssl
                await session.request("GET", URL("https://registry.invalid/v2/"), proxy=proxy_url,
                                      ssl_context=ssl.create_default_context())
    assert info.value.status == 403
    assert proxy.heads[0].startswith(b"CONNECT registry.invalid:443 HTTP/1.1\r\nHost: registry.invalid:443\r\n")


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answer(ok, ok, ok, close=False)) as (s, url):
        async with Session() as session:
            assert (await get_body(url, session))[1] == b"ok"
            assert (await get_body(url, session))[1] == b"ok"  # reused: fresh enough
            monkeypatch.setattr(httpclient, "IDLE_TIMEOUT", 0.0)
            await asyncio.sleep(0.01)
            assert (await get_body(url, session))[1] == b"ok"  # stale: a new connection
    assert s.connections == 2


async def test_an_unread_body_that_has_arrived_does_not_cost_the_connection() -> None:
    # GET /v2/ and 401 answers carry small bodies nobody reads: the connection stays usable.
    small = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answer(small, ok, close=False)) as (s, url):
        async with Session() as session:
            response = await session.request("GET", url)
            await asyncio.sleep(0.05)  # the body arrives, unread
            response.release()
            assert (await get_body(url, session))[1] == b"ok"
    assert s.connections == 1
