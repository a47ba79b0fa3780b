"""A strict, fast pull parser for tar streams: ustar, PAX, GNU long names and old v7/GNU headers.

The layer applier reads thousands of small entries and a few huge ones, so this parser keeps
one ``bytes`` buffer refilled with 1 MiB reads, decodes a header with a handful of slices, and
hands file data out as memoryviews of that buffer (or of the stream's own 1 MiB reads): no
per-KiB Python work and no copies between the stream and ``os.write``.

What the parser accepts, and how it reads it:

* Header checksums are verified (unsigned and signed sums, as tarfile and GNU tar accept).
* PAX ``x`` records override the header for the next entry; ``g`` records apply to every later
  entry (as tarfile does).  An empty value falls back to the header field (xattrs excepted:
  empty is a value there) and, in a ``g`` header, deletes the keyword.  Records are parsed
  by their length prefix on bytes, so binary ``SCHILY.xattr.*`` values arrive untouched.
* GNU ``L``/``K`` give the next entry's name / link target and win over PAX ``path`` /
  ``linkpath`` (as Go's archive/tar, hence umoci, decides).
* Header-only types (links, devices, directories, fifos) carry no data whatever their size
  field says (tarfile and archive/tar agree); unknown types carry ``size`` bytes of data.
* Two all-zero blocks end the archive; what follows is left to the caller (who drains the
  stream to hash it).  The stream may end after one zero block, or at a header boundary
  (tarfile and archive/tar tolerate a missing end marker), but a zero block followed by a
  non-zero one is refused, as archive/tar does: tarfile would silently drop what follows.

Refused, with :class:`~guestpull.errors.UnpackError` naming the entry or the offset: bad
checksums, truncation, malformed numbers (including negative base-256 ones), GNU sparse files,
sizes above ``max_size``, extended headers above ``max_pax_size`` and two extended headers of
one kind for the same entry (ambiguous: tarfile and archive/tar disagree on which wins).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from typing import Protocol

from guestpull.errors import UnpackError

BLOCK = 512
#: Size of every read from the stream.
READ_SIZE = 1 << 20
DEFAULT_MAX_SIZE = 1 << 40
DEFAULT_MAX_PAX_SIZE = 1 << 20

REGTYPE = b"0"
AREGTYPE = b"\0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
CONTTYPE = b"7"
XHDTYPE = b"x"
XGLTYPE = b"g"
SOLARIS_XHDTYPE = b"X"
GNUTYPE_LONGNAME = b"L"
GNUTYPE_LONGLINK = b"K"
GNUTYPE_SPARSE = b"S"

_REGULAR_TYPES = frozenset({REGTYPE, AREGTYPE, CONTTYPE})
# Types whose data (if the size field claims any) does not exist in the archive.
_HEADER_ONLY_TYPES = frozenset({LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE})
_META_TYPES = frozenset({XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE, GNUTYPE_LONGNAME, GNUTYPE_LONGLINK})

_ZERO_BLOCK = bytes(BLOCK)
_USTAR_MAGIC = b"ustar\x00"  # ustar and PAX; GNU writes b"ustar " and has no prefix field
_OCTAL = b"01234567"
_NUMBER_BYTES = b"01234567 \x00"
_NUL_TO_SPACE = bytes.maketrans(b"\x00", b" ")
_XATTR_PREFIX = b"SCHILY.xattr."
_SPARSE_PREFIX = b"GNU.sparse."
_NS = 1_000_000_000


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Entry:
    """One archive member (the extended headers before it already applied)."""

    __slots__ = (
        "name", "type", "size", "mode", "uid", "gid", "mtime", "mtime_ns", "linkname",
        "uname", "gname", "devmajor", "devminor", "xattrs", "offset", "_reader",
    )

    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int | float
    mtime_ns: int
    linkname: str
    uname: str
    gname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    offset: int  # of the entry's first header (an extended one if any) in the stream

    def __repr__(self) -> str:
        return f"<tarstream.Entry {self.name!r} type={self.type!r} size={self.size}>"

    def isreg(self) -> bool:
        return self.type in _REGULAR_TYPES

    def isfile(self) -> bool:
        return self.type in _REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def ischr(self) -> bool:
        return self.type == CHRTYPE

    def isblk(self) -> bool:
        return self.type == BLKTYPE

    def isfifo(self) -> bool:
        return self.type == FIFOTYPE

    def data_size(self) -> int:
        """Bytes of data that follow the header (0 for header-only types)."""
        return 0 if self.type in _HEADER_ONLY_TYPES else self.size

    # --- data --------------------------------------------------------------------------------

    def chunks(self) -> Iterator[memoryview]:
        """The entry's data as memoryviews (valid until the next entry is requested)."""
        return self._reader.chunks(self)

    def write_to(self, fd: int) -> int:
        """Write all of the entry's (unread) data to ``fd``; returns the bytes written."""
        return self._reader.write_to(self, fd)

    def read(self) -> bytes:
        """All of the entry's (unread) data; for small entries and tests."""
        return b"".join(bytes(chunk) for chunk in self.chunks())


def iter_entries(
    stream: Readable,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_pax_size: int = DEFAULT_MAX_PAX_SIZE,
) -> Iterator[Entry]:
    """Entries of the tar archive on ``stream``, in order.

    Data an entry's consumer leaves unread is skipped when the next entry is requested.
    """
    return TarReader(stream, max_size=max_size, max_pax_size=max_pax_size)


class TarReader:
    """The parser behind :func:`iter_entries` (an iterator of :class:`Entry`)."""

    def __init__(self, stream: Readable, *, max_size: int, max_pax_size: int) -> None:
        self._stream = stream
        self._max_size = max_size
        self._max_pax_size = max_pax_size
        self._buf = b""
        self._pos = 0
        self._consumed = 0  # stream bytes before _buf[0]
        self._current: Entry | None = None
        self._data_left = 0  # unread data bytes of the current entry
        self._pad_left = 0  # padding after them
        self._globals: dict[bytes, bytes] = {}
        self._last_name = ""
        self._done = False

    def __iter__(self) -> TarReader:
        return self

    def __next__(self) -> Entry:
        if self._done:
            raise StopIteration
        if self._current is not None:
            self._finish_current()
        entry = self._next_entry()
        if entry is None:
            self._done = True
            raise StopIteration
        self._current = entry
        self._last_name = entry.name
        return entry

    # --- the buffer --------------------------------------------------------------------------

    def _offset(self) -> int:
        return self._consumed + self._pos

    def _fill(self, n: int) -> bool:
        """Make ``n`` contiguous bytes available at ``_pos``; False if the stream ends first."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return True
        parts = [self._buf[self._pos:]]  # joined once: short reads must not go quadratic
        ended = False
        while avail < n:
            more = self._stream.read(READ_SIZE)
            if not more:
                ended = True
                break
            parts.append(more)
            avail += len(more)
        self._consumed += self._pos
        self._buf, self._pos = b"".join(parts), 0
        return not ended

    def _refill(self) -> bool:
        """Replace the (used up) buffer with the stream's next read; False at its end."""
        more = self._stream.read(READ_SIZE)
        if not more:
            return False
        self._consumed += len(self._buf)
        self._buf, self._pos = more, 0
        return True

    def _take(self, n: int) -> memoryview | None:
        """Up to ``n`` bytes (at least one) from the buffer, refilled when empty; None at EOF."""
        if self._pos >= len(self._buf) and not self._refill():
            return None
        start = self._pos
        end = min(start + n, len(self._buf))
        self._pos = end
        return memoryview(self._buf)[start:end]

    def _skip(self, n: int) -> int:
        """Skip ``n`` bytes; returns how many could not be skipped (stream ended)."""
        while n > 0:
            avail = len(self._buf) - self._pos
            if not avail and not self._refill():
                return n
            step = min(len(self._buf) - self._pos, n)
            self._pos += step
            n -= step
        return 0

    def _read_exact(self, n: int) -> bytes | None:
        if not self._fill(n):
            return None
        start = self._pos
        self._pos += n
        return self._buf[start:start + n]

    # --- data of the current entry -----------------------------------------------------------

    def _check_current(self, entry: Entry) -> None:
        if entry is not self._current:
            raise ValueError(f"data of entry {entry.name!r} is gone: a later entry was read")

    def chunks(self, entry: Entry) -> Iterator[memoryview]:
        self._check_current(entry)
        while self._data_left > 0:
            view = self._take(self._data_left)
            if view is None:
                raise self._truncated(entry)
            self._data_left -= len(view)
            yield view

    def write_to(self, entry: Entry, fd: int) -> int:
        self._check_current(entry)
        left, pos = self._data_left, self._pos
        if left <= len(self._buf) - pos:
            # The usual small file: all of it is in the buffer already.
            self._data_left, self._pos = 0, pos + left
            view = memoryview(self._buf)[pos:pos + left]
            while view:
                view = view[os.write(fd, view):]
            return left
        total = 0
        for view in self.chunks(entry):
            total += len(view)
            while view:
                view = view[os.write(fd, view):]
        return total

    def _finish_current(self) -> None:
        entry = self._current
        assert entry is not None
        self._current = None
        left = self._data_left + self._pad_left
        self._data_left = self._pad_left = 0
        if left <= len(self._buf) - self._pos:
            self._pos += left
        elif self._skip(left) > 0:
            raise self._truncated(entry)

    def _truncated(self, entry: Entry) -> UnpackError:
        return UnpackError(
            f"entry {entry.name!r}: archive ends inside the file data "
            f"({entry.data_size()} bytes from offset {entry.offset})"
        )

    # --- headers -----------------------------------------------------------------------------

    def _next_entry(self) -> Entry | None:
        meta: _Extended | None = None  # extended headers seen for this entry, if any
        first_offset = self._offset()
        while True:
            offset = self._offset()
            header = self._read_exact(BLOCK)
            if header is None:
                return self._end_of_stream(offset, meta is not None)
            if header == _ZERO_BLOCK:
                if meta is not None:
                    raise self._malformed(offset, "end of archive right after an extended header")
                self._check_end_marker(offset + BLOCK)
                return None
            _verify_checksum(header, offset, self._malformed)
            kind = header[156:157]
            if kind not in _META_TYPES:
                break
            if meta is None:
                meta = _Extended()
            self._read_extended(header, kind, offset, meta)
        entry = self._parse_header(header, offset)
        entry.offset = first_offset
        self._resolve(entry, meta)
        entry._reader = self
        size = 0 if entry.type in _HEADER_ONLY_TYPES else entry.size
        self._data_left = size
        self._pad_left = -size % BLOCK
        return entry

    def _read_extended(self, header: bytes, kind: bytes, offset: int, meta: _Extended) -> None:
        data = self._meta_data(header, kind, offset)
        if kind == GNUTYPE_LONGNAME or kind == GNUTYPE_LONGLINK:
            value = data.split(b"\0", 1)[0]
            attr = "longname" if kind == GNUTYPE_LONGNAME else "longlink"
            if getattr(meta, attr) is not None:
                raise self._malformed(offset, f"two GNU {attr} headers for one entry")
            setattr(meta, attr, value)
            return
        records = _parse_pax(data, lambda problem: self._malformed(offset, problem))
        if kind != XGLTYPE:
            if meta.pax is not None:
                raise self._malformed(offset, "two PAX extended headers for one entry")
            meta.pax = records
            return
        for key, value in records.items():
            if value:
                self._globals[key] = value
            else:  # POSIX: an empty global value deletes the keyword
                self._globals.pop(key, None)

    def _resolve(self, entry: Entry, meta: _Extended | None) -> None:
        """Apply extended headers and the old-format rules; check what the caller limits."""
        pax = meta.pax if meta is not None else None
        if pax or self._globals:
            self._apply_pax({**self._globals, **pax} if pax else self._globals, entry)
        if meta is not None and meta.longname is not None:
            entry.name = _text(meta.longname)
        if meta is not None and meta.longlink is not None:
            entry.linkname = _text(meta.longlink)
        if entry.type == AREGTYPE and entry.name.endswith("/"):
            entry.type = DIRTYPE  # old v7 directories
        if entry.type == DIRTYPE:
            entry.name = entry.name.rstrip("/") or entry.name[:1]
        if entry.size > self._max_size:
            raise UnpackError(
                f"entry {entry.name!r}: size {entry.size} refused (limit {self._max_size} bytes)"
            )
        if entry.type == GNUTYPE_SPARSE:
            raise UnpackError(f"entry {entry.name!r}: GNU sparse files are not supported")

    def _check_end_marker(self, offset: int) -> None:
        """The second end block may be missing, but must not be a header: entries hidden
        behind one zero block are what archive/tar (umoci) refuses and tarfile ignores."""
        second = self._read_exact(BLOCK)
        if second is not None and second != _ZERO_BLOCK:
            raise self._malformed(offset, "a zero block followed by data (entries after the end)")

    def _end_of_stream(self, offset: int, pending_meta: bool) -> None:
        partial = len(self._buf) - self._pos
        if partial:
            raise self._malformed(offset, f"archive ends inside a header ({partial} of {BLOCK} bytes)")
        if pending_meta:
            raise self._malformed(offset, "archive ends right after an extended header")
        return None

    def _meta_data(self, header: bytes, kind: bytes, offset: int) -> bytes:
        size = _number(header[124:136], "size", offset, self._malformed)
        if size > self._max_pax_size:
            raise self._malformed(
                offset,
                f"extended header ({kind.decode('latin-1')!r}) of {size} bytes refused "
                f"(limit {self._max_pax_size})",
            )
        data = self._read_exact(size + (-size % BLOCK))
        if data is None:
            raise self._malformed(offset, "archive ends inside an extended header")
        return data[:size]

    def _parse_header(self, header: bytes, offset: int) -> Entry:
        entry = Entry()
        entry.type = kind = header[156:157]
        # Strings end at their first NUL (as in tarfile and archive/tar).
        end = header.find(0, 0, 100)
        entry.name = header[0:end if end >= 0 else 100].decode("utf-8", "surrogateescape")
        if header[345] and header[257:263] == _USTAR_MAGIC:
            end = header.find(0, 345, 500)
            prefix = header[345:end if end >= 0 else 500].decode("utf-8", "surrogateescape")
            entry.name = prefix + "/" + entry.name
        if header[157]:
            end = header.find(0, 157, 257)
            entry.linkname = header[157:end if end >= 0 else 257].decode("utf-8", "surrogateescape")
        else:
            entry.linkname = ""
        entry.uname = _cstring(header[265:297]) if header[265] else ""
        entry.gname = _cstring(header[297:329]) if header[297] else ""
        numbers = header[100:148]
        fields = None
        if not numbers.translate(None, _NUMBER_BYTES):
            # The common case (plain octal, space/NUL padded) in a few C calls; anything
            # else (base-256, all-NUL fields, garbage) goes the careful way below.
            spaced = numbers.translate(_NUL_TO_SPACE)
            try:
                fields = (int(spaced[0:8], 8), int(spaced[8:16], 8), int(spaced[16:24], 8),
                          int(spaced[24:36], 8), int(spaced[36:48], 8))
            except ValueError:
                fields = None
        if fields is None:
            fail = self._malformed
            fields = (_number(header[100:108], "mode", offset, fail),
                      _number(header[108:116], "uid", offset, fail),
                      _number(header[116:124], "gid", offset, fail),
                      _number(header[124:136], "size", offset, fail),
                      _number(header[136:148], "mtime", offset, fail))
        entry.mode, entry.uid, entry.gid, entry.size, mtime = fields
        entry.mtime = mtime
        entry.mtime_ns = mtime * _NS
        if kind == CHRTYPE or kind == BLKTYPE:
            entry.devmajor = _number(header[329:337], "devmajor", offset, self._malformed)
            entry.devminor = _number(header[337:345], "devminor", offset, self._malformed)
        else:
            entry.devmajor = entry.devminor = 0
        entry.xattrs = {}
        return entry

    def _apply_pax(self, records: dict[bytes, bytes], entry: Entry) -> None:
        path = records.get(b"path")
        if path:
            entry.name = _text(path)  # first, so that errors below name the entry
        for key, value in records.items():
            if key.startswith(_XATTR_PREFIX):
                entry.xattrs[_text(key[len(_XATTR_PREFIX):])] = value  # empty is a value too
            elif not value or key == b"path":
                continue  # an empty value leaves the header's own field in place
            elif key == b"linkpath":
                entry.linkname = _text(value)
            elif key == b"size":
                entry.size = self._pax_int(entry, key, value)
            elif key == b"uid":
                entry.uid = self._pax_int(entry, key, value)
            elif key == b"gid":
                entry.gid = self._pax_int(entry, key, value)
            elif key == b"mtime":
                entry.mtime, entry.mtime_ns = self._pax_time(entry, value)
            elif key == b"uname":
                entry.uname = _text(value)
            elif key == b"gname":
                entry.gname = _text(value)
            elif key.startswith(_SPARSE_PREFIX):
                name = records.get(b"GNU.sparse.name") or records.get(b"path")
                shown = _text(name) if name else entry.name
                raise UnpackError(f"entry {shown!r}: GNU sparse files are not supported")

    def _pax_int(self, entry: Entry, key: bytes, value: bytes) -> int:
        if not value.isdigit():
            raise self._bad_pax(entry, key, value)
        return int(value)

    def _pax_time(self, entry: Entry, value: bytes) -> tuple[int | float, int]:
        whole, dot, fraction = value.partition(b".")
        if not whole.isdigit() or (dot and fraction and not fraction.isdigit()):
            raise self._bad_pax(entry, b"mtime", value)
        seconds = int(whole)
        if not fraction:
            return seconds, seconds * _NS
        # Exact nanoseconds from the decimal text; ``mtime`` is a float as in tarfile.
        nanos = int(fraction[:9].ljust(9, b"0"))
        return float(value), seconds * _NS + nanos

    def _bad_pax(self, entry: Entry, key: bytes, value: bytes) -> UnpackError:
        shown = value[:40].decode("ascii", "backslashreplace")
        return UnpackError(f"entry {entry.name!r}: PAX {_text(key)} value {shown!r} is not a "
                           "non-negative decimal number")

    def _malformed(self, offset: int, problem: str) -> UnpackError:
        return UnpackError(
            f"malformed tar at offset {offset}: {problem} (after entry {self._last_name!r})"
        )


# --- field decoding --------------------------------------------------------------------------


class _Extended:
    """What the extended headers before one entry said."""

    __slots__ = ("pax", "longname", "longlink")

    def __init__(self) -> None:
        self.pax: dict[bytes, bytes] | None = None
        self.longname: bytes | None = None
        self.longlink: bytes | None = None


class _Fail(Protocol):
    def __call__(self, offset: int, problem: str, /) -> UnpackError: ...


def _verify_checksum(header: bytes, offset: int, fail: _Fail) -> None:
    field = header[148:156]
    try:
        stored = int(field.translate(_NUL_TO_SPACE), 8)
    except ValueError:
        stored = _number(field, "checksum", offset, fail)
    if header.isascii():
        # adler32's low half is 1 + the byte sum mod 65521, and 512 ASCII bytes sum to at
        # most 65024, so one C call gives the exact sum (10x faster than sum() over ints).
        unsigned = (zlib.adler32(header) & 0xFFFF) - 1 - sum(field) + 8 * 32
        if stored != unsigned:
            raise fail(offset, f"bad header checksum (stored {stored}, computed {unsigned})")
        return
    unsigned = sum(header) - sum(field) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return
    # Some old tars (Sun, NeXT) summed signed chars.
    high = sum(1 for byte in header if byte >= 0x80) - sum(1 for byte in field if byte >= 0x80)
    if stored != unsigned - 256 * high:
        raise fail(offset, f"bad header checksum (stored {stored}, computed {unsigned})")


def _number(field: bytes, what: str, offset: int, fail: _Fail) -> int:
    """A numeric header field: octal text padded with spaces/NULs, or base-256."""
    first = field[0]
    if first == 0x80:
        return int.from_bytes(field[1:], "big")
    if first == 0xFF:
        raise fail(offset, f"negative {what} field (base-256)")
    text = field.strip(b" \x00")
    if not text:
        return 0
    if text.translate(None, _OCTAL):
        raise fail(offset, f"invalid {what} field {field!r}")
    return int(text, 8)


def _cstring(raw: bytes) -> str:
    end = raw.find(0)
    return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes, fail: _PaxFail) -> dict[bytes, bytes]:
    """PAX records (``"%d %s=%s\\n"``) by their length prefix; values stay bytes."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0 and data.count(0, pos) == end - pos:
            break  # NUL padding after the last record
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise fail(f"PAX record at byte {pos} has no length")
        stop = pos + int(digits)
        if stop > end or stop <= space + 1 or data[stop - 1] != 0x0A:
            raise fail(f"PAX record at byte {pos} has a bad length")
        equals = data.find(b"=", space + 1, stop)
        if equals <= space + 1:
            raise fail(f"PAX record at byte {pos} has no keyword")
        records[data[space + 1:equals]] = data[equals + 1:stop - 1]
        pos = stop
    return records


class _PaxFail(Protocol):
    def __call__(self, problem: str, /) -> UnpackError: ...
