"""Issue 15's goals table, fed with synthetic results: met, not met, not measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.goals import GoalResult, evaluate  # noqa: E402
from bench.measure import Sample  # noqa: E402
from bench.report import ToolResult, WorkloadResult, to_json, to_markdown  # noqa: E402

MIB = 1024


def row(tool: str, wall: float, *, peer: bool = False, tree_mib: float = 60.0,
        status: str = "ok") -> ToolResult:
    samples = [Sample(wall * f, 1.0, 30_000, int(tree_mib * MIB * f)) for f in (0.9, 1.0, 1.1)]
    return ToolResult(tool, peer, status, samples)  # type: ignore[arg-type]


def cold(name: str, copy: float, overlay: float, peer: float = 1.0) -> WorkloadResult:
    return WorkloadResult(name, "synthetic", "tmpfs", [
        row("guestpull (copy)", copy), row("guestpull (overlay)", overlay),
        row("skopeo+umoci", peer, peer=True, tree_mib=30), row("ctr (containerd)", peer * 2, peer=True),
    ])


def all_met() -> list[WorkloadResult]:
    return [
        cold("big", 0.4, 0.45),
        cold("many", 0.5, 0.55), cold("many-logsize", 0.5, 0.5), cold("many-deep", 0.3, 0.4),
        cold("small", 0.9, 1.0),
        WorkloadResult("burst-single", "s", "tmpfs", [row("guestpull serve", 0.2),
                                                      row("skopeo+umoci", 1.0, peer=True)]),
        WorkloadResult("warm-repull", "w", "tmpfs", [row("guestpull warm (copy)", 0.15),
                                                     row("guestpull warm (overlay)", 0.25)]),
        WorkloadResult("startup", "v", "tmpfs", [row("guestpull --version", 0.05),
                                                 row("guestpull pull --help", 0.08)]),
        # eight pulls at once: far above 120 MiB in total, not one pull's tree
        WorkloadResult("burst", "b", "tmpfs", [row("guestpull (copy)", 3.0, tree_mib=500)]),
    ]


def by_goal(goals: list[GoalResult], prefix: str) -> GoalResult:
    return next(g for g in goals if g.goal.startswith(prefix))


def test_every_goal_met_when_every_row_is_within_its_limit() -> None:
    goals = evaluate(all_met())
    assert len(goals) == 12
    assert [g.status for g in goals] == ["met"] * 12, [(g.goal, g.detail) for g in goals]
    small = by_goal(goals, "small (2")
    assert small.value == pytest.approx(1.0)  # the worse of copy (0.9×) and overlay (1.0×)
    assert "overlay" in small.detail
    warm_copy = by_goal(goals, "warm re-pull, copy")
    assert warm_copy.value == pytest.approx(0.15 / 0.4)
    assert by_goal(goals, "peak RSS").value == pytest.approx(60.0)


def test_one_mode_over_the_limit_is_not_met_with_the_margin() -> None:
    results = all_met()
    results[2] = cold("many-logsize", 0.5, 0.8)  # issue 15's independent run: 0.77-0.82×
    goal = by_goal(evaluate(results), "many small files, many-logsize")
    assert goal.status == "not met"
    assert goal.value == pytest.approx(0.8)
    assert goal.margin == "+0.20× (33% over)"
    assert "guestpull (overlay) vs skopeo+umoci" in goal.detail


def test_absolute_and_memory_goals_not_met() -> None:
    results = all_met()
    results[6] = WorkloadResult("warm-repull", "w", "tmpfs", [row("guestpull warm (copy)", 1.94),
                                                             row("guestpull warm (overlay)", 0.77)])
    results[0] = WorkloadResult("big", "b", "tmpfs", [row("guestpull (copy)", 0.4, tree_mib=150),
                                                      row("skopeo+umoci", 1.0, peer=True)])
    goals = evaluate(results)
    overlay = by_goal(goals, "warm re-pull, overlay")
    assert (overlay.status, overlay.value) == ("not met", pytest.approx(0.77))
    assert by_goal(goals, "warm re-pull, copy").value == pytest.approx(1.94 / 0.4)
    rss = by_goal(goals, "peak RSS")
    assert rss.status == "not met" and rss.value == pytest.approx(150.0)
    assert rss.margin == "+30.0 MiB (25% over)"
    assert by_goal(goals, "big (4 × 64 MiB), cold, overlay").status == "not measured"


def test_missing_or_failed_evidence_is_not_measured_never_met() -> None:
    results = [w for w in all_met() if w.name not in ("many-deep", "startup")]
    results[0] = WorkloadResult("big", "b", "tmpfs", [
        row("guestpull (copy)", 0.4), row("guestpull (overlay)", 0.3, status="failed"),
        row("skopeo+umoci", 1.0, peer=True)])
    results[3] = WorkloadResult("small", "s", "tmpfs", [
        row("guestpull (copy)", 0.5), row("guestpull (overlay)", 0.5),
        row("skopeo+umoci", 1.0, peer=True, status="failed")])
    goals = evaluate(results)
    deep = by_goal(goals, "many small files, many-deep")
    assert (deep.status, deep.value, deep.detail) == ("not measured", None, "many-deep not run")
    assert deep.margin == "—"
    assert by_goal(goals, "`guestpull --version`").status == "not measured"
    assert by_goal(goals, "big (4 × 64 MiB), cold, copy").status == "met"
    overlay = by_goal(goals, "big (4 × 64 MiB), cold, overlay")
    assert overlay.status == "not measured" and "failed" in overlay.detail
    small = by_goal(goals, "small (2")
    assert small.status == "not measured" and "no successful peer" in small.detail
    # big's copy row succeeded: a failed overlay row does not spoil the warm-copy goal
    assert by_goal(goals, "warm re-pull, copy").status == "met"


def test_goals_in_markdown_and_json() -> None:
    results = all_met()
    results[2] = cold("many-logsize", 0.5, 0.8)
    goals = evaluate([w for w in results if w.name != "startup"])
    text = to_markdown(results, {"quick": True}, svg_name="b.svg", goals=goals)
    assert "## Goals (issue 15)" in text and "A `--quick` run" in text
    table = [line for line in text.splitlines() if line.startswith("| many small files, many-logsize")]
    assert len(table) == 1 and "NOT MET" in table[0] and "+0.20× (33% over)" in table[0]
    assert "9 of 12 goals met." in text
    document = json.loads(to_json(results, {}, goals))
    statuses = [g["status"] for g in document["goals"]]
    assert statuses.count("not met") == 1 and statuses.count("not measured") == 2
