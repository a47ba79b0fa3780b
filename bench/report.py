"""Benchmark results: the data model, ratios to the best peer, and Markdown / JSON / SVG output.

The SVG chart is written by hand (no plotting dependency): one group per workload, one bar per
tool for the median wall time with a min–max whisker, each workload on its own scale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from xml.sax.saxutils import escape

from bench.measure import Sample, Spread, spread
from bench.images import BURST_IMAGES

if TYPE_CHECKING:  # bench.goals builds on this module's data model
    from bench.goals import GoalResult

Status = Literal["ok", "failed", "unsupported"]
Metric = Literal["wall_s", "cpu_s", "peak_rss_kib", "tree_rss_kib"]
METRICS: tuple[Metric, ...] = ("wall_s", "cpu_s", "peak_rss_kib", "tree_rss_kib")
#: the metrics with a ratio column in the Markdown tables (JSON has every ratio)
_RATIO_COLUMNS: tuple[Metric, ...] = ("wall_s", "cpu_s", "peak_rss_kib")
_STATUS_LABEL = {"ok": "ok", "failed": "FAILED", "unsupported": "unsupported"}
REPORT_NAME = "benchmarks"


@dataclass
class ToolResult:
    """One row: a tool's counted samples in one workload (warm-up runs are not kept)."""

    tool: str
    peer: bool
    status: Status = "ok"
    samples: list[Sample] = field(default_factory=list)
    error: str = ""

    def stats(self, metric: Metric) -> Spread | None:
        if self.status != "ok":
            return None
        return spread([float(getattr(sample, metric)) for sample in self.samples])


@dataclass
class WorkloadResult:
    name: str
    description: str
    filesystem: str
    rows: list[ToolResult]
    #: tool → :mod:`bench.phases` output of one untimed pull (or ``{"error": ...}``)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Ratio:
    """guestpull's median over the best peer's median (below 1 means guestpull is better)."""

    value: float
    peer: str


def best_peer(workload: WorkloadResult, metric: Metric) -> ToolResult | None:
    """The peer with the lowest median among those that succeeded, or None."""
    candidates = [
        (stats.median, row.tool, row)
        for row in workload.rows
        if row.peer and (stats := row.stats(metric)) is not None
    ]
    return min(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None


def ratio(workload: WorkloadResult, row: ToolResult, metric: Metric) -> Ratio | None:
    """``row`` against the best peer for ``metric``; None for peers, failures or no peer."""
    if row.peer:
        return None
    mine = row.stats(metric)
    peer = best_peer(workload, metric)
    if mine is None or peer is None:
        return None
    theirs = peer.stats(metric)
    assert theirs is not None
    if theirs.median <= 0:
        return None
    return Ratio(mine.median / theirs.median, peer.tool)


def burst_throughput(workloads: Sequence[WorkloadResult], tool: str) -> float | None:
    """``tool``'s aggregate throughput with N concurrent pulls, as a share of one pull's.

    (N images / burst wall) ÷ (1 image / single wall) = N × single ÷ burst.  None unless both
    the ``burst`` and ``burst-single`` workloads have a successful row for ``tool``.
    """
    by_name = {w.name: w for w in workloads}
    if "burst" not in by_name or "burst-single" not in by_name:
        return None
    burst = _row_median(by_name["burst"], tool)
    single = _row_median(by_name["burst-single"], tool)
    if burst is None or single is None or burst <= 0:
        return None
    return BURST_IMAGES * single / burst


def _row_median(workload: WorkloadResult, tool: str) -> float | None:
    for row in workload.rows:
        if row.tool == tool and (stats := row.stats("wall_s")) is not None:
            return stats.median
    return None


# --- JSON ------------------------------------------------------------------------------------


def to_json(workloads: Sequence[WorkloadResult], meta: dict[str, Any],
            goals: Sequence[GoalResult] = ()) -> str:
    from bench.goals import goals_json

    throughput = {row.tool: share for w in workloads if w.name == "burst" for row in w.rows
                  if (share := burst_throughput(workloads, row.tool)) is not None}
    return json.dumps({"meta": meta, "goals": goals_json(goals),
                       "workloads": [_workload_json(w) for w in workloads],
                       "burst_throughput_vs_single": throughput}, indent=2)


def _workload_json(workload: WorkloadResult) -> dict[str, Any]:
    rows = []
    for row in workload.rows:
        rows.append({
            "tool": row.tool,
            "peer": row.peer,
            "status": row.status,
            "error": row.error,
            "samples": [vars(sample) for sample in row.samples],
            "stats": {m: (vars(s) if (s := row.stats(m)) else None) for m in METRICS},
            "ratio_to_best_peer": {
                m: (vars(r) if (r := ratio(workload, row, m)) else None) for m in METRICS
            },
        })
    return {
        "name": workload.name,
        "description": workload.description,
        "filesystem": workload.filesystem,
        "rows": rows,
        "profiles": workload.profiles,
    }


# --- Markdown --------------------------------------------------------------------------------


def to_markdown(workloads: Sequence[WorkloadResult], meta: dict[str, Any], *, svg_name: str,
                goals: Sequence[GoalResult] = ()) -> str:
    lines = [
        "# guestpull benchmarks",
        "",
        f"Generated by `{meta.get('command', 'python -m bench')}` on {meta.get('date', '?')}: "
        f"{meta.get('cpus', '?')} CPUs, {meta.get('kernel', '?')}.",
        f"{meta.get('runs', '?')} counted runs after {meta.get('warmup', '?')} warm-up, tools "
        "alternating; each cell is the median (min–max).  CPU is user+sys including helper "
        "processes and daemons; peak RSS is the largest process (ctr: client + containerd "
        "VmHWM); tree RSS is the largest sum of VmRSS over the command and all its descendants "
        "(workers included), sampled from /proc every 10 ms (ctr: clients + containerd VmHWM; "
        "burst: the sum of each pull's peak).  Every rootfs is checked against the generated file list (paths, sizes, "
        "content sample): a mismatch marks the row FAILED.  Ratio: guestpull ÷ best peer "
        "(below 1× is better).",
        "",
    ]
    if meta.get("versions"):
        versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        lines += [f"Versions: {versions}.", ""]
    if goals:
        from bench.goals import goals_markdown

        lines += goals_markdown(goals, quick=bool(meta.get("quick")))
    lines += _profiles_markdown(workloads)
    lines += [f"![median wall time per workload]({svg_name})", ""]
    for workload in workloads:
        lines += _workload_markdown(workload)
        if workload.name == "burst":
            lines += _burst_markdown(workloads, workload)
    return "\n".join(lines).rstrip() + "\n"


def _burst_markdown(workloads: Sequence[WorkloadResult], burst: WorkloadResult) -> list[str]:
    shares = [(row.tool, share) for row in burst.rows
              if (share := burst_throughput(workloads, row.tool)) is not None]
    if not shares:
        return []
    text = ", ".join(f"{tool} {share:.0%}" for tool, share in shares)
    return [f"Aggregate throughput of the {BURST_IMAGES} concurrent pulls as a share of one "
            f"pull's (burst-single): {text}.", ""]


def _profiles_markdown(workloads: Sequence[WorkloadResult]) -> list[str]:
    from bench.phases import PHASES, verdict

    rows = [(w.name, tool, p) for w in workloads for tool, p in w.profiles.items()]
    if not rows:
        return []
    lines = [
        "## Where the time goes",
        "",
        "One more, untimed pull per guestpull row through `python -m bench.phases` (the pull "
        "`guestpull pull` runs, with the library's progress events stamped): wall seconds per "
        "phase since the process started. Downloads and unpacking overlap: *download* runs to "
        "the last blob stored, *unpack tail* is what unpacking and the bundle took after it. "
        "CPU: the pulling process / its unpack workers.",
        "",
        "| workload | tool | " + " | ".join(PHASES) + " | total | CPU | limit |",
        "|---|---|" + "---:|" * (len(PHASES) + 2) + "---|",
    ]
    for name, tool, profile in rows:
        if "error" in profile:
            lines.append(f"| {name} | {tool} | " + " | ".join("—" for _ in PHASES)
                         + f" | — | — | profile failed: {_md_escape(_one_line(profile['error'], 200))} |")
            continue
        cells = [f"{profile['phases'][phase]:.2f}" for phase in PHASES]
        cpu = f"{profile['cpu_self']:.2f} / {profile['cpu_children']:.2f}"
        lines.append(f"| {name} | {tool} | " + " | ".join(cells)
                     + f" | {profile['total']:.2f} | {cpu} | {_md_escape(verdict(profile))} |")
    return lines + [""]


def _workload_markdown(workload: WorkloadResult) -> list[str]:
    lines = [
        f"## {workload.name}",
        "",
        f"{workload.description} Filesystem: {workload.filesystem}.",
        "",
        "| tool | status | runs | wall s | CPU s | peak RSS MiB | tree RSS MiB | wall ratio | "
        "CPU ratio | RSS ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for row in workload.rows:
        cells = [
            row.tool,
            _STATUS_LABEL[row.status],
            str(len(row.samples)) if row.status == "ok" else "—",
            _cell(row.stats("wall_s"), 1.0, 2),
            _cell(row.stats("cpu_s"), 1.0, 2),
            _cell(row.stats("peak_rss_kib"), 1 / 1024, 1),
            _cell(row.stats("tree_rss_kib"), 1 / 1024, 1),
            *(_ratio_cell(ratio(workload, row, m)) for m in _RATIO_COLUMNS),
        ]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        if row.error:
            notes.append(f"- {row.tool}: {_STATUS_LABEL[row.status]}: {_one_line(row.error)}")
    lines.append("")
    if notes:
        lines += notes + [""]
    return lines


def _cell(stats: Spread | None, scale: float, digits: int) -> str:
    if stats is None:
        return "—"
    return (f"{stats.median * scale:.{digits}f} "
            f"({stats.min * scale:.{digits}f}–{stats.max * scale:.{digits}f})")


def _ratio_cell(value: Ratio | None) -> str:
    return "—" if value is None else f"{value.value:.2f}× vs {value.peer}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- SVG -------------------------------------------------------------------------------------

_WIDTH = 820
_LABEL_W = 210
_BAR_W = 480
_ROW_H = 20
_TITLE_H = 26
_GAP = 12
_GUESTPULL_COLOUR = "#1f77b4"
_PEER_COLOUR = "#9a9a9a"


def to_svg(workloads: Sequence[WorkloadResult]) -> str:
    """A horizontal bar chart of median wall time (min–max whiskers), one block per workload."""
    parts: list[str] = []
    y = 30
    for workload in workloads:
        parts.append(_text(10, y + 16, f"{workload.name} ({workload.filesystem})", weight="bold"))
        y += _TITLE_H
        top = max(
            (s.max for row in workload.rows if (s := row.stats("wall_s")) is not None), default=0.0
        )
        for row in workload.rows:
            parts += _svg_row(row, y, top)
            y += _ROW_H
        y += _GAP
    height = y + 10
    header = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">'
    )
    title = _text(10, 18, "guestpull (blue) and peers (grey): median wall time in seconds, "
                  "line = min–max", weight="bold")
    background = f'<rect x="0" y="0" width="{_WIDTH}" height="{height}" fill="#ffffff"/>'
    return "\n".join([header, background, title, *parts, "</svg>"]) + "\n"


def _svg_row(row: ToolResult, y: int, top: float) -> list[str]:
    parts = [_text(20, y + 14, row.tool)]
    stats = row.stats("wall_s")
    if stats is None or top <= 0:
        parts.append(_text(_LABEL_W, y + 14, _STATUS_LABEL[row.status], fill="#c0392b"))
        return parts
    scale = _BAR_W / top
    colour = _PEER_COLOUR if row.peer else _GUESTPULL_COLOUR
    width = max(1.0, stats.median * scale)
    mid = y + _ROW_H / 2
    parts.append(
        f'<rect x="{_LABEL_W}" y="{y + 3}" width="{width:.1f}" height="{_ROW_H - 6}" fill="{colour}"/>'
    )
    x_min, x_max = _LABEL_W + stats.min * scale, _LABEL_W + stats.max * scale
    parts.append(
        f'<line x1="{x_min:.1f}" y1="{mid:.1f}" x2="{x_max:.1f}" y2="{mid:.1f}" stroke="#000000"/>'
    )
    parts.append(_text(_LABEL_W + _BAR_W + 10, y + 14, f"{stats.median:.2f} s"))
    return parts


def _text(x: float, y: float, text: str, *, weight: str = "normal", fill: str = "#000000") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-weight="{weight}" fill="{fill}">{escape(text)}</text>'


# --- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path
    svg: Path


def write_report(
    directory: Path, workloads: Sequence[WorkloadResult], meta: dict[str, Any],
    goals: Sequence[GoalResult] = (),
) -> ReportFiles:
    """Write ``benchmarks.md``, ``benchmarks.json`` and ``benchmarks.svg`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        markdown=directory / f"{REPORT_NAME}.md",
        json=directory / f"{REPORT_NAME}.json",
        svg=directory / f"{REPORT_NAME}.svg",
    )
    files.svg.write_text(to_svg(workloads))
    files.json.write_text(to_json(workloads, meta, goals))
    files.markdown.write_text(to_markdown(workloads, meta, svg_name=files.svg.name, goals=goals))
    return files
