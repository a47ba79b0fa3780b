"""Describe a directory tree as plain data, so two unpackers' trees can be compared."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name == "security.selinux":  # the host's label, not the image's
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            pass
    return out


def describe_tree(root: Path, *, dir_mtimes: bool = False) -> dict[str, Any]:
    """Every path under ``root`` → type, mode, owner, size, content hash, link target,
    xattrs, device numbers, mtime (directories only when asked) and hard-link group."""
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            item: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": _xattrs(full),
            }
            if not stat.S_ISDIR(st.st_mode):  # hard links to symlinks, fifos, devices too
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            if stat.S_ISREG(st.st_mode):
                item["size"] = st.st_size
                with open(full, "rb") as f:
                    item["sha256"] = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                item["target"] = os.readlink(full)
                del item["mode"]  # symlink modes mean nothing on Linux
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                item["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISDIR(st.st_mode) or dir_mtimes:
                item["mtime"] = int(st.st_mtime)
            entries[rel] = item
    for paths in inodes.values():
        group = sorted(paths)
        for p in group:
            entries[p]["links"] = group
    return entries


def diff_trees(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            out.append(f"only in second: {path} {b[path]}")
        elif path not in b:
            out.append(f"only in first: {path} {a[path]}")
        elif a[path] != b[path]:
            out.append(f"differs: {path}\n  first:  {a[path]}\n  second: {b[path]}")
    return out


def snapshot(root: Path) -> dict[str, Any]:
    """A sentinel's state, including directory mtimes (any write shows)."""
    return describe_tree(root, dir_mtimes=True) | {".": os.lstat(root).st_mtime_ns}
