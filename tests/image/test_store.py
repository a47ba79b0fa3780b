"""The store: verified ingest, crash recovery, locks across processes, space check, prune."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from guestpull.errors import DigestError, NoSpaceError, NotFoundError
from guestpull.image.store import Store, open_store
from guestpull.oci import Descriptor, Layer
from guestpull_testkit.images import File, ImageSpec, LayerSpec

from .conftest import add_image


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_writer_commit(store: Store) -> None:
    data = b"hello" * 1000
    with store.content.writer(sha(data), len(data)) as w:
        w.write(data[:10])
        w.write(data[10:])
        path = w.commit()
    assert path.read_bytes() == data
    assert store.content.has(sha(data))
    assert list(store.content.ingest_dir.iterdir()) == []


def test_writer_abort_leaves_nothing(store: Store) -> None:
    with store.content.writer(sha(b"abc"), 3) as w:
        w.write(b"ab")
    assert not store.content.has(sha(b"abc"))
    assert list(store.content.ingest_dir.iterdir()) == []


def test_written_bytes_are_in_the_ingest_file_at_once(store: Store) -> None:
    """A layer unpacking while its blob arrives reads the ingest file: no buffer may hold
    bytes back until commit."""
    data = os.urandom(3000)
    with store.content.writer(sha(data), len(data)) as w:
        w.write(data[:1000])
        assert w.ingest_path.parent == store.content.ingest_dir
        assert w.ingest_path.read_bytes() == data[:1000]
        w.write(data[1000:])
        assert w.ingest_path.read_bytes() == data
        final = w.commit()
    assert final.read_bytes() == data and not w.ingest_path.exists()


def test_digest_mismatch_leaves_nothing(store: Store) -> None:
    w = store.content.writer(sha(b"expected"), 8)
    w.write(b"tampered")
    with pytest.raises(DigestError, match="digest mismatch"):
        w.commit()
    assert not store.content.has(sha(b"expected"))
    assert list(store.content.ingest_dir.iterdir()) == []


def test_size_mismatch_and_overflow(store: Store) -> None:
    w = store.content.writer(sha(b"abc"), 4)
    w.write(b"abc")
    with pytest.raises(DigestError, match="size mismatch"):
        w.commit()
    w = store.content.writer(sha(b"abc"), 2)
    with pytest.raises(DigestError, match="more data"):
        w.write(b"abc")
    assert list(store.content.ingest_dir.iterdir()) == []


def test_malformed_digest_cannot_name_a_path(store: Store) -> None:
    with pytest.raises(DigestError):
        store.content.writer("sha256:../../etc/passwd", None)
    with pytest.raises(DigestError):
        store.content.path("md5:" + "0" * 32)


def _hold_writer(work_dir: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    s = open_store(work_dir)
    w = s.content.writer(sha(b"slow"), 4)
    w.write(b"sl")
    w._file.flush()
    ready.set()
    done.wait(20)


def test_recover_removes_leftovers_but_not_live_ingest(shm_path: Path) -> None:
    work = shm_path / "work"
    store = open_store(work)
    # What a killed pull leaves: an unlocked ingest temp, a tmp layer dir, an incomplete row
    # with its directory, and a numbered directory nobody knows.
    (store.content.ingest_dir / "dead.123").write_bytes(b"partial")
    (store.layers.root / "tmp.dead").mkdir()
    (store.layers.root / "tmp.dead" / "f").write_bytes(b"x")
    diff_id = sha(b"layer")
    with store._db() as db:
        cur = db.execute("INSERT INTO layers (diff_id, complete, created) VALUES (?, 0, 0)", (diff_id,))
        half = store.layers.root / str(cur.lastrowid)
    half.mkdir()
    (store.layers.root / "999").mkdir()

    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    live = ctx.Process(target=_hold_writer, args=(str(work), ready, done))
    live.start()
    try:
        assert ready.wait(20)
        reopened = open_store(work)  # runs recover()
        left = [p.name for p in reopened.content.ingest_dir.iterdir()]
        assert len(left) == 1 and not left[0].startswith("dead")  # the live writer's temp
        assert sorted(p.name for p in reopened.layers.root.iterdir()) == []
        assert reopened.layers.get(diff_id) is None
        with reopened._db() as db:
            assert db.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 0
    finally:
        done.set()
        live.join(20)


def _take_lock(work_dir: str, key: str, go: multiprocessing.synchronize.Event, out: multiprocessing.queues.Queue) -> None:  # type: ignore[name-defined]
    s = open_store(work_dir)
    go.wait(20)
    t0 = time.monotonic()
    with s.lock(key):
        out.put(time.monotonic() - t0)


def test_lock_blocks_a_second_process(store: Store) -> None:
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    # Started before we take the lock: a child forked while a flock is held would inherit it.
    proc = ctx.Process(target=_take_lock, args=(str(store.work_dir), "layer-sha256:abc", go, out))
    proc.start()
    try:
        with store.lock("layer-sha256:abc"):
            go.set()
            time.sleep(0.5)
            assert out.empty()  # still waiting for us
        waited = out.get(timeout=20)
        assert waited >= 0.4
    finally:
        proc.join(20)


def test_same_layer_unpacked_once_by_concurrent_threads(store: Store) -> None:
    calls = []
    diff_id = sha(b"shared")

    def fill(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)
        (tmp / "content").write_bytes(b"1")

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(store.layers.ensure(diff_id, fill)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 4
    assert (results[0] / "content").read_bytes() == b"1"
    assert len(results[0].name) <= 3  # short names keep overlay lowerdir lists small


def test_failed_fill_keeps_nothing(store: Store) -> None:
    def fill(tmp: Path) -> None:
        (tmp / "half").write_bytes(b"x")
        raise DigestError("boom")

    with pytest.raises(DigestError):
        store.layers.ensure(sha(b"bad"), fill)
    assert list(store.layers.root.iterdir()) == []
    assert store.layers.get(sha(b"bad")) is None


def test_check_space_names_work_dir_and_numbers(store: Store) -> None:
    free = os.statvfs(store.work_dir).f_bavail * os.statvfs(store.work_dir).f_frsize
    store.check_space(1)
    with pytest.raises(NoSpaceError) as caught:
        store.check_space(free * 2 + 10)
    text = str(caught.value)
    assert str(store.work_dir) in text and str(free * 2 + 10) in text


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_check_space_on_a_tiny_tmpfs(shm_path: Path) -> None:
    mnt = shm_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        store = open_store(mnt / "work")
        store.check_space(100 * 1024)
        with pytest.raises(NoSpaceError) as caught:
            store.check_space(5 * 1024 * 1024)
        assert str(mnt / "work") in str(caught.value)
        assert "5242880" in str(caught.value)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_record_list_remove_and_prune(store: Store) -> None:
    a = ImageSpec(layers=[LayerSpec([File("a", b"a")]), LayerSpec([File("shared", b"s")])])
    b = ImageSpec(layers=[LayerSpec([File("shared", b"s")])], config={"Cmd": ["b"]})
    rec_a = add_image(store, a, "reg/a:1")
    rec_b = add_image(store, b, "reg/b:1")
    assert [i.reference for i in store.images()] == ["reg/a:1", "reg/b:1"]
    assert store.image("reg/a:1") == rec_a
    assert store.image_by_config(rec_b.config_digest) == rec_b
    assert store.manifest_bytes("reg/a:1") == a.build().manifest
    for layer in rec_a.layers:
        store.layers.ensure(layer.diff_id, lambda tmp: (tmp / "x").write_bytes(b"1"))
    only_a = rec_a.layers[0]
    assert store.remove_image("reg/a:1")
    result = store.prune()
    assert not store.content.has(only_a.digest) and not store.content.has(rec_a.config_digest)
    assert store.layers.get(only_a.diff_id) is None
    # still referenced by b: kept
    assert store.content.has(rec_b.layers[0].digest)
    assert store.layers.get(rec_b.layers[0].diff_id) is not None
    assert result.blobs_removed == 3 and result.layers_removed == 1  # layer, config, manifest


def test_record_image_needs_its_config(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.record_image("r", sha(b"m"), sha(b"missing"), b"m",
                           [Layer(Descriptor("application/vnd.oci.image.layer.v1.tar", sha(b"l"), 1), sha(b"d"))])
