"""Fail closed: a policy that rejects, or cannot be read, refuses the pull; so does a
``kbs://`` resource that cc_kbc cannot fetch (no attestation agent).

The pull stops with a clear error before any config or layer is fetched or unpacked — never
skipped silently.  (The FAKE registry serves the image; real signatures are tested in
tests/signature/, pulls that succeed through cc_kbc in tests/kbs/.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import invoke
from support.config import cdh_toml, write_initdata
from guestpull.errors import EXIT_CODES, Category
from guestpull.lint import lint
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec

REJECT_ALL = '{"default": [{"type": "reject"}]}'


@pytest.fixture
def fake():
    registry = FakeRegistry()
    registry.add_image("team/app", "v1", ImageSpec([LayerSpec([File("a.txt", b"a")])]).build())
    with registry.in_thread():
        yield registry


# Every config here names a KBS URL that nothing listens on: nothing may need it.
NO_KBS = "http://127.0.0.1:1"


def pull(tmp: Path, host: str, config: str) -> tuple[object, Path]:
    (tmp / "cdh.toml").write_text(config)
    bundle = tmp / "bundle"
    result = invoke("pull", f"{host}/team/app:v1", "--config", str(tmp / "cdh.toml"),
                    "--work-dir", str(tmp / "work"), "--bundle", str(bundle), "--json")
    return result, bundle


ACCEPT_ALL = '{"default": [{"type": "insecureAcceptAnything"}]}'
SIGNED_BASE_LAYER = '{"default": [{"type": "signedBaseLayer"}]}'  # not implemented


def blob_requests(fake: FakeRegistry) -> list[str]:
    return [r.path for r in fake.requests if "/blobs/" in r.path]


@pytest.mark.parametrize("key", ["image_security_policy_uri", "image_security_policy"])
def test_reject_policy_refuses_the_pull_before_any_blob(fake: FakeRegistry, shm_path: Path, key: str) -> None:
    policy = shm_path / "policy.json"
    policy.write_text(REJECT_ALL)
    value = str(policy) if key.endswith("_uri") else REJECT_ALL
    config = cdh_toml(kbc_url=NO_KBS, insecure=[fake.host], image={key: value})
    result, bundle = pull(shm_path, fake.host, config)
    assert result.exit_code == EXIT_CODES[Category.POLICY], result
    error = result.json["error"]
    assert error["category"] == "policy"
    assert "scope 'default' requirement reject" in error["message"]
    assert not (bundle / "rootfs").exists() and not (bundle / "config.json").exists()
    assert not blob_requests(fake), "no config or layer may be fetched for a rejected image"


def test_missing_policy_file_refuses_the_pull(fake: FakeRegistry, shm_path: Path) -> None:
    config = cdh_toml(kbc_url=NO_KBS, insecure=[fake.host], image={
        "image_security_policy_uri": "file:///nonexistent/policy.json",
        "image_security_policy": ACCEPT_ALL,  # the URI wins, even when missing
    })
    result, bundle = pull(shm_path, fake.host, config)
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND], result
    assert "/nonexistent/policy.json" in result.json["error"]["message"]
    assert not fake.requests, "nothing may be fetched when the policy cannot be read"
    assert not bundle.exists() or not any(bundle.iterdir())


def test_invalid_policy_refuses_the_pull(fake: FakeRegistry, shm_path: Path) -> None:
    config = cdh_toml(kbc_url=NO_KBS, insecure=[fake.host], image={"image_security_policy": SIGNED_BASE_LAYER})
    result, _ = pull(shm_path, fake.host, config)
    assert result.exit_code == EXIT_CODES[Category.CONFIG], result
    assert "signedBaseLayer" in result.json["error"]["message"]
    assert not fake.requests


def test_accept_policy_pulls_and_reports_it(fake: FakeRegistry, shm_path: Path) -> None:
    config = cdh_toml(kbc_url=NO_KBS, insecure=[fake.host], image={"image_security_policy": ACCEPT_ALL})
    result, bundle = pull(shm_path, fake.host, config)
    assert result.exit_code == 0, result
    assert result.json["result"]["policy"]["requirements"][0]["type"] == "insecureAcceptAnything"
    assert (bundle / "rootfs" / "a.txt").read_bytes() == b"a"


def test_no_policy_means_no_verification_step(fake: FakeRegistry, shm_path: Path) -> None:
    result, _ = pull(shm_path, fake.host, cdh_toml(kbc_url=NO_KBS, insecure=[fake.host]))
    assert result.exit_code == 0, result
    assert result.json["result"]["policy"] is None


def cc_kbc(host: str, tmp: Path, **image: str) -> str:
    """A cc_kbc cdh.toml whose attestation agent socket does not exist."""
    return cdh_toml(kbc="cc_kbc", kbc_url=NO_KBS, aa_socket=f"unix://{tmp}/no-aa.sock",
                    insecure=[host], image=image)


def test_cc_kbc_resource_without_attestation_agent_refuses_the_pull(fake: FakeRegistry, shm_path: Path) -> None:
    uri = "kbs:///default/credential/test"
    result, bundle = pull(shm_path, fake.host, cc_kbc(
        fake.host, shm_path, authenticated_registry_credentials_uri=uri))
    assert result.exit_code == EXIT_CODES[Category.NETWORK], result
    error = result.json["error"]
    assert uri in error["message"] and "attestation agent" in error["message"]
    assert "aa_socket" in error["hint"]
    assert not bundle.exists() or not any(bundle.iterdir())
    assert not fake.requests


def test_cc_kbc_without_kbs_resources_still_pulls(fake: FakeRegistry, shm_path: Path) -> None:
    result, bundle = pull(shm_path, fake.host, cc_kbc(fake.host, shm_path))
    assert result.exit_code == 0, result
    assert (bundle / "rootfs" / "a.txt").read_bytes() == b"a"


def test_cc_kbc_resource_through_initdata_is_refused(fake: FakeRegistry, shm_path: Path) -> None:
    initdata = write_initdata(shm_path / "initdata.toml", cc_kbc(
        fake.host, shm_path, authenticated_registry_credentials_uri="kbs:///default/credential/test"))
    result = invoke("pull", f"{fake.host}/team/app:v1", "--initdata", str(initdata),
                    "--work-dir", str(shm_path / "work"), "--json")
    assert result.exit_code != 0, result
    assert "kbs:///default/credential/test" in result.json["error"]["message"]
    assert not fake.requests


def test_check_reports_what_would_be_refused(shm_path: Path) -> None:
    config = cdh_toml(kbc="cc_kbc", kbc_url=NO_KBS, insecure=["127.0.0.1:5000"], image={
        "image_security_policy": SIGNED_BASE_LAYER,
        "authenticated_registry_credentials_uri": "kbs:///default/credential/test",
    })
    initdata = write_initdata(shm_path / "initdata.toml", config)
    report = lint(initdata.read_bytes(), str(initdata))
    codes = {f.code: f for f in report.findings}
    assert codes["unknown-requirement-type"].severity == "error"
    assert codes["unknown-requirement-type"].location.field.endswith("image.image_security_policy")
    assert "cc-kbc-unsupported" not in codes, "cc_kbc works: its kbs:// URIs are not refused"
    assert not report.ok
    result = invoke("initdata", "check", str(initdata), "--json")
    assert result.exit_code != 0
    assert "unknown-requirement-type" in {f["code"] for f in json.loads(result.stdout)["findings"]}
