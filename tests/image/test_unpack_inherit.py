"""Metadata the kernel hands a new entry that is not the layer's: setgid parents, default ACLs,
the umask, and a directory named twice in one layer.  The applier skips chown/chmod calls that
would change nothing; these cases are where "nothing" is not what the kernel gave."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

from guestpull.image import create_bundle, umount_bundle
from guestpull.image.store import Store
from guestpull.image.unpack import apply_layer
from guestpull_testkit.images import Dir, Entry, File, ImageSpec, LayerSpec, write_layout

from .conftest import add_image
from .test_umoci_equality import umoci_unpack
from .treewalk import describe_tree, diff_trees

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")


def apply(root: Path, entries: list[Entry], mode: str = "copy") -> None:
    tar = LayerSpec(entries, compression="none").tar_bytes()
    apply_layer(io.BytesIO(tar), root, mode=mode)  # type: ignore[arg-type]


def _acl(*entries: tuple[int, int]) -> bytes:
    """A system.posix_acl_* xattr value: version 2, then (tag, perm, id) per entry."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in entries)


_USER_OBJ, _GROUP_OBJ, _OTHER = 0x01, 0x04, 0x20


@needs_root
@needs_umoci
def test_a_directory_named_twice_takes_its_last_header_as_umoci_does(shm_path: Path, store: Store) -> None:
    spec = ImageSpec(layers=[LayerSpec([Dir("d", mode=0o755, mtime=1_500_000_000), File("d/f", b"1"),
                                        Dir("d", mode=0o700, mtime=1_400_000_000)])])
    write_layout(shm_path / "layout", spec, tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    theirs = describe_tree(shm_path / "umoci", dir_mtimes=True)
    assert theirs["d"]["mode"] == "0o700" and theirs["d"]["mtime"] == 1_400_000_000
    for mode in ("copy", "overlay"):
        result = create_bundle(store, add_image(store, spec), shm_path / mode, mode=mode)
        try:
            assert diff_trees(theirs, describe_tree(result.rootfs, dir_mtimes=True)) == [], mode
        finally:
            umount_bundle(shm_path / mode, store)


@needs_root
@needs_umoci
def test_entries_below_a_lower_setgid_directory_get_their_own_group(shm_path: Path, store: Store) -> None:
    # Debian's /var/local and /var/mail are 2775 root:staff / root:mail: a new file or
    # directory there takes the directory's group unless it is chowned to the entry's.
    spec = ImageSpec(layers=[LayerSpec([Dir("s", mode=0o2775, gid=5)]),
                             LayerSpec([File("s/f", b"1"), Dir("s/d"), File("s/d/g", b"2")])])
    write_layout(shm_path / "layout", spec, tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    theirs = describe_tree(shm_path / "umoci")
    assert theirs["s/f"]["gid"] == 0 and theirs["s"]["gid"] == 5
    result = create_bundle(store, add_image(store, spec), shm_path / "b", mode="copy")
    assert diff_trees(theirs, describe_tree(result.rootfs)) == []


@needs_root
def test_new_entries_below_a_setgid_directory_in_one_layer(shm_path: Path) -> None:
    apply(shm_path, [Dir("s", mode=0o2775, gid=5)])
    apply(shm_path, [File("s/f", b"1", mode=0o644), Dir("s/d", mode=0o755), File("s/d/g", b"2")])
    for name, mode in [("s/f", 0o644), ("s/d", 0o755), ("s/d/g", 0o644)]:
        st = os.lstat(shm_path / name)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mode), name


def test_a_default_acl_does_not_change_the_modes_of_new_files(shm_path: Path) -> None:
    acl = _acl((_USER_OBJ, 7), (_GROUP_OBJ, 0), (_OTHER, 0))  # default user::rwx only
    try:
        os.setxattr(shm_path, "system.posix_acl_default", acl)
        os.removexattr(shm_path, "system.posix_acl_default")
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {shm_path}: {exc.strerror}")
    apply(shm_path, [Dir("a", xattrs={"system.posix_acl_default": acl}),
                     File("a/f", b"x", mode=0o755), Dir("a/d", mode=0o755)])
    assert os.getxattr(shm_path / "a", "system.posix_acl_default")  # the ACL really is there
    assert stat.S_IMODE(os.lstat(shm_path / "a" / "f").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(shm_path / "a" / "d").st_mode) == 0o755


def test_modes_the_umask_would_take_are_set(shm_path: Path) -> None:
    old = os.umask(0o077)
    try:
        apply(shm_path, [File("f", b"x", mode=0o755), File("g", b"x", mode=0o600),
                         Dir("d", mode=0o775), File("u", b"x", mode=0o4755)])
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.lstat(shm_path / name).st_mode) for name in ("f", "g", "d", "u")}
    assert modes == {"f": 0o755, "g": 0o600, "d": 0o775, "u": 0o4755}


def test_nothing_is_made_group_or_world_writable_before_its_final_mode(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[str, int]] = []
    real_open, real_mkdir = os.open, os.mkdir

    def recording_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_CREAT:
            made.append((path, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    def recording_mkdir(path: str, mode: int = 0o777, **kw: object) -> None:
        made.append((path, mode))
        real_mkdir(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "mkdir", recording_mkdir)
    apply(shm_path, [Dir("tmp", mode=0o1777), File("tmp/f", b"x", mode=0o666),
                     Dir("pub", mode=0o777), File("pub/g", b"y", mode=0o664)])
    monkeypatch.undo()
    assert {name for name, _ in made} >= {"tmp", "f", "pub", "g"}
    assert all(mode & 0o022 == 0 for _, mode in made), made
    modes = {name: stat.S_IMODE(os.lstat(shm_path / name).st_mode)
             for name in ("tmp", "tmp/f", "pub", "pub/g")}
    assert modes == {"tmp": 0o1777, "tmp/f": 0o666, "pub": 0o777, "pub/g": 0o664}
