"""A signed pull whose policy and verification key both come from the KBS (``keyPath: kbs:///…``).

The real Debian registry over HTTP holds the image and its cosign signature; the test KBS
serves the policy (``image_security_policy_uri = "kbs:///…"``) and the cosign public key the
policy names by a ``kbs://`` keyPath.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestpull.errors import EXIT_CODES, Category
from guestpull_testkit.images import File, ImageSpec, LayerSpec
from guestpull_testkit.kbs import TestKbs
from guestpull_testkit.signing import CosignKey, CosignLayer, cosign_payload, push_cosign_signatures
from kbs.conftest import serve_aa
from support.cli import invoke, push_spec
from support.config import write_cdh

POLICY_URI = "kbs:///default/security-policy/test"
KEY_URI = "kbs:///default/cosign-key/k"


@pytest.mark.parametrize(("signer", "accepted"), [("trusted", True), ("other", False)])
def test_policy_and_key_path_from_the_kbs_decide_the_pull(
    http_registry, repo_name: str, shm_path: Path, signer: str, accepted: bool,
) -> None:
    keys = {"trusted": CosignKey.generate(), "other": CosignKey.generate()}
    digests = push_spec(shm_path / "layout", http_registry, repo_name,
                        ImageSpec([LayerSpec([File("signed.txt", b"signed")])]))
    image = f"{http_registry.host}/{repo_name}:v1"
    payload = cosign_payload(image, digests.manifest_digest)
    push_cosign_signatures(http_registry, repo_name, digests.manifest_digest,
                           [CosignLayer(payload, keys[signer].sign(payload))])
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {
        f"{http_registry.host}/{repo_name}": [{"type": "sigstoreSigned", "keyPath": KEY_URI}]}}}
    resources = {"default/security-policy/test": json.dumps(policy).encode(),
                 "default/cosign-key/k": keys["trusted"].public_pem}
    with TestKbs(resources=resources) as kbs, serve_aa(kbs, shm_path, key_type="rsa") as aa:
        write_cdh(shm_path / "cdh.toml", kbc="cc_kbc", kbc_url=kbs.url, aa_socket=aa.address,
                  image={"image_security_policy_uri": POLICY_URI}, insecure=[http_registry.host])
        result = invoke("pull", image, "--config", str(shm_path / "cdh.toml"),
                        "--work-dir", str(shm_path / "work"), "--bundle", str(shm_path / "bundle"), "--json")
    assert sorted(r.path for r in kbs.requests) == sorted(resources), "policy and key from the KBS"
    if accepted:
        assert result.exit_code == 0, result
        assert (shm_path / "bundle" / "rootfs" / "signed.txt").read_bytes() == b"signed"
    else:
        assert result.exit_code == EXIT_CODES[Category.POLICY], result
        assert not (shm_path / "bundle" / "rootfs").exists()
