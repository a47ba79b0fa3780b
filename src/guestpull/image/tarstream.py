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

* GNU sparse files — old GNU ``S`` headers (with extension blocks) and the PAX formats 0.0
  (repeated ``GNU.sparse.offset``/``numbytes``), 0.1 (``GNU.sparse.map``) and 1.0 (the map at
  the start of the data) — become regular entries of their real size with
  :attr:`Entry.sparse` set; :meth:`Entry.write_to` seeks over the holes (they stay holes) and
  :meth:`Entry.chunks` yields the zeros.  The map must be in order, inside the real size, and
  add up to the stored data.

Refused, with :class:`~guestpull.errors.UnpackError` naming the entry or the offset: bad
checksums, truncation, malformed numbers (including negative base-256 ones and decimals over
30 digits), sizes above ``max_size``, extended headers (and a sparse map) above
``max_pax_size``, more than :data:`MAX_PAX_RECORDS` records in one header, global headers
holding more than :data:`MAX_GLOBAL_RECORDS` records or :data:`MAX_GLOBAL_BYTES` in all, and
two extended headers of one kind for the same entry (ambiguous: tarfile and archive/tar
disagree on which wins).  Names in messages are cut to 200 characters.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from guestpull.errors import UnpackError, shown

BLOCK = 512
#: Size of every read from the stream.
READ_SIZE = 1 << 20
DEFAULT_MAX_SIZE = 1 << 40
DEFAULT_MAX_PAX_SIZE = 1 << 20
#: Records in one PAX header.  Real ones carry a handful (path, times, ids, a few xattrs; an
#: inode's xattrs fit 64 KiB on ext4); a 1 MiB header of ``6 a=b\n`` records would be 170,000.
MAX_PAX_RECORDS = 4096
#: What ``g`` headers may hold in total, across the archive.  They apply to every later entry
#: (merged per entry), and real archives use one or two keys (``git archive``: ``comment``);
#: without a bound, 400 distinct 1 MiB global headers held 543 MiB.
MAX_GLOBAL_RECORDS = 256
MAX_GLOBAL_BYTES = 64 << 10

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
        "uname", "gname", "devmajor", "devminor", "xattrs", "offset", "sparse", "_reader",
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
    #: For a GNU sparse file: its data segments ``(offset, length)`` in the file; ``size`` is
    #: then the file's full size and the archive holds only the segments.  Else None.
    sparse: tuple[tuple[int, int], ...] | None
    _reader: TarReader

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
        """Write all of the entry's (unread) data to ``fd``; returns the bytes written.

        A sparse file's holes are skipped with ``lseek`` (so they stay holes) and the file is
        extended to its full size.
        """
        if self.sparse is not None:
            return self._reader.write_sparse_to(self, fd)
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
            raise ValueError(f"data of entry {shown(entry.name)} is gone: a later entry was read")

    def chunks(self, entry: Entry) -> Iterator[memoryview]:
        self._check_current(entry)
        if entry.sparse is not None:
            yield from self._sparse_chunks(entry)
            return
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

    def _segment(self, entry: Entry, length: int) -> Iterator[memoryview]:
        """The next ``length`` stored data bytes of the current (sparse) entry."""
        while length > 0:
            view = self._take(length)
            if view is None:
                raise self._truncated(entry)
            length -= len(view)
            self._data_left -= len(view)
            yield view

    def _sparse_chunks(self, entry: Entry) -> Iterator[memoryview]:
        assert entry.sparse is not None
        position = 0
        for offset, length in entry.sparse:
            yield from _zeros(offset - position)
            yield from self._segment(entry, length)
            position = offset + length
        yield from _zeros(entry.size - position)

    def write_sparse_to(self, entry: Entry, fd: int) -> int:
        self._check_current(entry)
        assert entry.sparse is not None
        for offset, length in entry.sparse:
            os.lseek(fd, offset, os.SEEK_SET)
            for view in self._segment(entry, length):
                while view:
                    view = view[os.write(fd, view):]
        os.ftruncate(fd, entry.size)
        return entry.size

    def _finish_current(self) -> None:
        entry = self._current
        assert entry is not None
        self._current = None
        data, padding = self._data_left, self._pad_left
        self._data_left = self._pad_left = 0
        if data + padding <= len(self._buf) - self._pos:
            self._pos += data + padding
            return
        if self._skip(data) > 0:
            raise self._truncated(entry)
        # An archive may end inside the last file's padding: umoci 0.4's `insert` writes such
        # layers and Go's archive/tar (umoci, containerd) reads them.  The data is whole, and
        # the next header read finds the end of the stream.
        self._skip(padding)

    def _truncated(self, entry: Entry) -> UnpackError:
        return UnpackError(
            f"entry {shown(entry.name)}: archive ends inside the file data "
            f"({entry.data_size()} bytes from offset {entry.offset})"
        )

    # --- headers -----------------------------------------------------------------------------

    def _next_entry(self) -> Entry | None:
        meta: _Extended | None = None  # extended headers seen for this entry, if any
        first_offset = self._consumed + self._pos
        while True:
            offset, pos = self._consumed + self._pos, self._pos
            header: bytes | None
            if pos + BLOCK <= len(self._buf):  # the usual case, without _read_exact's calls
                header = self._buf[pos:pos + BLOCK]
                self._pos = pos + BLOCK
            else:
                header = self._read_exact(BLOCK)
            if header is None:
                self._end_of_stream(offset, meta is not None)
                return None
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
        old_sparse = self._old_gnu_sparse(header, offset) if entry.type == GNUTYPE_SPARSE else None
        self._resolve(entry, meta)
        entry._reader = self
        size = 0 if entry.type in _HEADER_ONLY_TYPES else entry.size
        if old_sparse is None and (meta is None or not meta.pax):
            entry.sparse, stored = None, size  # what _sparse says without a sparse header
        else:
            stored = self._sparse(entry, meta, old_sparse, size)
        self._data_left = stored
        self._pad_left = -stored % BLOCK
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
        total = sum(len(key) + len(value) for key, value in self._globals.items())
        if len(self._globals) > MAX_GLOBAL_RECORDS or total > MAX_GLOBAL_BYTES:
            raise self._malformed(
                offset,
                f"global PAX headers hold {len(self._globals)} records of {total} bytes "
                f"(limit {MAX_GLOBAL_RECORDS} records, {MAX_GLOBAL_BYTES} bytes)",
            )

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
                f"entry {shown(entry.name)}: size {entry.size} refused (limit {self._max_size} bytes)"
            )

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
            elif key == b"GNU.sparse.name":
                entry.name = _text(value)  # the real name of a sparse file (path is a stand-in)

    # --- GNU sparse files ------------------------------------------------------------------

    def _old_gnu_sparse(self, header: bytes, offset: int) -> tuple[list[int], int]:
        """The old GNU ``S`` header's map (flat offset/length list) and real size; reads the
        extension blocks that follow the header."""
        numbers: list[int] = []
        block, start, count, flag = header, 386, 4, 482
        blocks = 0
        while True:
            for i in range(count):
                field = block[start + 24 * i:start + 24 * i + 24]
                if not field.strip(b"\0"):
                    break
                numbers.append(_number(field[:12], "sparse offset", offset, self._malformed))
                numbers.append(_number(field[12:], "sparse length", offset, self._malformed))
            if not block[flag]:
                break
            blocks += 1
            if blocks * BLOCK > self._max_pax_size:
                raise self._malformed(offset, f"sparse map of over {blocks} blocks refused")
            extension = self._read_exact(BLOCK)
            if extension is None:
                raise self._malformed(offset, "archive ends inside a sparse map")
            block, start, count, flag = extension, 0, 21, 504
        return numbers, _number(header[483:495], "sparse real size", offset, self._malformed)

    def _sparse(self, entry: Entry, meta: _Extended | None,
                old: tuple[list[int], int] | None, stored: int) -> int:
        """Set ``entry.sparse`` (and its real size) for GNU sparse files; returns the number
        of data bytes that follow in the archive."""
        entry.sparse = None
        if old is not None:
            numbers, real_size = old
        else:
            pax = meta.pax if meta is not None and meta.pax else None
            if pax is None or not any(key.startswith(_SPARSE_PREFIX) for key in pax):
                return stored
            if entry.type not in _REGULAR_TYPES:
                raise UnpackError(f"entry {shown(entry.name)}: sparse map on a non-file entry")
            numbers, real_size, stored = self._pax_sparse(entry, pax, stored)
        entry.type = REGTYPE
        entry.sparse = _sparse_map(numbers, real_size, stored, self._max_size,
                                   lambda problem: UnpackError(
                                       f"entry {shown(entry.name)}: {problem}"))
        entry.size = real_size
        return stored

    def _pax_sparse(self, entry: Entry, pax: dict[bytes, bytes],
                    stored: int) -> tuple[list[int], int, int]:
        """The PAX sparse formats: 0.0 (offset/numbytes records), 0.1 (``map``), 1.0 (the map
        at the start of the data).  Returns the map, the real size and the data size."""
        def number(key: bytes) -> int:
            return self._pax_int(entry, key, pax.get(key, b""))

        if pax.get(b"GNU.sparse.major") == b"1" and pax.get(b"GNU.sparse.minor") == b"0":
            real_size = number(b"GNU.sparse.realsize")
            numbers, used = self._sparse_map_in_data(entry, stored)
            return numbers, real_size, stored - used
        real_size = number(b"GNU.sparse.size")
        if b"GNU.sparse.map" in pax:  # 0.1
            text = pax[b"GNU.sparse.map"]
        elif b"GNU.sparse.offset" in pax:  # 0.0: the records repeat, in order
            offsets = pax[b"GNU.sparse.offset"].split(b",")
            lengths = pax.get(b"GNU.sparse.numbytes", b"").split(b",")
            if len(offsets) != len(lengths):
                raise UnpackError(f"entry {shown(entry.name)}: sparse offsets and lengths differ")
            text = b",".join(b"%s,%s" % pair for pair in zip(offsets, lengths, strict=True))
        else:
            raise UnpackError(f"entry {shown(entry.name)}: GNU sparse header without a map")
        return _numbers(text.split(b",") if text else [], entry), real_size, stored

    def _sparse_map_in_data(self, entry: Entry, stored: int) -> tuple[list[int], int]:
        """Format 1.0: decimal lines (count, then offset/length pairs) in whole blocks."""
        text = bytearray()
        newlines = 0
        wanted: int | None = None
        while wanted is None or newlines < wanted:
            if len(text) + BLOCK > min(stored, self._max_pax_size):
                raise UnpackError(f"entry {shown(entry.name)}: sparse map too long or truncated")
            block = self._read_exact(BLOCK)
            if block is None:
                raise self._truncated(entry)
            text += block
            newlines += block.count(b"\n")
            if wanted is None and newlines:
                wanted = 1 + 2 * _numbers([bytes(text[:text.index(b"\n")])], entry)[0]
        lines = bytes(text).split(b"\n", wanted)
        return _numbers(lines[1:wanted], entry), len(text)

    def _pax_int(self, entry: Entry, key: bytes, value: bytes) -> int:
        if not _is_decimal(value):
            raise self._bad_pax(entry, key, value)
        return int(value)

    def _pax_time(self, entry: Entry, value: bytes) -> tuple[int | float, int]:
        whole, dot, fraction = value.partition(b".")
        if not _is_decimal(whole) or (dot and fraction and not fraction.isdigit()):
            raise self._bad_pax(entry, b"mtime", value)
        seconds = int(whole)
        if not fraction:
            return seconds, seconds * _NS
        # Exact nanoseconds from the decimal text; ``mtime`` is a float as in tarfile.
        nanos = int(fraction[:9].ljust(9, b"0"))
        return float(value), seconds * _NS + nanos

    def _bad_pax(self, entry: Entry, key: bytes, value: bytes) -> UnpackError:
        text = value[:40].decode("ascii", "backslashreplace")
        return UnpackError(f"entry {shown(entry.name)}: PAX {shown(_text(key))} value {text!r} "
                           f"is not a non-negative decimal number (of at most {_MAX_DIGITS} digits)")

    def _malformed(self, offset: int, problem: str) -> UnpackError:
        return UnpackError(
            f"malformed tar at offset {offset}: {problem} (after entry {shown(self._last_name)})"
        )


# --- field decoding --------------------------------------------------------------------------


def _zeros(count: int) -> Iterator[memoryview]:
    """``count`` zero bytes (a sparse file's hole) in views of at most one READ_SIZE."""
    block = memoryview(bytes(min(count, READ_SIZE)))
    while count > 0:
        step = min(count, READ_SIZE)
        yield block[:step]
        count -= step


_MAX_DIGITS = 30  # a decimal field beyond 2**64 by far; int() refuses 4,300 digits anyway


def _is_decimal(value: bytes) -> bool:
    return value.isdigit() and len(value) <= _MAX_DIGITS


def _numbers(fields: list[bytes], entry: Entry) -> list[int]:
    if not all(_is_decimal(field) for field in fields):
        raise UnpackError(f"entry {shown(entry.name)}: sparse map holds a non-number")
    return [int(field) for field in fields]


def _sparse_map(numbers: list[int], real_size: int, stored: int, max_size: int,
                fail: Callable[[str], UnpackError]) -> tuple[tuple[int, int], ...]:
    """Check a sparse map: pairs, in order, not overlapping, inside the real size, and adding
    up to the data the archive holds."""
    if len(numbers) % 2:
        raise fail("sparse map has an odd number of fields")
    if real_size > max_size:
        raise fail(f"sparse file size {real_size} refused (limit {max_size} bytes)")
    segments = tuple(zip(numbers[::2], numbers[1::2], strict=True))
    position = total = 0
    for offset, length in segments:
        if offset < position or offset + length > real_size:
            raise fail(f"sparse segment ({offset}, {length}) out of order or beyond the "
                       f"file's size {real_size}")
        position = offset + length
        total += length
    if total != stored:
        raise fail(f"sparse segments hold {total} bytes but the archive has {stored}")
    return segments


class _Extended:
    """What the extended headers before one entry said."""

    __slots__ = ("longlink", "longname", "pax")

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
    pos, end, count = 0, len(data), 0
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
        count += 1
        if count > MAX_PAX_RECORDS:
            raise fail(f"more than {MAX_PAX_RECORDS} PAX records in one header")
        key, value = data[space + 1:equals], data[equals + 1:stop - 1]
        if key in _REPEATED_SPARSE_KEYS and key in records:
            value = records[key] + b"," + value  # sparse format 0.0 repeats these, in order
        records[key] = value
        pos = stop
    return records


_REPEATED_SPARSE_KEYS = frozenset({b"GNU.sparse.offset", b"GNU.sparse.numbytes"})


class _PaxFail(Protocol):
    def __call__(self, problem: str, /) -> UnpackError: ...
