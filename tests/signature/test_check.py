"""``initdata check`` and ``initdata build`` for signature policies and sigstore configs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from support.cli import invoke
from support.config import cdh_toml, write_initdata
from guestpull.errors import EXIT_CODES, Category
from guestpull.initdata import InitData
from guestpull.lint import lint
from guestpull_testkit.signing import CosignKey, GpgHome

SIGSTORE = "default-docker:\n  sigstore: file:///var/lib/sigstore\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    gpg = GpgHome(root / "gnupg")
    keyring = root / "trusted.gpg"
    keyring.write_bytes(gpg.export(gpg.generate("lint"), armor=True))
    pem = root / "cosign.pub"
    pem.write_bytes(CosignKey.generate().public_pem)
    garbage = root / "garbage.gpg"
    garbage.write_bytes(b"not a key at all")
    return {"gpg": keyring, "cosign": pem, "garbage": garbage}


def document(tmp: Path, policy: dict, *, sigstore: str | None = SIGSTORE, insecure: tuple[str, ...] = (),
             **image: str) -> Path:
    """An Init-Data document with the inline ``policy`` (and sigstore config) plus ``image`` keys."""
    settings = {"image_security_policy": json.dumps(policy)}
    if sigstore is not None:
        settings["sigstore_config"] = sigstore
    cdh = cdh_toml(image={**settings, **image}, insecure=insecure)
    return write_initdata(tmp / "initdata.toml", cdh)


def findings(path: Path) -> dict[str, list[str]]:
    report = lint(path.read_bytes(), str(path))
    out: dict[str, list[str]] = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f"{f.severity}: {f.message}")
        assert f.location.field and f.location.field.startswith('data."cdh.toml".image.'), f
    return out


def signed_by(path: str) -> dict:
    return {"type": "signedBy", "keyType": "GPGKeys", "keyPath": path}


def test_a_good_policy_has_no_findings(shm_path: Path, keys: dict[str, Path]) -> None:
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {
        "reg.local:5000/app": [signed_by(str(keys["gpg"]))],
        "reg.local:5000": [{"type": "sigstoreSigned", "keyPath": f"file://{keys['cosign']}"}],
        "*.example.com": [{"type": "sigstoreSigned", "keyData": keys["cosign"].read_text()}],
        "": [{"type": "signedBy", "keyType": "GPGKeys",
              "keyData": base64.b64encode(keys["gpg"].read_bytes()).decode()}],
    }}}
    assert findings(document(shm_path, policy)) == {}


def test_unknown_requirement_types_are_errors(shm_path: Path) -> None:
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {
        "reg.local/a": [{"type": "signedBaseLayer"}], "reg.local/b": [{"type": "sigstore"}]}}}
    found = findings(document(shm_path, policy))
    assert len(found["unknown-requirement-type"]) == 2
    assert all(m.startswith("error") for m in found["unknown-requirement-type"])


def test_unreadable_keys_are_errors(shm_path: Path, keys: dict[str, Path]) -> None:
    policy = {"default": [signed_by(str(keys["garbage"]))], "transports": {"docker": {
        "reg.local/a": [signed_by("/nonexistent/key.gpg")],
        "reg.local/b": [{"type": "sigstoreSigned", "keyData": "bm90IGEga2V5"}],
        "reg.local/c": [signed_by("kbs:///default/keys/gpg")],
    }}}
    found = findings(document(shm_path, policy))
    messages = "\n".join(found["unreadable-key"])
    assert len(found["unreadable-key"]) == 2, messages
    assert "garbage.gpg" in messages and "not a PEM public key" in messages
    assert all(m.startswith("error") for m in found["unreadable-key"])
    assert "/nonexistent/key.gpg" in found["key-not-found"][0] and found["key-not-found"][0].startswith("warning")
    assert found["key-in-kbs"][0].startswith("info")


@pytest.mark.parametrize("scope", ["busybox", "docker.io/busybox", "*.example.com:5000", "reg.local/UPPER",
                                   "reg.local/app:v1:v2"])
def test_scopes_that_can_never_match(shm_path: Path, scope: str) -> None:
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {scope: [{"type": "reject"}]}}}
    found = findings(document(shm_path, policy))
    assert found["scope-never-matches"][0].startswith("warning"), found


def test_accept_anything_next_to_an_insecure_registry(shm_path: Path, keys: dict[str, Path]) -> None:
    loose = {"default": [{"type": "insecureAcceptAnything"}]}
    found = findings(document(shm_path, loose, insecure=("reg.local:5000",)))
    assert "reg.local:5000" in found["insecure-registry-unprotected"][0]
    guarded = {"default": [{"type": "insecureAcceptAnything"}],
               "transports": {"docker": {"reg.local:5000": [signed_by(str(keys["gpg"]))]}}}
    assert "insecure-registry-unprotected" not in findings(document(shm_path, guarded, insecure=("reg.local:5000",)))


def test_bad_sigstore_config_and_missing_store(shm_path: Path, keys: dict[str, Path]) -> None:
    policy = {"default": [signed_by(str(keys["gpg"]))]}
    bad = findings(document(shm_path, policy, sigstore="default-docker:\n  sigstore: ftp://x\n"))
    assert bad["invalid-sigstore-config"][0].startswith("error")
    missing = findings(document(shm_path, policy, sigstore=None))
    assert missing["no-signature-store"][0].startswith("warning")
    in_kbs = findings(document(shm_path, policy, sigstore_config_uri="kbs:///default/sigstore/c",
                               sigstore=None))
    assert "no-signature-store" not in in_kbs, in_kbs


def test_policy_uri_on_this_host_is_checked(shm_path: Path) -> None:
    policy = shm_path / "policy.json"
    policy.write_text('{"default": []}')
    path = document(shm_path, {"default": [{"type": "reject"}]}, image_security_policy_uri=str(policy))
    found = findings(path)
    assert "empty" in found["invalid-signature-policy"][0]
    assert found["image-security-policy-uri-overrides-inline"][0].startswith("info")


# --- initdata build --policy / --sigstore-config --------------------------------------------------


def test_build_inlines_policy_and_sigstore_config(shm_path: Path, keys: dict[str, Path]) -> None:
    policy = shm_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        "reg.local:5000/app": [signed_by(str(keys["gpg"]))]}}}, indent=2))
    sigstore = shm_path / "sigstore.yaml"
    sigstore.write_text(SIGSTORE)
    out = shm_path / "initdata.toml"
    result = invoke("initdata", "build", "--policy", str(policy), "--sigstore-config", str(sigstore),
                    "-o", str(out))
    assert result.exit_code == 0, result
    image = InitData.parse(out.read_bytes(), str(out)).cdh_config().image
    assert image.image_security_policy == policy.read_text()
    assert image.sigstore_config == SIGSTORE
    check = invoke("initdata", "check", str(out), "--json")
    assert check.exit_code == 0, check
    assert json.loads(check.stdout)["findings"] == []


def test_build_by_uri(shm_path: Path) -> None:
    result = invoke("initdata", "build", "--policy-uri", "kbs:///default/security-policy/test",
                    "--sigstore-config-uri", "kbs:///default/sigstore-config/test")
    assert result.exit_code == 0, result
    assert 'sigstore_config_uri = "kbs:///default/sigstore-config/test"' in result.stdout


def test_build_refuses_what_the_guest_would_refuse(shm_path: Path) -> None:
    policy = shm_path / "policy.json"
    policy.write_text('{"default": [{"type": "signedBaseLayer"}]}')
    result = invoke("initdata", "build", "--policy", str(policy))
    assert result.exit_code == EXIT_CODES[Category.CONFIG], result
    assert "signedBaseLayer" in result.stderr + result.stdout
    both = invoke("initdata", "build", "--policy", str(policy), "--policy-uri", "file:///p.json")
    assert both.exit_code == EXIT_CODES[Category.USAGE], both
