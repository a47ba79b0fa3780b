"""Unpacking in worker processes gives the same tree as in-process, and the same errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from guestpull.errors import DigestError, Location, NoSpaceError, UnpackError
from guestpull.image.rootfs import UnpackWorkers, ensure_layer, unpack_blob
from guestpull.image.store import LayerRef, Store
from guestpull.testing.images import Dir, File, ImageSpec, LayerSpec, Symlink

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
    wrong = LayerRef(layer.digest, layer.media_type, layer.size, "sha256:" + "0" * 64)
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
    workers.warm_up()
    workers.kill()
    with pytest.raises((UnpackError, RuntimeError)):
        unpack_blob(store, record.layers[0], shm_path, mode="copy", runner=workers)
