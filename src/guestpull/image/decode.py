"""Layer decoding: the media type picks the decompressor; the diff_id is hashed on the way.

:class:`LayerReader` is a readable binary stream (what ``tarfile`` stream mode wants) over a
stored blob.  It decompresses gzip (every member, via isal when available) or zstd (every
frame) or passes an uncompressed tar through, hashes all decompressed bytes, and
:meth:`LayerReader.verify` drains whatever the tar reader left (end blocks, padding) before
comparing against the expected diff_id, exactly as upstream hashes "everything decompressed".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import zstandard

from guestpull.errors import DigestError, UnpackError, UnsupportedError
from guestpull.image import oci

try:  # isal is 2.6x faster than zlib; it has no s390x wheel, so zlib stays the fallback.
    from isal import igzip as _gzip_impl
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _gzip_impl = gzip  # type: ignore[assignment]

CHUNK = 1 << 20

_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # gzip.BadGzipFile is an OSError; isal raises OSError subclasses too
    EOFError,  # truncated gzip member
    zlib.error,
    zstandard.ZstdError,
)


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


def _decompressor(compression: str, raw: BinaryIO) -> _Readable:
    if compression == "gzip":
        # GzipFile reads every member in turn (multi-member layers from pigz and friends).
        return _gzip_impl.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True, closefd=False
        )
    return raw


class LayerReader(io.RawIOBase):
    """Decompressed view of a layer blob that hashes what it hands out.

    ``diff_id`` may be None to decode without verifying (e.g. listing a layer).
    """

    def __init__(self, raw: BinaryIO, media_type: str, diff_id: str | None, *, name: str = "") -> None:
        super().__init__()
        self.name_for_errors = name or media_type
        self._source = _decompressor(compression_of(media_type), raw)
        self._diff_id = diff_id
        algorithm = oci.split_digest(diff_id)[0] if diff_id else "sha256"
        if algorithm not in ("sha256", "sha512"):
            # Same rule as upstream: diff_ids are sha256 or sha512.
            raise DigestError(f"unsupported diff_id algorithm in {diff_id!r}")
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        try:
            data = self._source.read(size)
        except _DECODE_ERRORS as exc:
            raise UnpackError(f"{self.name_for_errors}: corrupt compressed data: {exc}") from exc
        if data:
            self._hash.update(data)
            self.size += len(data)
        return data

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
        actual = self.digest()
        if self._diff_id is not None and actual != self._diff_id:
            raise DigestError(
                f"{self.name_for_errors}: decompressed content does not match its diff_id: "
                f"expected {self._diff_id}, got {actual}"
            )
        return actual


def decoded_chunks(raw: BinaryIO, media_type: str, diff_id: str | None) -> Iterator[bytes]:
    """Yield decompressed chunks of at most 1 MiB; verify the diff_id at the end."""
    reader = LayerReader(raw, media_type, diff_id)
    while chunk := reader.read(CHUNK):
        yield chunk
    reader.verify()
