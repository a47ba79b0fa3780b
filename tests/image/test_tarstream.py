"""The tar pull parser: what tarfile reads, it reads the same; hostile headers are refused by name."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from guestpull.errors import UnpackError
from guestpull.image import tarstream
from guestpull.image.tarstream import READ_SIZE, Entry, iter_entries

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
MTIME = 1_600_000_000


# --- building archives -------------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A stream whose reads return at most ``limit`` bytes (as decompressors may), and that
    records the sizes asked for."""

    def __init__(self, data: bytes, limit: int = 1 << 30) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self.limit = limit
        self.asked: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return self._data.read(min(size, self.limit))


def info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mtime = MTIME
    member.mode = 0o644
    for key, value in fields.items():
        setattr(member, key, value)
    return member


def build(members: Iterable[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT,
          **open_kw: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **open_kw) as tar:  # type: ignore[call-overload]
        for member, data in members:
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def with_checksum(block: bytes) -> bytes:
    """``block`` with its checksum field recomputed (after a test patched other fields)."""
    blank = block[:148] + b" " * 8 + block[156:]
    return blank[:148] + b"%06o\0 " % sum(blank) + blank[156:]


def patch(block: bytes, start: int, raw: bytes) -> bytes:
    return with_checksum(block[:start] + raw + block[start + len(raw):])


def meta_member(kind: bytes, data: bytes, name: str = "././@PaxHeader") -> bytes:
    """An extended header (x, g, L, K...) with ``data`` as its content, padded to blocks."""
    header = info(name, kind, size=len(data)).tobuf(tarfile.USTAR_FORMAT)
    return header + data + bytes(-len(data) % 512)


def pax_records(records: dict[bytes, bytes]) -> bytes:
    out = b""
    for key, value in records.items():
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def parse(data: bytes, **kw: int) -> list[tuple[Entry, bytes]]:
    return [(entry, entry.read()) for entry in iter_entries(ShortReads(data), **kw)]


def tarfile_parse(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isreg() else None
            out.append((member, reader.read() if reader else b""))
    return out


def assert_same_as_tarfile(data: bytes) -> list[tuple[Entry, bytes]]:
    ours = parse(data)
    theirs = tarfile_parse(data)
    assert [e.name for e, _ in ours] == [m.name for m, _ in theirs]
    for (entry, our_data), (member, their_data) in zip(ours, theirs, strict=True):
        where = member.name
        assert entry.type == member.type, where
        assert (entry.size, entry.mode, entry.uid, entry.gid) == \
            (member.size, member.mode, member.uid, member.gid), where
        assert entry.mtime == member.mtime, where
        assert (entry.linkname, entry.uname, entry.gname) == \
            (member.linkname, member.uname, member.gname), where
        if member.ischr() or member.isblk():
            assert (entry.devmajor, entry.devminor) == (member.devmajor, member.devminor), where
        for check in ("isreg", "isdir", "issym", "islnk", "ischr", "isblk", "isfifo"):
            assert getattr(entry, check)() == getattr(member, check)(), (where, check)
        assert our_data == their_data, where
        assert entry.xattrs == {
            key.removeprefix("SCHILY.xattr."): value.encode("utf-8", "surrogateescape")
            for key, value in member.pax_headers.items() if key.startswith("SCHILY.xattr.")
        }, where
    return ours


# --- round trips against tarfile -------------------------------------------------------------

LONG_DIR = "d" * 120
EVERY_KIND: list[tuple[tarfile.TarInfo, bytes | None]] = [
    (info("dir", tarfile.DIRTYPE, mode=0o755), None),
    (info("dir/file", uid=1000, gid=100, uname="user", gname="users"), b"hello\n"),
    (info("dir/empty"), b""),
    (info("dir/exactly-512"), b"x" * 512),
    (info("dir/contiguous", tarfile.CONTTYPE), b"contiguous data"),
    (info("dir/link", tarfile.SYMTYPE, linkname="file", mode=0o777), None),
    (info("dir/hard", tarfile.LNKTYPE, linkname="dir/file"), None),
    (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
    (info("dev/loop9", tarfile.BLKTYPE, devmajor=7, devminor=9), None),
    (info("fifo", tarfile.FIFOTYPE), None),
    (info("su", mode=0o4755), b"#!"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_entry_kind(fmt: str) -> None:
    ours = assert_same_as_tarfile(build(EVERY_KIND, FORMATS[fmt]))
    assert len(ours) == len(EVERY_KIND)
    assert ours[1][1] == b"hello\n" and ours[1][0].uname == "user"


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_long_names_and_link_targets(fmt: str) -> None:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (info("n" * 101), b"over 100"),
        (info(f"{LONG_DIR}/{'m' * 140}"), b"over 255"),
        (info(f"{LONG_DIR}/dir/", tarfile.DIRTYPE), None),
        (info("sym", tarfile.SYMTYPE, linkname="t" * 300), None),
        (info("hard", tarfile.LNKTYPE, linkname="n" * 101), None),
        (info("ünïcødé/" + "é" * 80), b"utf-8 name"),
    ]
    ours = assert_same_as_tarfile(build(members, FORMATS[fmt]))
    assert ours[1][0].name == f"{LONG_DIR}/{'m' * 140}" and ours[3][0].linkname == "t" * 300


def test_ustar_prefix_field() -> None:
    name = f"{'p' * 150}/{'n' * 90}"  # fits ustar only through the 155-byte prefix
    ours = assert_same_as_tarfile(build([(info(name), b"x")], tarfile.USTAR_FORMAT))
    assert ours[0][0].name == name


def test_xattrs_with_binary_values() -> None:
    member = info("f", pax_headers={
        "SCHILY.xattr.user.bin": b"\x00\xff\x01\n=".decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.text": "plain",
        "SCHILY.xattr.security.capability": b"\x01\x00\x00\x02".decode("latin-1"),
    })
    ours = assert_same_as_tarfile(build([(member, b"data")]))
    assert ours[0][0].xattrs["user.bin"] == b"\x00\xff\x01\n="
    assert ours[0][0].xattrs["user.text"] == b"plain"


def test_fractional_pax_mtime_is_exact_to_the_nanosecond() -> None:
    member = info("f", pax_headers={"mtime": "1600000000.123456789"})
    ours = assert_same_as_tarfile(build([(member, b"")]))
    assert ours[0][0].mtime_ns == 1_600_000_000_123_456_789
    assert ours[0][0].mtime == pytest.approx(1600000000.123456789)


def test_pax_overrides_size_uid_gid_and_path() -> None:
    member = info("short", pax_headers={"path": "from/pax", "uid": "4000000000", "gid": "7",
                                        "uname": "ü", "linkpath": "ignored-for-files"})
    ours = assert_same_as_tarfile(build([(member, b"z" * 1000)]))
    entry = ours[0][0]
    assert (entry.name, entry.uid, entry.gid, entry.size) == ("from/pax", 4_000_000_000, 7, 1000)


def test_base256_uid_from_gnu_format() -> None:
    member = info("big-ids", uid=1 << 40, gid=(1 << 21) + 5)  # beyond 7 octal digits
    ours = assert_same_as_tarfile(build([(member, b"x")], tarfile.GNU_FORMAT))
    assert ours[0][0].uid == 1 << 40


def test_base256_size_field() -> None:
    data = b"abcde"
    archive = build([(info("f"), data)], tarfile.USTAR_FORMAT)
    patched = patch(archive[:512], 124, b"\x80" + (5).to_bytes(11, "big")) + archive[512:]
    ours = assert_same_as_tarfile(patched)
    assert ours[0][0].size == 5 and ours[0][1] == data


def test_global_pax_header_applies_to_every_later_entry() -> None:
    archive = build([(info("a"), b"1"), (info("b"), b"2")],
                    pax_headers={"uid": "42", "SCHILY.xattr.user.g": "global"})
    ours = assert_same_as_tarfile(archive)
    assert [e.uid for e, _ in ours] == [42, 42]
    assert all(e.xattrs == {"user.g": b"global"} for e, _ in ours)


def test_old_v7_header_and_slash_directory() -> None:
    block = info("olddir/", tarfile.AREGTYPE).tobuf(tarfile.USTAR_FORMAT)
    v7 = patch(block, 257, bytes(255))  # no magic, no owner names, no prefix
    file_block = patch(info("olddir/f", size=3).tobuf(tarfile.USTAR_FORMAT), 257, bytes(255))
    archive = v7 + file_block + b"abc" + bytes(509) + bytes(1024)
    ours = assert_same_as_tarfile(archive)
    assert ours[0][0].isdir() and ours[0][0].name == "olddir"


def test_numeric_fields_padded_with_spaces_and_nuls() -> None:
    block = info("f", size=4).tobuf(tarfile.USTAR_FORMAT)
    block = patch(block, 100, b"  644 \0\0")  # mode with leading spaces
    block = patch(block, 108, bytes(8))  # uid all NULs
    block = patch(block, 124, b"4" + bytes(11))  # size, NUL padded
    ours = parse(block + b"data" + bytes(508) + bytes(1024))
    assert (ours[0][0].mode, ours[0][0].uid, ours[0][1]) == (0o644, 0, b"data")


def test_signed_checksum_is_accepted() -> None:
    block = info("f").tobuf(tarfile.USTAR_FORMAT)
    block = block[:265] + b"\xe9" * 4 + block[269:]  # high bytes in uname
    blank = block[:148] + b" " * 8 + block[156:]
    signed = sum(b - 256 if b >= 128 else b for b in blank)
    block = blank[:148] + b"%06o\0 " % signed + blank[156:]
    assert parse(block + bytes(1024))[0][0].name == "f"


def test_header_only_types_carry_no_data_whatever_their_size() -> None:
    block = patch(info("d", tarfile.DIRTYPE).tobuf(tarfile.USTAR_FORMAT), 124, b"%011o\0" % 4096)
    archive = block + build([(info("after"), b"ok")], tarfile.USTAR_FORMAT)
    ours = assert_same_as_tarfile(archive)
    assert [e.name for e, _ in ours] == ["d", "after"] and ours[1][1] == b"ok"


def test_gnu_long_name_wins_over_pax_path() -> None:
    entry = info("short").tobuf(tarfile.USTAR_FORMAT)
    archive = (meta_member(b"x", pax_records({b"path": b"pax-name"}))
               + meta_member(b"L", b"gnu-name\0", "././@LongLink") + entry + bytes(1024))
    assert parse(archive)[0][0].name == "gnu-name"


# --- end of archive and resynchronisation ----------------------------------------------------


def test_end_of_archive_variants() -> None:
    archive = build([(info("a"), b"1")], tarfile.USTAR_FORMAT)
    body = archive[:1024]  # header + one data block
    assert [e.name for e, _ in parse(body + bytes(512))] == ["a"]  # one end block only
    assert [e.name for e, _ in parse(body)] == ["a"]  # no end marker at all
    assert [e.name for e, _ in parse(body + bytes(1024) + b"\x01" * 700)] == ["a"]  # trailing junk
    assert [e.name for e, _ in parse(body + bytes(512) + b"\x01" * 100)] == ["a"]  # half a block
    assert parse(b"") == []


def test_entries_hidden_behind_one_zero_block_are_refused() -> None:
    first = build([(info("a"), b"1")], tarfile.USTAR_FORMAT)[:1024]
    hidden = build([(info("hidden"), b"2")], tarfile.USTAR_FORMAT)
    refused(first + bytes(512) + hidden, "offset 1536", "zero block followed by data", "'a'")


def test_reading_stops_at_the_end_marker() -> None:
    trailer = b"T" * (3 * READ_SIZE)
    stream = io.BytesIO(build([(info("a"), b"1")]) + trailer)
    assert [e.name for e in iter_entries(stream)] == ["a"]
    assert len(stream.read()) >= len(trailer) - READ_SIZE  # left for the caller to drain


def test_unread_data_is_skipped(shm_path: Path) -> None:
    big = os.urandom(3 * READ_SIZE + 123)
    archive = build([(info("skip-me"), big), (info("half"), big), (info("last"), b"end")])
    entries = iter_entries(ShortReads(archive, limit=70_000))
    assert next(entries).name == "skip-me"
    half = next(entries)
    next(iter(half.chunks()))  # read one chunk, leave the rest
    last = next(entries)
    assert (last.name, last.read()) == ("last", b"end")
    assert list(entries) == []


def test_big_file_is_read_in_1mib_chunks_without_copies(shm_path: Path) -> None:
    big = os.urandom(4 * READ_SIZE + 1000)
    stream = ShortReads(build([(info("big"), big)]))
    entry = next(iter_entries(stream))
    views = list(entry.chunks())
    assert all(isinstance(v, memoryview) and len(v) <= READ_SIZE for v in views)
    assert b"".join(views) == big
    assert set(stream.asked) == {READ_SIZE}


def test_write_to_writes_exactly_the_data(shm_path: Path) -> None:
    payloads = [b"", b"x", os.urandom(READ_SIZE + 5), os.urandom(777)]
    archive = build([(info(f"f{i}"), p) for i, p in enumerate(payloads)])
    for entry, payload in zip(iter_entries(ShortReads(archive, limit=4096)), payloads, strict=True):
        path = shm_path / entry.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert entry.write_to(fd) == len(payload)
        finally:
            os.close(fd)
        assert path.read_bytes() == payload


def test_data_of_an_earlier_entry_is_refused() -> None:
    entries = iter_entries(io.BytesIO(build([(info("a"), b"1"), (info("b"), b"2")])))
    first = next(entries)
    next(entries)
    with pytest.raises(ValueError, match="'a'"):
        first.read()


# --- hypothesis: random archives read as tarfile reads them ----------------------------------

_names = st.text(
    alphabet=st.sampled_from("abcXYZ019-_.é文 "), min_size=1, max_size=40
).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_names, min_size=1, max_size=8).map("/".join)


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    kind = draw(st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE,
                                 tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                 tarfile.FIFOTYPE, tarfile.CONTTYPE]))
    member = info(draw(_paths), kind)
    member.mode = draw(st.integers(0, 0o7777))
    member.uid = draw(st.integers(0, (1 << 32) - 1))
    member.gid = draw(st.integers(0, 1 << 21))
    member.mtime = draw(st.integers(0, (1 << 33) - 1))
    member.uname = draw(st.sampled_from(["", "root", "ü"]))
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        member.linkname = draw(_paths)
    if kind == tarfile.CHRTYPE:
        member.devmajor, member.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 1 << 20))
    if draw(st.booleans()):
        member.pax_headers = {
            f"SCHILY.xattr.user.{k}": v.decode("utf-8", "surrogateescape")
            for k, v in draw(st.dictionaries(st.sampled_from("abc"), st.binary(max_size=20),
                                             max_size=2)).items()
        }
    data = draw(st.binary(max_size=1500)) if kind in tarfile.REGULAR_TYPES else None
    return member, data


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(members(), max_size=8), st.sampled_from(list(FORMATS.values())),
       st.sampled_from([1, 100, 512, 4096, 1 << 30]))
def test_random_archives_parse_like_tarfile(
    entries: Sequence[tuple[tarfile.TarInfo, bytes | None]], fmt: int, read_limit: int
) -> None:
    if fmt != tarfile.PAX_FORMAT:
        for member, _ in entries:
            member.pax_headers = {}
    try:
        archive = build(entries, fmt)
    except ValueError:
        assume(False)  # e.g. a name ustar cannot hold
    ours = assert_same_as_tarfile(archive)
    # The same through a stream of short reads.
    again = [(e.name, d) for e, d in
             ((e, e.read()) for e in iter_entries(ShortReads(archive, limit=read_limit)))]
    assert again == [(e.name, d) for e, d in ours]


# --- hostile headers ---------------------------------------------------------------------------


def refused(archive: bytes, *expected: str, **kw: int) -> UnpackError:
    with pytest.raises(UnpackError) as caught:
        parse(archive, **kw)
    for text in expected:
        assert text in str(caught.value)
    return caught.value


def test_bad_checksum_names_the_offset_and_previous_entry() -> None:
    archive = build([(info("first"), b"1"), (info("second"), b"2")], tarfile.USTAR_FORMAT)
    broken = archive[:1024] + archive[1024:1030] + b"X" + archive[1031:]
    refused(broken, "offset 1024", "checksum", "'first'")


def test_garbage_is_refused() -> None:
    refused(b"\x01" * 2048, "malformed tar at offset 0")


def test_truncated_data_names_the_entry() -> None:
    archive = build([(info("victim"), b"y" * 5000)], tarfile.USTAR_FORMAT)
    refused(archive[:512 + 100], "'victim'", "ends inside the file data")


@pytest.mark.parametrize("padding_kept", [0, 1, 119])
def test_an_archive_may_end_inside_the_last_files_padding(padding_kept: int) -> None:
    """umoci 0.4 `insert` writes such layers; Go's archive/tar (umoci, containerd) reads them."""
    archive = build([(info("first"), b"x" * 10), (info("last"), b"y" * 5000)], tarfile.USTAR_FORMAT)
    end_of_data = 512 + 512 + 512 + 5000
    entries = parse(archive[:end_of_data + padding_kept])
    assert [(e.name, data) for e, data in entries] == [("first", b"x" * 10), ("last", b"y" * 5000)]


def test_truncated_header() -> None:
    archive = build([(info("a"), b"1")], tarfile.USTAR_FORMAT)
    refused(archive[:1024 + 300], "offset 1024", "inside a header", "'a'")


def test_negative_base256_is_refused() -> None:
    block = patch(info("neg").tobuf(tarfile.USTAR_FORMAT), 108, b"\xff" * 8)
    refused(block + bytes(1024), "negative uid", "offset 0")


def test_invalid_octal_is_refused() -> None:
    block = patch(info("odd").tobuf(tarfile.USTAR_FORMAT), 100, b"0o644\0\0\0")
    refused(block + bytes(1024), "invalid mode")


def test_huge_pax_header_is_refused_before_reading_it() -> None:
    header = info("././@PaxHeader", b"x", size=2 << 20).tobuf(tarfile.USTAR_FORMAT)
    stream = ShortReads(header + bytes(1024))  # the promised 2 MiB never come
    with pytest.raises(UnpackError, match="extended header .* 2097152 bytes refused"):
        list(iter_entries(stream, max_pax_size=1 << 20))


def test_huge_gnu_long_name_is_refused() -> None:
    refused(meta_member(b"L", b"n" * 5000, "././@LongLink") + bytes(1024),
            "extended header", "5000 bytes refused", max_pax_size=4096)


def test_size_above_the_limit_names_the_entry() -> None:
    header = info("huge", size=1 << 35).tobuf(tarfile.GNU_FORMAT)
    refused(header + bytes(1024), "'huge'", "refused", max_size=1 << 30)


@pytest.mark.parametrize("records", [
    b"99 path=x\n",  # length beyond the header
    b"5 path=x\n",  # length too short
    b"path=x\n",  # no length
    b"10 pathx\n\n",  # no '='
], ids=["too-long", "too-short", "no-length", "no-equals"])
def test_malformed_pax_records(records: bytes) -> None:
    archive = meta_member(b"x", records) + info("next").tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    refused(archive, "PAX record", "offset 0")


def test_non_numeric_pax_size_names_the_entry() -> None:
    archive = (meta_member(b"x", pax_records({b"size": b"12abc", b"path": b"named"}))
               + info("x").tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    refused(archive, "'named'", "size")


def test_negative_pax_mtime_is_refused() -> None:
    archive = (meta_member(b"x", pax_records({b"mtime": b"-5"}))
               + info("old").tobuf(tarfile.USTAR_FORMAT) + bytes(1024))
    refused(archive, "'old'", "mtime")


def test_two_pax_headers_for_one_entry_are_refused() -> None:
    x = meta_member(b"x", pax_records({b"path": b"a"}))
    refused(x + x + info("e").tobuf(tarfile.USTAR_FORMAT) + bytes(1024), "two PAX", "offset 1024")


def test_two_gnu_long_names_for_one_entry_are_refused() -> None:
    long_name = meta_member(b"L", b"x" * 200 + b"\0", "././@LongLink")
    refused(long_name + long_name + info("e").tobuf(tarfile.USTAR_FORMAT) + bytes(1024),
            "two GNU longname", "offset 1024")


def test_archive_ending_after_an_extended_header() -> None:
    x = meta_member(b"x", pax_records({b"path": b"a"}))
    refused(x, "after an extended header")
    refused(x + bytes(1024), "after an extended header")
    refused(x[:700], "inside an extended header")


def test_constants_match_tarfile() -> None:
    for name in ("REGTYPE", "AREGTYPE", "LNKTYPE", "SYMTYPE", "CHRTYPE", "BLKTYPE", "DIRTYPE",
                 "FIFOTYPE", "CONTTYPE", "XHDTYPE", "XGLTYPE", "GNUTYPE_LONGNAME",
                 "GNUTYPE_LONGLINK", "GNUTYPE_SPARSE"):
        assert getattr(tarstream, name) == getattr(tarfile, name), name
