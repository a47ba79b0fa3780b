"""pull --bundle with unpack worker processes gives the same bundle as unpacking in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestpull import pull
from guestpull.image.worker import UnpackWorkers
from guestpull.pull import pull_image
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import Dir, File, ImageSpec, LayerSpec, Opaque, Symlink, Whiteout

from support.pulls import fake_config, pull_tree
from image.treewalk import diff_trees


def _image() -> ImageSpec:
    return ImageSpec([
        LayerSpec([Dir("a"), File("a/x", b"x" * 70_000), File("a/gone", b"g"), Dir("o"),
                   File("o/old", b"old")]),
        LayerSpec([Whiteout("a/gone"), Opaque("o"), File("o/new", b"new"), Symlink("a/l", "x")],
                  compression="zstd"),
        LayerSpec([File(f"many/f{i}", bytes([i % 251]) * (i % 900)) for i in range(300)],
                  compression="none"),
    ])


def _count_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker counts of every UnpackWorkers the pull starts, in order."""
    started: list[int] = []

    class CountingWorkers(UnpackWorkers):
        def __init__(self, workers: int) -> None:
            started.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(pull, "UnpackWorkers", CountingWorkers)
    return started


@pytest.mark.parametrize("mode", ["copy", "overlay"])
async def test_bundles_from_workers_equal_bundles_from_this_process(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    started = _count_workers(monkeypatch)
    image = _image().build()
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", image)
        config = fake_config(fake)
        trees = {}
        for threshold, name in ((1 << 62, "in-process"), (0, "workers")):
            monkeypatch.setattr(pull, "UNPACK_WORKER_MIN_LAYER_BYTES", threshold)
            trees[name] = await pull_tree(f"{fake.host}/team/app:v1", config, shm_path / name,
                                          shm_path / f"bundle-{name}", mode)
    assert started == [1 if mode == "copy" else 2]
    assert diff_trees(trees["workers"], trees["in-process"]) == []
    assert "o/new" in trees["workers"] and "many/f299" in trees["workers"]
    assert "o/old" not in trees["workers"] and "a/gone" not in trees["workers"]


@pytest.mark.parametrize(("eager", "min_layer", "expected"), [
    (1 << 62, 1 << 62, []),   # small image, small layers: everything in this process
    (0, 1 << 62, [1]),        # enough compressed data: started at once
    (1 << 62, 0, [1]),        # a layer big enough uncompressed: started on demand
])
async def test_workers_start_only_when_the_work_repays_them(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, eager: int, min_layer: int, expected: list[int]
) -> None:
    started = _count_workers(monkeypatch)
    monkeypatch.setattr(pull, "UNPACK_WORKERS_EAGER_BYTES", eager)
    monkeypatch.setattr(pull, "UNPACK_WORKER_MIN_LAYER_BYTES", min_layer)
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", _image().build())
        config = fake_config(fake)
        result = await pull_image(f"{fake.host}/team/app:v1", config, work_dir=shm_path / "s",
                                  bundle=shm_path / "b", rootfs_mode="copy")
    assert result.bundle is not None and (shm_path / "b" / "rootfs" / "many" / "f299").is_file()
    assert started == expected
