"""Our rootfs equals umoci's: the same OCI layout unpacked by ``umoci raw unpack`` and by us.

The corpus has every entry type, setuid/setgid/sticky modes, owners, user.* xattrs (binary
too), hard links across directories, absolute and relative symlinks, a write through an
in-root relative symlink, whiteouts and opaque dirs over lower content, type changes, an
empty layer, a repeated layer, and gzip / zstd / uncompressed / multi-member gzip blobs.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from guestpull.image import create_bundle, umount_bundle
from guestpull.image.store import Store
from guestpull_testkit.images import (
    BlockDevice,
    CharDevice,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    LayerSpec,
    Opaque,
    Symlink,
    Whiteout,
    write_layout,
)

from .conftest import add_image
from .treewalk import describe_tree, diff_trees

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci comparison needs root (chown, mknod)"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]

_BIG = random.Random(7).randbytes(3 * 1024 * 1024 + 17)

BASE = LayerSpec([
    Dir("etc"),
    File("etc/hostname", b"base\n"),
    File("etc/removeme", b"gone later\n"),
    Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
    Dir("usr"), Dir("usr/bin"), Dir("usr/share"),
    File("usr/bin/bash", b"#!bash\n" * 50, mode=0o755),
    Symlink("usr/bin/sh", "bash"),
    File("usr/bin/su", b"su", mode=0o4755),
    File("usr/bin/wall", b"wall", mode=0o2755, gid=5),
    Dir("bin2"),
    Hardlink("bin2/bash", "usr/bin/bash"),
    Dir("tmp", mode=0o1777),
    Dir("home"), Dir("home/user", mode=0o750, uid=1000, gid=1000),
    File("home/user/.profile", b"export A=1\n", mode=0o600, uid=1000, gid=1000),
    File("home/user/old", b"old\n", uid=1000, gid=1000),
    Dir("var"), Dir("var/cache"), File("var/cache/a", b"a"), Dir("var/cache/sub"),
    File("var/cache/sub/b", b"b"),
    File("owned", b"x", uid=1234, gid=5678, mode=0o640),
    File("xattrs", b"x", xattrs={"user.foo": b"bar", "user.bin": b"\x00\xff\x01"}),
    Dir("xdir", xattrs={"user.dir": b"1"}),
    File("empty", b""),
    File("big", _BIG),
    Dir("dev"),
    CharDevice("dev/null", 1, 3, mode=0o666),
    BlockDevice("dev/loop9", 7, 9, mode=0o660, gid=6),
    Fifo("fifo", mode=0o620),
    Dir("lib"),
    Symlink("lib64", "lib"),
    File("lib64/libx.so", b"ELF", mode=0o755),  # written through the in-root symlink
    Dir("opt"), File("opt/thing", b"file first"),
    Dir("was_dir"), File("was_dir/inner", b"i"),
    Symlink("was_link", "etc/hostname"),
], compression="gzip")

CHANGES = LayerSpec([
    Whiteout("etc/removeme"),
    Whiteout("var/cache"),
    Dir("home"), Dir("home/user", mode=0o700, uid=1000, gid=1000),
    Opaque("home/user"),
    File("home/user/new", b"new\n", uid=1000, gid=1000),
    Dir("opt"), Dir("opt/thing"), File("opt/thing/now_a_dir", b"d"),
    File("was_dir", b"now a file"),
    File("was_link", b"now a file"),
    Dir("usr", mode=0o700),
    File("etc/hostname", b"changed\n", mode=0o600),
    Dir("xdir", xattrs={"user.dir": b"2", "user.more": b"m"}),
], compression="zstd")

EMPTY = LayerSpec([], compression="none")

MORE = LayerSpec([
    Dir("srv"), File("srv/data", b"d" * 5000, mode=0o444),
    Hardlink("srv/data2", "srv/data"),
    Whiteout("opt/thing/now_a_dir"),
    Dir("etc"), File("etc/motd", b"hi\n"),
], compression="gzip-multimember")

IMAGE_LAYERS = [BASE, CHANGES, EMPTY, MORE]
REPEATED_LAYERS = [BASE, CHANGES, EMPTY, MORE, BASE]


def umoci_spec(spec: ImageSpec) -> ImageSpec:
    """The same tars for umoci 0.4 (which predates zstd): zstd layers recompressed as gzip."""
    layers = [replace(layer, compression="gzip") if layer.compression == "zstd" else layer for layer in spec.layers]
    return replace(spec, layers=layers)


def umoci_unpack(layout: Path, tag: str, rootfs: Path) -> None:
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("layers", [IMAGE_LAYERS, REPEATED_LAYERS], ids=["plain", "repeated-layer"])
@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_rootfs_equals_umoci(shm_path: Path, store: Store, layers: list[LayerSpec], mode: str) -> None:
    spec = ImageSpec(layers=layers)
    assert any(layer.compression == "zstd" for layer in spec.layers)
    write_layout(shm_path / "layout", umoci_spec(spec), tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    expected = describe_tree(shm_path / "umoci")
    # The corpus really exercises what it claims (guards against a vacuous comparison).
    assert expected["usr/bin/su"]["mode"] == "0o4755"
    removed = "etc/removeme" not in expected and "home/user/old" not in expected
    assert removed == (layers is IMAGE_LAYERS)  # the repeated base layer brings them back
    assert expected["xattrs"]["xattrs"] == {"user.foo": b"bar", "user.bin": b"\x00\xff\x01"}

    record = add_image(store, spec)
    bundle = shm_path / "bundle"
    result = create_bundle(store, record, bundle, mode=mode)  # type: ignore[arg-type]
    try:
        assert result.mode_used == mode
        ours = describe_tree(result.rootfs)
        assert diff_trees(expected, ours) == []
    finally:
        umount_bundle(bundle, store)


def test_dir_mtimes_match_umoci_in_copy_mode(shm_path: Path, store: Store) -> None:
    spec = ImageSpec(layers=[LayerSpec([Dir("d", mtime=1_500_000_000), File("d/f", b"1"),
                                        Dir("d/e", mtime=1_400_000_000)])])
    write_layout(shm_path / "layout", spec, tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    result = create_bundle(store, add_image(store, spec), shm_path / "b", mode="copy")
    theirs = describe_tree(shm_path / "umoci", dir_mtimes=True)
    ours = describe_tree(result.rootfs, dir_mtimes=True)
    assert ours["d"]["mtime"] == 1_500_000_000
    assert diff_trees(theirs, ours) == []
