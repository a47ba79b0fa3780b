"""Ratios to the best peer, and the Markdown / JSON / SVG written from a synthetic result set."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.measure import Sample  # noqa: E402
from bench.report import (  # noqa: E402
    ToolResult,
    WorkloadResult,
    best_peer,
    burst_throughput,
    ratio,
    to_json,
    to_markdown,
    to_svg,
    write_report,
)

SVG_NS = "{http://www.w3.org/2000/svg}"


def samples(*walls: float, cpu: float = 1.0, rss: int = 40_000) -> list[Sample]:
    return [Sample(wall, cpu, rss) for wall in walls]


def workload() -> WorkloadResult:
    return WorkloadResult(
        name="big",
        description="Synthetic.",
        filesystem="tmpfs",
        rows=[
            ToolResult("guestpull (copy)", peer=False, samples=samples(1.0, 1.2, 0.8, cpu=2.0, rss=30_000)),
            ToolResult("skopeo+umoci", peer=True, samples=samples(3.0, 2.0, 4.0, cpu=1.0, rss=20_000)),
            ToolResult("ctr (containerd)", peer=True, samples=samples(2.0, 2.5, 1.5, cpu=4.0, rss=90_000)),
            ToolResult("fast but wrong", peer=True, status="failed", samples=samples(0.1),
                       error="wrong rootfs: missing data/x | y"),
        ],
    )


def test_best_peer_is_lowest_median_among_successful_peers() -> None:
    result = workload()
    # the failed peer has the lowest wall time but must not win
    assert best_peer(result, "wall_s").tool == "ctr (containerd)"  # type: ignore[union-attr]
    assert best_peer(result, "cpu_s").tool == "skopeo+umoci"  # type: ignore[union-attr]
    assert best_peer(result, "peak_rss_kib").tool == "skopeo+umoci"  # type: ignore[union-attr]


def test_ratio_is_guestpull_median_over_best_peer_median() -> None:
    result = workload()
    guestpull = result.rows[0]
    wall = ratio(result, guestpull, "wall_s")
    assert wall is not None and wall.peer == "ctr (containerd)"
    assert wall.value == 1.0 / 2.0
    cpu = ratio(result, guestpull, "cpu_s")
    assert cpu is not None and cpu.value == 2.0 and cpu.peer == "skopeo+umoci"
    assert ratio(result, result.rows[1], "wall_s") is None  # peers get no ratio


def test_no_ratio_when_every_peer_failed_or_is_unsupported() -> None:
    result = workload()
    result.rows[1].status = "unsupported"
    result.rows[2].status = "failed"
    assert best_peer(result, "wall_s") is None
    assert ratio(result, result.rows[0], "wall_s") is None


def test_no_ratio_when_guestpull_failed() -> None:
    result = workload()
    result.rows[0].status = "failed"
    assert ratio(result, result.rows[0], "wall_s") is None


def test_json_report_round_trips(tmp_path: Path) -> None:
    files = write_report(tmp_path, [workload()], {"runs": 3, "warmup": 1})
    document = json.loads(files.json.read_text())
    assert document["meta"] == {"runs": 3, "warmup": 1}
    rows = document["workloads"][0]["rows"]
    assert [r["tool"] for r in rows] == [r.tool for r in workload().rows]
    assert rows[0]["stats"]["wall_s"] == {"median": 1.0, "min": 0.8, "max": 1.2}
    assert rows[0]["ratio_to_best_peer"]["wall_s"] == {"value": 0.5, "peer": "ctr (containerd)"}
    assert rows[3]["status"] == "failed" and rows[3]["stats"]["wall_s"] is None
    assert len(rows[1]["samples"]) == 3


def test_markdown_has_one_table_row_per_tool_and_marks_failures() -> None:
    text = to_markdown([workload()], {"runs": 3}, svg_name="benchmarks.svg")
    assert "![median wall time per workload](benchmarks.svg)" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + rows
    assert all(line.count(" | ") == 9 for line in table)  # ten columns, the error's '|' escaped
    guestpull = next(line for line in table if line.startswith("| guestpull"))
    assert "1.00 (0.80–1.20)" in guestpull and "0.50× vs ctr (containerd)" in guestpull
    assert "29.3 (29.3–29.3)" in guestpull  # 30000 KiB in MiB
    failed = next(line for line in table if line.startswith("| fast but wrong"))
    assert "| FAILED |" in failed
    assert "- fast but wrong: FAILED: wrong rootfs: missing data/x | y" in text


def test_svg_is_valid_xml_with_a_bar_per_successful_row() -> None:
    result = workload()
    result.rows.append(ToolResult("<weird & name>", peer=True, status="unsupported"))
    svg = to_svg([result, workload()])
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    bars = [r for r in root.iter(f"{SVG_NS}rect") if r.get("fill") != "#ffffff"]
    assert len(bars) == 2 * 3  # three successful rows in each of the two workloads
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "<weird & name>" in texts and "unsupported" in texts and "FAILED" in texts
    widths = {float(b.get("width", 0)) for b in bars}
    assert max(widths) <= 480 and min(widths) > 0


def test_write_report_names_files_for_publishing(tmp_path: Path) -> None:
    files = write_report(tmp_path / "out", [workload()], {})
    assert {p.name for p in (files.markdown, files.json, files.svg)} == {
        "benchmarks.md", "benchmarks.json", "benchmarks.svg"}
    assert "](benchmarks.svg)" in files.markdown.read_text()
    ET.fromstring(files.svg.read_text())


def _burst_pair(single_wall: float, burst_wall: float) -> list[WorkloadResult]:
    return [
        WorkloadResult("burst-single", "One.", "tmpfs", [
            ToolResult("guestpull (copy)", peer=False, samples=samples(single_wall)),
            ToolResult("ctr (containerd)", peer=True, status="failed", samples=samples(0.1)),
        ]),
        WorkloadResult("burst", "Eight.", "tmpfs", [
            ToolResult("guestpull (copy)", peer=False, samples=samples(burst_wall)),
            ToolResult("ctr (containerd)", peer=True, samples=samples(1.0)),
        ]),
    ]


def test_burst_throughput_is_n_times_single_over_burst() -> None:
    workloads = _burst_pair(single_wall=1.0, burst_wall=5.0)
    assert burst_throughput(workloads, "guestpull (copy)") == 8 * 1.0 / 5.0
    # A failed baseline row, or a missing workload, gives no number rather than a wrong one.
    assert burst_throughput(workloads, "ctr (containerd)") is None
    assert burst_throughput(workloads[1:], "guestpull (copy)") is None


def test_burst_throughput_is_reported_in_markdown_and_json() -> None:
    workloads = _burst_pair(single_wall=1.0, burst_wall=4.0)
    text = to_markdown(workloads, {"runs": 1, "warmup": 0}, svg_name="b.svg")
    assert "guestpull (copy) 200%" in text and "ctr (containerd) " not in text.split("share of one")[1]
    assert json.loads(to_json(workloads, {}))["burst_throughput_vs_single"] == {"guestpull (copy)": 2.0}
