"""Layers unpack while their blobs download (both rootfs modes), and stay fail closed (issue 15)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from guestpull import pull
from guestpull.errors import AllCandidatesFailed, DigestError
from guestpull.image.store import BlobWriter, Store, open_store
from guestpull.image import bundle as bundle_module
from guestpull.image.bundle import BundleBuilder, umount_bundle
from guestpull.pull import _Arrival, _apply_in_order, _ensure_from_arriving, _from_arriving, pull_image
from guestpull_testkit.fakeregistry import Fault, FakeRegistry
from guestpull_testkit.images import BuiltLayer, Dir, File, ImageSpec, LayerSpec, Whiteout

from support.pulls import fake_config, pull_tree
from image.conftest import layer_of
from image.treewalk import diff_trees


def _image() -> ImageSpec:
    return ImageSpec([
        LayerSpec([Dir("a"), File("a/random", os.urandom(300_000)), File("a/gone", b"g")]),
        LayerSpec([File("b/text", b"text\n" * 100_000)], compression="zstd"),
        LayerSpec([File("a/random", b"replaced")]),
    ])


def _record_streaming(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layer digests that were unpacked (overlay) or applied (copy) from an arriving blob."""
    streamed: list[str] = []

    def recording(real: Any) -> Any:
        def unpack_blob(store: Store, layer: Any, dest: Path, **kwargs: Any) -> Any:
            if kwargs.get("arriving_from") is not None:
                streamed.append(layer.digest)
            return real(store, layer, dest, **kwargs)
        return unpack_blob

    monkeypatch.setattr(pull, "unpack_blob", recording(pull.unpack_blob))
    monkeypatch.setattr(bundle_module, "unpack_blob", recording(bundle_module.unpack_blob))
    return streamed


def _slow_blobs(fake: FakeRegistry, built: Any) -> None:
    for layer in built.layers:
        fake.inject(layer.digest, Fault("slow", seconds=1.0))


@pytest.mark.parametrize("mode", ["overlay", "copy"])
async def test_layers_unpack_while_their_blobs_arrive(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    streamed = _record_streaming(monkeypatch)
    # One unpack slot per layer, so that every layer's turn comes while its blob arrives.
    monkeypatch.setattr(pull, "UNPACK_CONCURRENCY", 3)
    built = _image().build()
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        config = fake_config(fake)
        trees = {}
        for eager, name in ((0, "arriving"), (1 << 62, "stored")):
            monkeypatch.setattr(pull, "UNPACK_WORKERS_EAGER_BYTES", eager)
            if name == "arriving":
                _slow_blobs(fake, built)
            trees[name] = await pull_tree(f"{fake.host}/team/app:v1", config, shm_path / name,
                                          shm_path / f"bundle-{name}", mode)
    assert sorted(streamed) == sorted(layer.digest for layer in built.layers)
    assert diff_trees(trees["arriving"], trees["stored"]) == []
    assert "a/gone" in trees["arriving"] and "b/text" in trees["arriving"]


async def test_content_that_unpacked_but_failed_its_blob_digest_is_not_kept(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same tar, other compressed bytes (the gzip header's mtime): the diff_id matches while
    the layer unpacks, the blob digest fails at commit, and the layer must not be stored."""
    streamed = _record_streaming(monkeypatch)
    monkeypatch.setattr(pull, "UNPACK_WORKERS_EAGER_BYTES", 0)
    built = _image().build()
    first = built.layers[0]
    assert first.blob[:2] == b"\x1f\x8b"
    fake_mtime = bytes(b ^ 0x5A for b in first.blob[4:8])
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        fake.blobs[first.digest] = first.blob[:4] + fake_mtime + first.blob[8:]
        _slow_blobs(fake, built)
        with pytest.raises(AllCandidatesFailed) as failed:
            await pull_image(f"{fake.host}/team/app:v1", fake_config(fake), work_dir=shm_path / "w",
                             bundle=shm_path / "b", rootfs_mode="overlay")
    assert isinstance(failed.value.attempts[0].error, DigestError)
    assert first.digest in streamed
    store = open_store(shm_path / "w")
    assert first.diff_id not in store.layers.diff_ids()
    assert not store.content.has(first.digest)
    assert [p.name for p in store.layers.root.iterdir() if p.name.startswith("tmp.")] == []
    assert not (shm_path / "b" / "rootfs").exists() or not any((shm_path / "b" / "rootfs").iterdir())


def _in_process(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


async def _start(store: Store, layer: BuiltLayer, blob: bytes, diff_id: str | None = None
                 ) -> tuple[asyncio.Task[bool], _Arrival, asyncio.Event, BlobWriter]:
    """Start unpacking ``layer`` (overlay) from an ingest file holding half of ``blob`` so far."""
    arrival, stored = _Arrival(len(blob)), asyncio.Event()
    writer = store.content.writer(layer.digest, len(blob))
    arrival.opened(writer.ingest_path)
    writer.write(blob[:len(blob) // 2])
    target = layer_of(layer, diff_id)
    task = asyncio.ensure_future(_from_arriving(arrival, stored, target, _ensure_from_arriving,
                                                store, _in_process, target, arrival))
    await asyncio.sleep(0.1)
    return task, arrival, stored, writer


async def _finish(store: Store, layer: BuiltLayer, arrival: _Arrival, stored: asyncio.Event,
                  writer: BlobWriter, *, restart: bool) -> None:
    """Finish the download: after abandoning the first attempt for a second one (``restart``),
    or in the first attempt's file."""
    half = len(layer.blob) // 2
    if restart:
        writer.abort()
        await asyncio.sleep(0.1)
        writer = store.content.writer(layer.digest, len(layer.blob))
        arrival.opened(writer.ingest_path)
        writer.write(layer.blob[:half])
    writer.write(layer.blob[half:])
    writer.commit()
    arrival.ended(None)
    stored.set()


async def _stream_one(store: Store, layer: BuiltLayer, diff_id: str | None, *,
                      restart: bool) -> asyncio.Task[bool]:
    task, arrival, stored, writer = await _start(store, layer, layer.blob, diff_id)
    await _finish(store, layer, arrival, stored, writer, restart=restart)
    return task


async def test_content_read_whole_waits_for_its_blob_digest(shm_path: Path) -> None:
    """Same tar, other compressed bytes: the unpack reads the whole file and its diff_id
    matches, but the blob digest fails at commit: the layer must never be stored."""
    store = open_store(shm_path / "w")
    layer = LayerSpec([File("f", os.urandom(400_000))]).build()
    mangled = layer.blob[:4] + bytes(b ^ 0x5A for b in layer.blob[4:8]) + layer.blob[8:]
    task, arrival, _, writer = await _start(store, layer, mangled)
    writer.write(mangled[len(mangled) // 2:])
    await asyncio.sleep(0.3)  # the unpack has read everything and waits for the verdict
    with pytest.raises(DigestError) as failed:
        writer.commit()
    arrival.ended(failed.value)
    await asyncio.sleep(0.1)
    assert not store.layers.has(layer.diff_id)
    task.cancel()  # as the failed download's task fails the pull
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert store.layers.diff_ids() == []


async def test_an_unpack_of_an_abandoned_attempt_falls_back_to_the_stored_blob(shm_path: Path) -> None:
    store = open_store(shm_path / "w")
    layer = LayerSpec([File("f", os.urandom(400_000))]).build()
    task = await _stream_one(store, layer, None, restart=True)
    assert await asyncio.wait_for(task, 10) is False  # the caller unpacks the stored blob
    assert not store.layers.has(layer.diff_id)
    assert store.content.has(layer.digest)


async def test_an_unpack_of_the_committed_file_that_fails_is_the_layers_failure(shm_path: Path) -> None:
    store = open_store(shm_path / "w")
    layer = LayerSpec([File("f", os.urandom(400_000))]).build()
    wrong = "sha256:" + "0" * 64
    task = await _stream_one(store, layer, wrong, restart=False)
    with pytest.raises(DigestError, match="diff_id"):
        await asyncio.wait_for(task, 10)
    assert store.layers.diff_ids() == []


async def test_a_committed_unpack_is_stored(shm_path: Path) -> None:
    store = open_store(shm_path / "w")
    layer = LayerSpec([File("f", os.urandom(400_000))]).build()
    task = await _stream_one(store, layer, None, restart=False)
    assert await asyncio.wait_for(task, 10) is True
    path = store.layers.get(layer.diff_id)
    assert path is not None and (path / "f").stat().st_size == 400_000


@pytest.mark.parametrize(("mode", "one_at_a_time"), [("copy", True), ("overlay", False)])
async def test_a_copy_rootfs_downloads_its_layers_one_at_a_time_in_order(
    shm_path: Path, mode: str, one_at_a_time: bool
) -> None:
    """Copy mode applies layer n+1 after layer n: its downloads go in that order, one at a
    time; overlay mode keeps the configured concurrency (3)."""
    built = _image().build()
    events: list[tuple[str, str]] = []
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        for layer in built.layers:
            fake.inject(layer.digest, Fault("slow", seconds=0.2))
        await pull_image(f"{fake.host}/team/app:v1", fake_config(fake), work_dir=shm_path / "w",
                         bundle=shm_path / "b", rootfs_mode=mode,
                         events=lambda e: events.append((e.kind, e.detail.get("digest", ""))))
        umount_bundle(shm_path / "b")
    downloads = [(kind, digest) for kind, digest in events if kind in ("layer-start", "layer-done")]
    digests = [layer.digest for layer in built.layers]
    in_order = [(kind, d) for d in digests for kind in ("layer-start", "layer-done")]
    assert (downloads == in_order) is one_at_a_time
    assert [d for kind, d in downloads if kind == "layer-start"] == digests


@pytest.mark.parametrize("restart", [False, True])
async def test_a_copy_layer_applied_from_an_abandoned_attempt_restarts_the_rootfs(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    """Layer 1 is applied while its blob arrives; if that download restarts, the rootfs is
    emptied and both layers applied again from the stored blobs: the same tree either way."""
    spec = ImageSpec([
        LayerSpec([Dir("d"), File("d/low", b"low"), File("d/gone", b"g")]),
        LayerSpec([Whiteout("d/gone"), File("d/big", os.urandom(400_000)), File("d/low", b"high")]),
    ])
    built = spec.build()
    store = open_store(shm_path / "w")
    low, high = built.layers
    store.content.put(low.digest, low.blob)
    layers = [layer_of(low), layer_of(high)]
    builder = BundleBuilder(store, built.config, "config", layers, shm_path / "b", mode="copy")
    restarts: list[int] = []
    real_restart = builder.restart_copy
    monkeypatch.setattr(builder, "restart_copy", lambda: (restarts.append(1), real_restart()))

    stored = {low.digest: asyncio.Event(), high.digest: asyncio.Event()}
    stored[low.digest].set()
    arrival = _Arrival(len(high.blob))
    writer = store.content.writer(high.digest, len(high.blob))
    arrival.opened(writer.ingest_path)
    writer.write(high.blob[:len(high.blob) // 2])
    task = asyncio.ensure_future(_apply_in_order(builder, stored, {high.digest: arrival}))
    await asyncio.sleep(0.2)
    await _finish(store, high, arrival, stored[high.digest], writer, restart=restart)
    await asyncio.wait_for(task, 10)

    assert restarts == ([1] if restart else [])
    rootfs = shm_path / "b" / "rootfs"
    assert (rootfs / "d" / "low").read_bytes() == b"high"
    assert not (rootfs / "d" / "gone").exists()
    assert (rootfs / "d" / "big").stat().st_size == 400_000
