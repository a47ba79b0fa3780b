"""The long-lived :class:`Puller`: one session, token cache and store for many pulls.

Served by the FAKE registry, which counts requests: what these tests check is what the
puller shares (downloads, loaded settings) and what it leaves behind when a pull is cancelled.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from support.config import cdh_toml
from guestpull.config import CdhConfig, parse_cdh_config
from guestpull.errors import AllCandidatesFailed, NotFoundError
from guestpull.pull import Puller, PullEvent
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec


def image(tag: str, layers: int = 3, size: int = 300_000):
    return ImageSpec(
        [LayerSpec([File(f"{tag}/{i}.bin", bytes([i]) * (size + i))]) for i in range(layers)]
    ).build()


def cdh_for(host: str, **image: str) -> CdhConfig:
    return parse_cdh_config(cdh_toml(insecure=[host], image=image), "cdh.toml")


def blob_gets(fake: FakeRegistry) -> Counter[str]:
    return Counter(r.path.rsplit("/", 1)[-1] for r in fake.requests
                   if r.method == "GET" and "/blobs/" in r.path)


async def test_concurrent_pulls_of_one_image_download_each_blob_once(shm_path: Path) -> None:
    built = image("same")
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        async with Puller(cdh_for(fake.host), work_dir=shm_path / "work") as puller:
            results = await asyncio.gather(*(
                puller.pull(f"{fake.host}/team/app:v1", bundle=shm_path / f"b{i}", rootfs_mode="copy")
                for i in range(6)
            ))
        assert {r.manifest_digest for r in results} == {built.digest}
        gets = blob_gets(fake)
        assert set(gets) == {layer.digest for layer in built.layers} | {built.config_digest}
        assert max(gets.values()) == 1, gets
        for i in range(6):
            assert (shm_path / f"b{i}" / "rootfs" / "same" / "2.bin").stat().st_size == 300_002


async def test_different_images_pull_in_parallel_within_the_bound(shm_path: Path) -> None:
    images = {f"app{i}": image(f"app{i}", layers=1, size=50_000) for i in range(4)}
    active = peak = 0

    def events(event: PullEvent) -> None:
        nonlocal active, peak
        if event.kind == "candidate":
            active += 1
            peak = max(peak, active)
        elif event.kind in ("done", "attempt-failed"):
            active -= 1

    async with FakeRegistry() as fake:
        for name, built in images.items():
            fake.add_image(f"team/{name}", "v1", built)
        async with Puller(cdh_for(fake.host), work_dir=shm_path / "w", max_parallel_pulls=2) as puller:
            results = await asyncio.gather(*(
                puller.pull(f"{fake.host}/team/{name}:v1", events=events) for name in images))
    assert [r.manifest_digest for r in results] == [b.digest for b in images.values()]
    assert peak == 2


async def test_an_existing_empty_bundle_dir_is_used(shm_path: Path) -> None:
    """kata-agent creates the bundle directory before it calls PullImage."""
    built = image("empty", layers=1)
    bundle = shm_path / "bundle"
    bundle.mkdir()
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        async with Puller(cdh_for(fake.host), work_dir=shm_path / "w") as puller:
            result = await puller.pull(f"{fake.host}/team/app:v1", bundle=bundle, rootfs_mode="copy")
    assert result.bundle is not None
    assert (bundle / "config.json").is_file()
    assert (bundle / "rootfs" / "empty" / "0.bin").is_file()


async def test_cancelled_pull_leaves_the_bundle_dir_empty(shm_path: Path) -> None:
    built = image("cancel", layers=4)
    bundle = shm_path / "bundle"
    bundle.mkdir()
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        async with Puller(cdh_for(fake.host), work_dir=shm_path / "w") as puller:
            seen: list[str] = []

            def events(event: PullEvent) -> None:
                # Cancelled from inside the pull, at its next await: after the bundle was
                # started and a layer stored, before it can finish.
                seen.append(event.kind)
                if event.kind == "layer-done":
                    task.cancel()

            task = asyncio.ensure_future(puller.pull(
                f"{fake.host}/team/app:v1", bundle=bundle, rootfs_mode="copy", events=events))
            with pytest.raises(asyncio.CancelledError):
                await task
            assert "bundle-start" in seen and "done" not in seen
            assert bundle.is_dir() and list(bundle.iterdir()) == []
            # The puller keeps working after a cancelled pull.
            again = await puller.pull(f"{fake.host}/team/app:v1", bundle=bundle, rootfs_mode="copy")
    assert again.manifest_digest == built.digest


def _puller_needing(auth: Path, fake: FakeRegistry, built, shm_path: Path) -> Puller:
    """A puller whose settings name ``auth`` (missing until the test writes it), for ``built``
    served by ``fake`` as team/app:v1."""
    fake.add_image("team/app", "v1", built)
    return Puller(cdh_for(fake.host, authenticated_registry_credentials_uri=str(auth)),
                  work_dir=shm_path / "w")


async def test_settings_that_failed_to_load_are_retried_on_the_next_pull(shm_path: Path) -> None:
    """As the CDH builds its image client on the first PullImage and again if that failed."""
    auth = shm_path / "auth.json"
    built = image("retry", layers=1)
    async with FakeRegistry() as fake:
        async with _puller_needing(auth, fake, built, shm_path) as puller:
            with pytest.raises(NotFoundError, match="auth.json"):
                await puller.pull(f"{fake.host}/team/app:v1")
            auth.write_text('{"auths": {}}')
            result = await puller.pull(f"{fake.host}/team/app:v1")
    assert result.manifest_digest == built.digest


async def test_a_missing_image_fails_without_stopping_the_puller(shm_path: Path) -> None:
    built = image("present", layers=1)
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", built)
        async with Puller(cdh_for(fake.host), work_dir=shm_path / "w") as puller:
            with pytest.raises(AllCandidatesFailed) as failed:
                await puller.pull(f"{fake.host}/team/nope:v1")
            assert failed.value.category == "not-found"
            assert (await puller.pull(f"{fake.host}/team/app:v1")).manifest_digest == built.digest


async def test_a_pull_cancelled_while_waiting_for_a_file_lock_does_not_keep_it(shm_path: Path) -> None:
    """The thread that waited for the lock gets it after the cancel; it must let it go."""
    import fcntl
    import os

    from guestpull.image.store import open_store
    from guestpull.pull import store_lock

    store = open_store(shm_path / "w")
    with store.lock("blob-x"):  # another process holds it
        waiting = asyncio.ensure_future(store_lock(store, "blob-x").__aenter__())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await asyncio.sleep(0.3)  # the waiting thread takes the lock now, then must release it
    fd = os.open(store.locks_dir / "blob-x", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if it was kept
    finally:
        os.close(fd)


async def test_warm_up_loads_the_settings_and_builds_the_tls_context_once(shm_path: Path) -> None:
    async with Puller(cdh_for("127.0.0.1:9"), work_dir=shm_path / "w") as puller:
        assert puller._loaded is None
        await puller.warm_up()
        loaded = puller._loaded
        assert loaded is not None and loaded.transport.trust._default is not None
        await puller.warm_up()
        assert puller._loaded is loaded  # once: a second warm-up or a pull reuses it


async def test_warm_up_that_fails_only_logs_and_the_pull_retries(shm_path: Path, caplog) -> None:
    auth = shm_path / "auth.json"
    built = image("warm", layers=1)
    async with FakeRegistry() as fake:
        async with _puller_needing(auth, fake, built, shm_path) as puller:
            await puller.warm_up()
            assert puller._loaded is None and "auth.json" in caplog.text
            auth.write_text('{"auths": {}}')
            assert (await puller.pull(f"{fake.host}/team/app:v1")).manifest_digest == built.digest
