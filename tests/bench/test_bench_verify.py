"""The rootfs check: a correct rootfs passes; any missing, extra, resized or altered file fails."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.images import ExpectedTree, ImagePlan, LayerPlan, extract_layout, generate  # noqa: E402
from bench.verify import sample_paths, verify_rootfs  # noqa: E402

PLAN = ImagePlan(
    "t/verify",
    (LayerPlan("mixed", seed=11, size=200 * 1024), LayerPlan("small-files", seed=12, files=80)),
)


@pytest.fixture
def tree(shm_path: Path) -> tuple[Path, ExpectedTree]:
    image = generate(PLAN, shm_path / "cache")
    return extract_layout(image, shm_path / "rootfs"), image.expected()


def test_correct_rootfs_passes(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    result = verify_rootfs(root, expected)
    assert result.ok, result.summary()
    assert result.files_hashed >= 50


def _a_file(expected: ExpectedTree, *, sampled: bool = True) -> str:
    files = sample_paths(expected) if sampled else [p for p, e in expected.items() if e.kind == "file"]
    return next(p for p in files if p.endswith(".txt"))


def test_missing_file_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    victim = _a_file(expected)
    (root / victim).unlink()
    result = verify_rootfs(root, expected)
    assert not result.ok
    assert f"missing {victim}" in result.problems


def test_missing_directory_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    shutil.rmtree(root / "srv")
    result = verify_rootfs(root, expected)
    assert not result.ok and result.count > 80
    assert "missing srv" in result.problems


def test_extra_file_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    (root / "data" / "stray.txt").write_text("not in the image")
    result = verify_rootfs(root, expected)
    assert result.problems == ("extra data/stray.txt",)


def test_different_size_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    victim = _a_file(expected, sampled=False)
    with open(root / victim, "ab") as handle:
        handle.write(b"x")
    result = verify_rootfs(root, expected)
    assert not result.ok
    assert any(victim in p and "bytes" in p for p in result.problems)


def test_different_content_same_size_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    victim = _a_file(expected)
    data = bytearray((root / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / victim).write_bytes(bytes(data))
    result = verify_rootfs(root, expected)
    assert result.problems == (f"content differs: {victim}",)


def test_largest_files_are_always_hashed(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    largest = max((p for p, e in expected.items() if e.kind == "file"), key=lambda p: expected[p].size)
    assert largest in sample_paths(expected, sample=0)
    with open(root / largest, "r+b") as handle:
        handle.write(b"\0" * 16)
    assert not verify_rootfs(root, expected, sample=0).ok


def test_file_replaced_by_directory_or_symlink_fails(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    victim = _a_file(expected, sampled=False)
    (root / victim).unlink()
    os.symlink("/etc/passwd", root / victim)
    result = verify_rootfs(root, expected)
    assert f"{victim} is a symlink, expected a file" in result.problems


def test_missing_rootfs_fails(shm_path: Path) -> None:
    result = verify_rootfs(shm_path / "nowhere", {})
    assert not result.ok and "does not exist" in result.summary()


def test_summary_counts_what_it_does_not_show(tree: tuple[Path, ExpectedTree]) -> None:
    root, expected = tree
    for n in range(20):
        (root / f"extra{n:02d}").write_text("x")
    result = verify_rootfs(root, expected)
    assert result.count == 20 and len(result.problems) < 20
    assert f"(+{20 - len(result.problems)} more)" in result.summary()
