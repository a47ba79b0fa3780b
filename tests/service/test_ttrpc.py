"""ttrpc framing, and the server's answers to what kata-agent (or a broken peer) can send.

Frames are checked byte for byte against the capture in reference/cdh-service.md §2; the
server is driven over a raw unix socket where a real client would refuse to send the frame
(an even stream id, 4 MiB + 1 bytes), and with our own client elsewhere.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestpull import protos as proto
from guestpull.ttrpc import (
    MESSAGE_LENGTH_MAX,
    CallContext,
    CallRecord,
    Code,
    FrameTooLarge,
    FrameType,
    ProtocolError,
    RpcConnectionError,
    RpcError,
    TtrpcClient,
    TtrpcServer,
    encode_frame,
    encode_response,
    read_frame,
)

CAPTURED_REQUEST = bytes.fromhex(
    "00000030 00000001 01 00"
    "0a14" + b"api.ImagePullService".hex() + "1209" + b"PullImage".hex()
    + "1a06 0a0161 120162" + "2080c0cbacf622"
)
CAPTURED_RESPONSE = bytes.fromhex("00000007 00000001 02 00 0a05080d120178")


def reader_of(data: bytes, *, chunk: int | None = None) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        reader.feed_data(data[i : i + step])
    reader.feed_eof()
    return reader


# --- frames ---------------------------------------------------------------------------------------


def test_request_frame_matches_the_go_capture() -> None:
    request = proto.Request(
        service="api.ImagePullService", method="PullImage", timeout_nano=1_200_000_000_000,
        payload=proto.ImagePullRequest(image_url="a", bundle_path="b").SerializeToString(),
    )
    assert encode_frame(1, FrameType.REQUEST, request.SerializeToString()) == CAPTURED_REQUEST


def test_error_response_matches_the_capture_and_ok_sends_an_explicit_status() -> None:
    assert encode_response(1, Code.INTERNAL, "x") == CAPTURED_RESPONSE
    # ttrpc-rust always sends status {code: 0, message: ""}: bytes 0a 00.
    assert encode_response(3, payload=b"\x0a\x01z") == bytes.fromhex("00000007 00000003 02 00 0a00 12030a017a")


async def test_a_frame_read_one_byte_at_a_time() -> None:
    frame = await read_frame(reader_of(CAPTURED_REQUEST + CAPTURED_RESPONSE, chunk=1))
    assert frame is not None
    assert (frame.stream_id, frame.type, frame.flags) == (1, FrameType.REQUEST, 0)
    assert frame.data == CAPTURED_REQUEST[10:]


async def test_frames_back_to_back_then_a_clean_end() -> None:
    reader = reader_of(CAPTURED_REQUEST + CAPTURED_RESPONSE, chunk=7)
    first, second, end = await read_frame(reader), await read_frame(reader), await read_frame(reader)
    assert first is not None and second is not None
    assert (first.type, second.type, second.data) == (FrameType.REQUEST, FrameType.RESPONSE, CAPTURED_RESPONSE[10:])
    assert end is None


@pytest.mark.parametrize("cut", [3, 9, 15, len(CAPTURED_REQUEST) - 1])
async def test_end_of_stream_inside_a_frame_is_a_protocol_error(cut: int) -> None:
    with pytest.raises(ProtocolError, match="connection closed inside a frame"):
        await read_frame(reader_of(CAPTURED_REQUEST[:cut]))


async def test_an_oversized_frame_is_skipped_and_the_next_one_read() -> None:
    big = struct.pack(">IIBB", MESSAGE_LENGTH_MAX + 1, 5, 1, 0) + b"\0" * (MESSAGE_LENGTH_MAX + 1)
    reader = reader_of(big + CAPTURED_REQUEST, chunk=1 << 16)
    with pytest.raises(FrameTooLarge) as caught:
        await read_frame(reader)
    assert caught.value.stream_id == 5
    assert caught.value.message == "message length 4194305 exceed maximum message size of 4194304"
    frame = await read_frame(reader)
    assert frame is not None and frame.data == CAPTURED_REQUEST[10:]


def test_a_frame_of_exactly_4_mib_is_allowed_and_one_byte_more_refused() -> None:
    assert len(encode_frame(1, FrameType.REQUEST, b"\0" * MESSAGE_LENGTH_MAX)) == MESSAGE_LENGTH_MAX + 10
    with pytest.raises(FrameTooLarge):
        encode_frame(1, FrameType.REQUEST, b"\0" * (MESSAGE_LENGTH_MAX + 1))


# --- the server -----------------------------------------------------------------------------------


class Handlers:
    """Test methods: echo, slow (sleeps, records its clean-up), fail, crash."""

    def __init__(self) -> None:
        self.cleaned_up: list[int] = []
        self.started = asyncio.Event()

    async def echo(self, context: CallContext, payload: bytes) -> bytes:
        return payload

    async def slow(self, context: CallContext, payload: bytes) -> bytes:
        self.started.set()
        try:
            await asyncio.sleep(float(payload.decode() or "30"))
        finally:
            self.cleaned_up.append(context.stream_id)
        return b"slow-done"

    async def fail(self, context: CallContext, payload: bytes) -> bytes:
        raise RpcError(Code.NOT_FOUND, "no such thing")

    async def crash(self, context: CallContext, payload: bytes) -> bytes:
        raise ValueError("bug")


@pytest.fixture
async def served(shm_path: Path) -> AsyncIterator[tuple[TtrpcServer, Path, Handlers, list[CallRecord]]]:
    handlers = Handlers()
    records: list[CallRecord] = []
    services = {"test.Svc": {"Echo": handlers.echo, "Slow": handlers.slow, "Fail": handlers.fail,
                             "Crash": handlers.crash}}
    server = TtrpcServer(services, on_call=records.append)
    socket = shm_path / "t.sock"
    await server.start_unix(socket)
    try:
        yield server, socket, handlers, records
    finally:
        await server.shutdown(1)


def request_frame(stream_id: int, service: str, method: str, payload: bytes = b"", timeout_nano: int = 0) -> bytes:
    request = proto.Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
    return encode_frame(stream_id, FrameType.REQUEST, request.SerializeToString())


async def answer(reader: asyncio.StreamReader) -> tuple[int, int, str, bytes]:
    """stream id, status code, status message, payload of the next Response frame."""
    async with asyncio.timeout(10):
        frame = await read_frame(reader)
    assert frame is not None and frame.type == FrameType.RESPONSE
    response = proto.Response()
    response.ParseFromString(frame.data)
    return frame.stream_id, response.status.code, response.status.message, bytes(response.payload)


async def test_even_stream_id_answers_invalid_argument(served) -> None:
    _, socket, _, _ = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(request_frame(2, "test.Svc", "Echo", b"x"))
    assert await answer(reader) == (2, Code.INVALID_ARGUMENT, "stream id must be odd", b"")
    writer.close()


async def test_oversized_frame_answers_and_the_connection_keeps_working(served) -> None:
    _, socket, _, _ = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(struct.pack(">IIBB", MESSAGE_LENGTH_MAX + 1, 1, 1, 0) + b"\0" * (MESSAGE_LENGTH_MAX + 1))
    writer.write(request_frame(3, "test.Svc", "Echo", b"still here"))
    assert await answer(reader) == (
        1, Code.INVALID_ARGUMENT, "message length 4194305 exceed maximum message size of 4194304", b"")
    assert await answer(reader) == (3, Code.OK, "", b"still here")
    writer.close()


@pytest.mark.parametrize(("frame", "code", "message"), [
    (request_frame(1, "no.Such", "Echo"), Code.INVALID_ARGUMENT, "no.Such service does not exist"),
    (request_frame(1, "test.Svc", "Nope"), Code.UNIMPLEMENTED, "Nope method"),
    (encode_frame(1, FrameType.DATA, b""), Code.INVALID_ARGUMENT, "ttrpc: unexpected message type"),
    (encode_frame(1, FrameType.REQUEST, b"\xff\xff\xff"), Code.INVALID_ARGUMENT, "failed to decode the ttrpc Request"),
    (request_frame(1, "test.Svc", "Fail"), Code.NOT_FOUND, "no such thing"),
    (request_frame(1, "test.Svc", "Crash"), Code.UNKNOWN, "ValueError: bug"),
], ids=["unknown-service", "unknown-method", "data-frame", "garbage", "handler-status", "handler-bug"])
async def test_what_cannot_be_served_is_answered(served, frame: bytes, code: Code, message: str) -> None:
    _, socket, _, records = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(frame)
    assert await answer(reader) == (1, code, message, b"")
    assert records[-1].code == code  # every request gets its log record
    writer.close()


async def test_requests_on_one_connection_run_concurrently(served) -> None:
    _, socket, _, records = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(request_frame(1, "test.Svc", "Slow", b"0.5") + request_frame(3, "test.Svc", "Echo", b"fast"))
    # The fast call is answered while the slow one still runs.
    assert await answer(reader) == (3, Code.OK, "", b"fast")
    assert await answer(reader) == (1, Code.OK, "", b"slow-done")
    assert [(r.context.path, r.code) for r in records] == [("/test.Svc/Echo", Code.OK), ("/test.Svc/Slow", Code.OK)]
    writer.close()


async def test_timeout_cancels_the_handler_before_answering(served) -> None:
    _, socket, handlers, records = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(request_frame(1, "test.Svc", "Slow", b"30", timeout_nano=200_000_000))
    assert await answer(reader) == (1, Code.DEADLINE_EXCEEDED, "timeout", b"")
    assert handlers.cleaned_up == [1]  # the clean-up ran before the answer went out
    assert records[-1].code == Code.DEADLINE_EXCEEDED and 0.2 <= records[-1].duration < 5
    writer.close()


async def test_a_disconnecting_client_cancels_its_calls_and_the_server_serves_on(served) -> None:
    _, socket, handlers, records = served
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(request_frame(1, "test.Svc", "Slow", b"30"))
    await asyncio.wait_for(handlers.started.wait(), 10)
    writer.close()
    async with asyncio.timeout(10):
        while not handlers.cleaned_up:
            await asyncio.sleep(0.02)
    assert records[-1].code == Code.CANCELLED
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        assert await client.call("test.Svc", "Echo", b"again", timeout=10) == b"again"


async def test_shutdown_lets_calls_finish_then_cancels_and_refuses_new_ones(served) -> None:
    server, socket, handlers, _ = served
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        short = asyncio.create_task(client.call("test.Svc", "Slow", b"0.3"))
        long = asyncio.create_task(client.call("test.Svc", "Slow", b"30"))
        await asyncio.wait_for(handlers.started.wait(), 10)
        stopping = asyncio.create_task(server.shutdown(grace=1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(RpcError) as refused:
            await client.call("test.Svc", "Echo", b"late", timeout=5)
        assert refused.value.code == Code.UNAVAILABLE
        assert await short == b"slow-done"
        await asyncio.wait_for(stopping, 10)
        with pytest.raises(RpcConnectionError):
            await long  # cancelled after the grace: the connection closes without an answer
    assert len(handlers.cleaned_up) == 2
    assert not socket.exists() or not await _connects(socket)


async def _connects(socket: Path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(socket))
    except OSError:
        return False
    writer.close()
    return True


# --- the client -------------------------------------------------------------------------------------


async def test_client_raises_typed_errors_and_sends_timeout_nano(served) -> None:
    _, socket, _, records = served
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        with pytest.raises(RpcError) as caught:
            await client.call("test.Svc", "Fail", b"", timeout=5)
        assert (caught.value.code, caught.value.status_message) == (Code.NOT_FOUND, "no such thing")
        assert records[-1].context.timeout_nano == 5_000_000_000
        results = await asyncio.gather(*(client.call("test.Svc", "Echo", bytes([i]), timeout=5) for i in range(20)))
        assert results == [bytes([i]) for i in range(20)]
        assert sorted(r.context.stream_id for r in records[-20:]) == list(range(3, 43, 2))


async def test_client_accepts_a_response_without_status(shm_path: Path) -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader)
        assert frame is not None
        writer.write(encode_frame(frame.stream_id, FrameType.RESPONSE, proto.Response(payload=b"ok").SerializeToString()))
        await writer.drain()

    server = await asyncio.start_unix_server(bare, path=str(shm_path / "bare.sock"))
    async with server, await TtrpcClient.connect(f"unix://{shm_path}/bare.sock") as client:
        assert await client.call("any.Svc", "M", b"", timeout=5) == b"ok"


async def test_client_connection_errors(shm_path: Path) -> None:
    with pytest.raises(RpcConnectionError, match="cannot connect to unix://"):
        await TtrpcClient.connect(f"unix://{shm_path}/absent.sock")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path=str(shm_path / "hup.sock"))
    async with server, await TtrpcClient.connect(f"unix://{shm_path}/hup.sock") as client:
        with pytest.raises(RpcConnectionError, match="closed by the peer"):
            await client.call("any.Svc", "M", b"", timeout=5)


async def test_client_gives_up_after_its_timeout(served) -> None:
    _, socket, _, _ = served
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        # The server answers DEADLINE_EXCEEDED "timeout" at the same moment the client stops
        # waiting; either way the caller sees DEADLINE_EXCEEDED.
        with pytest.raises(RpcError) as caught:
            await client.call("test.Svc", "Slow", b"30", timeout=0.2)
        assert caught.value.code == Code.DEADLINE_EXCEEDED


# --- hostile bytes ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=16))
def test_any_bytes_read_as_frames_or_a_protocol_error(data: bytes, chunk: int) -> None:
    async def read_all() -> None:
        reader = reader_of(data, chunk=chunk)
        for _ in range(len(data) + 1):  # every frame takes at least 10 bytes
            try:
                frame = await read_frame(reader)
            except FrameTooLarge:
                continue
            except ProtocolError:
                return
            if frame is None:
                return
            assert len(frame.data) <= MESSAGE_LENGTH_MAX
        raise AssertionError("read_frame did not consume its input")

    asyncio.run(read_all())


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=10, max_size=300))
def test_the_server_survives_any_bytes(data: bytes) -> None:
    async def scenario(socket: Path) -> None:
        server = TtrpcServer({"test.Svc": {"Echo": Handlers().echo}})
        await server.start_unix(socket)
        try:
            _, writer = await asyncio.open_unix_connection(str(socket))
            writer.write(data)
            await writer.drain()
            writer.close()
            async with await TtrpcClient.connect(f"unix://{socket}") as client:
                assert await client.call("test.Svc", "Echo", b"ok", timeout=10) == b"ok"
        finally:
            await server.shutdown(1)
            socket.unlink(missing_ok=True)

    directory = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        asyncio.run(scenario(directory / "s.sock"))
    finally:
        shutil.rmtree(directory)
