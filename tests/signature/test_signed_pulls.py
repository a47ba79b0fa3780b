"""Signed pulls against the real registry (HTTPS and plain HTTP), with skopeo as the oracle.

Every simple-signing case is decided three ways that must agree: the case's design, guestpull's
pull, and ``skopeo copy --policy`` (containers/image, the reference implementation).  Debian's
skopeo has no cosign support, so the cosign cases are decided by design alone.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guestpull.errors import EXIT_CODES, Category
from guestpull.testing.signing import registries_d, serve_directory, skopeo_policy_allows
from signature.conftest import ACCEPT, REJECT, World

pytestmark = pytest.mark.registry

POLICY_EXIT = EXIT_CODES[Category.POLICY]

# A case: (image reference, policy) built from the world, and whether it must be accepted.
Case = Callable[[World], tuple[str, list[dict[str, Any]], dict[str, list[dict[str, Any]]] | None]]


SIMPLE_CASES: dict[str, tuple[Case, bool]] = {
    "unsigned": (lambda w: (w.ref("unsigned"), [w.signed_by()], None), False),
    "trusted-key": (lambda w: (w.ref("signed"), [w.signed_by()], None), True),
    "keyring-second-key": (lambda w: (w.ref("signed-b"), [w.signed_by("ab")], None), True),
    "untrusted-key": (lambda w: (w.ref("signed-b"), [w.signed_by("a")], None), False),
    "key-not-in-keyring": (lambda w: (w.ref("untrusted"), [w.signed_by("ab")], None), False),
    "second-signature-trusted": (lambda w: (w.ref("two"), [w.signed_by()], None), True),
    "no-compression-wrapper": (lambda w: (w.ref("uncompressed"), [w.signed_by()], None), True),
    "tampered-payload": (lambda w: (w.ref("tampered-payload"), [w.signed_by()], None), False),
    "tampered-signature": (lambda w: (w.ref("tampered-signature"), [w.signed_by()], None), False),
    "replayed-from-another-digest": (lambda w: (w.ref("replay"), [w.signed_by()], None), False),
    "by-digest": (lambda w: (w.digest_ref("signed"), [w.signed_by()], None), True),
    "reject-all": (lambda w: (w.ref("signed"), [REJECT], None), False),
    "accept-all": (lambda w: (w.ref("unsigned"), [ACCEPT], None), True),
    # signedIdentity: sig/idtag:v1 is signed as sig/idtag:other
    "identity-mismatch-by-tag": (lambda w: (w.ref("idtag"), [w.signed_by()], None), False),
    "matchRepository": (lambda w: (w.ref("idtag"), [w.signed_by(identity={"type": "matchRepository"})], None), True),
    "matchExact-other-tag": (lambda w: (w.ref("idtag"), [w.signed_by(identity={"type": "matchExact"})], None), False),
    "matchExact-same-tag": (lambda w: (w.ref("signed"), [w.signed_by(identity={"type": "matchExact"})], None), True),
    "matchExact-by-digest": (lambda w: (w.digest_ref("signed"), [w.signed_by(identity={"type": "matchExact"})], None), False),
    "matchRepoDigestOrExact-explicit": (lambda w: (w.ref("signed"), [w.signed_by(identity={"type": "matchRepoDigestOrExact"})], None), True),
    "exactReference": (lambda w: (w.ref("idtag"), [w.signed_by(identity={
        "type": "exactReference", "dockerReference": w.ref("idtag", "other")})], None), True),
    "exactReference-other": (lambda w: (w.ref("signed"), [w.signed_by(identity={
        "type": "exactReference", "dockerReference": w.ref("idtag", "other")})], None), False),
    "exactRepository": (lambda w: (w.ref("idtag"), [w.signed_by(identity={
        "type": "exactRepository", "dockerRepository": f"{w.host}/sig/idtag"})], None), True),
    "exactRepository-other": (lambda w: (w.ref("idtag"), [w.signed_by(identity={
        "type": "exactRepository", "dockerRepository": f"{w.host}/sig/elsewhere"})], None), False),
    # sig/remap-copy:v1 is signed as sig/remap-origin:v1
    "identity-mismatch-by-digest": (lambda w: (w.digest_ref("remap-copy"), [w.signed_by()], None), False),
    "remapIdentity": (lambda w: (w.ref("remap-copy"), [w.signed_by(identity={
        "type": "remapIdentity", "prefix": f"{w.host}/sig/remap-copy",
        "signedPrefix": f"{w.host}/sig/remap-origin"})], None), True),
    "remapIdentity-other-prefix": (lambda w: (w.ref("remap-copy"), [w.signed_by(identity={
        "type": "remapIdentity", "prefix": f"{w.host}/other", "signedPrefix": f"{w.host}/sig"})], None), False),
    "keyData-inline": (lambda w: (w.ref("signed"), [{
        "type": "signedBy", "keyType": "GPGKeys",
        "keyData": base64.b64encode(w.keyrings["a"].read_bytes()).decode()}], None), True),
    "keyPaths": (lambda w: (w.ref("signed"), [{
        "type": "signedBy", "keyType": "GPGKeys",
        "keyPaths": [str(w.keyrings["c"]), str(w.keyrings["a"])]}], None), True),
    "two-requirements-one-fails": (lambda w: (w.ref("signed"), [w.signed_by(), w.signed_by("c")], None), False),
    # scope precedence: repository > namespace > registry > "" > default; tag and digest scopes
    "repo-over-default": (lambda w: (w.ref("signed"), [REJECT], {f"{w.host}/sig/signed": [w.signed_by()]}), True),
    "repo-over-namespace": (lambda w: (w.ref("signed"), [ACCEPT], {
        f"{w.host}/sig/signed": [REJECT], f"{w.host}/sig": [ACCEPT]}), False),
    "namespace-over-registry": (lambda w: (w.ref("signed"), [ACCEPT], {
        f"{w.host}/sig": [w.signed_by("c")], w.host: [ACCEPT]}), False),
    "registry-over-default": (lambda w: (w.ref("signed"), [ACCEPT], {w.host: [REJECT]}), False),
    "repo-prefix-is-not-a-namespace": (lambda w: (w.ref("signed"), [ACCEPT], {f"{w.host}/sig/sign": [REJECT]}), True),
    "tag-over-repo": (lambda w: (w.ref("signed"), [REJECT], {
        f"{w.host}/sig/signed:v1": [ACCEPT], f"{w.host}/sig/signed": [REJECT]}), True),
    "other-tag-scope": (lambda w: (w.ref("signed"), [ACCEPT], {f"{w.host}/sig/signed:v2": [REJECT]}), True),
    "digest-scope": (lambda w: (w.digest_ref("signed"), [REJECT], {
        f"{w.digest_ref('signed')}": [ACCEPT], f"{w.host}/sig/signed": [REJECT]}), True),
    "wildcard-domain": (lambda w: (w.ref("signed"), [ACCEPT], {"*.0.0.1": [REJECT]}), False),
    "registry-over-wildcard": (lambda w: (w.ref("signed"), [ACCEPT], {"*.0.0.1": [REJECT], w.host: [ACCEPT]}), True),
    "transport-default": (lambda w: (w.ref("signed"), [ACCEPT], {"": [REJECT]}), False),
    # multi-platform: the platform manifest's signature counts, not the index's
    "index-signed": (lambda w: (w.ref("index-signed"), [w.signed_by()], None), True),
    "index-signature-only": (lambda w: (w.ref("index-signature-only"), [w.signed_by()], None), False),
    "platform-signature-only": (lambda w: (w.ref("platform-signature-only"), [w.signed_by()], None), True),
    "platform-by-digest": (lambda w: (f"{w.host}/sig/index-signed@{w.platform_digest('index-signed')}",
                                      [w.signed_by()], None), True),
}


@pytest.mark.parametrize("name", list(SIMPLE_CASES))
def test_simple_signing_agrees_with_skopeo(world: World, name: str) -> None:
    build, expected = SIMPLE_CASES[name]
    image, default, scopes = build(world)
    policy = world.policy(default, scopes)
    oracle = skopeo_policy_allows(image, policy, world.registries_d, tls_ca=world.registry.ca_path)
    assert oracle is expected, f"skopeo decided {oracle} for {name}"
    assert_decided(world.pull(image, policy), expected)


def assert_decided(result: Any, accepted: bool) -> None:
    """The pull succeeded with the policy's approval, or was refused as a policy rejection."""
    if accepted:
        assert result.exit_code == 0, result
        assert result.json["result"]["policy"]["accepted"] is True
    else:
        assert result.exit_code == POLICY_EXIT, result
        assert result.json["error"]["category"] == "policy"


def test_lookaside_over_http(world: World, shm_path: Path) -> None:
    with serve_directory(world.lookaside) as url:
        remote = registries_d(shm_path / "registries.d", url)
        for repo, expected in (("signed", True), ("unsigned", False), ("tampered-payload", False)):
            policy = world.policy([world.signed_by()])
            image = world.ref(repo)
            assert skopeo_policy_allows(image, policy, remote, tls_ca=world.registry.ca_path) is expected
            result = world.pull(image, policy, registries_dir=remote)
            assert (result.exit_code == 0) is expected, result


def test_sigstore_config_from_the_work_dir(world: World, shm_path: Path) -> None:
    """Upstream's extra directory: <work_dir>/image-security/simple_signing/sigstore_config/*.yaml."""
    work = shm_path / "work"
    policy = world.policy([world.signed_by()])
    assert world.pull(world.ref("signed"), policy, work=work, sigstore=False).exit_code == POLICY_EXIT
    directory = work / "image-security" / "simple_signing" / "sigstore_config"
    directory.mkdir(parents=True)
    (directory / "local.yaml").write_text(f"docker:\n  {world.host}/sig:\n    sigstore: file://{world.lookaside}\n")
    result = world.pull(world.ref("signed"), policy, work=work, sigstore=False)
    assert result.exit_code == 0, result
    # ... merged with the configured one: the same scope twice is an error
    (directory / "again.yaml").write_text(f"docker:\n  {world.host}/sig:\n    sigstore: file:///elsewhere\n")
    clash = world.pull(world.ref("signed"), policy, work=work, sigstore=False)
    assert clash.exit_code == EXIT_CODES[Category.CONFIG] and "also defined" in clash.stdout, clash


def test_accepted_pull_reports_the_decision(world: World, shm_path: Path) -> None:
    policy = world.policy([REJECT], {f"{world.host}/sig": [world.signed_by("ab")]})
    result = world.pull(world.ref("signed-b"), policy, bundle=shm_path / "bundle")
    assert result.exit_code == 0, result
    decision = result.json["result"]["policy"]
    assert decision["scope"] == f"{world.host}/sig"
    assert decision["accepted"] is True
    [requirement] = decision["requirements"]
    assert requirement["type"] == "signedBy" and requirement["accepted"]
    assert requirement["keys"] == [world.fingerprints["b"].lower()]
    assert requirement["signature"].endswith("/signature-1")
    assert (shm_path / "bundle" / "rootfs" / "id.txt").exists()


def test_rejected_pull_names_the_reason_and_leaves_no_bundle(world: World, shm_path: Path) -> None:
    policy = world.policy([ACCEPT], {f"{world.host}/sig/signed-b": [world.signed_by("a")]})
    bundle = shm_path / "bundle"
    result = world.pull(world.ref("signed-b"), policy, bundle=bundle)
    assert result.exit_code == POLICY_EXIT, result
    error = result.json["error"]
    message = error["attempts"][-1]["error"]["message"]
    assert f"scope '{world.host}/sig/signed-b'" in message
    assert "signedBy" in message and "not among the trusted keys" in message
    decision = error["attempts"][-1]["error"]["decision"]
    assert decision["accepted"] is False and decision["requirements"][0]["type"] == "signedBy"
    assert not bundle.exists() or not any(bundle.iterdir())


def test_missing_signature_is_a_policy_rejection_not_a_network_error(world: World) -> None:
    result = world.pull(world.ref("unsigned"), world.policy([world.signed_by()]))
    assert result.exit_code == POLICY_EXIT, result
    message = result.json["error"]["attempts"][-1]["error"]["message"]
    assert "no signature at file://" in message and "signature-1" in message


def test_stored_image_pulled_under_a_rejected_name(world: World, shm_path: Path) -> None:
    """Policy on every pull: the image is in the store (as sig/signed), then asked for as
    sig/alias, which has no signature: rejected, nothing unpacked."""
    work = shm_path / "work"
    policy = world.policy([world.signed_by()])
    first = world.pull(world.ref("signed"), policy, work=work, bundle=shm_path / "b1")
    assert first.exit_code == 0, first
    again = world.pull(world.ref("alias"), policy, work=work, bundle=shm_path / "b2")
    assert again.exit_code == POLICY_EXIT, again
    assert not (shm_path / "b2").exists() or not any((shm_path / "b2").iterdir())
    scoped = world.policy([ACCEPT], {f"{world.host}/sig/alias": [REJECT]})
    third = world.pull(world.ref("alias"), scoped, work=work, bundle=shm_path / "b3")
    assert third.exit_code == POLICY_EXIT, third


def test_remapped_pull_is_judged_by_the_name_asked_for(world: World) -> None:
    """sig/signed asked for as origin.invalid:5000/sig/signed, fetched from the test registry."""
    w = world
    origin = "origin.invalid:5000"
    image = f"{origin}/sig/signed:v1"
    asked = w.policy([ACCEPT], {f"{origin}/sig/signed": [REJECT]})
    result = w.pull(image, asked, remap=origin)
    assert result.exit_code == POLICY_EXIT, result
    fetched_scope = w.policy([ACCEPT], {f"{w.host}/sig/signed": [REJECT]})
    assert w.pull(image, fetched_scope, remap=origin).exit_code == 0
    # The signature names the test registry; the name asked for differs, unless remapped.
    plain = w.policy([w.signed_by()])
    assert w.pull(image, plain, remap=origin).exit_code == POLICY_EXIT
    remapped = w.policy([w.signed_by(identity={
        "type": "remapIdentity", "prefix": origin, "signedPrefix": w.host})])
    result = w.pull(image, remapped, remap=origin)
    assert result.exit_code == 0, result
    assert result.json["result"]["reference"] == w.ref("signed")


def test_keys_from_the_kbs(world: World, shm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keyPath kbs:///… resolves through the configured KBC (offline_fs here), as upstream."""
    resources = shm_path / "offline-fs.json"
    resources.write_text(json.dumps({
        "default/keys/gpg": base64.b64encode(world.keyrings["a"].read_bytes()).decode(),
        "default/keys/cosign": base64.b64encode(world.cosign_pem["k"].read_bytes()).decode(),
    }))
    monkeypatch.setenv("OFFLINE_FS_KBC_EXTRA_FILE_PATH", str(resources))
    gpg = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/keys/gpg"}
    cosigned = {"type": "sigstoreSigned", "keyPath": "kbs:///default/keys/cosign"}
    assert world.pull(world.ref("mixed"), world.policy([gpg, cosigned])).exit_code == 0
    missing = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/keys/nope"}
    result = world.pull(world.ref("signed"), world.policy([missing]))
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND], result
    assert "default/keys/nope" in result.stdout


# --- cosign (key-based): decided by design, Debian's skopeo has no cosign ------------------------


COSIGN_CASES: dict[str, tuple[Case, bool]] = {
    "trusted-key": (lambda w: (w.ref("cosigned"), [w.sigstore_signed()], None), True),
    "by-digest": (lambda w: (w.digest_ref("cosigned"), [w.sigstore_signed()], None), True),
    "unsigned": (lambda w: (w.ref("cosign-unsigned"), [w.sigstore_signed()], None), False),
    "annotation-with-line-breaks": (lambda w: (w.ref("cosign-wrapped"), [w.sigstore_signed()], None), True),
    "untrusted-key": (lambda w: (w.ref("cosign-untrusted"), [w.sigstore_signed()], None), False),
    "tampered-payload": (lambda w: (w.ref("cosign-tampered-payload"), [w.sigstore_signed()], None), False),
    "tampered-signature": (lambda w: (w.ref("cosign-tampered-signature"), [w.sigstore_signed()], None), False),
    "replayed-from-another-digest": (lambda w: (w.ref("cosign-replay"), [w.sigstore_signed()], None), False),
    # the cosign CLI signs the repository without a tag: a pull by tag needs matchRepository
    "cli-identity-default": (lambda w: (w.ref("cosign-cli"), [w.sigstore_signed()], None), False),
    "cli-identity-matchRepository": (lambda w: (w.ref("cosign-cli"), [
        w.sigstore_signed(identity={"type": "matchRepository"})], None), True),
    "identity-mismatch": (lambda w: (w.ref("cosigned"), [w.sigstore_signed(identity={
        "type": "exactRepository", "dockerRepository": f"{w.host}/sig/elsewhere"})], None), False),
    "keyData-raw-pem": (lambda w: (w.ref("cosigned"), [{
        "type": "sigstoreSigned", "keyData": w.cosign_pem["k"].read_text()}], None), True),
    "keyData-base64": (lambda w: (w.ref("cosigned"), [{
        "type": "sigstoreSigned",
        "keyData": base64.b64encode(w.cosign_pem["k"].read_bytes()).decode()}], None), True),
    "mixed-both-present": (lambda w: (w.ref("mixed"), [w.signed_by(), w.sigstore_signed()], None), True),
    "mixed-gpg-only": (lambda w: (w.ref("signed"), [w.signed_by(), w.sigstore_signed()], None), False),
    "mixed-cosign-only": (lambda w: (w.ref("cosigned"), [w.signed_by(), w.sigstore_signed()], None), False),
    # an index pulled by tag: the index's signature (what upstream image-rs reads) or the platform's
    "index-signature": (lambda w: (w.ref("cosign-index"), [w.sigstore_signed()], None), True),
    "platform-signature": (lambda w: (w.ref("cosign-platform"), [w.sigstore_signed()], None), True),
    "other-platform-signature": (lambda w: (w.ref("cosign-other-platform"), [w.sigstore_signed()], None), False),
}


@pytest.mark.parametrize("name", list(COSIGN_CASES))
def test_cosign(world: World, name: str) -> None:
    build, expected = COSIGN_CASES[name]
    image, default, scopes = build(world)
    result = world.pull(image, world.policy(default, scopes))
    assert_decided(result, expected)
    if expected:
        keys = [k for r in result.json["result"]["policy"]["requirements"] for k in r["keys"]]
        assert any(k.startswith("sha256:") for k in keys)


def test_keyless_cosign_is_refused_clearly(world: World) -> None:
    policy = world.policy([{"type": "sigstoreSigned", "fulcio": {"caPath": "/x"},
                            "rekorPublicKeyPath": "/y"}])
    result = world.pull(world.ref("cosigned"), policy)
    assert result.exit_code == EXIT_CODES[Category.UNSUPPORTED], result
    assert "keyless" in result.json["error"]["message"]
