"""The same image pulled by 4 ``guestpull pull`` processes at once, into one work dir and 4
bundles: every blob is downloaded once, and the 4 bundles are identical.

The pulls are held at a barrier (see :func:`run_together`) so that they really overlap.
Counting downloads needs to see every request, so that test uses the fake registry (which
records them) in a thread of this process; the real registry serves the plain "4 identical
bundles" test, in the overlay mode (the layers are unpacked once and shared).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from image.treewalk import describe_tree, diff_trees
from support.cli import blob_gets, config_args, image_ref, invoke, pull_args, push_spec, spawn
from support.storecheck import layer_rows, store_problems

from guestpull.image.bundle import umount_bundle
from guestpull.image.store import open_store
from guestpull_testkit import wait_for
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import Dir, File, Hardlink, ImageSpec, LayerSpec, Symlink, Whiteout

PULLS = 4


def shared_spec() -> ImageSpec:
    rng = random.Random(99)
    return ImageSpec([
        LayerSpec([Dir("etc"), File("etc/os-release", b"ID=test\n"), File("etc/gone", b"x"),
                   File("blob0", rng.randbytes(1 << 20))], compression="gzip"),
        LayerSpec([File("blob1", rng.randbytes(1 << 20)), Symlink("link", "blob1"),
                   Hardlink("blob1-again", "blob1")], compression="zstd"),
        LayerSpec([Whiteout("etc/gone"), File("blob2", rng.randbytes(1 << 20), mode=0o600)],
                  compression="none"),
    ], config={"Cmd": ["/bin/true"]})


def lock_waiters(lock_file: Path) -> int:
    """How many processes are blocked in flock() on ``lock_file`` (from /proc/locks)."""
    suffix = f":{os.stat(lock_file).st_ino}"
    return sum(
        1 for line in Path("/proc/locks").read_text().splitlines()
        if "->" in line and any(field.endswith(suffix) for field in line.split())
    )


def run_together(work: Path, args_for: list[list[str]], logs: Path) -> list[int]:
    """Run the pulls so that they really start fetching at the same moment; their statuses.

    A pull holds the store's "prune" lock shared from before its first request to the end
    (prune takes it exclusively).  Holding it here makes every pull wait at that point; once
    all of them wait, releasing it starts them together.
    """
    store = open_store(work)
    with store.lock("prune"):
        procs = [spawn(*args, log=logs / f"pull{i}.log") for i, args in enumerate(args_for)]
        all_waiting = wait_for(lambda: lock_waiters(work / "locks" / "prune") == len(procs)
                               or any(p.poll() is not None for p in procs), timeout=60)
    try:
        assert all_waiting and all(p.poll() is None for p in procs), logs_text(logs)
        return [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def logs_text(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(logs.glob("*.log*")))


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    with registry.in_thread():
        yield registry


def test_each_blob_downloaded_once(fake: FakeRegistry, shm_path: Path) -> None:
    image = shared_spec().build()
    fake.add_image("team/shared", "v1", image)
    work = shm_path / "work"
    config = config_args(shm_path, fake)
    bundles = [shm_path / f"bundle{i}" for i in range(PULLS)]
    statuses = run_together(
        work, [pull_args(f"{fake.host}/team/shared:v1", config, work, b, "--rootfs-mode", "copy") for b in bundles],
        shm_path,
    )
    assert statuses == [0] * PULLS, logs_text(shm_path)
    blobs = [image.config_digest, *(layer.digest for layer in image.layers)]
    assert blob_gets(fake) == {digest: 1 for digest in blobs}
    assert len([r for r in fake.requests if "/manifests/" in r.path]) == PULLS
    first = describe_tree(bundles[0] / "rootfs")
    assert first["blob2"]["mode"] == "0o600" and "etc/gone" not in first
    for bundle in bundles[1:]:
        assert diff_trees(first, describe_tree(bundle / "rootfs")) == []
        assert (bundle / "config.json").read_bytes() == (bundles[0] / "config.json").read_bytes()
    assert store_problems(work) == []
    listed = invoke("images", "--work-dir", str(work), "--json")
    assert [i["reference"] for i in listed.json["images"]] == [f"{fake.host}/team/shared:v1"]


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="the overlay rootfs mode needs root")
def test_four_identical_overlay_bundles_from_the_real_registry(
    https_registry, repo_name: str, shm_path: Path
) -> None:
    push_spec(shm_path / "layout", https_registry, repo_name, shared_spec())
    work = shm_path / "work"
    config = config_args(shm_path, https_registry, initdata=True)
    bundles = [shm_path / f"bundle{i}" for i in range(PULLS)]
    try:
        statuses = run_together(
            work, [pull_args(image_ref(https_registry, repo_name), config, work, b, "--rootfs-mode", "overlay")
             for b in bundles],
            shm_path,
        )
        assert statuses == [0] * PULLS, logs_text(shm_path)
        outputs = [json.loads((shm_path / f"pull{i}.log").read_text()) for i in range(PULLS)]
        assert {o["result"]["rootfs_mode"] for o in outputs} == {"overlay"}
        assert all(os.path.ismount(b / "rootfs") for b in bundles)
        first = describe_tree(bundles[0] / "rootfs")
        assert first["link"]["target"] == "blob1" and "etc/gone" not in first
        for bundle in bundles[1:]:
            assert diff_trees(first, describe_tree(bundle / "rootfs")) == []
        # Each layer unpacked once, shared by the 4 mounts.
        assert len(layer_rows(work)) == len(shared_spec().layers)
        assert store_problems(work) == []
    finally:
        for bundle in bundles:
            if os.path.ismount(bundle / "rootfs"):
                umount_bundle(bundle)
    assert not any(os.path.ismount(b / "rootfs") for b in bundles)
