"""``python -m bench``: generate the images, start a local HTTPS registry, run, report.

Everything listens on 127.0.0.1 only; the registry and every containerd are stopped at the end
(and die with this process if it is killed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.goals import evaluate
from bench.images import TAG, GeneratedImage, ImagePlan, generate
from bench.report import WorkloadResult, write_report
from bench.tools import Registry
from bench.workloads import TOOL_KEYS, Workload, catalogue, make_tool, run_workload
from guestpull.errors import GuestpullError
from guestpull_testkit.certs import make_ca_chain
from guestpull_testkit.images import push
from guestpull_testkit.registry import start_registry

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_CACHE = Path("/var/tmp/guestpull-bench/cache")
DEFAULT_TMPFS = Path("/dev/shm/guestpull-bench")
DEFAULT_EXT4 = Path("/var/tmp/guestpull-bench/work")
COMMAND = ".venv/bin/python -m bench"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small images, 1 run, no warm-up: a smoke run of a minute or two")
    parser.add_argument("--runs", type=int, help="counted runs per tool (default 5; quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up runs per tool (default 1; quick 0)")
    parser.add_argument("--only", help="comma-separated workload names (default: all)")
    parser.add_argument("--tools", help="comma-separated tools to run (default: each workload's "
                        "own; names: " + ", ".join(TOOL_KEYS) + ")")
    parser.add_argument("--rss-scaling", action="store_true",
                        help="add one-layer images of 64 MiB and 512 MiB to show flat peak RSS")
    parser.add_argument("--publish", action="store_true",
                        help="also copy the Markdown and SVG to docs/benchmarks.md and .svg")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="report directory")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="generated OCI layouts, reused across runs (keyed by spec hash)")
    parser.add_argument("--tmpfs-dir", type=Path, default=DEFAULT_TMPFS,
                        help="work directories on tmpfs, as in a guest")
    parser.add_argument("--ext4-dir", type=Path, default=DEFAULT_EXT4,
                        help="work directories for the ext4 workload")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    return args


def select(workloads: list[Workload], only: str | None, tools: str | None) -> list[Workload]:
    """The workloads named by ``--only``, each keeping only the tools named by ``--tools``."""
    if only:
        wanted = _names(only, {w.name for w in workloads}, "workload")
        workloads = [w for w in workloads if w.name in wanted]
    if tools:
        keep = _names(tools, set(TOOL_KEYS), "tool")
        workloads = [replace(w, tools=tuple(t for t in w.tools if t in keep)) for w in workloads]
        workloads = [w for w in workloads if w.tools]
    return workloads


def _names(text: str, known: set[str], what: str) -> set[str]:
    wanted = {name.strip() for name in text.split(",") if name.strip()}
    if unknown := wanted - known:
        raise SystemExit(f"unknown {what}(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    return wanted


def check_guestpull() -> None:
    """Refuse to start when this guestpull cannot build bundles yet (no ``pull --bundle``)."""
    result = subprocess.run([sys.executable, "-m", "guestpull", "pull", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0 or "--bundle" not in result.stdout:
        raise SystemExit("bench: `python -m guestpull pull --help` offers no --bundle option; "
                         "this guestpull cannot build a rootfs yet")
    compile_guestpull()


def compile_guestpull() -> None:
    """Byte-compile the guestpull package once, as an installed package is.

    An editable install run with PYTHONDONTWRITEBYTECODE (as in some CI and dev shells)
    otherwise recompiles every module in every run: ~0.07 s of each small pull (issue 15).
    """
    import guestpull

    package = Path(guestpull.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)],
                   capture_output=True, timeout=300, check=False)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generate_all(plans: Sequence[ImagePlan], cache_dir: Path) -> dict[str, GeneratedImage]:
    images: dict[str, GeneratedImage] = {}
    for plan in plans:
        if plan.name in images:
            continue
        start = time.perf_counter()
        images[plan.name] = generate(plan, cache_dir)
        log(f"image {plan.name}: {images[plan.name].layout} ({time.perf_counter() - start:.1f} s)")
    return images


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    try:
        versions["guestpull"] = metadata.version("guestpull")
    except metadata.PackageNotFoundError:
        pass
    for name in ("skopeo", "umoci", "containerd"):
        if shutil.which(name):
            out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=30,
                                 check=False)
            # "skopeo version 1.9.3", "containerd github.com/containerd/containerd 1.6.20~ds1 ..."
            versions[name] = next((w for w in out.stdout.split() if w[:1].isdigit()), "?")
    return versions


def run(args: argparse.Namespace) -> list[WorkloadResult]:
    workloads = select(catalogue(quick=args.quick, rss_scaling=args.rss_scaling), args.only, args.tools)
    if any(key.startswith("guestpull") for w in workloads for key in w.tools):
        check_guestpull()
    images = generate_all([plan for w in workloads for plan in w.images], args.cache_dir)
    # Directories of our own under the shared roots: another benchmark running at the same
    # time (which would skew both) must at least not delete this one's files.
    args.tmpfs_dir.mkdir(parents=True, exist_ok=True)
    args.ext4_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=args.tmpfs_dir))
    ext4_root = Path(tempfile.mkdtemp(prefix="run-", dir=args.ext4_dir))
    try:
        return run_workloads(workloads, images, root, ext4_root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ext4_root, ignore_errors=True)


def run_workloads(workloads: Sequence[Workload], images: dict[str, GeneratedImage], root: Path,
                  ext4_root: Path, args: argparse.Namespace) -> list[WorkloadResult]:
    """Start the registry, push every image, run each workload; stop the registry."""
    results: list[WorkloadResult] = []
    chain = make_ca_chain()
    with start_registry(root / "registry", tls=chain) as registry_process:
        assert registry_process.ca_path is not None
        registry = Registry(registry_process.host, registry_process.ca_path)
        for image in images.values():
            start = time.perf_counter()
            push(image.layout, TAG, registry.ref(image), tls_ca=registry.ca_path, timeout=900)
            log(f"pushed {registry.ref(image)} ({time.perf_counter() - start:.1f} s)")
        for workload in workloads:
            base = (root if workload.filesystem == "tmpfs" else ext4_root) / workload.name
            log(f"workload {workload.name} ({workload.filesystem})")
            tools = [make_tool(key, registry) for key in workload.tools]
            results.append(run_workload(
                workload, [images[plan.name] for plan in workload.images], tools,
                base=base, runs=workload.runs or args.runs,
                warmup=args.warmup if workload.warmup is None else workload.warmup,
            ))
    return results



def meta(args: argparse.Namespace) -> dict[str, Any]:
    command = COMMAND + (" --quick" if args.quick else "") + (" --rss-scaling" if args.rss_scaling else "")
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "kernel": f"Linux {platform.release()}",
        "runs": args.runs,
        "warmup": args.warmup,
        "quick": args.quick,
        "versions": tool_versions(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for workload in catalogue(quick=args.quick, rss_scaling=args.rss_scaling):
            print(f"{workload.name:14} {workload.filesystem:6} {workload.description}")
        return 0
    started = time.perf_counter()
    try:
        results = run(args)
    except GuestpullError as err:
        log(f"bench: {err}")
        return 1
    files = write_report(args.results, results, meta(args), evaluate(results))
    print(files.markdown.read_text())
    log(f"report: {files.markdown}, {files.json}, {files.svg} "
        f"(total {time.perf_counter() - started:.0f} s)")
    if args.publish:
        docs = REPO_ROOT / "docs"
        shutil.copyfile(files.markdown, docs / "benchmarks.md")
        shutil.copyfile(files.svg, docs / "benchmarks.svg")
        log(f"published to {docs / 'benchmarks.md'} and {docs / 'benchmarks.svg'}")
    failed = [f"{w.name}/{r.tool}" for w in results for r in w.rows if r.status == "failed"]
    if failed:
        log(f"FAILED rows: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
