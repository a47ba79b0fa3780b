"""A pull killed (SIGKILL) at any point leaves a store that the next pull repairs.

The killed pull is a real ``guestpull pull`` process; the pull after it runs in process.  After
the second pull: it succeeded, every blob re-hashes to its name, ``guestpull images`` lists
the image once, no temporary is left (``ingest/`` empty, no ``layers/tmp.*``), every layer row
is complete with its directory, and the bundle equals one from an undisturbed pull.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from image.treewalk import describe_tree, diff_trees
from support.cli import config_args, image_ref, invoke, kill_group, pull_args, push_spec, spawn
from support.storecheck import store_problems

from guestpull.image.bundle import umount_bundle
from guestpull_testkit import wait_for
from guestpull_testkit.images import File, ImageSpec, LayerSpec

pytestmark = [
    pytest.mark.registry,
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="the overlay rootfs mode needs root"),
]

LAYER_BYTES = 4 * 1024 * 1024
COMPRESSIONS = ["none", "gzip", "zstd", "none", "gzip", "zstd", "none", "gzip"]


@dataclass(frozen=True)
class BigImage:
    ref: str
    config: list[str]
    tree: dict[str, Any]  # the rootfs of an undisturbed pull
    busy_seconds: float  # how long a pull works once its store is open (download + bundle)


def big_spec() -> ImageSpec:
    # Incompressible, so every layer really is 4 MiB on the wire and on disk.
    rng = random.Random(2024)
    return ImageSpec([
        LayerSpec([File(f"layer{i}/data", rng.randbytes(LAYER_BYTES)),
                   File(f"layer{i}/small", f"layer {i}\n".encode())], compression=c)
        for i, c in enumerate(COMPRESSIONS)
    ])


@pytest.fixture(scope="module")
def big_image(http_registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigImage]:
    base = Path(tmp_path_factory.mktemp("big-image"))
    shm = Path("/dev/shm") / f"guestpull-crash-{uuid.uuid4().hex[:8]}"
    shm.mkdir()
    try:
        repo = f"test/crash-{uuid.uuid4().hex[:8]}"
        push_spec(shm / "layout", http_registry, repo, big_spec())
        ref, config = image_ref(http_registry, repo), config_args(base, http_registry)
        work, bundle = shm / "work", shm / "bundle"
        proc = spawn(*pull_args(ref, config, work, bundle, "--rootfs-mode", "copy"), log=shm / "log")
        started = store_opened(proc, work)
        assert proc.wait(timeout=120) == 0, (shm / "log").read_text() + (shm / "log.err").read_text()
        busy = time.monotonic() - started
        yield BigImage(ref, config, describe_tree(bundle / "rootfs"), busy)
    finally:
        subprocess.run(["rm", "-rf", str(shm)], check=False, timeout=60)


def store_opened(proc: subprocess.Popen[bytes], work: Path) -> float:
    """Wait (bounded) until the pull has opened its store; the time it did."""
    assert wait_for(lambda: (work / "meta.db").exists() or proc.poll() is not None, timeout=60,
                    interval=0.002)
    return time.monotonic()


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float = 0.0) -> int:
    """SIGKILL the pull once ``ready()`` (then ``delay`` s later); its exit status.

    What the pull started dies with it: a ``mount`` left running would mount after the
    kill, at a moment no test can wait for.
    """
    assert wait_for(lambda: ready() or proc.poll() is not None, timeout=60, interval=0.001)
    if delay:
        time.sleep(delay)
    return kill_group(proc)


def pull_again_and_check(image: BigImage, work: Path, bundle: Path, mode: str) -> None:
    # A half-made bundle is the caller's directory: replacing it needs --force, as any bundle.
    occupied = (bundle / "config.json").exists() or os.path.ismount(bundle / "rootfs") or (
        (bundle / "rootfs").is_dir() and any((bundle / "rootfs").iterdir()))
    extra = ["--force"] if occupied else []
    result = invoke(*pull_args(image.ref, image.config, work, bundle, "--rootfs-mode", mode, *extra))
    assert result.exit_code == 0, result
    assert result.json["result"]["rootfs_mode"] == mode
    assert store_problems(work) == []
    listed = invoke("images", "--work-dir", str(work), "--json")
    assert listed.exit_code == 0, listed
    assert [i["reference"] for i in listed.json["images"]] == [image.ref]
    assert diff_trees(image.tree, describe_tree(bundle / "rootfs")) == []


def cleanup(bundle: Path) -> None:
    if os.path.ismount(bundle / "rootfs"):
        umount_bundle(bundle)


def any_entry(directory: Path, prefix: str = "") -> Callable[[], bool]:
    def check() -> bool:
        try:
            return any(p.name.startswith(prefix) for p in directory.iterdir())
        except FileNotFoundError:
            return False

    return check


@pytest.mark.slow
def test_killed_at_random_points_then_pulled_again(big_image: BigImage, shm_path: Path) -> None:
    assert big_image.busy_seconds > 0.2  # the image is big enough for the kills to land mid-pull
    killed = 0
    for seed in range(5):
        rng = random.Random(seed)
        mode = ("copy", "overlay")[seed % 2]
        delay = rng.uniform(0.0, 0.9 * big_image.busy_seconds)
        work, bundle = shm_path / f"work{seed}", shm_path / f"bundle{seed}"
        try:
            proc = spawn(*pull_args(big_image.ref, big_image.config, work, bundle,
                                    "--rootfs-mode", mode), log=shm_path / f"log{seed}")
            status = kill_when(proc, lambda w=work: (w / "meta.db").exists(), delay)
            killed += status == -signal.SIGKILL
            pull_again_and_check(big_image, work, bundle, mode)
        finally:
            cleanup(bundle)
    assert killed >= 3, f"only {killed} of 5 pulls were still running when killed"


@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_killed_while_downloading(big_image: BigImage, shm_path: Path, mode: str) -> None:
    work, bundle = shm_path / "work", shm_path / "bundle"
    try:
        proc = spawn(*pull_args(big_image.ref, big_image.config, work, bundle, "--rootfs-mode", mode),
                     log=shm_path / "log")
        assert kill_when(proc, any_entry(work / "ingest")) == -signal.SIGKILL
        pull_again_and_check(big_image, work, bundle, mode)
    finally:
        cleanup(bundle)


def test_killed_while_copying_the_rootfs(big_image: BigImage, shm_path: Path) -> None:
    work, bundle = shm_path / "work", shm_path / "bundle"
    proc = spawn(*pull_args(big_image.ref, big_image.config, work, bundle, "--rootfs-mode", "copy"),
                 log=shm_path / "log")
    # Layers are applied in order as they arrive: half of them are in the rootfs.
    half = len(COMPRESSIONS) // 2
    assert kill_when(proc, lambda: (bundle / "rootfs" / f"layer{half}").exists()) == -signal.SIGKILL
    assert not (bundle / "config.json").exists()
    pull_again_and_check(big_image, work, bundle, "copy")


def test_killed_while_unpacking_overlay_layers(big_image: BigImage, shm_path: Path) -> None:
    work, bundle = shm_path / "work", shm_path / "bundle"
    try:
        proc = spawn(*pull_args(big_image.ref, big_image.config, work, bundle, "--rootfs-mode", "overlay"),
                     log=shm_path / "log")
        # A few layers in: some complete, one in progress.
        assert kill_when(proc, any_entry(work / "layers", "tmp."), delay=0.05) == -signal.SIGKILL
        assert not (bundle / "config.json").exists()
        pull_again_and_check(big_image, work, bundle, "overlay")
    finally:
        cleanup(bundle)


def test_killed_while_mounting_the_overlay(big_image: BigImage, shm_path: Path) -> None:
    work, bundle = shm_path / "work", shm_path / "bundle"
    try:
        proc = spawn(*pull_args(big_image.ref, big_image.config, work, bundle, "--rootfs-mode", "overlay"),
                     log=shm_path / "log")
        # The overlay state directory is made just before the mount: every layer is unpacked.
        assert kill_when(proc, lambda: (bundle / ".guestpull-overlay").exists()) == -signal.SIGKILL
        assert not (bundle / "config.json").exists()
        pull_again_and_check(big_image, work, bundle, "overlay")
    finally:
        cleanup(bundle)
