"""``guestpull pull`` against the FAKE registry: faults a real registry will not produce.

Corrupted blob → digest error and nothing stored; 5xx/429 retried; redirect to another host
without Authorization; truncated body and connection reset recovered.  The library function
is exercised for events and concurrency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.cli import write_auth_json
from support.config import Rule, write_cdh
from guestpull.cli import main
from guestpull.config import ImageConfig, parse_cdh_config
from guestpull.errors import EXIT_CODES, AllCandidatesFailed, Category
from guestpull.image.store import open_store
from guestpull.pull import PullEvent, pull_image
from guestpull_testkit import TEST_PASSWORD
from guestpull_testkit.fakeregistry import Fault, FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec, build_index, canonical_json


def build_image(tag: str = "a"):
    return ImageSpec(
        [LayerSpec([File(f"{tag}{i}.bin", bytes([i]) * (200_000 + i))]) for i in range(3)]
    ).build()


def run_pull(cdh: Path, work: Path, image: str, *extra: str):
    return CliRunner().invoke(
        main, ["pull", image, "--config", str(cdh), "--work-dir", str(work), "--json", *extra]
    )


def stored_blobs(work: Path) -> set[str]:
    store = open_store(work)
    return set(store.content.digests())


@pytest.fixture
def fake_with_image():
    fake = FakeRegistry()
    image = build_image()
    fake.add_image("team/app", "v1", image)
    with fake.in_thread():
        yield fake, image


def test_pull_stores_every_verified_blob(fake_with_image, shm_path: Path) -> None:
    fake, image = fake_with_image
    cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host])
    result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)["result"]
    assert out["manifest_digest"] == image.digest
    assert out["config_digest"] == image.config_digest
    assert [layer["digest"] for layer in out["layers"]] == [layer.digest for layer in image.layers]
    assert [layer["diff_id"] for layer in out["layers"]] == [layer.diff_id for layer in image.layers]
    assert out["scheme"] == "http"
    store = open_store(shm_path / "work")
    for digest, data in image.blobs().items():
        assert store.content.read(digest) == data


def test_plain_digest_printed_without_json(fake_with_image, shm_path: Path) -> None:
    fake, image = fake_with_image
    cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host])
    result = CliRunner().invoke(
        main, ["pull", f"{fake.host}/team/app:v1", "--config", str(cdh), "--work-dir", str(shm_path / "w"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == image.digest


def test_corrupted_blob_is_digest_error_and_nothing_stored(fake_with_image, shm_path: Path) -> None:
    fake, image = fake_with_image
    bad = image.layers[1]
    fake.inject(bad.digest, Fault("corrupt", times=100))
    cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host])
    result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
    assert result.exit_code == EXIT_CODES[Category.DIGEST], result.output
    error = json.loads(result.output)["error"]
    assert error["category"] == "digest"
    assert bad.digest in error["attempts"][0]["error"]["message"]
    assert bad.digest not in stored_blobs(shm_path / "work")
    assert not list((shm_path / "work" / "ingest").iterdir())  # no partial data left


def test_an_index_entry_pointing_at_another_index_is_refused(shm_path: Path) -> None:
    fake = FakeRegistry()
    image = build_image()
    fake.add_image("team/app", None, image)
    inner = build_index([image])
    inner_digest = fake.add_manifest("team/app", inner, "application/vnd.oci.image.index.v1+json")
    # No mediaType on the entry: select_platform skips entries that say they are indexes.
    entry = {"digest": inner_digest, "size": len(inner), "platform": image.platform}
    outer = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [entry]})
    fake.add_manifest("team/app", outer, "application/vnd.oci.image.index.v1+json", tag="nested")
    with fake.in_thread():
        result = run_pull(write_cdh(shm_path / "cdh.toml", insecure=[fake.host]), shm_path / "work",
                          f"{fake.host}/team/app:nested")
    assert result.exit_code == EXIT_CODES[Category.UNSUPPORTED], result.output
    assert f"points at another index {inner_digest}" in result.output
    assert image.config_digest not in stored_blobs(shm_path / "work")


@pytest.mark.parametrize(
    "fault",
    [Fault("status", status=500), Fault("status", status=503), Fault("status", status=429, headers={"Retry-After": "1"})],
    ids=["500", "503", "429"],
)
def test_transient_errors_retried(fake_with_image, shm_path: Path, fault: Fault) -> None:
    fake, image = fake_with_image
    retry_after = float(fault.headers.get("Retry-After", 0))
    fake.inject("/blobs/", fault)
    cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host])
    started = time.monotonic()
    result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= retry_after  # Retry-After honoured
    assert set(image.blobs()) <= stored_blobs(shm_path / "work")


@pytest.mark.parametrize("kind", ["truncate", "reset"])
def test_broken_body_recovered(fake_with_image, shm_path: Path, kind: str) -> None:
    fake, image = fake_with_image
    fake.inject(image.layers[0].digest, Fault(kind))  # type: ignore[arg-type]
    cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host])
    result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
    assert result.exit_code == 0, result.output
    assert len(fake.requests_to(f"/blobs/{image.layers[0].digest}")) == 2
    assert set(image.blobs()) <= stored_blobs(shm_path / "work")


def test_redirect_to_other_host_carries_no_authorization(shm_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    storage = FakeRegistry()
    image = build_image()
    fake.add_image("team/app", "v1", image)
    for layer in image.layers:
        storage.add_blob(layer.blob)
    with fake.in_thread(), storage.in_thread():
        for layer in image.layers:
            fake.inject(f"/blobs/{layer.digest}", Fault("redirect", location=f"http://localhost:{storage.port}/storage/{layer.digest}"))
        cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host], auth_file=write_auth_json(shm_path / "auth.json", fake.host))
        result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
        assert result.exit_code == 0, result.output
        blob_requests = fake.requests_to("/blobs/")
        assert blob_requests and all(r.headers["Authorization"].startswith("Bearer ") for r in blob_requests[-3:])
        stored = storage.requests_to("/storage/")
        assert len(stored) == 3
        assert all("Authorization" not in r.headers for r in stored)
        assert TEST_PASSWORD not in result.output


def test_wrong_password_is_auth_error_naming_realm(shm_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_image("team/app", "v1", build_image())
    with fake.in_thread():
        auth = write_auth_json(shm_path / "auth.json", fake.host, password="not-the-pw-42")
        cdh = write_cdh(shm_path / "cdh.toml", insecure=[fake.host], auth_file=auth)
        result = run_pull(cdh, shm_path / "work", f"{fake.host}/team/app:v1")
    assert result.exit_code == EXIT_CODES[Category.AUTH], result.output
    assert f"{fake.url}/token" in result.output and "HTTP 401" in result.output
    assert "not-the-pw-42" not in result.output


async def test_library_events_and_concurrency_limit(shm_path: Path) -> None:
    image = build_image()
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", image)
        config = parse_cdh_config(write_cdh(shm_path / "cdh.toml", insecure=[fake.host]).read_text(), "cdh.toml").image_config()
        config = config.model_copy(update={"max_concurrent_layer_downloads_per_image": 1})
        events: list[PullEvent] = []
        result = await pull_image(f"{fake.host}/team/app:v1", config, work_dir=shm_path / "w", events=events.append)
        assert result.manifest_digest == image.digest
        kinds = [e.kind for e in events]
        # With one download at a time, every start is followed by its own done.
        layer_events = [k for k in kinds if k in ("layer-start", "layer-done")]
        assert layer_events == ["layer-start", "layer-done"] * 3
        sizes = {layer.digest: layer.size for layer in image.layers}
        progress = {e.detail["digest"]: e.detail["bytes"] for e in events if e.kind == "layer-progress"}
        assert all(progress[digest] == size for digest, size in sizes.items())
        assert kinds[0] == "candidate" and kinds[-1] == "done"

        again: list[PullEvent] = []
        await pull_image(f"{fake.host}/team/app:v1", config, work_dir=shm_path / "w", events=again.append)
        assert [e.kind for e in again].count("layer-cached") == 3


async def test_all_candidates_failed_lists_attempts(shm_path: Path) -> None:
    config = ImageConfig.model_validate({
        "registry_config": {"registry": [{
            "prefix": "127.0.0.1:9/x",
            "location": "127.0.0.1:9/x",
            "insecure": True,
            "mirror": [{"location": "127.0.0.1:9/mirror", "insecure": True}],
        }]}
    })
    from guestpull.distribution import RetryPolicy, TransportSettings

    fast = TransportSettings(connect_timeout=1, read_timeout=1, retry=RetryPolicy(attempts=1))
    with pytest.raises(AllCandidatesFailed) as info:
        await pull_image("127.0.0.1:9/x/app:v1", config, work_dir=shm_path / "w", transport_settings=fast)
    attempts = info.value.attempts
    assert [(a.reference, a.kind, a.scheme) for a in attempts] == [
        ("127.0.0.1:9/mirror/app:v1", "mirror", "http"),
        ("127.0.0.1:9/x/app:v1", "original", "http"),
    ]
    assert all(a.error.category == Category.NETWORK for a in attempts)


def test_blocked_image_names_the_rule(shm_path: Path) -> None:
    cdh = write_cdh(shm_path / "cdh.toml", rules=[Rule(prefix="registry.local/secret", blocked=True)])
    result = run_pull(cdh, shm_path / "work", "registry.local/secret/app:v1")
    assert result.exit_code == EXIT_CODES[Category.BLOCKED], result.output
    assert "registry.local/secret" in json.loads(result.output)["error"]["message"]
