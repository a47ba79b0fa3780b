"""images.push: skopeo copies our layouts into the real registries without changing a digest."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from guestpull_testkit import HarnessError
from guestpull_testkit.images import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    File,
    ImageSpec,
    LayerSpec,
    LayoutDigests,
    Symlink,
    Whiteout,
    push,
    skopeo_inspect_raw,
    write_layout,
)
from guestpull_testkit.registry import RegistryProcess

pytestmark = pytest.mark.registry

ACCEPT = ", ".join([MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX])


def _two_layer_image(arch: str = "amd64", variant: str | None = None) -> ImageSpec:
    return ImageSpec(
        layers=[
            LayerSpec([File("etc/hello", b"hello " + arch.encode()), Symlink("bin", "usr/bin")], "gzip"),
            LayerSpec([File("etc/zstd", b"z" * 4096), Whiteout("etc/hello")], "zstd"),
        ],
        config={"Entrypoint": ["/bin/true"]},
        architecture=arch,
        variant=variant,
    )


def _request(registry: RegistryProcess, path: str, *, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    if registry.credentials and registry.htpasswd:
        user, password = registry.credentials
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=registry.ssl_context() or ssl.create_default_context()),
    )
    request = urllib.request.Request(f"{registry.url}{path}", headers=headers, method=method)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _assert_registry_holds(registry: RegistryProcess, repo: str, tag: str, layout: LayoutDigests) -> None:
    status, headers, body = _request(registry, f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    assert status == 200
    assert headers["docker-content-digest"] == layout.digest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layout.digest
    assert headers["content-type"] == layout.media_type
    for manifest in layout.manifests:
        status, _, body = _request(registry, f"/v2/{repo}/manifests/{manifest.digest}",
                                   headers={"Accept": ACCEPT})
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == manifest.digest
        for blob in [manifest.config_digest, *manifest.layer_digests]:
            status, _, body = _request(registry, f"/v2/{repo}/blobs/{blob}")
            assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob


def test_push_two_layer_gzip_zstd_keeps_digests(
    https_registry: RegistryProcess, shm_path: Path, repo_name: str
) -> None:
    layout = write_layout(shm_path, _two_layer_image(), tag="v1")
    push(shm_path, "v1", f"{https_registry.host}/{repo_name}:v1", tls_ca=https_registry.ca_path)
    _assert_registry_holds(https_registry, repo_name, "v1", layout)
    raw = skopeo_inspect_raw(f"{https_registry.host}/{repo_name}:v1", tls_ca=https_registry.ca_path)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layout.manifest_digest
    media_types = [layer["mediaType"] for layer in json.loads(raw)["layers"]]
    assert media_types[1].endswith("+zstd")


def test_push_two_platform_index_keeps_digests(
    https_registry: RegistryProcess, shm_path: Path, repo_name: str
) -> None:
    layout = write_layout(
        shm_path, [_two_layer_image("amd64"), _two_layer_image("arm64", "v8")], tag="multi", index=True
    )
    push(shm_path, "multi", f"{https_registry.host}/{repo_name}:multi",
         tls_ca=https_registry.ca_path, all_platforms=True)
    assert layout.is_index and len(layout.manifests) == 2
    _assert_registry_holds(https_registry, repo_name, "multi", layout)


def test_push_to_http_registry(http_registry: RegistryProcess, shm_path: Path, repo_name: str) -> None:
    layout = write_layout(shm_path, _two_layer_image(), tag="v1")
    push(shm_path, "v1", f"{http_registry.host}/{repo_name}:v1", tls_verify=False)
    _assert_registry_holds(http_registry, repo_name, "v1", layout)


def test_push_with_basic_auth(basic_auth_registry: RegistryProcess, shm_path: Path, repo_name: str) -> None:
    layout = write_layout(shm_path, _two_layer_image(), tag="v1")
    ref = f"{basic_auth_registry.host}/{repo_name}:v1"
    with pytest.raises(HarnessError) as info:
        push(shm_path, "v1", ref, tls_ca=basic_auth_registry.ca_path)
    assert "unauthorized" in str(info.value).lower() or "authentication required" in str(info.value)
    push(shm_path, "v1", ref, tls_ca=basic_auth_registry.ca_path, creds=basic_auth_registry.credentials)
    _assert_registry_holds(basic_auth_registry, repo_name, "v1", layout)


def test_push_with_token_auth(token_registry: RegistryProcess, shm_path: Path, repo_name: str) -> None:
    layout = write_layout(shm_path, _two_layer_image(), tag="v1")
    token_server = token_registry.token
    assert token_server is not None
    before = len(token_server.requests)
    push(shm_path, "v1", f"{token_registry.host}/{repo_name}:v1",
         tls_ca=token_registry.ca_path, creds=token_registry.credentials)
    new = token_server.requests[before:]
    assert new and all(r.authorized for r in new)
    assert any(f"repository:{repo_name}:" in s and "push" in s for r in new for s in r.scopes)
    raw = skopeo_inspect_raw(f"{token_registry.host}/{repo_name}:v1",
                             tls_ca=token_registry.ca_path, creds=token_registry.credentials)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layout.manifest_digest


def test_push_without_the_ca_fails_with_skopeo_message(
    https_registry: RegistryProcess, shm_path: Path, repo_name: str
) -> None:
    write_layout(shm_path, _two_layer_image(), tag="v1")
    with pytest.raises(HarnessError) as info:
        push(shm_path, "v1", f"{https_registry.host}/{repo_name}:v1")
    assert "x509" in str(info.value) or "certificate" in str(info.value)
