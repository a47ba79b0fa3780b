"""The applier's limits (issue 9): path length, entries, PAX records and globals, kept
warnings; memory linear in the input; long names cut in messages."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest

from guestpull.errors import ECHO_LIMIT, UnpackError, shown
from guestpull.image import tarstream, unpack
from guestpull.image.fsops import MAX_PATH_BYTES, Tree
from guestpull.image.tarstream import iter_entries
from guestpull.image.unpack import MAX_NOTES, _PathSet, apply_layer
from guestpull.testing import hostiletar as h


def tar(*members: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(members) + h.end())


def test_a_name_over_path_max_is_refused_and_cut_in_the_message(shm_path: Path) -> None:
    name = b"a/" * 32_767 + b"f"
    with pytest.raises(UnpackError) as caught:
        apply_layer(tar(h.pax([(b"path", name)]) + h.member(b"x", data=b"1")), shm_path, mode="copy")
    message = str(caught.value)
    assert f"limit {MAX_PATH_BYTES}" in message and "65535 bytes" in message
    assert len(message) < 400 and f"…(+{65535 - ECHO_LIMIT} chars)" in message
    assert list(shm_path.iterdir()) == []


def test_a_name_at_path_max_is_accepted(shm_path: Path) -> None:
    name = b"d/" * 2000 + b"f" * (MAX_PATH_BYTES - 4000)
    apply_layer(tar(h.pax([(b"path", name)]) + h.member(b"x", data=b"1")), shm_path, mode="copy")
    with Tree(shm_path) as tree:  # too long for one syscall: walk it by directory fds
        dfd, leaf = tree.parent_of(tuple(name.decode().split("/")), create=False)
        fd = os.open(leaf, os.O_RDONLY, dir_fd=dfd)
    try:
        assert os.read(fd, 10) == b"1"
    finally:
        os.close(fd)


def test_hard_link_targets_have_the_same_limit(shm_path: Path) -> None:
    target = b"t/" * 3000 + b"x"
    with pytest.raises(UnpackError, match="bytes refused"):
        apply_layer(tar(h.pax([(b"linkpath", target)]) + h.header(b"link", b"1")), shm_path,
                    mode="copy")


def test_entry_count_limit(shm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack, "MAX_ENTRIES", 10)
    (shm_path / "ok").mkdir()
    (shm_path / "over").mkdir()
    apply_layer(tar(*[h.member(b"f%d" % i) for i in range(10)]), shm_path / "ok", mode="copy")
    with pytest.raises(UnpackError, match="more than 10 entries"):
        apply_layer(tar(*[h.member(b"f%d" % i) for i in range(11)]), shm_path / "over", mode="copy")


def test_kept_warnings_are_bounded(shm_path: Path) -> None:
    devices = [h.header(b"dev%d" % i, b"3") for i in range(MAX_NOTES * 3)]
    stats = apply_layer(tar(*devices), shm_path, mode="copy", privileged=False)
    assert len(stats.skipped) == MAX_NOTES
    assert len(stats.warnings) == MAX_NOTES + 1  # and one line saying more were dropped
    assert stats.notes_dropped == MAX_NOTES * 2


def test_the_upper_set_grows_linearly_with_depth() -> None:
    def cost(depth: int) -> int:
        paths = _PathSet()
        tracemalloc.start()
        paths.add(tuple(["a"] * depth))
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert tuple(["a"] * (depth // 2)) in paths and ("b",) not in paths
        return size

    small, large = cost(1000), cost(16_000)
    assert large < small * 16 * 2  # 16x the depth: ~16x the memory (a tuple set: ~256x)


def test_global_pax_headers_are_capped_in_records_and_bytes() -> None:
    flood = b"".join(h.pax([(b"k%d" % i, b"v")], kind=b"g")
                     for i in range(tarstream.MAX_GLOBAL_RECORDS + 1))
    with pytest.raises(UnpackError, match="global PAX headers hold"):
        list(iter_entries(tar(flood, h.member(b"f"))))
    big = h.pax([(b"comment", b"c" * (tarstream.MAX_GLOBAL_BYTES + 1))], kind=b"g")
    with pytest.raises(UnpackError, match="global PAX headers hold"):
        list(iter_entries(tar(big, h.member(b"f"))))
    # An empty value deletes a keyword, so a long archive may replace its globals freely.
    churn = b"".join(h.pax([(b"comment", b"x" * 1000)], kind=b"g") + h.member(b"f%d" % i)
                     for i in range(200))
    assert len(list(iter_entries(tar(churn)))) == 200


def test_pax_records_per_header_are_capped() -> None:
    records = [(b"k%d" % i, b"v") for i in range(tarstream.MAX_PAX_RECORDS + 1)]
    with pytest.raises(UnpackError, match="PAX records in one header"):
        list(iter_entries(tar(h.pax(records), h.member(b"f"))))


@pytest.mark.parametrize("value", [b"9" * 5000, b"1" * 31])
def test_huge_pax_numbers_are_typed_errors(value: bytes) -> None:
    # int() of 4,300+ digits raises ValueError: it must not escape untyped.
    with pytest.raises(UnpackError, match="decimal number"):
        list(iter_entries(tar(h.pax([(b"size", value)]), h.member(b"f"))))


def test_mtime_beyond_what_the_kernel_holds_is_refused(shm_path: Path) -> None:
    with pytest.raises(UnpackError, match="mtime .* out of range"):
        apply_layer(tar(h.pax([(b"mtime", b"9" * 25)]) + h.header(b"d/", b"5")), shm_path,
                    mode="copy")


def test_shown_cuts_long_values() -> None:
    assert shown("short") == "'short'"
    long = shown("x" * 70_000)
    assert len(long) < 260 and long.endswith(f"…(+{70_000 - ECHO_LIMIT} chars)")
