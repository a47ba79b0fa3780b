"""The registry is the attacker: every scenario of testing.hostile against the real CLI.

Each scenario runs ``python -m guestpull pull`` in a subprocess against a HostileRegistry and
asserts: the outcome is one of the scenario's typed categories (never internal), it ends in
bounded time, the whole process tree stays under an RSS bound, no file appears outside the
work and bundle dirs (cwd, TMPDIR and HOME are an empty scratch dir), no credential reaches
another port, and the next honest pull into the same work dir succeeds.

Slow scenarios (bombs, slow drip, 1xx flood: they wait for guestpull's *default* limits) are
marked ``reliability``; ``make reliability`` runs them all and writes docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distribution.helpers import server_context
from support.cli import GUESTPULL, write_auth_json
from support.config import write_cdh
from support.processes import tree_rss_kib
from guestpull.config import ImageConfig
from guestpull.errors import Category
from guestpull.pull import pull_image
from guestpull_testkit.hostile import SCENARIOS, HostileRegistry, Scenario, bomb_image
from guestpull_testkit.certs import CertChain
from guestpull_testkit.images import File, ImageSpec, LayerSpec

#: The whole process tree (CLI and unpack workers) must stay under this.
RSS_BOUND_MIB = 400
#: Fast scenarios must end within this (retries with backoff included).
FAST_BOUND_S = 30.0
#: Slow ones wait for the default deadlines (document 60 s, blob 30 s + size / 32 KiB/s).
SLOW_BOUND_S = 150.0
#: Scenarios attacking at once: the slow ones mostly wait (deadlines), so they overlap well;
#: the fast ones are bound by interpreter start-up CPU (about 1 s each on a loaded 2-core box).
CONCURRENCY = 3

REPORT_ENV = "GUESTPULL_RELIABILITY_REPORT"


@dataclass
class Outcome:
    scenario: str
    category: str
    seconds: float
    peak_rss_mib: float
    message: str


_OUTCOMES: list[Outcome] = []


def _image():
    return ImageSpec([LayerSpec([File("hello.txt", b"hello from a hostile test\n" * 40)])]).build()


@dataclass
class Run:
    """What one scenario did, measured from outside."""

    category: str
    exit_code: int
    output: dict
    seconds: float
    peak_rss_mib: float
    leaked: list
    stray_files: list
    bundle_config_left: bool
    next_pull: str  # "ok", or what the honest pull into the same work dir raised


async def run_cli_pull(reference: str, cdh: Path, work: Path, scratch: Path, bundle: Path | None,
                       bound: float) -> tuple[int, dict, float, float]:
    """Run the CLI pull; return (exit code, JSON, seconds, peak tree RSS in MiB)."""
    args = [*GUESTPULL, "pull", reference, "--config", str(cdh), "--work-dir", str(work), "--json"]
    if bundle is not None:
        args += ["--bundle", str(bundle)]
    env = {**os.environ, "TMPDIR": str(scratch), "HOME": str(scratch)}
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*args, cwd=scratch, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, tree_rss_kib(proc.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), bound)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        stdout, stderr = b"", f"the pull did not end within {bound} s".encode()
    finally:
        sampler.cancel()
    seconds = time.monotonic() - start
    try:
        out = json.loads(stdout)
    except ValueError:
        out = {"ok": False, "error": {"category": "internal", "message": stderr.decode()[-2000:]}}
    return proc.returncode or 0, out, seconds, peak / 1024


@contextlib.contextmanager
def small_tmpfs(target: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of ``mib`` MiB at ``target`` (we run as root), unmounted afterwards."""
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _config(path: Path, host: str, auth_file: Path | None, ca_pem: bytes | None) -> Path:
    """cdh.toml for the registry: insecure HTTP, or HTTPS trusting ``ca_pem``."""
    if ca_pem is None:
        return write_cdh(path, insecure=[host], auth_file=auth_file)
    return write_cdh(path, roots=[ca_pem], auth_file=auth_file)


def _insecure(host: str) -> ImageConfig:
    return ImageConfig.model_validate({"registry_config": {"registry": [{"location": host, "insecure": True}]}})


async def run_scenario(scenario: Scenario, base: Path, ca_chain: CertChain) -> Run:
    """Attack a CLI pull with ``scenario``, then pull honestly into the same work dir."""
    base.mkdir()
    image = _image()
    served = bomb_image(image, scenario.bomb) if scenario.bomb else image
    scratch = base / "scratch"
    scratch.mkdir()
    auth_file = base / "auth.json" if scenario.auth != "none" else None
    bound = SLOW_BOUND_S if scenario.slow else FAST_BOUND_S
    tls = server_context(ca_chain) if scenario.tls else None
    with small_tmpfs(base / "small", scenario.tmpfs_mib) if scenario.tmpfs_mib else contextlib.nullcontext(base) as root:
        work, bundle = root / "work", (root / "bundle" if scenario.bundle else None)
        async with HostileRegistry(served, scenario, ssl_context=tls) as registry:
            if auth_file:
                write_auth_json(auth_file, registry.host)
            cdh = _config(base / "cdh.toml", registry.host, auth_file, ca_chain.ca_cert_pem if tls else None)
            code, out, seconds, rss = await run_cli_pull(registry.reference, cdh, work, scratch, bundle, bound)
            leaked = registry.credentials_sent_elsewhere()
        # The store is still usable: an honest registry, the same work dir (in process: the
        # subprocess above already proved the CLI; this saves a second interpreter start).
        async with HostileRegistry(image, SCENARIOS["honest"]) as honest:
            try:
                result = await pull_image(honest.reference, _insecure(honest.host), work_dir=work)
                next_pull = "ok" if result.manifest_digest == image.digest else "wrong image"
            except Exception as err:  # reported by the test, whatever it is
                next_pull = f"{type(err).__name__}: {err}"
        bundle_left = bundle is not None and (bundle / "config.json").exists()
    category = "ok" if out.get("ok") else out["error"]["category"]
    return Run(category, code, out, seconds, rss, leaked, list(scratch.iterdir()), bundle_left, next_pull)


async def run_all(scenarios: list[Scenario], base: Path, ca_chain: CertChain) -> dict[str, Run]:
    """Every scenario, CONCURRENCY at a time: the pulls mostly wait (startup, deadlines)."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(scenario: Scenario) -> tuple[str, Run]:
        async with limit:
            return scenario.name, await run_scenario(scenario, base / scenario.name, ca_chain)

    return dict(await asyncio.gather(*(one(s) for s in scenarios)))


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, session_shm: Path, ca_chain: CertChain) -> dict[str, Run]:
    """Run the scenarios this session selected (``-m``, ``-k``) once, concurrently."""
    selected = [item.callspec.params["scenario"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_hostile_scenario"]
    base = Path(tempfile.mkdtemp(prefix="hostile-", dir=session_shm))
    return asyncio.run(run_all(selected, base, ca_chain))


def _scenario_params() -> list:
    return [
        pytest.param(s, id=s.name, marks=[pytest.mark.reliability] if s.slow else [])
        for s in SCENARIOS.values()
    ]


@pytest.mark.parametrize("scenario", _scenario_params())
def test_hostile_scenario(scenario: Scenario, runs: dict[str, Run]) -> None:
    run = runs[scenario.name]
    _OUTCOMES.append(Outcome(scenario.name, run.category, run.seconds, run.peak_rss_mib,
                             run.output.get("error", {}).get("message", "")))
    assert run.category in scenario.expect, f"{scenario.name}: {run.category}: {run.output}"
    assert (run.exit_code == 0) == (run.category == "ok")
    assert run.seconds < (SLOW_BOUND_S if scenario.slow else FAST_BOUND_S)
    assert run.peak_rss_mib < RSS_BOUND_MIB, f"{scenario.name}: peak RSS {run.peak_rss_mib:.0f} MiB"
    assert not run.leaked, f"credentials sent to another port: {run.leaked}"
    assert run.stray_files == [], "files written outside the work and bundle dirs"
    assert not (run.bundle_config_left and run.category != "ok"), "a failed pull left a bundle"
    assert run.next_pull == "ok", f"the next pull failed after {scenario.name}: {run.next_pull}"


@pytest.fixture(scope="module", autouse=True)
def reliability_report() -> Iterator[None]:
    """With $GUESTPULL_RELIABILITY_REPORT set (make reliability), write the outcomes there."""
    yield
    target = os.environ.get(REPORT_ENV)
    if not target or not _OUTCOMES:
        return
    by_name = {s.name: s for s in SCENARIOS.values()}
    lines = [
        "# Reliability: guestpull against a hostile registry",
        "",
        "Written by `make reliability` (tests/test_hostile_registry.py): each scenario of",
        "`guestpull_testkit.hostile` against `python -m guestpull pull` in a subprocess, with",
        "guestpull's default limits.  Peak RSS is the whole process tree, sampled every 50 ms.",
        f"Scenarios run {CONCURRENCY} at a time on a shared 2-core machine: times include that contention.",
        f"Bounds asserted: {FAST_BOUND_S:g} s (fast) / {SLOW_BOUND_S:g} s (slow), {RSS_BOUND_MIB} MiB.",
        "",
        "| scenario | what the registry does | outcome | time (s) | peak RSS (MiB) |",
        "|---|---|---|---:|---:|",
    ]
    for o in _OUTCOMES:
        lines.append(f"| {o.scenario} | {by_name[o.scenario].description} | {o.category} "
                     f"| {o.seconds:.1f} | {o.peak_rss_mib:.0f} |")
    Path(target).write_text("\n".join(lines) + "\n")


async def test_an_absurd_size_does_not_stop_the_other_candidates(shm_path: Path) -> None:
    """A mirror claiming a 2^62-byte layer fails as unsupported; the original still serves."""
    image = _image()
    async with HostileRegistry(image, SCENARIOS["absurd-layer-size"]) as mirror, \
            HostileRegistry(image, SCENARIOS["honest"]) as origin:
        config = ImageConfig.model_validate({"registry_config": {"registry": [{
            "prefix": f"{origin.host}/app", "location": f"{origin.host}/app", "insecure": True,
            "mirror": [{"location": f"{mirror.host}/app", "insecure": True}],
        }]}})  # the mirror is tried first
        result = await pull_image(origin.reference, config, work_dir=shm_path / "work")
    assert result.reference == origin.reference
    assert [a.error.category for a in result.attempts] == [Category.UNSUPPORTED]
    assert "larger than any blob" in result.attempts[0].error.message
