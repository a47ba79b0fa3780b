"""The directory-fd cache of fsops.Tree and the open-file limit it sizes itself by."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from guestpull.image import fsops
from guestpull.image.fsops import Tree, split_entry_name


def test_raise_open_file_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    # In a child: the limit is process-wide, and this test process must keep its own.
    code = (
        "import resource; from guestpull.image.fsops import raise_open_file_limit;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
        "got = raise_open_file_limit();"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got, soft, hard = (int(x) for x in out.stdout.split())
    assert got == soft
    assert soft == hard or hard == resource.RLIM_INFINITY


def test_cache_size_follows_the_limit_and_eviction_keeps_paths_right(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fsops, "_dir_cache_size", lambda: 64)
    with Tree(tmp_path) as tree:
        assert tree._max_cached == 64
        for i in range(300):  # far more directories than the cache holds
            fd = tree.dir_fd(("d", f"{i:03d}", "x"), create=True)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            tree.release()
        assert len(tree._dirs) <= 64
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"{i:03d}" for i in range(300)]
    assert all((tmp_path / "d" / f"{i:03d}" / "x" / "f").is_file() for i in range(300))


def test_split_entry_name_fast_path_matches_the_general_rule() -> None:
    for name, parts in [("a/b/c", ("a", "b", "c")), ("a/b/", ("a", "b")), ("./a//b/", ("a", "b")),
                        (".", ()), ("", ()), ("a/./b", ("a", "b")), ("dir/", ("dir",))]:
        assert split_entry_name(name) == parts, name


def test_a_layer_with_more_directories_than_the_fd_limit_unpacks(tmp_path: Path) -> None:
    # 3,000 directories under a 256-fd limit (cache 128): the end-of-layer pass that sets
    # directory modes and mtimes used to keep every evicted fd open until the layer ended
    # (EMFILE on the 100,000-file many-deep benchmark image).
    import io
    import tarfile

    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for i in range(3000):
            info = tarfile.TarInfo(f"a/{i % 7}/d{i:04d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o751, 1_000_000 + i
            tar.addfile(info)
            data = b"x" * (i % 5)
            info = tarfile.TarInfo(f"a/{i % 7}/d{i:04d}/f")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    code = (
        "import resource, sys; from guestpull.image.unpack import apply_layer;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
        "s = apply_layer(open(sys.argv[1], 'rb'), sys.argv[2], mode='copy', privileged=False);"
        "print(s.dirs, s.files)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(layer), str(dest)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3000", "3000"]
    for i in (0, 1234, 2999):
        st = (dest / "a" / str(i % 7) / f"d{i:04d}").stat()
        assert (st.st_mode & 0o777, st.st_mtime) == (0o751, 1_000_000 + i)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_walks_cache_the_directories_on_the_way_within_the_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fsops, "_dir_cache_size", lambda: 64)
    before = _open_fds()
    with Tree(tmp_path) as tree:
        deep = tuple(f"l{i}" for i in range(200))  # deeper than the cache is large
        tree.dir_fd(deep, create=True)
        tree.release()
        assert len(tree._dirs) <= 64 and _open_fds() <= before + 64 + 1
        tree.forget()
        tree.dir_fd(("a", "b", "c"), create=True)
        assert ("a", "b") in tree._dirs  # a sibling of c now costs one open, not three
        tree.release()
    assert _open_fds() == before
    assert (tmp_path / "/".join(deep)).is_dir()


def test_forget_keeps_fds_handed_out_for_the_entry_in_hand(tmp_path: Path) -> None:
    with Tree(tmp_path) as tree:
        held = tree.dir_fd(("x",), create=True)
        tree.release()
        tree.dir_fd(("y",), create=True)  # cached, but not handed out since the release
        held = tree.dir_fd(("x",), create=False)
        tree.forget()
        os.fstat(held)  # still open: a caller may be using it until release()
        assert os.readlink(f"/proc/self/fd/{held}") == str(tmp_path / "x")
        tree.release()
        with pytest.raises(OSError):
            os.fstat(held)
