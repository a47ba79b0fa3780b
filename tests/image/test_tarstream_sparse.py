"""GNU sparse files (issue 13): every format GNU tar writes becomes a regular file with the
right size and content (holes kept); hostile sparse maps are refused by name."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from guestpull.errors import UnpackError
from guestpull.image.tarstream import iter_entries
from guestpull.image.unpack import apply_layer

from .test_tarstream import info, meta_member, pax_records

#: GNU tar's options for each sparse format it writes.
SPARSE_FORMATS = {
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
    "gnu-S": ["--format=gnu"],
}


def make_sparse(path: Path, segments: int) -> bytes:
    """A file with ``segments`` data islands in holes (and a hole at its end); its bytes."""
    with open(path, "wb") as f:
        for i in range(segments):
            f.seek(i * (256 << 10) + 100_000)
            f.write(b"island %d " % i * 50)
        f.truncate(segments * (256 << 10) + (1 << 20))
    return path.read_bytes()


def gnu_tar(src: Path, options: list[str], *more: str) -> bytes:
    """GNU tar's archive of ``src`` (and ``more`` names next to it)."""
    done = subprocess.run(["tar", "--sparse", *options, "-C", str(src.parent), "-cf", "-",
                           src.name, *more], check=True, capture_output=True)
    return done.stdout


@pytest.mark.parametrize("segments", [2, 100])  # 100: GNU extension blocks, a multi-block map
@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_gnu_tar_sparse_files_read_as_their_content(shm_path: Path, fmt: str, segments: int) -> None:
    expected = make_sparse(shm_path / "holes", segments)
    archive = gnu_tar(shm_path / "holes", SPARSE_FORMATS[fmt])
    entries = [(e.name, e.isreg(), e.size, e.sparse is not None, e.read())
               for e in iter_entries(io.BytesIO(archive))]
    assert entries == [("holes", True, len(expected), True, expected)]


@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_sparse_layer_unpacks_like_gnu_tar_and_keeps_holes(shm_path: Path, fmt: str) -> None:
    src = shm_path / "src"
    src.mkdir()
    expected = make_sparse(src / "holes", 5)
    (src / "after").write_bytes(b"next entry")
    archive = gnu_tar(src / "holes", SPARSE_FORMATS[fmt], "after")
    by_gnu, ours = shm_path / "gnu", shm_path / "ours"
    by_gnu.mkdir()
    ours.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(by_gnu)], input=archive, check=True)
    apply_layer(io.BytesIO(archive), ours, mode="copy")
    for name in ("holes", "after"):
        assert (ours / name).read_bytes() == (by_gnu / name).read_bytes()
    assert (ours / "holes").read_bytes() == expected
    allocated = os.stat(ours / "holes").st_blocks * 512
    assert allocated < len(expected) // 4, "holes were written out as zeros"
    assert (ours / "after").read_bytes() == b"next entry"


def pax_sparse(records: dict[bytes, bytes], data: bytes, name: str = "GNUSparseFile.0/f") -> bytes:
    header = info(name, size=len(data)).tobuf(tarfile.USTAR_FORMAT)
    return (meta_member(b"x", pax_records(records)) + header + data + bytes(-len(data) % 512)
            + bytes(1024))


@pytest.mark.parametrize("records, data, problem", [
    ({b"GNU.sparse.size": b"10", b"GNU.sparse.map": b"0,4,2,4"}, b"x" * 8, "out of order"),
    ({b"GNU.sparse.size": b"10", b"GNU.sparse.map": b"8,4"}, b"x" * 4, "beyond"),
    ({b"GNU.sparse.size": b"10", b"GNU.sparse.map": b"0,4"}, b"x" * 8, "hold 4 bytes"),
    ({b"GNU.sparse.size": b"10", b"GNU.sparse.map": b"0,4,5"}, b"x" * 4, "odd number"),
    ({b"GNU.sparse.size": b"10", b"GNU.sparse.map": b"0,x"}, b"x" * 4, "non-number"),
    ({b"GNU.sparse.size": b"9" * 40, b"GNU.sparse.map": b"0,4"}, b"x" * 4, "decimal"),
    ({b"GNU.sparse.size": b"10"}, b"", "without a map"),
    ({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.realsize": b"10"},
     b"9999999\n" * 200, "sparse map too long or truncated"),
])
def test_hostile_sparse_maps_are_refused(records: dict[bytes, bytes], data: bytes,
                                         problem: str) -> None:
    records = {b"GNU.sparse.name": b"the-file", **records}
    with pytest.raises(UnpackError, match=problem) as caught:
        for entry in iter_entries(io.BytesIO(pax_sparse(records, data))):
            entry.read()
    assert "the-file" in str(caught.value)


def test_sparse_real_size_is_bounded() -> None:
    records = {b"GNU.sparse.name": b"big", b"GNU.sparse.size": b"%d" % (1 << 50),
               b"GNU.sparse.map": b"0,4"}
    with pytest.raises(UnpackError, match="refused"):
        list(iter_entries(io.BytesIO(pax_sparse(records, b"abcd")), max_size=1 << 40))
