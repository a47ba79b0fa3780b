"""The flat rootfs copier (:func:`guestpull.image.flat.copy_tree`) and the layer ChainID."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import stat
import subprocess
from pathlib import Path

import pytest

from guestpull.errors import NoSpaceError, UnpackError
from guestpull.image.flat import chain_id, copy_tree

from .treewalk import describe_tree, diff_trees, snapshot

ROOT = os.geteuid() == 0
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def test_chain_id_follows_the_oci_definition() -> None:
    assert chain_id([D1]) == D1
    two = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    assert chain_id([D1, D2]) == two
    assert chain_id([D1, D2, D3]) == "sha256:" + hashlib.sha256(f"{two} {D3}".encode()).hexdigest()
    assert chain_id([D2, D1]) != two  # order matters
    with pytest.raises(ValueError):
        chain_id([])


def _times(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9 + 7, seconds * 10**9 + 11), follow_symlinks=False)


def _tree(src: Path) -> None:
    """Every kind of entry the copy-mode applier writes."""
    src.mkdir(mode=0o755)
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_bytes(b"h\n")
    (src / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (src / "empty").write_bytes(b"")
    with open(src / "sparse", "wb") as f:  # 8 MiB with 4 KiB of data in the middle
        f.seek(4 << 20)
        f.write(b"x" * 4096)
        f.truncate(8 << 20)
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(b"#!tool\n")
    os.chmod(src / "bin" / "tool", 0o755)
    (src / "hard").mkdir()
    os.link(src / "bin" / "tool", src / "hard" / "tool-link")  # across directories
    os.link(src / "bin" / "tool", src / "hard" / "tool-link2")
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("../nowhere", src / "etc" / "dangling")
    os.symlink("etc", src / "etc-link")  # a symlink to a directory is copied, not entered
    os.mkfifo(src / "fifo", 0o640)
    (src / "ro").mkdir()
    (src / "ro" / "inside").write_bytes(b"i")
    os.chmod(src / "ro", 0o555)  # children are copied before the mode is set
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / os.fsdecode(b"not-utf8-\xff\xfe")).write_bytes(b"n")  # names are bytes on Linux
    (src / "new\nline dir").mkdir()
    (src / "new\nline dir" / "f").write_bytes(b"f")
    os.setxattr(src / "etc" / "hostname", "user.k", b"\x00\xffv")
    os.setxattr(src / "etc", "user.dir", b"1")
    for i, path in enumerate(sorted(src.rglob("*"))):
        _times(path, 1_500_000_000 + i)
    _times(src / "ro", 1_400_000_000)
    _times(src, 1_300_000_000)


def _stats(root: Path) -> dict[Path, os.stat_result]:
    """Taken before copying: reading a directory updates its atime."""
    paths = [root, *root.rglob("*")]
    return {path.relative_to(root): os.lstat(path) for path in paths}


def _check_equal(src: Path, dst: Path, before: dict[Path, os.stat_result]) -> None:
    for rel, a in before.items():  # first: reading the copy (describe_tree) moves its atimes
        b = os.lstat(dst / rel)
        assert a.st_mtime_ns == b.st_mtime_ns, rel
        if not stat.S_ISLNK(a.st_mode):  # reading a symlink moves its atime (O_NOATIME cannot help)
            assert a.st_atime_ns == b.st_atime_ns, rel
        assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), rel
        assert a.st_ino != b.st_ino or a.st_dev != b.st_dev, rel  # a copy, never a link
    assert set(before) == set(_stats(dst))
    assert diff_trees(describe_tree(src, dir_mtimes=True), describe_tree(dst, dir_mtimes=True)) == []


def test_copy_is_exact(shm_path: Path) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    _tree(src)
    dst.mkdir()
    before = _stats(src)
    stats = copy_tree(src, dst, privileged=ROOT)
    _check_equal(src, dst, before)
    assert os.lstat(dst).st_mtime == 1_300_000_000
    assert os.stat(dst / "sparse").st_blocks * 512 < 1 << 20  # the holes stay holes
    assert os.stat(dst / "hard" / "tool-link").st_ino == os.stat(dst / "bin" / "tool").st_ino
    assert os.stat(dst / "bin" / "tool").st_nlink == 3
    assert stats.links == 2 and stats.files >= 6 and stats.dirs == 6


@pytest.mark.privileged
@pytest.mark.skipif(not ROOT, reason="owners, devices and security.capability need root")
def test_owner_setuid_capability_and_devices(shm_path: Path) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    tool = src / "ping"
    tool.write_bytes(b"elf")
    subprocess.run(["setcap", "cap_net_raw+ep", str(tool)], check=True, capture_output=True)
    caps = os.getxattr(tool, "security.capability")
    os.chown(tool, 1234, 5678)  # clears the capability: set it again after the owner
    os.setxattr(tool, "security.capability", caps)
    os.chmod(tool, 0o4755)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.chown(src / "loop", 0, 6)
    (src / "home").mkdir(mode=0o750)
    os.chown(src / "home", 1000, 1000)
    os.symlink("x", src / "owned-link")
    os.chown(src / "owned-link", 42, 43, follow_symlinks=False)
    dst.mkdir()
    before = _stats(src)
    copy_tree(src, dst, privileged=True)
    _check_equal(src, dst, before)
    st = os.stat(dst / "ping")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert os.getxattr(dst / "ping", "security.capability") == caps
    assert os.lstat(dst / "owned-link").st_uid == 42


def test_unprivileged_copy_keeps_our_owner(shm_path: Path) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    os.chmod(src / "f", 0o640)
    if ROOT:
        os.chown(src / "f", 1234, 1234)
    dst.mkdir()
    copy_tree(src, dst, privileged=False)
    st = os.stat(dst / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_symlinks_are_never_followed(shm_path: Path) -> None:
    outside = shm_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    before = snapshot(outside)
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    os.symlink(outside, src / "escape")
    os.symlink(outside / "keep", src / "escape-file")
    (src / "d").mkdir()
    (src / "d" / "f").write_bytes(b"f")
    dst.mkdir()
    copy_tree(src, dst, privileged=ROOT)
    assert os.readlink(dst / "escape") == str(outside)
    assert os.readlink(dst / "escape-file") == str(outside / "keep")
    assert snapshot(outside) == before


def test_a_non_empty_destination_is_refused(shm_path: Path) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    dst.mkdir()
    (dst / "already").write_bytes(b"x")
    with pytest.raises(UnpackError, match="not empty"):
        copy_tree(src, dst, privileged=ROOT)
    assert not (dst / "f").exists()


@pytest.mark.parametrize("code, error", [(errno.EIO, UnpackError), (errno.ENOSPC, NoSpaceError)])
def test_a_failure_names_the_entry(shm_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
                                   error: type[Exception]) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    (src / "d").mkdir()
    (src / "d" / "data").write_bytes(b"s")
    dst.mkdir()

    def fail(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", fail)
    with pytest.raises(error, match="'d/data'"):
        copy_tree(src, dst, privileged=ROOT)


def test_copy_file_range_refused_across_filesystems_falls_back(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    _tree(src)
    dst.mkdir()
    before = _stats(src)

    def cross_device(*args: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    copy_tree(src, dst, privileged=ROOT)
    _check_equal(src, dst, before)
    assert os.stat(dst / "sparse").st_blocks * 512 < 1 << 20


def _descend(root: Path, names: list[str]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd


def test_paths_longer_than_path_max(shm_path: Path) -> None:
    # What a write through an in-root symlink can make: deeper than any entry name could be.
    src, dst = shm_path / "src", shm_path / "dst"
    src.mkdir()
    names = [f"{i:02d}" + "d" * 198 for i in range(30)]  # 6,000 bytes of path
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
    os.write(leaf, b"deep")
    os.close(leaf)
    os.link("leaf", "leaf2", src_dir_fd=fd, dst_dir_fd=fd)
    os.close(fd)
    dst.mkdir()
    copy_tree(src, dst, privileged=ROOT)
    fd = _descend(dst, names)
    try:
        with open(os.open("leaf", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
        a, b = os.stat("leaf", dir_fd=fd), os.stat("leaf2", dir_fd=fd)
        assert a.st_ino == b.st_ino and stat.S_IMODE(a.st_mode) == 0o640
    finally:
        os.close(fd)


def test_a_missing_source_is_an_unpack_error(shm_path: Path) -> None:
    (shm_path / "dst").mkdir()
    with pytest.raises(UnpackError, match="cannot copy"):
        copy_tree(shm_path / "missing", shm_path / "dst", privileged=ROOT)


def test_a_tree_deeper_than_the_open_directory_levels(shm_path: Path) -> None:
    src, dst = shm_path / "src", shm_path / "dst"
    deepest = src
    for i in range(150):  # more levels than the copier keeps open: the rest are re-opened
        deepest = deepest / f"d{i}"
    deepest.mkdir(parents=True)
    for i, path in enumerate(sorted(src.rglob("*"))):
        (path / "f").write_bytes(str(i).encode())
        if i % 10 == 0:
            os.link(path / "f", src / f"link{i}")  # hard links to files far down
    for i, path in enumerate(sorted(src.rglob("d*"), reverse=True)):
        os.chmod(path, 0o555 if i % 2 else 0o750)
        _times(path, 1_500_000_000 + i)
    dst.mkdir()
    before = _stats(src)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))  # fewer than 2 per level
    try:
        copy_tree(src, dst, privileged=ROOT)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    _check_equal(src, dst, before)
