"""Measuring processes: wall time, CPU (user+sys) and peak RSS.

A child process is reaped with ``os.wait4``, whose rusage covers the child and every
descendant it waited for: CPU is their sum, ``ru_maxrss`` the largest single process.
A long-running daemon (containerd) is read from ``/proc/<pid>``: CPU from ``stat``
(utime+stime, plus cutime+cstime for helpers it reaped, e.g. unpigz), peak RSS from
``status`` VmHWM after resetting it through ``clear_refs``.

Neither sees the whole process tree at once (a pull and its unpack workers run together), so
:class:`TreeRssSampler` polls ``/proc`` for the command and all its descendants and keeps the
largest sum (issue 15's goal is on that sum).  Polling can miss a peak shorter than its
interval; the workers' memory is held for the length of a layer, far longer.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from guestpull_testkit import require_binary

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TAIL = 2000


@dataclass(frozen=True)
class Sample:
    """One measured run of a workload by one tool."""

    wall_s: float
    cpu_s: float
    peak_rss_kib: int
    #: the largest sum of VmRSS over the process tree seen while it ran (0: not measured)
    tree_rss_kib: int = 0


@dataclass(frozen=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    stdout: str
    stderr: str  # the tail only
    tree_rss_kib: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """A one-paragraph account of a failure: the command, exit code and stderr tail."""
        tail = self.stderr.strip()[-600:] or self.stdout.strip()[-600:]
        return f"{Path(self.argv[0]).name} exited {self.returncode}: {tail}"


def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion and measure it.  Killed (with its group) after ``timeout``.

    The command is started through GNU ``time``: a child's ``ru_maxrss`` starts at the RSS of
    the process that forked it, so measured straight from this (large) Python process every
    tool would show at least our own RSS.  ``time`` is small and reports the true peak.
    CPU comes from our own ``wait4``, which is exact and not inflated that way.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [_time_binary(), "-f", "%M", "-o", rss.name, *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        # GNU time itself (~2 MiB) is not part of the tool: sample its descendants only.
        sampler = TreeRssSampler(proc.pid, include_root=False)
        try:
            with sampler:
                _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return ProcessResult(
            argv=tuple(argv),
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_kib=_peak_from_time(Path(rss.name)),
            stdout=_read_all(out),
            stderr=_read_all(err)[-_TAIL:],
            tree_rss_kib=sampler.peak_kib,
        )


# --- the whole process tree ------------------------------------------------------------------


def tree_rss_kib(pid: int, *, include_root: bool = True) -> int:
    """VmRSS (KiB) summed over ``pid``'s descendants (and ``pid`` itself unless told not)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        if current != pid or include_root:
            total += _vm_rss_kib(current)
        todo += _children(current)
    return total


def _vm_rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited between listing and reading
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a worker may be forked from any thread)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class TreeRssSampler:
    """A thread that sums the tree's RSS every ``interval`` seconds until the block ends.

    ``peak_kib`` is the largest sum seen (one last sample is taken on exit).
    """

    def __init__(self, pid: int, *, interval: float = 0.01, include_root: bool = True) -> None:
        self.pid = pid
        self.interval = interval
        self.include_root = include_root
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tree-rss-{pid}", daemon=True)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid, include_root=self.include_root))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return


def _time_binary() -> str:
    return require_binary("time")


def _peak_from_time(path: Path) -> int:
    """GNU time's ``%M`` (KiB), the last line of its output file; 0 if it wrote none."""
    lines = path.read_text(errors="replace").split()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_all(handle: object) -> str:
    handle.seek(0)  # type: ignore[attr-defined]
    return handle.read().decode(errors="replace")  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ChainResult:
    """Commands run one after the other (e.g. skopeo copy, then umoci unpack)."""

    steps: tuple[ProcessResult, ...]

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def failed_step(self) -> ProcessResult | None:
        return next((step for step in self.steps if not step.ok), None)

    def sample(self) -> Sample:
        """Wall and CPU add up; peak RSS is the largest step (they never overlap)."""
        return Sample(
            wall_s=sum(step.wall_s for step in self.steps),
            cpu_s=sum(step.cpu_s for step in self.steps),
            peak_rss_kib=max((step.max_rss_kib for step in self.steps), default=0),
            tree_rss_kib=max((step.tree_rss_kib for step in self.steps), default=0),
        )


def run_chain(commands: Sequence[Sequence[str]], *, timeout: float, env: dict[str, str] | None = None) -> ChainResult:
    """Run ``commands`` in order, stopping at the first that fails."""
    steps: list[ProcessResult] = []
    for argv in commands:
        result = run_process(argv, timeout=timeout, env=env)
        steps.append(result)
        if not result.ok:
            break
    return ChainResult(tuple(steps))


@dataclass(frozen=True)
class ConcurrentResult:
    wall_s: float
    chains: tuple[ChainResult, ...]

    def sample(self) -> Sample:
        """Wall from the first start to the last exit; CPU summed; RSS of the largest process.

        Tree RSS: the sum of each chain's peak, an upper bound (the chains overlap in time but
        need not peak together)."""
        samples = [chain.sample() for chain in self.chains]
        return Sample(
            wall_s=self.wall_s,
            cpu_s=sum(s.cpu_s for s in samples),
            peak_rss_kib=max((s.peak_rss_kib for s in samples), default=0),
            tree_rss_kib=sum(s.tree_rss_kib for s in samples),
        )


def run_concurrently(
    chains: Sequence[Sequence[Sequence[str]]], *, timeout: float, env: dict[str, str] | None = None
) -> ConcurrentResult:
    """Run several chains at the same time (one thread each waits for its processes)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(chains))) as pool:
        futures = [pool.submit(run_chain, chain, timeout=timeout, env=env) for chain in chains]
        results = tuple(future.result() for future in futures)
    return ConcurrentResult(time.perf_counter() - start, results)


# --- daemons -------------------------------------------------------------------------------


def daemon_cpu_seconds(pid: int) -> float:
    """CPU the process and the children it reaped have used so far (utime+stime+cutime+cstime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after it start past the ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / _CLOCK_TICKS


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def daemon_peak_rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` in KiB (0 when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values))
