"""Hostile layer tars, written block by block (``tarfile`` is too slow for a million entries
and too careful to write some of these): deep trees, endless names, PAX global floods.

Every builder yields the uncompressed tar in chunks; :func:`zstd_layer` compresses them as
they come, so a 500 MB tar never sits in memory.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard

from guestpull.testing.images import BuiltLayer

BLOCK = 512
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


def header(name: bytes, kind: bytes = b"0", size: int = 0, mode: int = 0o644) -> bytes:
    """One ustar header block (``name`` of at most 100 bytes), checksum filled in."""
    if len(name) > 100:
        raise ValueError("ustar names are at most 100 bytes; use a PAX path record")
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"14000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def member(name: bytes, kind: bytes = b"0", data: bytes = b"", mode: int = 0o644) -> bytes:
    return header(name, kind, len(data), mode) + data + bytes(-len(data) % BLOCK)


def pax(records: Iterable[tuple[bytes, bytes]], kind: bytes = b"x") -> bytes:
    """A PAX extended header (``x``, or ``g`` for a global one) with these records."""
    body = b"".join(_pax_record(key, value) for key, value in records)
    return member(b"././@PaxHeader", kind, body)


def _pax_record(key: bytes, value: bytes) -> bytes:
    rest = b" " + key + b"=" + value + b"\n"
    length = len(rest) + 1
    while len(b"%d" % length) + len(rest) != length:
        length += 1
    return b"%d" % length + rest


def end() -> bytes:
    return bytes(2 * BLOCK)


def deep_dirs(depth: int, name: bytes = b"d") -> Iterator[bytes]:
    """``depth`` nested directories, one entry each (PAX path records past 100 bytes)."""
    path = b""
    for _ in range(depth):
        path += name + b"/"
        if len(path) <= 100:
            yield header(path, b"5", mode=0o755)
        else:
            yield pax([(b"path", path)]) + header(b"deep/", b"5", mode=0o755)
    yield end()


def long_name(levels: int) -> Iterator[bytes]:
    """One file whose PAX path has ``levels`` components (``a/a/…/f``)."""
    yield pax([(b"path", b"a/" * levels + b"f")]) + member(b"stand-in", data=b"x")
    yield end()


def global_flood(headers: int, record_bytes: int) -> Iterator[bytes]:
    """``headers`` PAX global headers, each one distinct record of ``record_bytes``."""
    for i in range(headers):
        yield pax([(b"flood.%d" % i, b"v" * record_bytes)], kind=b"g")
    yield member(b"after-the-flood", data=b"x")
    yield end()


def many_entries(count: int, per_dir: int = 10_000) -> Iterator[bytes]:
    """``count`` empty files, ``per_dir`` to a directory (with their directory entries)."""
    chunk = bytearray()
    for i in range(count):
        if i % per_dir == 0:
            chunk += header(b"d%d/" % (i // per_dir), b"5", mode=0o755)
        chunk += header(b"d%d/f%d" % (i // per_dir, i))
        if len(chunk) >= 1 << 20:
            yield bytes(chunk)
            chunk.clear()
    yield bytes(chunk) + end()


@dataclass(frozen=True)
class StreamedLayer(BuiltLayer):
    """A layer built from chunks: the tar is not kept, and the diff_id is whatever the image
    will claim (the real one, or a wrong one)."""

    claimed_diff_id: str = ""

    @property
    def diff_id(self) -> str:
        return self.claimed_diff_id


def zstd_layer(chunks: Iterable[bytes], *, wrong_diff_id: bool = False) -> StreamedLayer:
    """The zstd blob of the tar in ``chunks``; its config diff_id is right unless told."""
    diff = hashlib.sha256()
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
        for chunk in chunks:
            diff.update(chunk)
            writer.write(chunk)
    diff_id = "sha256:" + ("0" * 64 if wrong_diff_id else diff.hexdigest())
    return StreamedLayer(tar=b"", blob=out.getvalue(), media_type=ZSTD_LAYER,
                         claimed_diff_id=diff_id)
