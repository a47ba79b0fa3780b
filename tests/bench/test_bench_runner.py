"""The workload loop (with fake tools, no processes), the catalogue and the tool configs."""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.__main__ import main, parse_args, select  # noqa: E402
from bench.images import MIB, GeneratedImage, ImagePlan, LayerPlan, extract_layout, generate  # noqa: E402
from bench.measure import Sample  # noqa: E402
from bench.report import Status  # noqa: E402
from bench.tools import (  # noqa: E402
    Attempt,
    GuestpullTool,
    Registry,
    Tool,
    _error_categories,
    containerd_config,
    guestpull_argv,
    write_cdh_config,
    write_hosts_dir,
)
from bench.workloads import Workload, catalogue, make_tool, run_workload  # noqa: E402
from guestpull.config import load_cdh_config  # noqa: E402
from guestpull_testkit.certs import make_ca_chain  # noqa: E402

PLAN = ImagePlan("t/runner", (LayerPlan("small-files", seed=3, files=30),))


class FakeTool(Tool):
    """Unpacks the layout itself; can break the rootfs or report a status instead."""

    def __init__(self, name: str, calls: list[str], *, peer: bool = True,
                 status: Status = "ok", corrupt: bool = False) -> None:
        self.name, self.peer, self.calls = name, peer, calls
        self.status, self.corrupt = status, corrupt
        self.released: list[Path] = []

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        self.calls.append(self.name)
        work.mkdir(parents=True)
        if self.status != "ok":
            return Attempt(self.status, error=f"{self.name} cannot")
        roots = [extract_layout(image, work / f"rootfs{i}") for i, image in enumerate(images)]
        if self.corrupt:
            (roots[0] / "extra-file").write_text("wrong")
        return Attempt("ok", Sample(len(self.calls) * 0.1, 0.2, 1000), roots)

    def release(self, work: Path) -> None:
        assert work.exists()
        self.released.append(work)


@pytest.fixture
def image(shm_path: Path) -> GeneratedImage:
    return generate(PLAN, shm_path / "cache")


def test_runs_alternate_and_only_counted_runs_are_kept(shm_path: Path, image: GeneratedImage) -> None:
    calls: list[str] = []
    tools = [FakeTool("a", calls, peer=False), FakeTool("b", calls)]
    workload = Workload("w", "d", (PLAN,), "tmpfs", ())
    result = run_workload(workload, [image], tools, base=shm_path / "base", runs=3, warmup=1,
                          log=lambda _: None)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates every round
    assert [row.status for row in result.rows] == ["ok", "ok"]
    assert [len(row.samples) for row in result.rows] == [3, 3]
    assert len(tools[0].released) == 4
    assert not (shm_path / "base").exists()


def test_wrong_rootfs_marks_the_row_failed_and_stops_it(shm_path: Path, image: GeneratedImage) -> None:
    calls: list[str] = []
    tools = [FakeTool("good", calls), FakeTool("wrong", calls, corrupt=True),
             FakeTool("zstd-less", calls, status="unsupported")]
    workload = Workload("w", "d", (PLAN,), "tmpfs", ())
    result = run_workload(workload, [image], tools, base=shm_path / "base", runs=2, warmup=0,
                          log=lambda _: None)
    rows = {row.tool: row for row in result.rows}
    assert rows["good"].status == "ok" and len(rows["good"].samples) == 2
    assert rows["wrong"].status == "failed" and "extra extra-file" in rows["wrong"].error
    assert rows["wrong"].samples == []
    assert rows["zstd-less"].status == "unsupported" and rows["zstd-less"].error == "zstd-less cannot"
    assert calls.count("wrong") == 1 and calls.count("zstd-less") == 1
    assert len(tools[1].released) == 1  # released even though it failed


def test_catalogue_full_sizes_follow_the_issue() -> None:
    workloads = {w.name: w for w in catalogue(quick=False, rss_scaling=True)}
    big = workloads["big"].images[0]
    assert [(layer.kind, layer.size) for layer in big.layers] == [("mixed", 64 * MIB)] * 4
    assert big.compression == "gzip" and workloads["big-zstd"].images[0].compression == "zstd"
    assert workloads["big-zstd"].images[0].layers == big.layers
    many = workloads["many"].images[0]
    assert len(many.layers) == 3 and sum(layer.files for layer in many.layers) == 20_000
    burst = workloads["burst"].images
    assert len(burst) == 8 and len({plan.spec_hash() for plan in burst}) == 8
    assert workloads["big-ext4"].filesystem == "ext4"
    assert all(key.startswith("guestpull-warm") for key in workloads["warm-repull"].tools)
    small = workloads["small"].images[0]
    assert [layer.size for layer in small.layers] == [8 * MIB] * 2 and "ctr" in workloads["small"].tools
    assert workloads["startup"].images == ()
    sizes = [workloads[name].images[0].layers[0].size for name in ("rss-64m", "rss-512m")]
    assert sizes == [64 * MIB, 512 * MIB]


def test_quick_mode_is_small_with_one_run() -> None:
    args = parse_args(["--quick"])
    assert (args.runs, args.warmup) == (1, 0)
    assert all(plan.uncompressed_bytes <= 16 * MIB
               for w in catalogue(quick=True, rss_scaling=False) for plan in w.images)
    assert (parse_args([]).runs, parse_args([]).warmup) == (5, 1)


def test_select_by_workload_and_tool() -> None:
    workloads = catalogue(quick=True, rss_scaling=False)
    chosen = select(workloads, "big,warm-repull", "ctr")
    assert [(w.name, w.tools) for w in chosen] == [("big", ("ctr",))]  # warm-repull has no ctr
    with pytest.raises(SystemExit):
        select(workloads, "nope", None)


def test_cdh_config_is_accepted_by_guestpull(tmp_path: Path) -> None:
    chain = make_ca_chain()
    ca = chain.write(tmp_path / "tls").ca
    config = load_cdh_config(write_cdh_config(tmp_path / "cdh.toml", ca)).image_config()
    assert [pem.strip() for pem in config.extra_root_certificates] == [chain.ca_cert_pem.decode().strip()]


def test_guestpull_command_line() -> None:
    argv = guestpull_argv("127.0.0.1:5000/a:latest", config=Path("/c.toml"), store=Path("/s"),
                          bundle=Path("/b"), mode="overlay")
    assert argv[0] == sys.executable and argv[1:4] == ["-m", "guestpull", "pull"]
    assert argv[argv.index("--bundle") + 1] == "/b"
    assert argv[argv.index("--rootfs-mode") + 1] == "overlay" and "--json" in argv


def test_error_categories_found_anywhere_in_json() -> None:
    out = '{"ok": false, "error": {"category": "all-failed", "attempts": [{"error": {"category": "unsupported"}}]}}'
    assert _error_categories(out) == {"all-failed", "unsupported"}
    assert _error_categories("not json") == set()


def test_containerd_config_and_hosts_dir(tmp_path: Path) -> None:
    config = tomllib.loads(containerd_config(tmp_path / "ctr", tmp_path / "c.sock"))
    assert config["version"] == 2
    assert config["root"] == str(tmp_path / "ctr" / "root")
    assert config["grpc"]["address"] == str(tmp_path / "c.sock")
    assert "io.containerd.grpc.v1.cri" in config["disabled_plugins"]
    registry = Registry("127.0.0.1:5000", tmp_path / "ca.pem")
    hosts = tomllib.loads((write_hosts_dir(tmp_path / "d", registry) / "127.0.0.1:5000" / "hosts.toml").read_text())
    assert hosts["server"] == "https://127.0.0.1:5000"
    assert hosts["host"]["https://127.0.0.1:5000"]["ca"] == str(tmp_path / "ca.pem")


@pytest.mark.slow
def test_guestpull_runner_reports_a_failed_pull(shm_path: Path, image: GeneratedImage) -> None:
    """The real CLI accepts the runner's command line; a dead registry gives a FAILED attempt."""
    ca = make_ca_chain().write(shm_path / "tls").ca
    tool = GuestpullTool(Registry("127.0.0.1:9", ca), timeout=60)
    tool.setup([image], shm_path / "setup")
    attempt = tool.pull([image], shm_path / "work")
    tool.release(shm_path / "work")
    assert attempt.status == "failed" and attempt.sample is None
    assert "No such option" not in attempt.error and "127.0.0.1:9" in attempt.error


@pytest.mark.registry
@pytest.mark.slow
def test_quick_benchmark_end_to_end(shm_path: Path) -> None:
    results = shm_path / "results"
    code = main(["--quick", "--only", "big", "--tools", "guestpull-copy,skopeo-umoci",
                 "--results", str(results), "--cache-dir", str(shm_path / "cache"),
                 "--tmpfs-dir", str(shm_path / "tmpfs"), "--ext4-dir", str(shm_path / "ext4")])
    document = json.loads((results / "benchmarks.json").read_text())
    rows = {row["tool"]: row for row in document["workloads"][0]["rows"]}
    assert code == 0
    assert set(rows) == {"guestpull (copy)", "skopeo+umoci"}
    assert all(row["status"] == "ok" and len(row["samples"]) == 1 for row in rows.values())
    assert rows["guestpull (copy)"]["ratio_to_best_peer"]["wall_s"]["peer"] == "skopeo+umoci"
    assert (results / "benchmarks.md").read_text().startswith("# guestpull benchmarks")


def test_startup_workload_runs_the_real_commands(shm_path: Path) -> None:
    workload = next(w for w in catalogue(quick=True, rss_scaling=False) if w.name == "startup")
    registry = Registry("127.0.0.1:1", shm_path / "unused-ca.pem")  # nothing is pulled
    tools = [make_tool(key, registry) for key in workload.tools]
    result = run_workload(workload, [], tools, base=shm_path / "w", runs=1, warmup=0, log=lambda _: None)
    assert [(row.tool, row.status, len(row.samples)) for row in result.rows] == [
        ("guestpull --version", "ok", 1), ("guestpull pull --help", "ok", 1)]
    assert all(row.samples[0].cpu_s > 0 and not row.peer for row in result.rows)
