"""The benchmark's profile of a guestpull pull (bench.phases) and where it shows in the report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.goals import evaluate  # noqa: E402
from bench.images import ImagePlan, LayerPlan, generate  # noqa: E402
from bench.phases import PHASES, phases, verdict  # noqa: E402
from bench.report import WorkloadResult, to_markdown  # noqa: E402
from bench.tools import GuestpullTool, Registry  # noqa: E402
from guestpull_testkit.images import push  # noqa: E402
from guestpull_testkit.registry import RegistryProcess  # noqa: E402

from tests.bench.test_bench_goals import all_met  # noqa: E402


def test_phases_are_the_gaps_between_the_marks() -> None:
    marks = {"imported": 0.20, "configured": 0.25, "resolved": 0.30, "blobs-stored": 0.90,
             "bundle-done": 1.10, "end": 1.15}
    got = phases(marks)
    assert list(got) == list(PHASES)
    assert got == pytest.approx({"start-up": 0.20, "config": 0.05, "resolve": 0.05,
                                 "download": 0.60, "unpack tail": 0.20, "exit": 0.05})
    assert sum(got.values()) == pytest.approx(marks["end"])


def test_phases_without_layers_or_bundle_take_no_time() -> None:
    got = phases({"imported": 0.2, "configured": 0.3, "resolved": 0.4, "end": 0.5})
    assert got["download"] == 0 and got["unpack tail"] == 0 and got["exit"] == pytest.approx(0.1)


def test_verdict_names_the_longest_phase_and_the_cpu() -> None:
    profile = {"phases": {"start-up": 0.2, "config": 0.0, "resolve": 0.05, "download": 0.3,
                          "unpack tail": 0.9, "exit": 0.05}, "total": 1.5,
               "cpu_self": 0.8, "cpu_children": 1.0}
    text = verdict(profile)
    assert text.startswith("unpack tail 0.90 s of 1.50 s (60%)")
    assert "CPU 1.80 s (1.2 cores" in text


def test_goal_takes_the_verdict_of_the_row_that_decided_it() -> None:
    workloads = all_met()
    big = next(w for w in workloads if w.name == "big")
    profile = {"phases": dict.fromkeys(PHASES, 0.0) | {"download": 0.3}, "total": 0.4,
               "cpu_self": 0.2, "cpu_children": 0.1}
    big.profiles = {"guestpull (overlay)": profile, "guestpull (copy)": {"error": "boom"}}
    goals = {g.goal: g for g in evaluate(workloads)}
    overlay = next(g for name, g in goals.items() if name.startswith("big") and "overlay" in name)
    copy = next(g for name, g in goals.items() if name.startswith("big") and "copy" in name)
    assert overlay.limit_note.startswith("download 0.30 s")
    assert copy.limit_note == "profile failed: boom"
    markdown = to_markdown(workloads, {}, svg_name="x.svg", goals=list(goals.values()))
    assert "## Where the time goes" in markdown
    assert "| big | guestpull (overlay) | 0.00 | 0.00 | 0.00 | 0.30 |" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_profile_of_a_real_pull(shm_path: Path, https_registry: RegistryProcess, mode: str) -> None:
    plan = ImagePlan("t/phases", (LayerPlan("small-files", seed=5, files=40),
                                  LayerPlan("small-files", seed=6, files=40)))
    image = generate(plan, shm_path / "cache")
    registry = Registry(https_registry.host, https_registry.ca_path)
    push(image.layout, "latest", f"docker://{registry.ref(image)}", tls_ca=https_registry.ca_path)
    tool = GuestpullTool(registry, mode=mode, timeout=120)
    tool.setup([image], shm_path / "setup")
    try:
        profile = tool.profile([image], shm_path / "work")
    finally:
        tool.release(shm_path / "work")
    assert profile is not None and "error" not in profile, profile
    assert set(profile["phases"]) == set(PHASES)
    assert profile["phases"]["start-up"] > 0.01 and profile["phases"]["resolve"] > 0
    assert profile["phases"]["download"] > 0
    assert sum(profile["phases"].values()) == pytest.approx(profile["total"], abs=0.02)
    assert profile["cpu_self"] > 0
    assert not (shm_path / "work" / "bundle0" / "rootfs").is_mount()
    WorkloadResult("w", "d", "tmpfs", [], {tool.name: profile})  # the report's shape
