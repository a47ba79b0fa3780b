"""Watching subprocesses: resident memory of a whole process tree, from /proc.

``ru_maxrss`` from ``wait4`` is not a measure of a child's own peak: Linux carries the
parent's high-water mark over fork and exec, so a child of a 300 MiB pytest process reports
300 MiB whatever it did.  Sample /proc instead, for the process and all its descendants.
"""

from __future__ import annotations

from pathlib import Path


def tree_rss_kib(pid: int) -> int:
    """Resident memory (KiB) of ``pid`` and all its descendants right now; 0 once gone."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next((int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total
