"""Hostile layers pulled end to end (issue 9): each ends in a typed error (or succeeds) in
bounded time and memory, leaves nothing in ``layers/`` or ``ingest/``, and the next pull into
the same work dir works.

The pull runs as ``guestpull pull`` in a subprocess against the fake registry; its peak RSS
(of it and its workers) is sampled from /proc.  The slow scenarios are marked
``reliability`` (``make reliability``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import cdh_toml
from support.processes import tree_rss_kib
from support.storecheck import store_problems
from guestpull.image.bundle import umount_bundle
from guestpull.image.rootfs import is_mountpoint, overlay_supported
from guestpull_testkit import hostiletar
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec

#: An idle ``guestpull pull`` peaks near 80 MiB; every scenario must stay under this.
RSS_BOUND_MIB = 250
TIMEOUT = 240


@dataclass
class Outcome:
    exit_code: int
    output: dict[str, object]
    seconds: float
    peak_rss_mib: float

    @property
    def category(self) -> str | None:
        error = self.output.get("error")
        return str(error["category"]) if isinstance(error, dict) else None

    @property
    def message(self) -> str:
        error = self.output.get("error")
        return json.dumps(error) if error else ""


def run_measured(argv: list[str], scratch: Path) -> Outcome:
    """Run ``argv``; its exit code, JSON stdout, wall time and peak RSS of its process tree.

    The RSS is sampled from /proc every 50 ms (support.processes): ``wait4``'s ``ru_maxrss``
    starts from the parent's own peak at fork, so in a long pytest session it measured pytest.
    """
    out_path = scratch / "stdout.json"
    peak = 0
    with open(out_path, "wb") as out, open(scratch / "stderr.txt", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        while proc.poll() is None:
            peak = max(peak, tree_rss_kib(proc.pid))
            if time.monotonic() - started > TIMEOUT:
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
    text = out_path.read_text()
    try:
        output = json.loads(text) if text.strip() else {}
    except ValueError:
        output = {"unparsed": text[-2000:]}
    return Outcome(proc.returncode, output, time.monotonic() - started, peak / 1024)


@dataclass
class Pulls:
    fake: FakeRegistry
    root: Path
    bundles: list[Path]

    @property
    def work(self) -> Path:
        return self.root / "work"

    def serve(self, tag: str, layers: Iterable[hostiletar.StreamedLayer | object]) -> str:
        image = ImageSpec([]).assemble(list(layers))  # type: ignore[arg-type]
        self.fake.add_image("hostile/app", tag, image)
        return f"{self.fake.host}/hostile/app:{tag}"

    def bundle(self, name: str, mode: str) -> list[str]:
        """Arguments for a bundle ``name`` in ``mode`` (overlay layers live in the store)."""
        path = self.root / name
        self.bundles.append(path)
        return ["--bundle", str(path), "--rootfs-mode", mode]

    def pull(self, reference: str, *extra: str) -> Outcome:
        cdh = self.root / "cdh.toml"
        cdh.write_text(cdh_toml(insecure=[self.fake.host]))
        scratch = self.root / "scratch"
        scratch.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "guestpull", "pull", reference, "--config", str(cdh),
                "--work-dir", str(self.work), "--json", "--quiet", *extra]
        return run_measured(argv, scratch)

    def assert_store_clean_and_usable(self, mode: str) -> None:
        """Nothing left behind, and an honest image pulls next (into the same work dir)."""
        assert store_problems(self.work) == []
        assert not [p for p in (self.work / "layers").iterdir() if p.name.startswith("tmp.")]
        honest = LayerSpec([File("hello.txt", b"hello")]).build()
        outcome = self.pull(self.serve("honest", [honest]), *self.bundle("honest", mode))
        assert outcome.exit_code == 0, outcome.output
        assert (self.root / "honest" / "rootfs" / "hello.txt").read_bytes() == b"hello"
        assert store_problems(self.work) == []


MODES = pytest.mark.parametrize("mode", [
    pytest.param("overlay", marks=pytest.mark.skipif(not overlay_supported(), reason="needs root")),
    "copy",
])


@pytest.fixture
def pulls(shm_path: Path) -> Iterator[Pulls]:
    fake = FakeRegistry()
    with fake.in_thread():
        pulls = Pulls(fake, shm_path, [])
        try:
            yield pulls
        finally:
            for bundle in pulls.bundles:
                if is_mountpoint(bundle / "rootfs"):
                    umount_bundle(bundle)


@MODES
def test_deep_directories_with_a_wrong_diff_id(pulls: Pulls, mode: str) -> None:
    # ~2,000 levels (4,000-byte names, under the 4,096-byte limit): shutil.rmtree raised
    # RecursionError cleaning this up and every later pull crashed in Store.recover().
    layer = hostiletar.zstd_layer(hostiletar.deep_dirs(2000), wrong_diff_id=True)
    outcome = pulls.pull(pulls.serve("deep", [layer]), *pulls.bundle("hostile", mode))
    assert outcome.category == "digest", outcome.output
    assert outcome.peak_rss_mib < RSS_BOUND_MIB
    assert not (pulls.root / "hostile" / "rootfs").exists()
    pulls.assert_store_clean_and_usable(mode)


@MODES
def test_name_of_32767_levels_is_refused_in_bounded_memory(pulls: Pulls, mode: str) -> None:
    # A 64 KiB name: the upper set kept every prefix (memory ~ depth²) and the error echoed it.
    layer = hostiletar.zstd_layer(hostiletar.long_name(32_767))
    outcome = pulls.pull(pulls.serve("long", [layer]), *pulls.bundle("hostile", mode))
    assert outcome.category == "unpack", outcome.output
    assert "4096" in outcome.message and "bytes refused" in outcome.message
    assert len(outcome.message) < 2000  # the name is cut, not echoed whole
    assert outcome.peak_rss_mib < RSS_BOUND_MIB
    pulls.assert_store_clean_and_usable(mode)


@MODES
def test_pax_global_header_flood_is_refused_in_bounded_memory(pulls: Pulls, mode: str) -> None:
    # 400 distinct 1 MiB global headers accumulated 543 MiB.
    layer = hostiletar.zstd_layer(hostiletar.global_flood(400, (1 << 20) - 100))
    outcome = pulls.pull(pulls.serve("flood", [layer]), *pulls.bundle("hostile", mode))
    assert outcome.category == "unpack", outcome.output
    assert "global PAX headers" in outcome.message
    assert outcome.peak_rss_mib < RSS_BOUND_MIB
    pulls.assert_store_clean_and_usable(mode)


@pytest.mark.reliability
@pytest.mark.slow
@MODES
def test_a_million_entries_unpack_in_bounded_memory(pulls: Pulls, mode: str) -> None:
    layer = hostiletar.zstd_layer(hostiletar.many_entries(1_000_000))
    outcome = pulls.pull(pulls.serve("million", [layer]), *pulls.bundle("million", mode))
    assert outcome.exit_code == 0, outcome.output
    print(f"1,000,000 entries ({mode}): {outcome.seconds:.1f} s, "
          f"peak RSS {outcome.peak_rss_mib:.0f} MiB")
    assert outcome.peak_rss_mib < RSS_BOUND_MIB
    pulls.assert_store_clean_and_usable(mode)
