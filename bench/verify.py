"""Checking a tool's rootfs against the generated image's file list, so a wrong answer fails.

Every path, kind and size is compared; the content of a deterministic sample of files (spread
by a hash of the path, plus the largest files) is hashed.  Nothing under the rootfs is followed
through a symlink.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bench.images import ExpectedEntry, ExpectedTree

#: How many files' content is hashed by default (besides the largest ones).
DEFAULT_SAMPLE = 200
_LARGEST = 4
_SHOWN = 8


@dataclass(frozen=True)
class Verification:
    """The outcome: ``problems`` lists at most a few differences; ``count`` is how many."""

    problems: tuple[str, ...]
    count: int
    files_hashed: int

    @property
    def ok(self) -> bool:
        return self.count == 0

    def summary(self) -> str:
        if self.ok:
            return "ok"
        more = f" (+{self.count - len(self.problems)} more)" if self.count > len(self.problems) else ""
        return "; ".join(self.problems) + more


def scan_tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` (relative, '/'-separated) with its kind and size (files)."""
    root = Path(root)
    found: dict[str, tuple[str, int]] = {}
    for directory, dirnames, filenames in os.walk(root):
        base = os.path.relpath(directory, root)
        for name in dirnames + filenames:
            rel = name if base == "." else f"{base}/{name}"
            info = os.lstat(os.path.join(directory, name))
            found[rel] = _kind_and_size(info)
    return found


def _kind_and_size(info: os.stat_result) -> tuple[str, int]:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "dir", 0
    if stat.S_ISREG(mode):
        return "file", info.st_size
    if stat.S_ISLNK(mode):
        return "symlink", 0
    return "other", 0


def sample_paths(expected: ExpectedTree, sample: int = DEFAULT_SAMPLE) -> list[str]:
    """The files whose content is checked: ``sample`` spread by path hash, plus the largest."""
    files = [path for path, entry in expected.items() if entry.kind == "file"]
    by_hash = sorted(files, key=lambda p: hashlib.sha256(p.encode()).digest())[:sample]
    largest = sorted(files, key=lambda p: (-expected[p].size, p))[:_LARGEST]
    return sorted(set(by_hash) | set(largest))


def verify_rootfs(root: Path, expected: ExpectedTree, *, sample: int = DEFAULT_SAMPLE) -> Verification:
    """Compare the tree at ``root`` with ``expected``: missing, extra, kind, size, content."""
    root = Path(root)
    if not root.is_dir():
        return Verification((f"rootfs {root} does not exist",), 1, 0)
    found = scan_tree(root)
    problems: list[str] = []
    problems += [f"missing {p}" for p in sorted(expected.keys() - found.keys())]
    problems += [f"extra {p}" for p in sorted(found.keys() - expected.keys())]
    for path in sorted(expected.keys() & found.keys()):
        problems += _compare_entry(path, expected[path], found[path])
    hashed = 0
    for path in sample_paths(expected, sample):
        if path not in found or found[path][0] != "file":
            continue  # already reported
        hashed += 1
        if _sha256_file(root / path) != expected[path].sha256:
            problems.append(f"content differs: {path}")
    return Verification(tuple(problems[:_SHOWN]), len(problems), hashed)


def _compare_entry(path: str, want: ExpectedEntry, got: tuple[str, int]) -> list[str]:
    kind, size = got
    if kind != want.kind:
        return [f"{path} is a {kind}, expected a {want.kind}"]
    if want.kind == "file" and size != want.size:
        return [f"{path} has {size} bytes, expected {want.size}"]
    return []


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
