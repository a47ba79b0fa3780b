"""The privilege seam: each implementation on its own, and the applier using the one chosen.

Unprivileged behaviour is tested as root by asking for ``privileged=False``: the seam, not the
euid, decides what the applier does.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from guestpull.errors import UnpackError
from guestpull.image.fseval import FsEval, Privileged, Unprivileged, fseval_for
from guestpull.image.unpack import LayerStats, apply_layer
from guestpull.testing.images import CharDevice, Dir, Entry, Fifo, File, LayerSpec, Symlink, Whiteout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")

OTHER = 4321  # an owner that is neither root nor us


def apply(root: Path, entries: Sequence[Entry], *, privileged: bool, mode: str = "copy") -> LayerStats:
    tar = LayerSpec(list(entries), compression="none").tar_bytes()
    return apply_layer(io.BytesIO(tar), root, mode=mode, privileged=privileged)  # type: ignore[arg-type]


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# --- the choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(("privileged", "kind"), [(True, Privileged), (False, Unprivileged)])
def test_choice_follows_the_flag(privileged: bool, kind: type) -> None:
    assert type(fseval_for(privileged)) is kind


def test_choice_defaults_to_the_euid() -> None:
    expected = Privileged if os.geteuid() == 0 else Unprivileged
    assert type(fseval_for(None)) is expected


def test_only_privileged_makes_devices() -> None:
    seams: list[FsEval] = [Privileged(), Unprivileged()]
    assert [fs.makes_devices for fs in seams] == [True, False]


# --- owners --------------------------------------------------------------------------------


def chown_new_file(fs: FsEval, path: Path, *, fresh: bool) -> tuple[int, int]:
    """Make ``path``, ask ``fs`` to give it to OTHER:OTHER+1 through an fd, return its owner."""
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        fs.chown(fd, OTHER, OTHER + 1, fresh=fresh)
    finally:
        os.close(fd)
    return owner(path)


@needs_root
def test_privileged_chown_gives_the_file_away(shm_path: Path) -> None:
    assert chown_new_file(Privileged(), shm_path / "f", fresh=True) == (OTHER, OTHER + 1)


@needs_root
@pytest.mark.parametrize("fresh", [True, False])
def test_unprivileged_chown_keeps_our_ids_even_as_root(shm_path: Path, fresh: bool) -> None:
    assert chown_new_file(Unprivileged(), shm_path / "f", fresh=fresh) == (os.geteuid(), os.getegid())


@pytest.mark.parametrize(("fresh", "calls"), [(True, 0), (False, 1)])
def test_privileged_chown_skips_only_a_fresh_file_with_our_ids(
    monkeypatch: pytest.MonkeyPatch, fresh: bool, calls: int
) -> None:
    # An existing file may belong to anyone, so only a file we just made can skip the call.
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: seen.append((fd, uid, gid)))
    Privileged().chown(7, os.geteuid(), os.getegid(), fresh=fresh)
    assert len(seen) == calls


@needs_root
def test_lchown_changes_the_link_not_its_target(shm_path: Path) -> None:
    (shm_path / "target").write_bytes(b"")
    os.symlink("target", shm_path / "link")
    dfd = os.open(shm_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        Unprivileged().lchown(dfd, "link", OTHER, OTHER)
        assert owner(shm_path / "link") == (0, 0)
        Privileged().lchown(dfd, "link", OTHER, OTHER)
    finally:
        os.close(dfd)
    assert owner(shm_path / "link") == (OTHER, OTHER)
    assert owner(shm_path / "target") == (0, 0)


# --- xattrs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "privileged_expects", "unprivileged_expects"), [
    ("user.comment", True, True),  # the kernel refuses user.* on symlinks and devices
    ("trusted.x", False, True),  # root should be allowed: a refusal is an error
    ("security.capability", False, True),
])
def test_which_refused_xattrs_are_only_warnings(
    name: str, privileged_expects: bool, unprivileged_expects: bool
) -> None:
    assert Privileged().xattr_refusal_expected(name) is privileged_expects
    assert Unprivileged().xattr_refusal_expected(name) is unprivileged_expects


# --- the applier through the seam ------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("privileged", [True, False])
def test_applier_owners_follow_the_seam(shm_path: Path, privileged: bool) -> None:
    apply(shm_path, [Dir("d", uid=OTHER, gid=OTHER), File("d/f", uid=OTHER, gid=OTHER),
                     Symlink("d/l", "f", uid=OTHER, gid=OTHER), Fifo("d/p", uid=OTHER, gid=OTHER)],
          privileged=privileged)
    expected = (OTHER, OTHER) if privileged else (0, 0)
    for name in ("d", "d/f", "d/l", "d/p"):
        assert owner(shm_path / name) == expected, name


@needs_root
def test_unprivileged_skips_devices_but_makes_fifos(shm_path: Path) -> None:
    stats = apply(shm_path, [Fifo("p"), CharDevice("null", 1, 3)], privileged=False)
    assert stats.specials == 1 and stats.skipped == ["null"]
    assert (shm_path / "p").is_fifo()
    assert not os.path.lexists(shm_path / "null")


@needs_root
def test_skipped_device_creates_no_parent_directory(shm_path: Path) -> None:
    # The seam is asked before the entry's path is resolved, so a skipped device leaves no trace.
    apply(shm_path, [CharDevice("newdir/null", 1, 3)], privileged=False)
    assert not os.path.lexists(shm_path / "newdir")
    apply(shm_path, [CharDevice("newdir/null", 1, 3)], privileged=True)
    assert (shm_path / "newdir" / "null").is_char_device()


@needs_root
def test_overlay_whiteout_refusal_comes_before_the_path_is_resolved(shm_path: Path) -> None:
    # Privileged, a whiteout below a file hides nothing (a no-op); unprivileged, an overlay layer
    # with any whiteout is refused, whatever its path, and nothing is made for it.
    entries = [File("a"), Whiteout("a/x"), Whiteout("b/c/x")]
    (shm_path / "u").mkdir()
    (shm_path / "p").mkdir()
    with pytest.raises(UnpackError, match="a/.wh.x"):
        apply(shm_path / "u", entries, privileged=False, mode="overlay")
    assert not os.path.lexists(shm_path / "u" / "b")
    stats = apply(shm_path / "p", entries, privileged=True, mode="overlay")
    assert stats.whiteouts == 2
    assert (shm_path / "p" / "b" / "c" / "x").is_char_device()
