"""Process measurement: CPU and peak RSS of children (not inflated by ours), timeouts, daemons."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.measure import (  # noqa: E402
    daemon_cpu_seconds,
    daemon_peak_rss_kib,
    run_chain,
    run_concurrently,
    run_process,
    spread,
)

PY = sys.executable


def test_peak_rss_is_the_childs_own_not_the_parents() -> None:
    ballast = bytearray(200 * 1024 * 1024)  # touch every page: our RSS is now > 200 MiB
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    small = run_process(["true"], timeout=30)
    big = run_process([PY, "-c", "b = bytearray(96 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"],
                      timeout=60)
    del ballast
    assert small.ok and big.ok
    assert 0 < small.max_rss_kib < 20 * 1024
    assert 96 * 1024 < big.max_rss_kib < 180 * 1024


def test_cpu_counts_user_time_and_grandchildren() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    direct = run_process([PY, "-c", spin], timeout=30)
    nested = run_process(["sh", "-c", f'"{PY}" -c "$1"', "sh", spin], timeout=30)
    assert direct.cpu_s >= 0.29
    assert nested.cpu_s >= 0.29  # the shell's child is counted too


def test_exit_code_and_output_are_kept() -> None:
    result = run_process([PY, "-c", "import sys; print('out'); sys.exit('boom')"], timeout=30)
    assert result.returncode == 1 and not result.ok
    assert result.stdout.strip() == "out"
    assert "boom" in result.stderr and "exited 1" in result.describe()


def test_timeout_kills_the_process() -> None:
    start = time.monotonic()
    result = run_process(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - start < 10
    assert not result.ok


def test_chain_stops_at_the_first_failure_and_sums() -> None:
    chain = run_chain([["true"], ["false"], ["touch", "/nonexistent/never"]], timeout=30)
    assert len(chain.steps) == 2 and not chain.ok
    assert chain.failed_step is chain.steps[1]
    sample = chain.sample()
    assert sample.wall_s == sum(step.wall_s for step in chain.steps)
    assert sample.peak_rss_kib == max(step.max_rss_kib for step in chain.steps)


def test_concurrent_runs_overlap() -> None:
    nap = [PY, "-c", "import time; time.sleep(0.5)"]
    result = run_concurrently([[nap], [nap], [nap]], timeout=30)
    assert len(result.chains) == 3 and all(chain.ok for chain in result.chains)
    assert 0.5 <= result.wall_s < 1.4  # not 3 × 0.5 s
    assert result.sample().wall_s == result.wall_s


def test_daemon_readings_of_this_process() -> None:
    before = daemon_cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert daemon_cpu_seconds(os.getpid()) - before >= 0.15
    assert daemon_peak_rss_kib(os.getpid()) > 1024
    assert daemon_peak_rss_kib(2**22 + 12345) == 0  # no such process


def test_spread() -> None:
    assert spread([]) is None
    stats = spread([3.0, 1.0, 2.0, 10.0])
    assert stats is not None and (stats.median, stats.min, stats.max) == (2.5, 1.0, 10.0)
