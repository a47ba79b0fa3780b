"""RegistryClient against the HOSTILE registry, in process, with small limits (issue 9).

The subprocess runs (tests/test_hostile_registry.py) prove the defaults; these prove each
mechanism quickly: a slow drip meets the blob deadline, a 1xx flood the response-header
timeout, a redirect target is blamed for its own failure, and documents are read whole.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from guestpull import oci
from guestpull.distribution import RetryPolicy
from guestpull.errors import (
    AuthError,
    ConfigError,
    GuestpullError,
    NetworkError,
    NotFoundError,
    PullTimeoutError,
    TLSError,
    UnsupportedError,
)
from guestpull_testkit import TEST_PASSWORD, TEST_USER
from guestpull_testkit.hostile import SCENARIOS, HostileRegistry, sha256
from guestpull_testkit.images import File, ImageSpec, LayerSpec

from .helpers import FAST, Creds, Sinks, blob_of, client, transport


def _image():
    return ImageSpec([LayerSpec([File("a.txt", b"y" * 5000)])]).build()


async def _fetch_all(registry: HostileRegistry, settings=FAST, credentials=None) -> None:
    async with transport(settings=settings) as t:
        c = client(t, registry.host, credentials=credentials)
        got = await c.get_manifest("app", "v1")
        for layer in registry.image.layers:
            await c.fetch_blob("app", blob_of(layer), Sinks(layer.digest))
    return got


async def test_slow_drip_meets_the_blob_deadline() -> None:
    settings = replace(FAST, read_timeout=10, blob_grace=1.0, min_rate=1e9)
    async with HostileRegistry(_image(), SCENARIOS["slow-drip"]) as registry:
        start = time.monotonic()
        with pytest.raises(PullTimeoutError, match="blob sha256:.*within 1 s"):
            await _fetch_all(registry, settings)
    assert time.monotonic() - start < 5


def test_blob_deadline_grows_with_size() -> None:
    assert FAST.blob_deadline(0) == FAST.blob_grace
    assert FAST.blob_deadline(int(FAST.min_rate) * 100) == pytest.approx(FAST.blob_grace + 100)


async def test_continue_flood_meets_the_response_timeout() -> None:
    settings = replace(FAST, response_timeout=0.5, document_timeout=3,
                       retry=RetryPolicy(attempts=2, first_delay=0.01))
    async with HostileRegistry(_image(), SCENARIOS["continue-flood"]) as registry:
        start = time.monotonic()
        with pytest.raises((NetworkError, PullTimeoutError), match="timed out|within"):
            await _fetch_all(registry, settings)
    assert time.monotonic() - start < 5


async def test_document_deadline_bounds_retries() -> None:
    settings = replace(FAST, response_timeout=5, document_timeout=0.5)
    async with HostileRegistry(_image(), SCENARIOS["continue-flood"]) as registry:
        with pytest.raises(PullTimeoutError, match="manifest .* within 0.5 s"):
            await _fetch_all(registry, settings)


async def test_redirect_to_a_port_without_tls_blames_the_target() -> None:
    async with HostileRegistry(_image(), SCENARIOS["redirect-to-plain-port-as-tls"]) as registry:
        with pytest.raises(TLSError) as caught:
            await _fetch_all(registry)
    message = str(caught.value)
    assert f"127.0.0.1:{registry.plain_port}" in message.split("(after a redirect")[0]
    assert f"after a redirect from http://{registry.host}/" in message


@pytest.mark.parametrize("name", ["manifest-in-two-writes", "index-3mb-in-pieces"])
async def test_documents_are_read_whole(name: str) -> None:
    async with HostileRegistry(_image(), SCENARIOS[name]) as registry:
        async with transport() as t:
            got = await client(t, registry.host).get_manifest("app", "v1")
    assert got.document is not None
    assert len(got.data) > (2 << 20) if name.startswith("index") else got.data == registry.image.manifest


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("header-over-8k", NetworkError, "malformed HTTP response"),
        ("too-many-headers", NetworkError, "malformed HTTP response"),
        ("bad-status-line", NetworkError, "malformed HTTP response|connection"),
        ("bad-chunk-size", NetworkError, "broke|malformed"),
        ("lying-content-length", NetworkError, "5000 bytes"),
        ("deep-nesting", ConfigError, "nested 5000 levels"),
        ("duplicate-keys", ConfigError, "duplicate key 'layers'"),
        ("manifest-and-index", UnsupportedError, "both 'manifests'"),
        ("content-type-mismatch", UnsupportedError, "Content-Type says"),
        ("utf16-manifest", ConfigError, "UTF-8"),
        ("absurd-layer-size", UnsupportedError, "larger than any blob"),
        ("huge-config", UnsupportedError, "configs are limited"),
        ("redirect-to-file", NetworkError, "only http"),
        ("redirect-loop", NetworkError, "too many redirects"),
        ("token-with-crlf", AuthError, "Bearer token cannot hold"),
        ("realm-with-controls", AuthError, "unusable realm"),
        ("realm-on-file-url", AuthError, "unusable realm"),
    ],
)
async def test_each_attack_is_a_typed_error(name: str, error: type[GuestpullError], text: str) -> None:
    async with HostileRegistry(_image(), SCENARIOS[name]) as registry:
        with pytest.raises(error, match=text) as caught:
            got = await _fetch_all(registry, credentials=Creds("u", "p"))
            oci.ImageManifest.parse(got.data)  # e.g. an absurd layer size shows when parsed
    assert len(str(caught.value)) < 1200  # echoed strings are clipped


async def test_redirect_to_other_port_keeps_credentials_home() -> None:
    async with HostileRegistry(_image(), SCENARIOS["redirect-to-other-port"]) as registry:
        await _fetch_all(registry, credentials=Creds(TEST_USER, TEST_PASSWORD))
    assert any(r.port == registry.other_port for r in registry.requests)
    assert registry.credentials_sent_elsewhere() == []


async def test_unusable_foreign_urls_are_skipped_not_raised() -> None:
    """Descriptor ``urls`` come from the manifest: the URL parser's ValueError must not escape."""
    image = _image()
    async with HostileRegistry(image, SCENARIOS["honest"]) as registry:
        blob = b"not on this registry: the foreign URLs are tried next"
        digest = sha256(blob)
        urls = ["http://[::1", "http://a:99999/x", "file:///etc/passwd", f"{registry.url}/v2/app/blobs/x"]
        async with transport() as t:
            with pytest.raises(NotFoundError):
                await client(t, registry.host).fetch_blob("app", oci.Descriptor("", digest, len(blob), tuple(urls)), Sinks())
    assert [r.path for r in registry.requests if r.path.endswith("/blobs/x")]  # the usable one was tried
