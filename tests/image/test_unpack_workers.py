"""Unpacking in worker processes gives the same tree as in-process, and the same errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from guestpull.errors import DigestError, Location, NoSpaceError, UnpackError
from guestpull.image.rootfs import ensure_layer, unpack_blob
from guestpull.image.decode import uncompressed_size_hint
from guestpull.image.worker import OnDemandWorkers, UnpackWorkers
from guestpull.image.store import Store
from guestpull_testkit.images import Dir, File, ImageSpec, LayerSpec, Symlink

from image.conftest import add_image
from image.treewalk import describe_tree, diff_trees


def _spec() -> ImageSpec:
    return ImageSpec([
        LayerSpec([Dir("etc"), File("etc/a", b"a" * 5000, mode=0o4755), Symlink("etc/l", "/etc/a")]),
        LayerSpec([File("etc/b", b"b" * 10, uid=7, gid=8)], compression="zstd"),
    ])


def test_workers_unpack_the_same_tree_as_this_process(store: Store, shm_path: Path) -> None:
    record = add_image(store, _spec())
    here, there = shm_path / "here", shm_path / "there"
    here.mkdir(), there.mkdir()
    workers = UnpackWorkers(1)
    try:
        for layer in record.layers:
            unpack_blob(store, layer, here, mode="copy")
            stats = unpack_blob(store, layer, there, mode="copy", runner=workers)
            assert stats.files >= 1
        overlay_dirs = [ensure_layer(store, layer, workers) for layer in record.layers]
    finally:
        workers.close()
    assert diff_trees(describe_tree(there, dir_mtimes=True), describe_tree(here, dir_mtimes=True)) == []
    assert all(d.is_dir() and d.parent == store.layers.root for d in overlay_dirs)


def test_a_worker_error_arrives_with_its_class_and_message(store: Store, shm_path: Path) -> None:
    record = add_image(store, _spec())
    layer = record.layers[0]
    wrong = replace(layer, diff_id="sha256:" + "0" * 64)
    workers = UnpackWorkers(1)
    try:
        with pytest.raises(DigestError, match="does not match its diff_id"):
            unpack_blob(store, wrong, shm_path, mode="copy", runner=workers)
    finally:
        workers.close()


def test_errors_keep_location_and_hint_across_processes() -> None:
    err = NoSpaceError("no space left in /w", location=Location(file="f", field="x", line=3),
                       hint="prune")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NoSpaceError and str(back) == str(err) and back.to_dict() == err.to_dict()


def test_killed_workers_refuse_further_work(store: Store, shm_path: Path) -> None:
    record = add_image(store, _spec())
    workers = UnpackWorkers(1)
    workers.kill()
    with pytest.raises(UnpackError, match="worker process died"):
        unpack_blob(store, record.layers[0], shm_path, mode="copy", runner=workers)


def test_workers_run_nothing_but_the_layer_unpacker() -> None:
    workers = UnpackWorkers(1)
    try:
        with pytest.raises(ValueError):
            workers(print, "x")
    finally:
        workers.close()


def test_a_script_without_a_main_guard_can_pull_with_workers(store: Store, shm_path: Path) -> None:
    # multiprocessing's "spawn" would re-run this unguarded script in each worker.
    record = add_image(store, _spec())
    blob = store.content.path(record.layers[0].digest)
    layer = record.layers[0]
    script = shm_path / "unguarded.py"
    script.write_text(
        "from guestpull.image.worker import UnpackWorkers\n"
        "from guestpull.image.unpack import unpack_file\n"
        f"w = UnpackWorkers(2)\n"
        f"print(w(unpack_file, {str(blob)!r}, {layer.media_type!r}, {layer.diff_id!r},"
        f" {str(shm_path / 'out')!r}, mode='copy', privileged=None).files)\n"
        "w.close()\n"
    )
    (shm_path / "out").mkdir()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1" and (shm_path / "out" / "etc" / "a").is_file()



@pytest.mark.parametrize("big_enough", [False, True])
def test_on_demand_workers_start_only_for_a_big_layer(store: Store, shm_path: Path, big_enough: bool) -> None:
    record = add_image(store, _spec())
    sizes = [uncompressed_size_hint(str(store.content.path(la.digest)), la.media_type) for la in record.layers]
    started: list[UnpackWorkers] = []

    def start() -> UnpackWorkers:
        started.append(UnpackWorkers(1))
        return started[-1]

    # The last layer (at least) reaches the threshold, or none does.
    threshold = sizes[-1] if big_enough else max(sizes) + 1
    runner = OnDemandWorkers(start, min_layer_bytes=threshold)
    here, there = shm_path / "here", shm_path / "there"
    here.mkdir(), there.mkdir()
    try:
        for layer in record.layers:
            unpack_blob(store, layer, here, mode="copy")
            unpack_blob(store, layer, there, mode="copy", runner=runner)
    finally:
        runner.close()
    assert len(started) == (1 if big_enough else 0) and runner.started == big_enough
    assert diff_trees(describe_tree(there, dir_mtimes=True), describe_tree(here, dir_mtimes=True)) == []


def test_stopped_on_demand_workers_start_no_more(store: Store, shm_path: Path) -> None:
    record = add_image(store, _spec())
    runner = OnDemandWorkers(lambda: UnpackWorkers(1), min_layer_bytes=0)
    runner.kill()  # the pull failed before any layer was stored
    with pytest.raises(UnpackError, match="stopped"):
        unpack_blob(store, record.layers[0], shm_path, mode="copy", runner=runner)
    assert not runner.started
