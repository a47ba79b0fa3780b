"""Removing trees: iterative and fd-based, so no depth stops it and no symlink leads out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guestpull.image import fsops
from guestpull.image.fsops import Tree, remove_at, remove_path


def deep_tree(top: Path, depth: int) -> None:
    """``top/d/d/…`` ``depth`` levels, a file at every level."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_removes_a_tree_deeper_than_the_recursion_limit(shm_path: Path) -> None:
    deep_tree(shm_path / "top", 5000)  # shutil.rmtree: RecursionError at ~1,000
    remove_path(shm_path / "top")
    assert list(shm_path.iterdir()) == []


def test_open_fds_stay_bounded_on_the_way_down(shm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsops, "_REMOVE_OPEN_LEVELS", 4)  # forces re-opening through ".."
    deep_tree(shm_path / "top", 50)
    before = len(os.listdir("/proc/self/fd"))
    remove_path(shm_path / "top")
    assert not (shm_path / "top").exists()
    assert len(os.listdir("/proc/self/fd")) == before


def test_symlinks_are_removed_never_followed(shm_path: Path) -> None:
    outside = shm_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    top = shm_path / "top"
    (top / "a").mkdir(parents=True)
    os.symlink(outside, top / "a" / "link")
    os.symlink(outside / "keep", top / "file-link")
    remove_path(top)
    assert not top.exists()
    assert (outside / "keep").read_bytes() == b"keep"
    os.symlink(outside, shm_path / "top-link")
    remove_path(shm_path / "top-link")  # the path itself a symlink: the link goes, not the dir
    assert (outside / "keep").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 directories anyway")
def test_unreadable_directories_from_a_layer_are_removed(shm_path: Path) -> None:
    top = shm_path / "top"
    (top / "locked" / "inner").mkdir(parents=True)
    (top / "locked" / "inner" / "f").write_bytes(b"x")
    os.chmod(top / "locked" / "inner", 0o555)
    os.chmod(top / "locked", 0o000)
    remove_path(top)
    assert not top.exists()


def test_missing_is_fine_and_files_are_unlinked(shm_path: Path) -> None:
    remove_path(shm_path / "nothing")
    remove_path(shm_path / "no" / "parent")
    (shm_path / "file").write_bytes(b"x")
    fd = os.open(shm_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "file")
    finally:
        os.close(fd)
    assert list(shm_path.iterdir()) == []


def test_tree_remove_replaces_a_deep_directory(shm_path: Path) -> None:
    deep_tree(shm_path / "top", 3000)
    with Tree(shm_path) as tree:
        tree.remove(tree.fd, "top")
    assert list(shm_path.iterdir()) == []
