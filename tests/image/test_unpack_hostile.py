"""Hostile layers: each is refused with an error naming the entry, and nothing outside the
root changes (a sentinel directory next to the root is compared before and after)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from guestpull.errors import UnpackError
from guestpull.image.unpack import MAX_META_HEADER, apply_layer
from guestpull.testing.images import (
    CharDevice,
    Dir,
    Entry,
    File,
    Hardlink,
    LayerSpec,
    RawTarInfo,
    Symlink,
    Whiteout,
)

from .treewalk import snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def dirs(shm_path: Path) -> tuple[Path, Path]:
    root, sentinel = shm_path / "root", shm_path / "sentinel"
    root.mkdir()
    sentinel.mkdir()
    (sentinel / "secret").write_bytes(b"keep me")
    (sentinel / "sub").mkdir()
    return root, sentinel


def raw(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, linkname: str = "",
        data: bytes | None = None) -> RawTarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if data is None else len(data)
    info.linkname = linkname
    info.mode = 0o644
    return RawTarInfo(info, data)


def apply(root: Path, entries: Sequence[Entry], mode: str = "copy", privileged: bool | None = None):
    tar = LayerSpec(list(entries), compression="none").tar_bytes()
    return apply_layer(io.BytesIO(tar), root, mode=mode, privileged=privileged)  # type: ignore[arg-type]


def assert_refused(dirs: tuple[Path, Path], entries: Sequence[Entry], entry_name: str,
                   mode: str = "copy", *, before: Sequence[Sequence[Entry]] = ()) -> UnpackError:
    root, sentinel = dirs
    for layer in before:
        apply(root, layer, mode)
    state = snapshot(sentinel)
    with pytest.raises(UnpackError) as caught:
        apply(root, entries, mode)
    assert entry_name in str(caught.value)
    assert snapshot(sentinel) == state
    return caught.value


MODES = pytest.mark.parametrize("mode", ["copy", pytest.param("overlay", marks=needs_root)])


@MODES
def test_dotdot_component(dirs: tuple[Path, Path], mode: str) -> None:
    err = assert_refused(dirs, [raw("../sentinel/pwned", data=b"x")], "../sentinel/pwned", mode)
    assert "'..'" in str(err)


@MODES
def test_dotdot_in_the_middle(dirs: tuple[Path, Path], mode: str) -> None:
    assert_refused(dirs, [Dir("a"), raw("a/../../sentinel/pwned", data=b"x")],
                   "a/../../sentinel/pwned", mode)


@MODES
def test_absolute_path_stays_inside_the_root(dirs: tuple[Path, Path], mode: str) -> None:
    # Issue 13: a leading '/' is relative to the rootfs (containerd, umoci, ``tar -P``); it
    # was refused before.  What matters for safety is unchanged: nothing lands outside.
    root, sentinel = dirs
    state = snapshot(sentinel)
    name = str(sentinel / "pwned")
    apply(root, [raw(name, data=b"x")], mode, privileged=None)
    assert (root / name.lstrip("/")).read_bytes() == b"x"
    assert snapshot(sentinel) == state


@MODES
def test_relative_symlink_escape_then_write_within_layer(dirs: tuple[Path, Path], mode: str) -> None:
    assert_refused(dirs, [Symlink("evil", "../sentinel"), File("evil/pwned", b"x")],
                   "evil/pwned", mode)


@MODES
def test_absolute_symlink_then_write_within_layer(dirs: tuple[Path, Path], mode: str) -> None:
    sentinel = str(dirs[1])
    err = assert_refused(dirs, [Symlink("evil", sentinel), File("evil/secret", b"x")],
                         "evil/secret", mode)
    assert "symlink" in str(err)


def test_symlink_planted_by_one_layer_written_through_by_the_next(dirs: tuple[Path, Path]) -> None:
    sentinel = str(dirs[1])
    assert_refused(dirs, [File("evil/sub/pwned", b"x")], "evil/sub/pwned",
                   before=[[Symlink("evil", sentinel)]])


def test_symlink_chain_escape_across_layers(dirs: tuple[Path, Path]) -> None:
    assert_refused(dirs, [File("a/b/pwned", b"x")], "a/b/pwned",
                   before=[[Dir("a"), Symlink("a/b", "../c"), Symlink("c", "../sentinel")]])


def test_symlink_loop_is_refused(dirs: tuple[Path, Path]) -> None:
    err = assert_refused(dirs, [Symlink("a", "b"), Symlink("b", "a"), File("a/x", b"1")], "a/x")
    assert "symlink" in str(err)


@MODES
def test_hardlink_leaving_the_root(dirs: tuple[Path, Path], mode: str) -> None:
    assert_refused(dirs, [Hardlink("stolen", "../sentinel/secret")], "stolen", mode)


@MODES
def test_hardlink_through_escaping_symlink(dirs: tuple[Path, Path], mode: str) -> None:
    sentinel = str(dirs[1])
    assert_refused(dirs, [Symlink("evil", sentinel), Hardlink("stolen", "evil/secret")],
                   "stolen", mode)
    assert not (dirs[0] / "stolen").exists()


@MODES
def test_whiteout_with_dotdot(dirs: tuple[Path, Path], mode: str) -> None:
    assert_refused(dirs, [raw("../sentinel/.wh.secret")], "../sentinel/.wh.secret", mode)


@MODES
def test_whiteout_naming_the_parent(dirs: tuple[Path, Path], mode: str) -> None:
    assert_refused(dirs, [Dir("a"), raw("a/.wh..")], "a/.wh..", mode)


def test_whiteout_through_escaping_symlink(dirs: tuple[Path, Path]) -> None:
    sentinel = str(dirs[1])
    assert_refused(dirs, [Whiteout("evil/secret")], "evil/.wh.secret",
                   before=[[Symlink("evil", sentinel)]])
    assert (dirs[1] / "secret").exists()


def test_device_node_unprivileged_is_skipped_and_named(dirs: tuple[Path, Path]) -> None:
    root, sentinel = dirs
    state = snapshot(sentinel)
    stats = apply(root, [Dir("dev"), CharDevice("dev/mem", 1, 1)], privileged=False)
    assert stats.skipped == ["dev/mem"]
    assert any("dev/mem" in w for w in stats.warnings)
    assert not os.path.lexists(root / "dev" / "mem")
    assert snapshot(sentinel) == state


def test_overlay_whiteout_unprivileged_is_refused(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(UnpackError, match="a/.wh.x"):
        apply(dirs[0], [Dir("a"), Whiteout("a/x")], mode="overlay", privileged=False)


def test_absurd_file_size(dirs: tuple[Path, Path]) -> None:
    root, sentinel = dirs
    info = tarfile.TarInfo("huge")
    info.size = 1 << 50
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info)  # header only: the data never comes
    with pytest.raises(UnpackError, match="huge"):
        apply_layer(io.BytesIO(buf.getvalue()), root, mode="copy")
    assert not (root / "huge").exists()


def test_absurd_pax_header(dirs: tuple[Path, Path]) -> None:
    info = tarfile.TarInfo("fat")
    info.pax_headers = {"comment": "x" * (MAX_META_HEADER + 10)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnpackError, match="extended header"):
        apply_layer(io.BytesIO(buf.getvalue()), dirs[0], mode="copy")


def test_uid_out_of_range(dirs: tuple[Path, Path]) -> None:
    info = tarfile.TarInfo("bigid")
    info.uid = 1 << 33
    with pytest.raises(UnpackError, match="bigid"):
        apply(dirs[0], [RawTarInfo(info, b"")])


def test_truncated_file_data(dirs: tuple[Path, Path]) -> None:
    tar = LayerSpec([File("f", b"y" * 5000)], compression="none").tar_bytes()
    with pytest.raises(UnpackError, match="'f'"):
        apply_layer(io.BytesIO(tar[:512 + 100]), dirs[0], mode="copy")


def test_garbage_is_a_clear_error(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(UnpackError, match="malformed tar"):
        apply_layer(io.BytesIO(b"\x01" * 2048), dirs[0], mode="copy")
