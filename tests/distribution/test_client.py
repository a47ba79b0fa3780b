"""RegistryClient against the FAKE registry: verification, faults, retries, redirects, auth."""

from __future__ import annotations

import json

import pytest

from guestpull.distribution.client import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE
from guestpull.errors import (
    AuthError,
    DigestError,
    HTTPStatusError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
)
from guestpull.oci import Descriptor
from guestpull.testing import TEST_PASSWORD, TEST_USER
from guestpull.testing.fakeregistry import Fault, FakeRegistry
from guestpull.testing.images import File, ImageSpec, LayerSpec

from .helpers import Creds, Sinks, blob_of, client, transport

LAYER_DATA = b"x" * 300_000


def _image():
    return ImageSpec([LayerSpec([File("a.txt", LAYER_DATA)])]).build()


async def _fake(**kwargs: object) -> tuple[FakeRegistry, object]:
    fake = await FakeRegistry(**kwargs).start()  # type: ignore[arg-type]
    image = _image()
    fake.add_image("team/app", "v1", image)
    return fake, image


@pytest.fixture
async def fake_image():
    fake, image = await _fake()
    try:
        yield fake, image
    finally:
        await fake.stop()


async def test_manifest_fetched_with_accept_and_verified(fake_image) -> None:
    fake, image = fake_image
    async with transport() as t:
        got = await client(t, fake.host).get_manifest("team/app", "v1")
    assert got.data == image.manifest
    assert got.digest == image.digest
    assert not got.is_index
    assert fake.requests_to("/manifests/v1")[0].headers["Accept"] == MANIFEST_ACCEPT


async def test_manifest_by_digest_must_match(fake_image) -> None:
    fake, image = fake_image
    wrong = "sha256:" + "0" * 64
    fake.add_manifest("team/app", image.manifest, "application/vnd.oci.image.manifest.v1+json", tag=wrong)
    async with transport() as t:
        ok = await client(t, fake.host).get_manifest("team/app", image.digest, expected_digest=image.digest)
        assert ok.digest == image.digest
        with pytest.raises(DigestError, match="expected sha256:0000"):
            await client(t, fake.host).get_manifest("team/app", wrong, expected_digest=wrong)


async def test_manifest_header_digest_mismatch(fake_image) -> None:
    fake, image = fake_image
    fake.inject("/manifests/v1", Fault("corrupt"))
    async with transport() as t:
        with pytest.raises(DigestError, match="Docker-Content-Digest"):
            await client(t, fake.host).get_manifest("team/app", "v1")


async def test_schema1_refused(fake_image) -> None:
    fake, _ = fake_image
    body = json.dumps({"schemaVersion": 1, "name": "team/app", "fsLayers": []}).encode()
    fake.add_manifest("team/app", body, "application/vnd.docker.distribution.manifest.v1+prettyjws", tag="old")
    async with transport() as t:
        with pytest.raises(UnsupportedError, match="schema 1"):
            await client(t, fake.host).get_manifest("team/app", "old")


async def test_oversized_manifest_refused(fake_image) -> None:
    fake, _ = fake_image
    body = b'{"schemaVersion":2,"pad":"' + b"a" * MAX_MANIFEST_SIZE + b'"}'
    fake.add_manifest("team/app", body, "application/vnd.oci.image.manifest.v1+json", tag="big")
    async with transport() as t:
        with pytest.raises(UnsupportedError, match="4 MiB"):
            await client(t, fake.host).get_manifest("team/app", "big")


async def test_missing_manifest_is_not_found(fake_image) -> None:
    fake, _ = fake_image
    async with transport() as t:
        with pytest.raises(NotFoundError, match="nope"):
            await client(t, fake.host).get_manifest("team/app", "nope")


async def test_blob_streamed_and_verified(fake_image) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    sinks = Sinks()
    async with transport() as t:
        data = await client(t, fake.host).fetch_blob("team/app", blob_of(layer), sinks)
    assert data == layer.blob
    assert sinks.opened[0].committed and not sinks.opened[0].aborted


async def test_corrupted_blob_aborted_and_digest_error(fake_image) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    fake.inject(layer.digest, Fault("corrupt", times=10))
    sinks = Sinks(layer.digest)
    async with transport() as t:
        with pytest.raises(DigestError, match=layer.digest):
            await client(t, fake.host).fetch_blob("team/app", blob_of(layer), sinks)
    assert sinks.opened and all(s.aborted and not s.committed for s in sinks.opened)


async def test_size_mismatch_is_digest_error(fake_image) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    sinks = Sinks()
    async with transport() as t:
        with pytest.raises(DigestError, match="bytes"):
            await client(t, fake.host).fetch_blob("team/app", blob_of(layer, layer.size - 1), sinks)
    assert not any(s.committed for s in sinks.opened)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=500),
        Fault("status", status=503, times=2),
        Fault("status", status=429, headers={"Retry-After": "0"}),
    ],
    ids=["500-once", "503-twice", "429-retry-after"],
)
async def test_transient_status_retried(fake_image, fault: Fault) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    times = fault.times
    fake.inject("/blobs/", fault)
    async with transport() as t:
        data = await client(t, fake.host).fetch_blob("team/app", blob_of(layer), Sinks())
    assert data == layer.blob
    assert len(fake.requests_to(f"/blobs/{layer.digest}")) == times + 1


async def test_persistent_5xx_gives_up(fake_image) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    fake.inject("/blobs/", Fault("status", status=502, times=100))
    async with transport() as t:
        with pytest.raises(HTTPStatusError) as info:
            await client(t, fake.host).fetch_blob("team/app", blob_of(layer), Sinks())
    assert info.value.status == 502
    assert len(fake.requests_to("/blobs/")) == 3  # bounded: FAST allows 3 tries


@pytest.mark.parametrize("kind", ["truncate", "reset"])
async def test_broken_body_retried_then_succeeds(fake_image, kind: str) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    fake.inject("/blobs/", Fault(kind))  # type: ignore[arg-type]
    sinks = Sinks()
    async with transport() as t:
        data = await client(t, fake.host).fetch_blob("team/app", blob_of(layer), sinks)
    assert data == layer.blob
    assert sinks.opened[0].aborted and not sinks.opened[0].committed
    assert sinks.opened[-1].committed


@pytest.mark.parametrize("kind", ["truncate", "reset"])
async def test_broken_body_every_time_is_network_error(fake_image, kind: str) -> None:
    fake, image = fake_image
    layer = image.layers[0]
    fake.inject("/blobs/", Fault(kind, times=100))  # type: ignore[arg-type]
    sinks = Sinks()
    async with transport() as t:
        with pytest.raises(NetworkError, match="broke"):
            await client(t, fake.host).fetch_blob("team/app", blob_of(layer), sinks)
    assert all(s.aborted and not s.committed for s in sinks.opened)


async def test_redirect_to_other_host_drops_authorization() -> None:
    fake, image = await _fake(auth="basic")
    storage = await FakeRegistry().start()
    try:
        layer = image.layers[0]
        storage.add_blob(layer.blob)
        # "localhost" vs "127.0.0.1", and another port: a different origin in every way.
        fake.inject("/blobs/", Fault("redirect", location=f"http://localhost:{storage.port}/storage/{layer.digest}"))
        async with transport() as t:
            c = client(t, fake.host, credentials=Creds(TEST_USER, TEST_PASSWORD))
            data = await c.fetch_blob("team/app", blob_of(layer), Sinks())
        assert data == layer.blob
        registry_blob_requests = fake.requests_to("/blobs/")
        assert registry_blob_requests[-1].headers.get("Authorization", "").startswith("Basic ")
        stored = storage.requests_to("/storage/")
        assert len(stored) == 1
        assert "Authorization" not in stored[0].headers
    finally:
        await fake.stop()
        await storage.stop()


async def test_foreign_urls_tried_after_registry(fake_image) -> None:
    fake, _ = fake_image
    storage = await FakeRegistry().start()
    try:
        blob = b"foreign layer bytes"
        digest = storage.add_blob(blob)
        ref = Descriptor("", digest, len(blob), urls=(f"{storage.url}/storage/{digest}",))
        async with transport() as t:
            data = await client(t, fake.host).fetch_blob("team/app", ref, Sinks())
        assert data == blob
        assert fake.requests_to(f"/blobs/{digest}")  # the registry was asked first
    finally:
        await storage.stop()


async def test_basic_auth_sends_credentials_after_challenge() -> None:
    fake, image = await _fake(auth="basic")
    try:
        async with transport() as t:
            got = await client(t, fake.host, credentials=Creds(TEST_USER, TEST_PASSWORD)).get_manifest("team/app", "v1")
        assert got.digest == image.digest
        assert "Authorization" not in fake.requests_to("/v2/")[0].headers  # the ping is anonymous
    finally:
        await fake.stop()


async def test_basic_auth_wrong_password_names_realm_without_secret() -> None:
    fake, _ = await _fake(auth="basic")
    try:
        async with transport() as t:
            with pytest.raises(AuthError) as info:
                await client(t, fake.host, credentials=Creds(TEST_USER, "wrong-pw-123")).get_manifest("team/app", "v1")
        text = str(info.value) + json.dumps(info.value.to_dict())
        assert "fake-registry" in text and "401" in text
        assert "wrong-pw-123" not in text and "d3Jvbmct" not in text
    finally:
        await fake.stop()


async def test_bearer_token_flow_and_cache() -> None:
    fake, image = await _fake(auth="bearer")
    try:
        layer = image.layers[0]
        async with transport() as t:
            c = client(t, fake.host, credentials=Creds(TEST_USER, TEST_PASSWORD))
            await c.get_manifest("team/app", "v1")
            await c.fetch_blob("team/app", blob_of(layer), Sinks())
        assert fake.tokens_issued == 1  # cached across requests for the same repository
        token_request = fake.requests_to("/token")[0]
        assert token_request.headers["Authorization"].startswith("Basic ")
    finally:
        await fake.stop()


async def test_expired_token_renewed() -> None:
    fake, image = await _fake(auth="bearer", token_ttl=1)
    try:
        async with transport() as t:
            c = client(t, fake.host)
            await c.get_manifest("team/app", "v1")
            await c.get_manifest("team/app", "v1")
        # A 1 s token is inside the 5 s renewal margin: never reused.
        assert fake.tokens_issued == 2
    finally:
        await fake.stop()


async def test_failed_token_request_is_auth_error_naming_realm() -> None:
    fake, _ = await _fake(auth="bearer")
    fake.token_status = 401
    try:
        async with transport() as t:
            with pytest.raises(AuthError) as info:
                await client(t, fake.host, credentials=Creds(TEST_USER, "bad-secret-9")).get_manifest("team/app", "v1")
        message = str(info.value)
        assert f"{fake.url}/token" in message and "HTTP 401" in message
        assert "bad-secret-9" not in message
        assert not fake.requests_to("/manifests/v1")[1:]  # no anonymous carry-on after the failure
    finally:
        await fake.stop()


async def test_credentials_never_sent_to_plain_http_realm_of_https_registry() -> None:
    from guestpull.distribution.auth import Challenge

    async with transport() as t:
        c = client(t, "registry.invalid", scheme="https", credentials=Creds(TEST_USER, TEST_PASSWORD))
        challenge = Challenge("bearer", {"realm": "http://auth.invalid/token"})
        with pytest.raises(AuthError, match="plain-HTTP token realm"):
            await c._fetch_token(challenge, "repository:a:pull")
