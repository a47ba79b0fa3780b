"""The flat rootfs cache behind copy-mode bundles: when it is built, that bundles are copies,
and what the store does with it (interrupted builds, recovery, store check, prune, locks)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import guestpull.image.bundle as bundle_module
from guestpull.errors import DigestError, NoSpaceError, UnpackError
from guestpull.image import create_bundle
from guestpull.image.bundle import BundleBuilder
from guestpull.image.flat import FLAT_ROOTFS
from guestpull.image.store import ImageRecord, Store, flat_key, list_dir, open_store
from guestpull.image.storecheck import check_store
from guestpull_testkit import wait_for
from guestpull_testkit.images import (
    BuiltImage,
    CharDevice,
    Dir,
    File,
    Hardlink,
    ImageSpec,
    LayerSpec,
    Symlink,
)

from .conftest import add_image, layer_of
from .treewalk import describe_tree, diff_trees, snapshot

BASE = LayerSpec([Dir("etc"), File("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
                  Dir("bin"), File("bin/tool", b"tool v1\n", mode=0o755),
                  Hardlink("bin/tool-link", "bin/tool"), Symlink("lib", "bin")])
TOP = LayerSpec([File("etc/motd", b"hello\n"), File("bin/tool", b"tool v2\n", mode=0o750)],
                compression="zstd")
SPEC = ImageSpec(layers=[BASE, TOP])


def key_of(record: ImageRecord, privileged: bool = os.geteuid() == 0) -> str:
    return flat_key([layer.diff_id for layer in record.layers], privileged)


def cache_rootfs(store: Store, record: ImageRecord) -> Path:
    return store.flats.path(key_of(record)) / FLAT_ROOTFS


def first_pull(store: Store, built: BuiltImage, bundle: Path) -> ImageRecord:
    """What a first pull does: the builder starts before the layer blobs are stored."""
    store.content.put(built.config_digest, built.config)
    layers = [layer_of(layer) for layer in built.layers]
    builder = BundleBuilder(store, built.config, "config", layers, bundle, mode="copy")
    for layer in built.layers:
        store.content.put(layer.digest, layer.blob)
    store.content.put(built.digest, built.manifest)
    for layer in builder.layers:
        builder.prepare_layer(layer)
    record = store.record_image("example/img:1", built.digest, built.config_digest,
                                built.manifest, layers)
    builder.finish(record.reference)
    return record


def count_unpacks(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[str]:
    """Record each layer the bundle builder applies (and optionally slow each one down)."""
    calls: list[str] = []
    real = bundle_module.unpack_blob

    def counting(store: Store, layer: Any, dest: Path, **kwargs: Any) -> Any:
        calls.append(layer.diff_id)
        time.sleep(delay)
        return real(store, layer, dest, **kwargs)

    monkeypatch.setattr(bundle_module, "unpack_blob", counting)
    return calls


def failing_unpacks(monkeypatch: pytest.MonkeyPatch, fails: Callable[[Any, Path], bool],
                    error: Exception) -> None:
    """The bundle builder's layer applies raise ``error`` where ``fails(layer, dest)``."""
    real = bundle_module.unpack_blob

    def unpack(store: Store, layer: Any, dest: Path, **kwargs: Any) -> Any:
        if fails(layer, dest):
            raise error
        return real(store, layer, dest, **kwargs)

    monkeypatch.setattr(bundle_module, "unpack_blob", unpack)


def test_first_pull_no_cache_then_built_on_the_repull_then_only_copied(
    store: Store, shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = SPEC.build()
    calls = count_unpacks(monkeypatch)
    record = first_pull(store, built, shm_path / "b1")
    assert store.flats.keys() == [] and len(calls) == 2  # applied straight into the bundle
    expected = describe_tree(shm_path / "b1" / "rootfs")

    second = create_bundle(store, record, shm_path / "b2", mode="copy")
    assert store.flats.keys() == [key_of(record)] and len(calls) == 4
    assert diff_trees(expected, describe_tree(second.rootfs)) == []
    assert diff_trees(expected, describe_tree(cache_rootfs(store, record))) == []

    builder = BundleBuilder(store, built.config, "config", record.layers, shm_path / "b3", mode="copy")
    assert builder.layers == []  # nothing to unpack: no worker is started for it
    builder.finish(record.reference)
    assert len(calls) == 4
    assert diff_trees(expected, describe_tree(shm_path / "b3" / "rootfs")) == []
    assert (shm_path / "b3" / "config.json").is_file()


def test_bundles_are_copies_of_a_pristine_cache(store: Store, shm_path: Path) -> None:
    record = add_image(store, SPEC)
    one = create_bundle(store, record, shm_path / "b1", mode="copy").rootfs
    two = create_bundle(store, record, shm_path / "b2", mode="copy").rootfs
    cache_before, two_before = snapshot(cache_rootfs(store, record)), snapshot(two)
    with open(one / "bin" / "tool", "r+b") as f:  # in place: a shared inode would show it
        f.write(b"TAMPERED")
    with open(one / "bin" / "tool-link", "ab") as f:
        f.write(b"more")
    os.chmod(one / "etc" / "passwd", 0o777)
    (one / "etc" / "new").write_bytes(b"new")
    os.utime(one / "etc", ns=(1, 1))
    assert (one / "bin" / "tool").read_bytes().startswith(b"TAMPERED")
    assert snapshot(cache_rootfs(store, record)) == cache_before
    assert snapshot(two) == two_before
    three = create_bundle(store, record, shm_path / "b3", mode="copy").rootfs
    assert (three / "bin" / "tool").read_bytes() == b"tool v2\n"
    assert not (three / "etc" / "new").exists()


def test_a_bad_diff_id_leaves_no_cache(store: Store, shm_path: Path) -> None:
    built = ImageSpec(layers=[BASE, replace(TOP, compression="gzip")]).build()
    record = add_image(store, built)
    # The stored top blob is swapped for BASE's (a valid blob whose diff_id differs).
    blob = store.content.path(built.layers[1].digest)
    os.chmod(blob, 0o644)
    blob.write_bytes(built.layers[0].blob)
    with pytest.raises(DigestError):
        create_bundle(store, record, shm_path / "b", mode="copy")
    assert list_dir(store.flats.root) == []
    assert not (shm_path / "b" / "rootfs").exists()


def test_an_interrupted_build_leaves_no_cache_and_the_next_pull_builds_it(
    store: Store, shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = add_image(store, SPEC)
    failing_unpacks(monkeypatch, lambda layer, dest: layer.diff_id == record.layers[1].diff_id,
                    UnpackError("interrupted"))
    with pytest.raises(UnpackError, match="interrupted"):
        create_bundle(store, record, shm_path / "b", mode="copy")
    assert list_dir(store.flats.root) == []
    monkeypatch.undo()
    result = create_bundle(store, record, shm_path / "b", mode="copy")
    assert (result.rootfs / "etc" / "motd").read_bytes() == b"hello\n"
    assert store.flats.keys() == [key_of(record)]


def test_recover_and_store_check_remove_half_built_caches(store: Store, shm_path: Path) -> None:
    work = store.work_dir
    killed = store.flats.root / "tmp.killed"
    (killed / "rootfs" / "etc").mkdir(parents=True)
    live = store.flats.root / "tmp.live"
    live.mkdir()
    debris = store.flats.root / "not-a-cache"
    debris.write_bytes(b"x")
    broken = store.flats.root / ("a" * 64)  # a cache name, but no rootfs/ nor warnings in it
    broken.mkdir()
    live_fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(live_fd, fcntl.LOCK_EX)  # a build still running in another process
        open_store(work)
        assert not killed.exists()
        assert live.exists()
        assert sorted((p.kind, p.path) for p in check_store(work).problems) == [
            ("flat-broken", str(broken)), ("flat-unexpected", str(debris))]
    finally:
        os.close(live_fd)
    report = check_store(work, repair=True)
    assert sorted((p.kind, p.path, p.repaired) for p in report.problems) == [
        ("flat-broken", str(broken), True), ("flat-unexpected", str(debris), True),
        ("temporary", str(live), True)]
    assert list_dir(store.flats.root) == []


def test_store_check_counts_caches(store: Store, shm_path: Path) -> None:
    record = add_image(store, SPEC)
    create_bundle(store, record, shm_path / "b", mode="copy")
    report = check_store(store.work_dir)
    assert report.flats == 1 and report.problems == []
    assert report.to_dict()["flats"] == 1


def test_prune_frees_only_caches_no_image_uses(store: Store, shm_path: Path) -> None:
    kept = add_image(store, SPEC, "example/kept:1")
    gone = add_image(store, ImageSpec(layers=[BASE]), "example/gone:1")
    create_bundle(store, kept, shm_path / "b1", mode="copy")
    create_bundle(store, gone, shm_path / "b2", mode="copy")
    assert sorted(store.flats.keys()) == sorted([key_of(kept), key_of(gone)])
    assert store.prune().flats_removed == 0
    store.remove_image(gone.reference)
    result = store.prune()
    assert result.flats_removed == 1
    assert store.flats.keys() == [key_of(kept)]
    assert (shm_path / "b2" / "rootfs" / "etc" / "passwd").is_file()  # the bundle is its own copy


def test_a_cache_pruned_after_the_bundle_began_is_built_again(store: Store, shm_path: Path) -> None:
    built = SPEC.build()
    record = add_image(store, built)
    create_bundle(store, record, shm_path / "b1", mode="copy")
    builder = BundleBuilder(store, built.config, "config", record.layers, shm_path / "b2", mode="copy")
    assert builder.layers == []  # planned as a copy of the cache...
    assert store.flats.remove(key_of(record))  # ...which a prune then removed
    builder.finish(record.reference)
    assert (shm_path / "b2" / "rootfs" / "bin" / "tool").read_bytes() == b"tool v2\n"
    assert store.flats.keys() == [key_of(record)]


def test_concurrent_bundles_build_the_cache_once(
    store: Store, shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = add_image(store, SPEC)
    calls = count_unpacks(monkeypatch, delay=0.2)
    errors: list[BaseException] = []

    def make(name: str) -> None:
        try:
            # Its own Store object: its own lock fds, as another process would have.
            create_bundle(Store(store.work_dir), record, shm_path / name, mode="copy")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(f"b{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(calls) == len(record.layers)  # one build
    trees = [describe_tree(shm_path / f"b{i}" / "rootfs") for i in range(3)]
    assert diff_trees(trees[0], trees[1]) == [] and diff_trees(trees[0], trees[2]) == []


def test_unprivileged_cache_keeps_the_applier_warnings(store: Store, shm_path: Path) -> None:
    record = add_image(store, ImageSpec(layers=[LayerSpec([
        Dir("dev"), CharDevice("dev/null", 1, 3), File("f", b"1", uid=1234)])]))
    first = create_bundle(store, record, shm_path / "b1", mode="copy", privileged=False)
    second = create_bundle(store, record, shm_path / "b2", mode="copy", privileged=False)
    assert store.flats.keys() == [key_of(record, privileged=False)]
    assert key_of(record, privileged=False).endswith("-rootless")
    for result in (first, second):
        assert any("device node skipped" in w for w in result.warnings), result.warnings
        assert not (result.rootfs / "dev" / "null").exists()
        assert os.stat(result.rootfs / "f").st_uid == os.geteuid()


def test_a_damaged_cache_is_refused_with_the_repair_hint(store: Store, shm_path: Path) -> None:
    record = add_image(store, SPEC)
    create_bundle(store, record, shm_path / "b1", mode="copy")
    (store.flats.path(key_of(record)) / "warnings.json").unlink()
    with pytest.raises(UnpackError, match="unusable") as caught:
        create_bundle(store, record, shm_path / "b2", mode="copy")
    assert caught.value.hint is not None and "store check --repair" in caught.value.hint
    assert not (shm_path / "b2" / "rootfs").exists()
    assert check_store(store.work_dir, repair=True).problems[0].kind == "flat-broken"
    result = create_bundle(store, record, shm_path / "b2", mode="copy")  # built again
    assert (result.rootfs / "etc" / "motd").read_bytes() == b"hello\n"


_SLOW_BUILDER = """
import sys, time
from pathlib import Path
import guestpull.image.bundle as bundle
from guestpull.image.store import open_store

work, target, log, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
real = bundle.unpack_blob

def slow(*args, **kwargs):
    stats = real(*args, **kwargs)
    with open(log, "a") as f:  # one line per layer applied, whichever process applied it
        f.write("layer\\n")
    time.sleep(pause)
    return stats

bundle.unpack_blob = slow
store = open_store(work)
bundle.create_bundle(store, store.image("example/img:1"), Path(target), mode="copy")
"""


def slow_builder(store: Store, target: Path, log: Path, pause: float) -> subprocess.Popen[bytes]:
    """A process making a copy bundle of example/img:1 whose layer applies are slowed down."""
    return subprocess.Popen([sys.executable, "-c", _SLOW_BUILDER, str(store.work_dir),
                             str(target), str(log), str(pause)])


def test_two_processes_build_the_cache_once(store: Store, shm_path: Path) -> None:
    record = add_image(store, SPEC)
    log = shm_path / "applied"
    children = [slow_builder(store, shm_path / f"b{i}", log, 0.3) for i in range(2)]
    try:
        assert [child.wait(60) for child in children] == [0, 0]
    finally:
        for child in children:
            child.kill()
    assert log.read_text().splitlines() == ["layer"] * len(record.layers)
    assert store.flats.keys() == [key_of(record)]
    assert diff_trees(describe_tree(shm_path / "b0" / "rootfs"),
                      describe_tree(shm_path / "b1" / "rootfs")) == []


def test_a_killed_cache_build_is_cleaned_by_the_next_open(store: Store, shm_path: Path) -> None:
    record = add_image(store, SPEC)
    marker = shm_path / "one-layer-applied"
    child = slow_builder(store, shm_path / "killed", marker, 60)
    try:
        assert wait_for(marker.exists, timeout=60)
        half_built = [p.name for p in list_dir(store.flats.root)]
        assert len(half_built) == 1 and half_built[0].startswith("tmp.")
        open_store(store.work_dir)  # the builder still holds its flock: left alone
        assert [p.name for p in list_dir(store.flats.root)] == half_built
    finally:
        child.kill()
        child.wait(30)
    open_store(store.work_dir)
    assert list_dir(store.flats.root) == []
    assert check_store(store.work_dir).problems == []
    result = create_bundle(store, record, shm_path / "b", mode="copy")
    assert (result.rootfs / "bin" / "tool").read_bytes() == b"tool v2\n"


def test_no_space_for_the_cache_falls_back_to_applying_the_blobs(
    store: Store, shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = add_image(store, SPEC)
    failing_unpacks(monkeypatch, lambda layer, dest: store.flats.root in dest.parents,
                    NoSpaceError("no space left in the store"))
    result = create_bundle(store, record, shm_path / "b", mode="copy")
    assert any("no space for the flat rootfs cache" in w for w in result.warnings)
    assert (result.rootfs / "bin" / "tool").read_bytes() == b"tool v2\n"
    assert (result.rootfs / "etc" / "passwd").is_file()
    assert list_dir(store.flats.root) == []


def test_no_space_for_the_copy_drops_the_cache_and_applies_the_blobs(
    store: Store, shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = add_image(store, SPEC)
    expected = describe_tree(create_bundle(store, record, shm_path / "b1", mode="copy").rootfs)
    def full_halfway(src: Path, dst: Path, **kwargs: Any) -> Any:
        (dst / "partial").write_bytes(b"x")
        raise NoSpaceError("no space left while copying")

    monkeypatch.setattr(bundle_module, "copy_tree", full_halfway)
    result = create_bundle(store, record, shm_path / "b2", mode="copy")
    assert any("no space for the flat rootfs cache" in w for w in result.warnings)
    assert diff_trees(expected, describe_tree(result.rootfs)) == []  # no "partial" either
    assert store.flats.keys() == []  # freed: this guest cannot afford it
