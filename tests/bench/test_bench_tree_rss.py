"""The whole-process-tree peak RSS (issue 15): workers count, GNU time and we do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.measure import TreeRssSampler, run_chain, run_process, tree_rss_kib  # noqa: E402

PY = sys.executable
MIB = 1024
# Two workers each touch 64 MiB and hold it while the other does too.
ALLOCATE = "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(0.6)"
PARENT = (
    "import subprocess, sys\n"
    f"procs = [subprocess.Popen([sys.executable, '-c', {ALLOCATE!r}]) for _ in range(2)]\n"
    "sys.exit(max(p.wait() for p in procs))"
)


def test_tree_rss_counts_workers_the_single_peak_does_not() -> None:
    result = run_process([PY, "-c", PARENT], timeout=60)
    assert result.ok, result.describe()
    assert result.max_rss_kib < 100 * MIB  # one worker: 64 MiB + an interpreter
    assert result.tree_rss_kib >= 128 * MIB  # both workers at once
    assert result.tree_rss_kib < 250 * MIB


def test_tree_rss_of_a_small_command_excludes_gnu_time() -> None:
    result = run_process(["sleep", "0.3"], timeout=30)
    assert result.ok
    assert 0 < result.tree_rss_kib < 8 * MIB


def test_sampler_follows_a_child_that_allocates() -> None:
    proc = subprocess.Popen([PY, "-c", ALLOCATE])
    with TreeRssSampler(proc.pid) as sampler:
        proc.wait(timeout=60)
    assert sampler.peak_kib >= 64 * MIB
    assert tree_rss_kib(proc.pid) == 0  # gone


def test_chain_tree_rss_is_the_largest_step() -> None:
    chain = run_chain([["true"], [PY, "-c", ALLOCATE]], timeout=60)
    assert chain.ok
    sample = chain.sample()
    assert sample.tree_rss_kib == max(step.tree_rss_kib for step in chain.steps)
    assert sample.tree_rss_kib >= 64 * MIB
