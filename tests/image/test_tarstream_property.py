"""Property tests (issue 9): random bytes and damaged real archives through the tar parser and
the layer applier — only GuestpullError subclasses escape, and nothing lands outside the root.

The valid archives come from GNU tar itself: GNU and PAX formats, long names and link
targets, hard links, symlinks, a fifo, and sparse files in every format it writes.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fuzz import EXAMPLES, mutated

from guestpull.errors import GuestpullError
from guestpull.image.fsops import remove_path
from guestpull.image.tarstream import iter_entries
from guestpull.image.unpack import apply_layer

SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_ARCHIVE_OPTIONS = [
    ["--format=gnu"],
    ["--format=posix"],
    ["--format=posix", "--sparse", "--sparse-version=0.0"],
    ["--format=posix", "--sparse", "--sparse-version=0.1"],
    ["--format=posix", "--sparse", "--sparse-version=1.0"],
    ["--format=gnu", "--sparse"],
]


@functools.cache
def gnu_tar_archives() -> tuple[bytes, ...]:
    """Small real archives, one per format (built once per session)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        src = Path(tmp) / "src"
        deep = src / ("long-directory-name-" * 6) / "below"
        deep.mkdir(parents=True)
        (deep / "file").write_bytes(b"data" * 100)
        os.link(deep / "file", src / "hard")
        os.symlink("x" * 150, src / "long-link")
        os.mkfifo(src / "fifo")
        with open(src / "sparse", "wb") as f:
            f.seek(20_000)
            f.write(b"island")
            f.truncate(40_000)
        return tuple(
            subprocess.run(["tar", *options, "-C", str(src), "--owner=0", "--group=0",
                            "--mtime=@1600000000", "-cf", "-", "."],
                           capture_output=True, check=True).stdout
            for options in _ARCHIVE_OPTIONS
        )


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real archive (cut to its first 8 KiB: headers live there) damaged."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    valid = draw(st.sampled_from(gnu_tar_archives()))
    head = valid[:8192] + bytes(1024) if draw(st.booleans()) else valid
    return draw(mutated(head, max_edits=6))


def _read_all(data: bytes) -> None:
    for entry in iter_entries(io.BytesIO(data), max_size=1 << 30, max_pax_size=1 << 16):
        for _ in entry.chunks():
            pass


@SETTINGS
@given(archives())
def test_the_parser_raises_only_typed_errors(data: bytes) -> None:
    try:
        _read_all(data)
    except GuestpullError:
        pass


@settings(max_examples=max(EXAMPLES // 4, 50), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(archives())
def test_the_applier_raises_only_typed_errors_and_stays_inside(data: bytes) -> None:
    top = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="guestpull-fuzz-"))
    try:
        (top / "root").mkdir()
        try:
            apply_layer(io.BytesIO(data), top / "root", mode="copy")
        except GuestpullError:
            pass
        assert [p.name for p in top.iterdir()] == ["root"]
    finally:
        remove_path(top)


def test_the_corpus_parses() -> None:
    """The damage starts from archives we read whole (else the mutations test little)."""
    for archive in gnu_tar_archives():
        names = {entry.name for entry in iter_entries(io.BytesIO(archive))}
        assert "./sparse" in names and "./hard" in names, names
