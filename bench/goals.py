"""Issue 15's goals, each judged from one run's results: met, not met, or not measured.

A goal is never "met" on missing evidence: a workload that did not run, a guestpull row that
failed, or no successful peer to compare with makes it "not measured", with the reason.  Where
a goal names several guestpull rows (copy and overlay), every one must meet it and the worst
one is shown.  Values are medians, as in the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from bench.report import Metric, WorkloadResult, ratio

GoalStatus = Literal["met", "not met", "not measured"]
COLD_MODES = ("guestpull (copy)", "guestpull (overlay)")
#: workloads whose tree RSS is not one pull's (several pulls at once)
_NOT_ONE_PULL = ("burst",)
KIB_PER_MIB = 1024


class Measured(NamedTuple):
    """One row's value for a goal; ``row`` is its (workload, tool), when it is one row."""

    value: float
    what: str
    row: tuple[str, str] | None = None


@dataclass(frozen=True)
class GoalResult:
    """One row of the goals table.  ``value`` and ``limit`` are in ``unit``; ``detail`` says
    which rows were compared (or why nothing was)."""

    goal: str
    limit: float
    unit: Literal["×", "s", "MiB"]
    status: GoalStatus
    value: float | None = None
    detail: str = ""
    #: what the profile of the deciding row says bounds it (bench.phases.verdict)
    limit_note: str = ""
    #: the deciding row (workload, tool), when one row decides
    row: tuple[str, str] | None = None

    @property
    def target(self) -> str:
        return f"≤ {_number(self.limit, self.unit)}"

    @property
    def margin(self) -> str:
        """By how much it is met or missed: the difference and its share of the limit."""
        if self.value is None or self.limit <= 0:
            return "—"
        diff = self.value - self.limit
        word = "over" if diff > 0 else "under"
        return f"{'+' if diff > 0 else '−'}{_number(abs(diff), self.unit)} ({abs(diff) / self.limit:.0%} {word})"


def _number(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.2f}×"


def _judge(goal: str, limit: float, unit: Literal["×", "s", "MiB"],
           values: Sequence[Measured], missing: Sequence[str]) -> GoalResult:
    """``values``: one per row measured; ``missing``: why a row has none."""
    worst = max(values, default=None, key=lambda m: (m.value, m.what))
    if worst is not None and worst.value > limit:  # one row over the limit decides, whatever else
        return GoalResult(goal, limit, unit, "not met", worst.value, worst.what, row=worst.row)
    if missing or worst is None:
        reasons = "; ".join(dict.fromkeys(missing)) or "no result"  # each reason once
        return GoalResult(goal, limit, unit, "not measured", None, reasons)
    return GoalResult(goal, limit, unit, "met", worst.value, worst.what, row=worst.row)


def _workload(workloads: Sequence[WorkloadResult], name: str) -> WorkloadResult | None:
    return next((w for w in workloads if w.name == name), None)


def _median(workloads: Sequence[WorkloadResult], name: str, tool: str,
            metric: Metric = "wall_s") -> tuple[float | None, str]:
    """The row's median, or None and why not."""
    workload = _workload(workloads, name)
    if workload is None:
        return None, f"{name} not run"
    row = next((r for r in workload.rows if r.tool == tool), None)
    if row is None:
        return None, f"{name}: {tool} not run"
    stats = row.stats(metric)
    if stats is None:
        return None, f"{name}: {tool} {row.status}"
    return stats.median, ""


def peer_ratio_goal(workloads: Sequence[WorkloadResult], goal: str, name: str,
                    tools: Sequence[str], limit: float) -> GoalResult:
    """Wall-time ratio of each of ``tools`` to the best peer in workload ``name``."""
    values: list[Measured] = []
    missing: list[str] = []
    workload = _workload(workloads, name)
    for tool in tools:
        median, why = _median(workloads, name, tool)
        if median is None or workload is None:
            missing.append(why)
            continue
        row = next(r for r in workload.rows if r.tool == tool)
        found = ratio(workload, row, "wall_s")
        if found is None:
            missing.append(f"{name}: no successful peer")
        else:
            values.append(Measured(found.value, f"{tool} vs {found.peer} ({name})", (name, tool)))
    return _judge(goal, limit, "×", values, missing)


def seconds_goal(workloads: Sequence[WorkloadResult], goal: str, name: str, tool: str,
                 limit: float) -> GoalResult:
    median, why = _median(workloads, name, tool)
    values = [] if median is None else [Measured(median, f"{tool} ({name})", (name, tool))]
    return _judge(goal, limit, "s", values, [why] if why else [])


def warm_copy_goal(workloads: Sequence[WorkloadResult], limit: float = 0.5) -> GoalResult:
    """The warm copy re-pull against the same image's cold copy pull (``big``)."""
    goal = "warm re-pull, copy: ≤ 0.5 × its cold pull"
    warm, why_warm = _median(workloads, "warm-repull", "guestpull warm (copy)")
    cold, why_cold = _median(workloads, "big", "guestpull (copy)")
    if warm is None or cold is None or cold <= 0:
        return _judge(goal, limit, "×", [], [why for why in (why_warm, why_cold) if why] or
                      ["cold pull took no time"])
    return _judge(goal, limit, "×", [Measured(warm / cold, "guestpull warm (copy) ÷ guestpull (copy) (big)")], [])


def tree_rss_goal(workloads: Sequence[WorkloadResult], limit_mib: float = 120.0) -> GoalResult:
    """The largest median whole-tree RSS of any single guestpull pull, any workload."""
    values = [
        Measured(stats.median / KIB_PER_MIB, f"{row.tool} ({workload.name})", (workload.name, row.tool))
        for workload in workloads if workload.name not in _NOT_ONE_PULL
        for row in workload.rows
        if not row.peer and (stats := row.stats("tree_rss_kib")) is not None and stats.median > 0
    ]
    return _judge("peak RSS of the whole process tree, workers included", limit_mib, "MiB",
                  values, [] if values else ["no guestpull row with a tree RSS"])


def evaluate(workloads: Sequence[WorkloadResult]) -> list[GoalResult]:
    """Every goal of issue 15, in the issue's order, each with its deciding row's profile."""
    return [_with_limit_note(goal, workloads) for goal in _evaluate(workloads)]


def _with_limit_note(goal: GoalResult, workloads: Sequence[WorkloadResult]) -> GoalResult:
    """The profile verdict of the row that decided ``goal``, if that row was profiled."""
    from dataclasses import replace

    from bench.phases import verdict

    if goal.row is None:
        return goal
    name, tool = goal.row
    workload = _workload(workloads, name)
    profile = workload.profiles.get(tool) if workload is not None else None
    if profile is None:
        return goal
    note = f"profile failed: {profile['error']}" if "error" in profile else verdict(profile)
    return replace(goal, limit_note=note)


def _evaluate(workloads: Sequence[WorkloadResult]) -> list[GoalResult]:
    results = [
        peer_ratio_goal(workloads, "small (2 × 8 MiB), CLI, cold: ≤ 1.0 × best peer", "small",
                        COLD_MODES, 1.0),
        peer_ratio_goal(workloads, "small, through guestpull serve: ≤ 0.5 × best peer",
                        "burst-single", ("guestpull serve",), 0.5),
    ]
    for shape in ("many", "many-logsize", "many-deep"):
        results.append(peer_ratio_goal(workloads, f"many small files, {shape}: ≤ 0.6 × best peer",
                                       shape, COLD_MODES, 0.6))
    for tool in COLD_MODES:
        mode = tool.removeprefix("guestpull ").strip("()")
        results.append(peer_ratio_goal(workloads, f"big (4 × 64 MiB), cold, {mode}: ≤ 0.5 × best peer",
                                       "big", (tool,), 0.5))
    results += [
        seconds_goal(workloads, "warm re-pull, overlay: ≤ 0.3 s total (CLI)", "warm-repull",
                     "guestpull warm (overlay)", 0.3),
        warm_copy_goal(workloads),
        seconds_goal(workloads, "`guestpull --version`: ≤ 0.1 s", "startup", "guestpull --version", 0.1),
        seconds_goal(workloads, "`guestpull pull --help`: ≤ 0.1 s", "startup",
                     "guestpull pull --help", 0.1),
        tree_rss_goal(workloads),
    ]
    return results


def goals_markdown(goals: Sequence[GoalResult], *, quick: bool) -> list[str]:
    lines = ["## Goals (issue 15)", ""]
    if quick:
        lines += ["A `--quick` run: the images are far smaller than the goals' workloads, so "
                  "these verdicts only show the table works.", ""]
    lines += [
        "Medians of this run; where copy and overlay are both named the worse one decides; a "
        "failed or missing row makes a goal not measured, never met.",
        "",
        "| goal | result | measured | by how much | compared | limit (profile) |",
        "|---|---|---:|---:|---|---|",
    ]
    for goal in goals:
        measured = "—" if goal.value is None else _number(goal.value, goal.unit)
        cells = [goal.goal, goal.status.upper() if goal.status == "not met" else goal.status,
                 measured, goal.margin, goal.detail, goal.limit_note or "—"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    met = sum(goal.status == "met" for goal in goals)
    lines += ["", f"{met} of {len(goals)} goals met.", ""]
    return lines


def goals_json(goals: Sequence[GoalResult]) -> list[dict[str, object]]:
    return [{"goal": g.goal, "status": g.status, "limit": g.limit, "unit": g.unit,
             "value": g.value, "margin": g.margin, "detail": g.detail,
             "limit_note": g.limit_note} for g in goals]
