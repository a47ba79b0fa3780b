"""The applier's own semantics: overlay layer format, same-layer whiteouts, metadata."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from guestpull.errors import UnpackError
from guestpull.image.unpack import apply_layer
from guestpull_testkit.images import Dir, Entry, File, Hardlink, LayerSpec, Opaque, RawTarInfo, Whiteout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def apply(root: Path, entries: list[Entry], mode: str = "copy", **kw: object):
    tar = LayerSpec(entries, compression="none").tar_bytes()
    return apply_layer(io.BytesIO(tar), root, mode=mode, **kw)  # type: ignore[arg-type]


@needs_root
def test_overlay_layer_format(shm_path: Path) -> None:
    stats = apply(shm_path, [Dir("a"), Whiteout("a/gone"), Opaque("a"), File("a/kept", b"k")],
                  mode="overlay")
    st = os.lstat(shm_path / "a" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(shm_path / "a", "trusted.overlay.opaque") == b"y"
    assert (shm_path / "a" / "kept").read_bytes() == b"k"
    assert not (shm_path / "a" / ".wh..wh..opq").exists()
    assert stats.whiteouts == 2


def test_whiteout_does_not_remove_what_the_same_layer_created(shm_path: Path) -> None:
    apply(shm_path, [File("lower", b"l"), Dir("d"), File("d/lower", b"l")])
    apply(shm_path, [File("x", b"new"), Whiteout("x"), Whiteout("lower"),
                     Dir("d"), File("d/new", b"n"), Opaque("d")])
    assert (shm_path / "x").read_bytes() == b"new"
    assert not (shm_path / "lower").exists()
    assert sorted(os.listdir(shm_path / "d")) == ["new"]


def test_setuid_survives_chown_and_root_entry_applies(shm_path: Path) -> None:
    root_info = tarfile.TarInfo("./")
    root_info.type, root_info.mode, root_info.mtime = tarfile.DIRTYPE, 0o711, 1_234_567_890
    apply(shm_path, [RawTarInfo(root_info), File("su", b"x", mode=0o4755, uid=os.geteuid())])
    assert stat.S_IMODE(os.lstat(shm_path / "su").st_mode) == 0o4755
    st = os.lstat(shm_path)
    assert stat.S_IMODE(st.st_mode) == 0o711 and int(st.st_mtime) == 1_234_567_890


def test_directory_mode_applied_after_children(shm_path: Path) -> None:
    apply(shm_path, [Dir("ro", mode=0o555), File("ro/f", b"1")], privileged=False)
    assert stat.S_IMODE(os.lstat(shm_path / "ro").st_mode) == 0o555
    assert (shm_path / "ro" / "f").read_bytes() == b"1"


def test_overlay_hardlink_to_lower_layer_is_a_clear_error(shm_path: Path) -> None:
    with pytest.raises(UnpackError, match="does not exist in this layer"):
        apply(shm_path, [Hardlink("link", "only/in/lower")], mode="overlay", privileged=False)


def test_trusted_overlay_xattrs_from_content_are_ignored(shm_path: Path) -> None:
    stats = apply(shm_path, [Dir("d", xattrs={"trusted.overlay.opaque": b"y"})])
    assert any("trusted.overlay.opaque" in w for w in stats.warnings)
    assert "trusted.overlay.opaque" not in os.listxattr(shm_path / "d")


def test_many_small_files_stats(shm_path: Path) -> None:
    entries: list[Entry] = [Dir(f"d{i}") for i in range(20)]
    entries += [File(f"d{i % 20}/f{i}", b"z" * (i % 700)) for i in range(2000)]
    stats = apply(shm_path, entries)
    assert stats.files == 2000 and stats.dirs == 20
    assert stats.bytes == sum(i % 700 for i in range(2000))
    assert (shm_path / "d7" / "f1987").read_bytes() == b"z" * (1987 % 700)
