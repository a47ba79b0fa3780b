"""ttrpc over asyncio streams: frames, a multiplexing server and a small client.

The wire format and the server's answers follow ttrpc-rust 0.9, the library the real
Confidential Data Hub, kata-agent and the Attestation Agent use (reference/cdh-service.md §2):

- a frame is a 10-byte header (length, stream id: uint32 big-endian; type, flags: uint8) and
  ``length`` bytes of protobuf, at most 4 MiB;
- a client opens odd stream ids (1, 3, 5, ...) and sends one Request frame per call; the server
  answers one Response frame on the same stream id;
- every request on a connection runs concurrently; answers are written whole, one at a time;
- ``timeout_nano > 0`` bounds the handler: on expiry it is cancelled and the answer is
  DEADLINE_EXCEEDED ``"timeout"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from guestpull.errors import Category, ConfigError, GuestpullError, NetworkError
from guestpull import protos as proto

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")
MESSAGE_LENGTH_MAX = 4 << 20
#: Requests of one connection handled at once; more wait unread until one finishes
#: (back-pressure).  Bounds what a peer can make us hold: 64 × a 4 MiB frame.
MAX_IN_FLIGHT = 64


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Code(enum.IntEnum):
    """google.rpc.Code."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return str(code)


class RpcError(GuestpullError):
    """A ttrpc status other than OK: raised by handlers to answer it, and by the client when
    the peer answered it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code_name(code)}: {message}")
        self.code = code
        self.status_message = message

    @property
    def category(self) -> Category:  # type: ignore[override]
        return Category.TIMEOUT if self.code == Code.DEADLINE_EXCEEDED else Category.INTERNAL


class RpcConnectionError(NetworkError):
    """The ttrpc connection could not be opened, or was lost before the answer came."""


class ProtocolError(GuestpullError):
    """The peer sent something that is not ttrpc."""


# --- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    data: bytes


class FrameTooLarge(ProtocolError):
    """A frame announced more than 4 MiB; its body has been read and discarded."""

    def __init__(self, stream_id: int, length: int) -> None:
        # ttrpc-rust 0.9's exact message; it goes back to the peer.
        super().__init__(f"message length {length} exceed maximum message size of {MESSAGE_LENGTH_MAX}")
        self.stream_id = stream_id
        self.length = length


def encode_frame(stream_id: int, frame_type: int, data: bytes, flags: int = 0) -> bytes:
    if len(data) > MESSAGE_LENGTH_MAX:
        raise FrameTooLarge(stream_id, len(data))
    return HEADER.pack(len(data), stream_id, frame_type, flags) + data


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at a clean end of stream (between frames).

    A frame over 4 MiB is read and dropped, then :class:`FrameTooLarge` tells the caller its
    stream id (the connection stays usable, as in ttrpc-rust).  End of stream inside a frame
    raises :class:`ProtocolError`.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise ProtocolError(f"connection closed inside a frame header ({len(err.partial)} of 10 bytes)") from None
    length, stream_id, frame_type, flags = HEADER.unpack(header)
    try:
        if length > MESSAGE_LENGTH_MAX:
            await _discard(reader, length)
            raise FrameTooLarge(stream_id, length)
        data = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(
            f"connection closed inside a frame (stream {stream_id}: {len(err.partial)} of {length} bytes)"
        ) from None
    return Frame(stream_id, frame_type, flags, data)


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    left = length
    while left:
        chunk = await reader.read(min(left, 1 << 20))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(chunk)


def encode_response(stream_id: int, code: int = Code.OK, message: str = "", payload: bytes = b"") -> bytes:
    # On success ttrpc-rust sends status {code: 0, message: ""} explicitly (bytes 0a 00).
    response = proto.Response(status=proto.Status(code=code, message=message), payload=payload)
    return encode_frame(stream_id, FrameType.RESPONSE, response.SerializeToString())


# --- server ------------------------------------------------------------------------------------


@dataclass
class CallContext:
    """One request as a handler sees it; ``log_fields`` are added to the request's log line."""

    service: str
    method: str
    stream_id: int
    timeout_nano: int
    metadata: dict[str, list[str]]
    log_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


#: A method: the request payload in, the response payload out; RpcError for a status.
Handler = Callable[[CallContext, bytes], Awaitable[bytes]]
#: service name → method name → handler.
Services = Mapping[str, Mapping[str, Handler]]


@dataclass(frozen=True)
class CallRecord:
    """What the server logs about a finished request."""

    context: CallContext
    code: int
    message: str
    duration: float


class TtrpcServer:
    """Serves ``services`` on any number of connections; ``on_call`` sees every finished call."""

    def __init__(self, services: Services, *, on_call: Callable[[CallRecord], None] | None = None) -> None:
        self._services = services
        self._on_call = on_call or (lambda record: None)
        self._connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._draining = False

    async def start_unix(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self.serve_connection, path=str(path))

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def in_flight(self) -> int:
        return sum(len(c.calls) for c in self._connections)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let running calls finish for ``grace`` seconds, then cancel them;
        close every connection."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        calls = [task for c in self._connections for task in c.calls]
        if calls:
            _, pending = await asyncio.wait(calls, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for connection in list(self._connections):
            await connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def handle(self, frame: Frame, connection: _Connection) -> None:
        """Answer one frame (a task of its own)."""
        started = time.monotonic()
        context, request = _context(frame)
        try:
            handler = self._route(frame, request)
            payload = await _run_bounded(handler, context, bytes(request.payload))
            code, message = Code.OK, ""
        except RpcError as err:
            code, message, payload = err.code, err.status_message, b""
        except asyncio.CancelledError:
            # The connection went away or the server is stopping: nobody to answer.
            self._on_call(CallRecord(context, Code.CANCELLED, "cancelled", time.monotonic() - started))
            raise
        except Exception as err:  # a bug in a handler: UNKNOWN, as ttrpc-rust maps handler errors
            log.exception("ttrpc handler for %s failed", context.path)
            code, message, payload = Code.UNKNOWN, f"{type(err).__name__}: {err}", b""
        try:
            answer = encode_response(frame.stream_id, code, message, payload)
        except FrameTooLarge as err:
            code, message = Code.INVALID_ARGUMENT, f"response {err.message}"
            answer = encode_response(frame.stream_id, code, message)
        self._on_call(CallRecord(context, code, message, time.monotonic() - started))
        await connection.send(answer)

    def _route(self, frame: Frame, request: Any) -> Handler:
        # Checks in ttrpc-rust 0.9's order, with its codes and messages.
        if self._draining:
            raise RpcError(Code.UNAVAILABLE, "the server is shutting down")
        if frame.stream_id % 2 != 1:
            raise RpcError(Code.INVALID_ARGUMENT, "stream id must be odd")
        if frame.type != FrameType.REQUEST:
            raise RpcError(Code.INVALID_ARGUMENT, "ttrpc: unexpected message type")
        if request is None:
            raise RpcError(Code.INVALID_ARGUMENT, "failed to decode the ttrpc Request")
        methods = self._services.get(request.service)
        if methods is None:
            raise RpcError(Code.INVALID_ARGUMENT, f"{request.service} service does not exist")
        handler = methods.get(request.method)
        if handler is None:
            raise RpcError(Code.UNIMPLEMENTED, f"{request.method} method")
        return handler


def _context(frame: Frame) -> tuple[CallContext, Any]:
    """The call as far as the frame can be decoded (the request is None if it cannot)."""
    request = proto.Request()
    try:
        request.ParseFromString(frame.data)
    except DecodeError:
        return CallContext("", "", frame.stream_id, 0, {}), None
    metadata: dict[str, list[str]] = {}
    for pair in request.metadata:
        metadata.setdefault(pair.key, []).append(pair.value)
    return CallContext(request.service, request.method, frame.stream_id, request.timeout_nano, metadata), request


async def _run_bounded(handler: Handler, context: CallContext, payload: bytes) -> bytes:
    if context.timeout_nano <= 0:
        return await handler(context, payload)
    deadline = asyncio.timeout(context.timeout_nano / 1e9)
    try:
        # The handler is cancelled (and its clean-up runs) before the answer goes out.
        async with deadline:
            return await handler(context, payload)
    except TimeoutError:
        if not deadline.expired():
            raise  # the handler's own TimeoutError, not the deadline
        raise RpcError(Code.DEADLINE_EXCEEDED, "timeout") from None


class _Connection:
    """One client connection: reads frames, runs a task per request, writes answers whole."""

    def __init__(self, server: TtrpcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.calls: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(self) -> None:
        try:
            await self._read_loop()
        except (ProtocolError, ConnectionError) as err:
            log.warning("ttrpc connection closed: %s", err)
        finally:
            # Nobody can receive these answers any more: cancel, and let the handlers clean up.
            for task in self.calls:
                task.cancel()
            if self.calls:
                await asyncio.wait(self.calls)
            await self.close()

    async def _read_loop(self) -> None:
        while True:
            try:
                frame = await read_frame(self.reader)
            except FrameTooLarge as err:
                log.warning("ttrpc: dropped a frame of %d bytes on stream %d", err.length, err.stream_id)
                await self.send(encode_response(err.stream_id, Code.INVALID_ARGUMENT, err.message))
                continue
            if frame is None:
                return
            await self._slots.acquire()
            task = asyncio.create_task(self.server.handle(frame, self))
            self.calls.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self.calls.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("ttrpc call task failed", exc_info=task.exception())

    async def send(self, data: bytes) -> None:
        async with self._write_lock:
            if self.writer.is_closing():
                return
            try:
                self.writer.write(data)
                await self.writer.drain()
            except ConnectionError as err:
                log.warning("ttrpc: could not send an answer: %s", err)

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- client ------------------------------------------------------------------------------------


def unix_socket_path(address: str) -> Path:
    """The file of a ``unix:///path`` address (a plain absolute path is accepted too)."""
    if address.startswith("unix://"):
        path = address.removeprefix("unix://")
    elif address.startswith("/"):
        path = address
    else:
        raise ConfigError(f"unsupported ttrpc socket address {address!r}: expected unix:///path")
    if not path.startswith("/"):
        raise ConfigError(f"unsupported ttrpc socket address {address!r}: expected an absolute path after unix://")
    return Path(path)


class TtrpcClient:
    """One connection; calls may run concurrently (each on its own stream id).

        client = await TtrpcClient.connect("unix:///run/aa.sock")
        reply = await client.call("pkg.Service", "Method", request_bytes, timeout=10)
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self._reader = reader
        self._writer = writer
        self._address = address
        self._next_stream = 1
        self._pending: dict[int, asyncio.Future[proto.Response]] = {}
        self._write_lock = asyncio.Lock()
        self._closed: BaseException | None = None
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    async def connect(cls, address: str) -> TtrpcClient:
        path = unix_socket_path(address)
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MESSAGE_LENGTH_MAX + HEADER.size)
        except OSError as err:
            raise RpcConnectionError(f"cannot connect to {address}: {err.strerror or err}") from None
        return cls(reader, writer, address)

    async def call(self, service: str, method: str, request: bytes, timeout: float | None = None) -> bytes:
        """Call ``/service/method``; the response payload.  ``timeout`` (seconds) is sent as
        ``timeout_nano`` and also bounds the wait here."""
        if self._closed is not None:
            raise RpcConnectionError(f"ttrpc connection to {self._address} is closed")
        stream_id = self._next_stream
        self._next_stream += 2
        message = proto.Request(service=service, method=method, payload=request,
                                timeout_nano=int(timeout * 1e9) if timeout else 0)
        future: asyncio.Future[proto.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            async with self._write_lock:
                self._writer.write(encode_frame(stream_id, FrameType.REQUEST, message.SerializeToString()))
                await self._writer.drain()
            async with asyncio.timeout(timeout):
                response = await future
        except TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"no answer to /{service}/{method} within {timeout} s") from None
        except ConnectionError as err:
            raise RpcConnectionError(f"ttrpc connection to {self._address} lost: {err}") from None
        finally:
            self._pending.pop(stream_id, None)
        status = response.status  # a missing status reads as code 0: OK
        if status.code != Code.OK:
            raise RpcError(status.code, status.message)
        return bytes(response.payload)

    @property
    def closed(self) -> bool:
        """The connection is gone (closed here or by the peer): a call would fail unsent."""
        return self._closed is not None

    async def _receive(self) -> None:
        try:
            while (frame := await read_frame(self._reader)) is not None:
                future = self._pending.get(frame.stream_id)
                if frame.type != FrameType.RESPONSE or future is None or future.done():
                    continue  # an answer to a call that gave up waiting
                response = proto.Response()
                try:
                    response.ParseFromString(frame.data)
                except DecodeError as err:
                    future.set_exception(ProtocolError(f"undecodable ttrpc Response from {self._address}: {err}"))
                    continue
                future.set_result(response)
            self._fail(RpcConnectionError(f"ttrpc connection to {self._address} closed by the peer"))
        except (ProtocolError, ConnectionError) as err:
            self._fail(RpcConnectionError(f"ttrpc connection to {self._address} lost: {err}"))

    def _fail(self, error: BaseException) -> None:
        self._closed = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        self._fail(RpcConnectionError(f"ttrpc connection to {self._address} closed"))
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> TtrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
