"""Layer decoding: the media type picks the decompressor; the diff_id is hashed on the way.

:class:`LayerReader` is a readable binary stream (what ``tarfile`` stream mode wants) over a
stored blob.  It decompresses gzip (every member, via isal when available) or zstd (every
frame) or passes an uncompressed tar through, hashes all decompressed bytes, and
:meth:`LayerReader.verify` drains whatever the tar reader left (end blocks, padding) before
comparing against the expected diff_id, exactly as upstream hashes "everything decompressed".
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import zstandard

from guestpull import oci
from guestpull.errors import DigestError, UnpackError, UnsupportedError

try:  # isal is 2.6x faster than zlib; it has no s390x wheel, so zlib stays the fallback.
    from isal import igzip as _gzip_impl
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _gzip_impl = gzip  # type: ignore[assignment,misc,unused-ignore]

CHUNK = 1 << 20
#: Decompressed chunks held ahead of the reader (bounded memory: 2 MiB).  zstd decodes far
#: faster than a layer is written, so its queue is always full: 2 chunks instead of 4 took
#: 2 MiB off each worker's peak RSS; gzip decodes slower than it is written, and its queue
#: is mostly empty either way (issue 15).
PREFETCH_CHUNKS = 2
#: Compressed bytes zstd reads at a time: 128 KiB instead of 1 MiB, the same CPU, 1 MiB less.
ZSTD_READ_SIZE = 128 << 10

_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile is an OSError; isal raises OSError subclasses too
    EOFError,  # truncated gzip member
    zlib.error,
    zstandard.ZstdError,
)


#: An arriving blob (see :class:`ArrivingBlob`) that has not grown for this long is given up.
#: A backstop only: the downloader's own deadlines end a stalled download first, and that
#: removes the file, which the reader notices within one poll.
ARRIVAL_STALL_S = 300.0
#: How long the reader of an arriving blob sleeps when it has caught up with the download.
_ARRIVAL_POLL_S = (0.001, 0.02)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def compression_of(media_type: str) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` for a layer media type; UnsupportedError otherwise."""
    if media_type in oci.GZIP_LAYER_TYPES:
        return "gzip"
    if media_type in oci.ZSTD_LAYER_TYPES:
        return "zstd"
    if media_type in oci.TAR_LAYER_TYPES:
        return "none"
    if media_type in oci.ENCRYPTED_LAYER_TYPES:
        raise UnsupportedError(f"encrypted layers are not supported yet (media type {media_type})")
    raise UnsupportedError(f"unsupported layer media type {media_type!r}")


def uncompressed_size_hint(blob: str, media_type: str) -> int:
    """How many bytes the stored blob decompresses to, as far as its headers say, cheaply.

    gzip: the last member's ISIZE trailer (modulo 4 GiB; multi-member blobs: the last member
    only); zstd: the first frame's content size when the frame records it; else (and for an
    uncompressed tar) the blob's own size.  A hint for deciding where to unpack, never trusted
    for limits: the unpacker bounds what it writes itself.
    """
    compression = compression_of(media_type)
    with open(blob, "rb") as raw:
        size = raw.seek(0, io.SEEK_END)
        if compression == "gzip" and size >= 18:  # 10-byte header + 8-byte trailer
            raw.seek(-4, io.SEEK_END)
            return int.from_bytes(raw.read(4), "little")
        if compression == "zstd":
            raw.seek(0)
            try:
                content = zstandard.frame_content_size(raw.read(18))  # the longest frame header
            except zstandard.ZstdError:
                return size
            return content if content >= 0 else size
        return size


@dataclass(frozen=True)
class Arriving:
    """A blob still being downloaded: its ``size``, and ``stored_path``, where the store puts
    it once its digest and size are verified (read from there if the download finished, and
    its ingest file was renamed, before the reader opened it)."""

    size: int
    stored_path: str


class ArrivingBlob(io.RawIOBase):
    """A blob file that a download is still writing, read as it grows, up to ``size`` bytes.

    Lets a layer unpack while its blob arrives (issue 15).  The bytes are not verified yet:
    the caller must not let anything made from them count until the download has committed
    this very file (digest and size checked); the diff_id is checked here as always.  When
    the download abandons the file (it is unlinked: a broken connection, a bad digest, a
    cancelled pull) the reader stops with UnpackError within one poll instead of waiting.
    """

    def __init__(self, path: str, arriving: Arriving, *, stall_s: float = ARRIVAL_STALL_S) -> None:
        super().__init__()
        self.path = path
        self.size = arriving.size
        self._stall_s = stall_s
        self._pos = 0
        self._fd = -1
        for candidate in (path, arriving.stored_path):
            with contextlib.suppress(FileNotFoundError):
                self._fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
                break
        if self._fd < 0:
            raise UnpackError(f"arriving blob {path} is no longer being written, nor stored")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        want = self.size - self._pos if size is None or size < 0 else min(size, self.size - self._pos)
        if want <= 0:
            return b""
        waited, poll = 0.0, _ARRIVAL_POLL_S[0]
        while True:
            data = os.read(self._fd, want)
            if data:
                self._pos += len(data)
                return data
            if os.fstat(self._fd).st_nlink == 0:
                raise UnpackError(
                    f"arriving blob {self.path} was abandoned by its download after {self._pos} bytes"
                )
            if waited >= self._stall_s:
                raise UnpackError(f"arriving blob {self.path} did not grow for {self._stall_s:g} s")
            time.sleep(poll)
            waited += poll
            poll = min(poll * 2, _ARRIVAL_POLL_S[1])

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
        super().close()


def open_blob(path: str, arriving: Arriving | None = None) -> BinaryIO:
    """A stored blob file, or with ``arriving`` one still being downloaded into ``path``."""
    if arriving is None:
        return open(path, "rb")
    return ArrivingBlob(path, arriving)  # type: ignore[return-value]


def _decompressor(compression: str, raw: BinaryIO) -> _Readable:
    if compression == "gzip":
        # GzipFile reads every member in turn (multi-member layers from pigz and friends).
        return _gzip_impl.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=ZSTD_READ_SIZE, read_across_frames=True, closefd=False
        )
    return raw


class _Prefetcher:
    """Decompresses ahead on a thread of its own, a few chunks at most.

    Decompression releases the GIL, so it runs while the caller hashes, parses the tar and
    writes files: a layer unpacks in about max(decompress, the rest) instead of the sum.
    """

    _DONE = object()

    def __init__(self, source: _Readable, name: str) -> None:
        self._source = source
        self._name = name
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(CHUNK)
                self._put(data or self._DONE)
                if not data:
                    return
        except _DECODE_ERRORS as exc:
            self._put(UnpackError(f"{self._name}: corrupt compressed data: {exc}"))
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """The next decompressed chunk, or b"" at the end; raises what the decoder raised."""
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(item)  # stay at the end for later calls
            return b""
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        return item  # type: ignore[no-any-return,unused-ignore]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class LayerReader(io.RawIOBase):
    """Decompressed view of a layer blob that hashes what it hands out.

    ``diff_id`` may be None to decode without verifying (e.g. listing a layer).  Compressed
    layers are decompressed ahead on a background thread; call :meth:`close` (or use the
    reader as a context manager) when stopping early.
    """

    def __init__(self, raw: BinaryIO, media_type: str, diff_id: str | None, *, name: str = "") -> None:
        super().__init__()
        self.name_for_errors = name or media_type
        compression = compression_of(media_type)
        self._diff_id = diff_id
        algorithm = oci.split_digest(diff_id)[0] if diff_id else "sha256"
        if algorithm not in ("sha256", "sha512"):
            # Same rule as upstream: diff_ids are sha256 or sha512.
            raise DigestError(f"unsupported diff_id algorithm in {diff_id!r}")
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self.size = 0
        self._pending = b""
        self._offset = 0
        source = _decompressor(compression, raw)
        self._source = source
        self._prefetch = (
            _Prefetcher(source, self.name_for_errors) if compression != "none" else None
        )

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if self._prefetch is None:
            data = self._source.read(size)
            if data:
                self._hash.update(data)
                self.size += len(data)
            return data
        if self._offset >= len(self._pending):
            self._pending, self._offset = self._prefetch.next_chunk(), 0
            if not self._pending:
                return b""
            self.size += len(self._pending)
            self._hash.update(self._pending)
        start = self._offset
        end = min(len(self._pending), start + size)
        self._offset = end
        if start == 0 and end == len(self._pending):
            return self._pending  # the whole chunk: no copy
        return self._pending[start:end]

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def verify(self) -> str:
        """Read to the end and check the diff_id; DigestError on mismatch.  Returns the digest."""
        self.drain()
        self.close()
        actual = self.digest()
        if self._diff_id is not None and actual != self._diff_id:
            raise DigestError(
                f"{self.name_for_errors}: decompressed content does not match its diff_id: "
                f"expected {self._diff_id}, got {actual}"
            )
        return actual

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
        super().close()


def decoded_chunks(raw: BinaryIO, media_type: str, diff_id: str | None) -> Iterator[bytes]:
    """Yield decompressed chunks of at most 1 MiB; verify the diff_id at the end."""
    reader = LayerReader(raw, media_type, diff_id)
    while chunk := reader.read(CHUNK):
        yield chunk
    reader.verify()
