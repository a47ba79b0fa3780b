"""The workloads (which images, which tools, which filesystem) and the loop that runs them.

Runs alternate between tools (the order rotates each round) so drift in the machine's speed
hits every tool alike.  Each run gets a fresh work directory; its rootfs is verified before
the next run, and a wrong rootfs marks the row FAILED for good.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from bench.images import (
    BURST_IMAGES,
    MIB,
    ExpectedTree,
    GeneratedImage,
    ImagePlan,
    LayerKind,
    LayerPlan,
)
from bench.report import ToolResult, WorkloadResult
from bench.tools import (
    Attempt,
    CtrTool,
    GuestpullStartupTool,
    GuestpullTool,
    Registry,
    SkopeoUmociTool,
    Tool,
)
from bench.verify import verify_rootfs
from guestpull.errors import GuestpullError

Filesystem = Literal["tmpfs", "ext4"]
ToolKey = Literal["guestpull-copy", "guestpull-overlay", "guestpull-warm-copy",
                  "guestpull-warm-overlay", "guestpull-serve", "skopeo-umoci", "ctr",
                  "guestpull-version", "guestpull-pull-help"]
TOOL_KEYS: tuple[str, ...] = get_args(ToolKey)
COLD_TOOLS: tuple[ToolKey, ...] = ("guestpull-copy", "guestpull-overlay", "skopeo-umoci", "ctr")
#: start-up commands: tool key → the guestpull arguments it runs (issue 15: each ≤ 0.1 s)
STARTUP_COMMANDS: dict[str, tuple[str, ...]] = {
    "guestpull-version": ("--version",),
    "guestpull-pull-help": ("pull", "--help"),
}


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    images: tuple[ImagePlan, ...]
    filesystem: Filesystem
    tools: tuple[ToolKey, ...]
    #: counted and warm-up runs when not the command line's (ext4 is reported once)
    runs: int | None = None
    warmup: int | None = None


@dataclass(frozen=True)
class Sizes:
    big_layer: int
    big_layers: int
    many_files: int
    logsize_files: int
    deep_files: int
    burst_layer: int
    burst_layers: int
    rss_small: int
    rss_large: int


FULL = Sizes(big_layer=64 * MIB, big_layers=4, many_files=20_000,
             logsize_files=20_000, deep_files=100_000, burst_layer=8 * MIB,
             burst_layers=2, rss_small=64 * MIB, rss_large=512 * MIB)
QUICK = Sizes(big_layer=4 * MIB, big_layers=2, many_files=300,
              logsize_files=300, deep_files=400, burst_layer=2 * MIB,
              burst_layers=1, rss_small=4 * MIB, rss_large=32 * MIB)


def big_plan(sizes: Sizes, compression: Literal["gzip", "zstd"] = "gzip") -> ImagePlan:
    layers = tuple(LayerPlan("mixed", seed=100 + i, size=sizes.big_layer) for i in range(sizes.big_layers))
    return ImagePlan(f"bench/big-{compression}", layers, compression)


def many_plan(sizes: Sizes) -> ImagePlan:
    return _three_layers("bench/many", "small-files", 200, sizes.many_files)


def many_logsize_plan(sizes: Sizes) -> ImagePlan:
    return _three_layers("bench/many-logsize", "logsize-files", 400, sizes.logsize_files)


def many_deep_plan(sizes: Sizes) -> ImagePlan:
    return _three_layers("bench/many-deep", "deep-files", 500, sizes.deep_files)


def _three_layers(name: str, kind: LayerKind, seed: int, files: int) -> ImagePlan:
    """``files`` spread over three layers of ``kind`` (seeds ``seed``, ``seed + 1``, ...)."""
    per_layer = [files // 3 + (1 if i < files % 3 else 0) for i in range(3)]
    return ImagePlan(name, tuple(LayerPlan(kind, seed=seed + i, files=n)
                                 for i, n in enumerate(per_layer)))


def burst_plans(sizes: Sizes) -> tuple[ImagePlan, ...]:
    return tuple(
        ImagePlan(
            f"bench/burst-{n}",
            tuple(LayerPlan("mixed", seed=1000 + 10 * n + i, size=sizes.burst_layer)
                  for i in range(sizes.burst_layers)),
        )
        for n in range(BURST_IMAGES)
    )


def rss_plan(size: int) -> ImagePlan:
    return ImagePlan(f"bench/rss-{size // MIB}m", (LayerPlan("mixed", seed=3000, size=size),))


def catalogue(*, quick: bool, rss_scaling: bool) -> list[Workload]:
    """Every workload of a run, in the order they run and are reported."""
    sizes = QUICK if quick else FULL
    big, zstd, many = big_plan(sizes), big_plan(sizes, "zstd"), many_plan(sizes)
    big_text = f"{sizes.big_layers} layers × {_mib(sizes.big_layer)} uncompressed (half random, half text)"
    workloads = [
        Workload("big", f"{big_text}, gzip; cold store.", (big,), "tmpfs", COLD_TOOLS),
        Workload("many", f"3 layers, {sizes.many_files} files of 0.1–4 KiB, some 6–12 "
                 "directories deep, gzip; cold store.", (many,), "tmpfs", COLD_TOOLS),
        Workload("many-logsize", f"3 layers, {sizes.logsize_files} files of 16 B–16 KiB "
                 "(log-uniform sizes, half random content), 1–4 directories deep, gzip; cold "
                 "store.", (many_logsize_plan(sizes),), "tmpfs", COLD_TOOLS),
        Workload("many-deep", f"3 layers, {sizes.deep_files} files of 1 B–1 KiB (half random), "
                 "8 to a directory 8–16 levels deep, gzip; cold store.",
                 (many_deep_plan(sizes),), "tmpfs", COLD_TOOLS),
        Workload("big-zstd", f"{big_text}, zstd; cold store.", (zstd,), "tmpfs", COLD_TOOLS),
        Workload("big-ext4", "The big image on ext4 (/var/tmp), reported once.", (big,), "ext4",
                 ("guestpull-copy", "skopeo-umoci", "ctr"), runs=1, warmup=0),
        Workload("warm-repull", "The big image again with every layer already stored: "
                 "guestpull builds the bundle only (no peer does the same).", (big,), "tmpfs",
                 ("guestpull-warm-copy", "guestpull-warm-overlay")),
        Workload("small", f"One of the burst images ({sizes.burst_layers} × "
                 f"{_mib(sizes.burst_layer)}), CLI, cold store: start-up dominates.",
                 burst_plans(sizes)[:1], "tmpfs", COLD_TOOLS),
        Workload("startup", "`guestpull --version` and `guestpull pull --help`: imports and "
                 "start-up alone (goal ≤ 0.1 s each).", (), "tmpfs",
                 ("guestpull-version", "guestpull-pull-help")),
        Workload("burst-single", f"One of the burst images ({sizes.burst_layers} × "
                 f"{_mib(sizes.burst_layer)}) pulled alone: the baseline for the burst "
                 "throughput; guestpull serve: the service already running.", burst_plans(sizes)[:1],
                 "tmpfs", ("guestpull-copy", "guestpull-serve", "skopeo-umoci", "ctr")),
        Workload("burst", f"{BURST_IMAGES} different images ({sizes.burst_layers} × "
                 f"{_mib(sizes.burst_layer)} each) pulled at the same time from one registry; "
                 "guestpull shares one store, ctr one daemon; guestpull serve gets every call "
                 "on one connection.", burst_plans(sizes), "tmpfs",
                 ("guestpull-copy", "guestpull-serve", "skopeo-umoci", "ctr")),
    ]
    if rss_scaling:
        for size in (sizes.rss_small, sizes.rss_large):
            workloads.append(Workload(
                f"rss-{size // MIB}m", f"One {_mib(size)} layer: peak RSS must stay flat as "
                "layers grow.", (rss_plan(size),), "tmpfs", ("guestpull-copy",)))
    return workloads


def _mib(size: int) -> str:
    return f"{size // MIB} MiB"


def make_tool(key: ToolKey, registry: Registry) -> Tool:
    if key == "skopeo-umoci":
        return SkopeoUmociTool(registry)
    if key == "ctr":
        return CtrTool(registry)
    if key in STARTUP_COMMANDS:
        return GuestpullStartupTool(f"guestpull {' '.join(STARTUP_COMMANDS[key])}", STARTUP_COMMANDS[key])
    if key == "guestpull-serve":
        from bench.servetool import GuestpullServeTool

        return GuestpullServeTool(registry)
    warm = key.startswith("guestpull-warm")
    mode = "overlay" if key.endswith("overlay") else "copy"
    return GuestpullTool(registry, mode=mode, warm=warm)


# --- running ---------------------------------------------------------------------------------

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_workload(
    workload: Workload,
    images: Sequence[GeneratedImage],
    tools: Sequence[Tool],
    *,
    base: Path,
    runs: int,
    warmup: int,
    log: Log = _stderr,
) -> WorkloadResult:
    """Alternate the tools over ``warmup + runs`` rounds under ``base`` (removed afterwards)."""
    rows = {tool.name: ToolResult(tool.name, tool.peer) for tool in tools}
    expected = [image.expected() for image in images]
    try:
        for tool in tools:
            _setup(tool, images, base / "setup" / _slug(tool.name), rows[tool.name])
        for round_ in range(warmup + runs):
            for tool in _rotated(tools, round_):
                row = rows[tool.name]
                if row.status != "ok":
                    continue
                counted = round_ >= warmup
                attempt = _one_run(tool, images, expected, base / f"run{round_}-{_slug(tool.name)}")
                label = f"run {round_ - warmup + 1}/{runs}" if counted else "warm-up"
                log(f"  {workload.name}: {tool.name} {label}: {_describe(attempt)}")
                if attempt.status != "ok":
                    row.status, row.error = attempt.status, attempt.error
                elif counted and attempt.sample is not None:
                    row.samples.append(attempt.sample)
        profiles = {tool.name: profile for tool in tools if rows[tool.name].status == "ok"
                    and (profile := _profile(tool, images, base / f"profile-{_slug(tool.name)}"))}
    finally:
        for tool in tools:
            tool.close()
        shutil.rmtree(base, ignore_errors=True)
    return WorkloadResult(workload.name, workload.description, workload.filesystem,
                          list(rows.values()), profiles)


def _profile(tool: Tool, images: Sequence[GeneratedImage], work: Path) -> dict[str, Any] | None:
    try:
        return tool.profile(images, work)
    except (GuestpullError, OSError) as err:
        return {"error": str(err)}
    finally:
        if work.exists():  # a tool without a profile creates nothing
            tool.release(work)
            shutil.rmtree(work, ignore_errors=True)


def _setup(tool: Tool, images: Sequence[GeneratedImage], base: Path, row: ToolResult) -> None:
    try:
        tool.setup(images, base)
    except (GuestpullError, OSError) as err:
        row.status, row.error = "failed", f"setup: {err}"


def _one_run(
    tool: Tool, images: Sequence[GeneratedImage], expected: Sequence[ExpectedTree], work: Path
) -> Attempt:
    try:
        try:
            attempt = tool.pull(images, work)
        except (GuestpullError, OSError) as err:
            return Attempt("failed", error=str(err))
        if attempt.status == "ok":
            for rootfs, tree in zip(attempt.rootfs, expected, strict=True):
                verification = verify_rootfs(rootfs, tree)
                if not verification.ok:
                    return Attempt("failed", attempt.sample,
                                   error=f"wrong rootfs {rootfs}: {verification.summary()}")
        return attempt
    finally:
        tool.release(work)
        shutil.rmtree(work, ignore_errors=True)


def _rotated(tools: Sequence[Tool], round_: int) -> list[Tool]:
    shift = round_ % len(tools) if tools else 0
    return list(tools[shift:]) + list(tools[:shift])


def _describe(attempt: Attempt) -> str:
    if attempt.status != "ok" or attempt.sample is None:
        return f"{attempt.status}: {' '.join(attempt.error.split())[:200]}"
    s = attempt.sample
    return (f"{s.wall_s:.2f} s wall, {s.cpu_s:.2f} s CPU, {s.peak_rss_kib / 1024:.1f} MiB peak RSS, "
            f"{s.tree_rss_kib / 1024:.1f} MiB tree RSS")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
