"""End to end: a private registry's auth.json served by the KBS authenticates a real pull.

The real Debian docker-registry with htpasswd (basic_auth_registry), the test KBS over HTTPS
with its own CA (``[kbc] kbs_cert``), and the attestation agent stand-in on ttrpc.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from guestpull.errors import EXIT_CODES, Category
from guestpull_testkit import TEST_PASSWORD, TEST_USER
from guestpull_testkit.certs import CertChain
from guestpull_testkit.images import File, ImageSpec, LayerSpec, push, write_layout
from guestpull_testkit.kbs import TestKbs
from kbs.conftest import serve_aa
from support.cli import invoke, push_spec
from support.config import ClientCert, cdh_toml, write_initdata

URI = "kbs:///default/credential/test"


def auth_json(host: str) -> bytes:
    token = base64.b64encode(f"{TEST_USER}:{TEST_PASSWORD}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}}).encode()


def kbs_cdh(kbs: TestKbs, aa_address: str, registry_ca: bytes, *,
            image: dict[str, str] | None = None, client_certs: tuple[ClientCert, ...] = ()) -> str:
    """cc_kbc through ``kbs`` (trusting its CA); ``image`` keys default to the credentials URI."""
    assert kbs.tls is not None
    return cdh_toml(kbc="cc_kbc", kbc_url=kbs.url, kbs_cert=kbs.tls.ca_cert_pem, aa_socket=aa_address,
                    roots=[registry_ca], image=image or {"authenticated_registry_credentials_uri": URI},
                    client_certs=client_certs)


@pytest.fixture
def image(basic_auth_registry, repo_name: str, shm_path: Path) -> str:  # type: ignore[no-untyped-def]
    spec = ImageSpec([LayerSpec([File("app/hello.txt", b"hello from a private registry")])])
    push_spec(shm_path / "layout", basic_auth_registry, repo_name, spec)
    return f"{basic_auth_registry.host}/{repo_name}:v1"


@pytest.mark.parametrize("via", ["config", "initdata"])
def test_auth_file_from_the_kbs_authenticates_the_pull(
    basic_auth_registry, ca_chain: CertChain, kbs_chain: CertChain, image: str, shm_path: Path, via: str,
) -> None:
    with TestKbs(tls=kbs_chain, resources={"default/credential/test": auth_json(basic_auth_registry.host)}) as kbs, \
            serve_aa(kbs, shm_path, key_type="ec-p521") as aa:
        config = kbs_cdh(kbs, aa.address, ca_chain.ca_cert_pem)
        if via == "initdata":
            source = ["--initdata", str(write_initdata(shm_path / "initdata.toml", config))]
        else:
            (shm_path / "cdh.toml").write_text(config)
            source = ["--config", str(shm_path / "cdh.toml")]
        result = invoke("pull", image, *source, "--work-dir", str(shm_path / "work"),
                        "--bundle", str(shm_path / "bundle"), "--json")
    assert result.exit_code == 0, result
    assert (shm_path / "bundle" / "rootfs" / "app" / "hello.txt").read_bytes() == b"hello from a private registry"
    assert [(r.path, r.status) for r in kbs.requests] == [("default/credential/test", 200)]
    assert aa.requests == ["kbs"]
    assert TEST_PASSWORD not in result.stdout + result.stderr


def test_resource_not_released_refuses_the_pull(
    basic_auth_registry, ca_chain: CertChain, kbs_chain: CertChain, image: str, shm_path: Path,
) -> None:
    with TestKbs(tls=kbs_chain, resources={"default/credential/test": auth_json(basic_auth_registry.host)},
                 denied={"default/credential/test"}) as kbs, serve_aa(kbs, shm_path) as aa:
        (shm_path / "cdh.toml").write_text(kbs_cdh(kbs, aa.address, ca_chain.ca_cert_pem))
        result = invoke("pull", image, "--config", str(shm_path / "cdh.toml"),
                        "--work-dir", str(shm_path / "work"), "--json")
    assert result.exit_code == EXIT_CODES[Category.AUTH], result
    error = result.json["error"]
    assert URI in error["message"] and "not released to this guest" in error["message"]
    assert [r.status for r in kbs.requests] == [401, 401, 401]
    assert "eyJ" not in result.stdout, "no token in --json"


def test_registry_configuration_and_client_certificate_from_the_kbs(
    mtls_registry, mtls_client_cert: CertChain, ca_chain: CertChain, kbs_chain: CertChain,
    repo_name: str, shm_path: Path,
) -> None:
    paths = mtls_client_cert.write(shm_path / "client")
    spec = ImageSpec([LayerSpec([File("m.txt", b"mtls")])])
    layout = shm_path / "layout"
    pushed = write_layout(layout, spec, "v1")
    push(layout, "v1", f"{mtls_registry.host}/{repo_name}:v1", tls_ca=mtls_registry.ca_path,
         client_cert=(paths.cert, paths.key))
    resources = {
        # A short name resolves only through this search list, which only the KBS serves.
        "default/registry/conf": f'unqualified-search-registries = ["{mtls_registry.host}"]\n'.encode(),
        "default/registry/client-cert": mtls_client_cert.cert_pem,
        "default/registry/client-key": mtls_client_cert.key_pem,
    }
    with TestKbs(tls=kbs_chain, resources=resources) as kbs, serve_aa(kbs, shm_path, key_type="rsa") as aa:
        config = kbs_cdh(
            kbs, aa.address, ca_chain.ca_cert_pem,
            image={"registry_configuration_uri": "kbs:///default/registry/conf"},
            client_certs=(ClientCert(mtls_registry.host, "kbs:///default/registry/client-cert",
                                     "kbs:///default/registry/client-key"),))
        (shm_path / "cdh.toml").write_text(config)
        result = invoke("pull", f"{repo_name}:v1", "--config", str(shm_path / "cdh.toml"),
                        "--work-dir", str(shm_path / "work"), "--json")
    assert result.exit_code == 0, result
    assert result.json["result"]["manifest_digest"] == pushed.manifest_digest
    assert sorted(r.path for r in kbs.requests) == sorted(resources)
    assert aa.requests == ["kbs"], "one token for the three resources"
