"""The verification step without a registry: file lookaside, decisions and their messages."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from guestpull.config import ImageConfig
from guestpull.errors import PolicyRejected
from guestpull.reference import parse_reference
from guestpull.resources import ResourceResolver
from guestpull.signature import VerifyTarget, build_verifier
from guestpull.signature.verify import MAX_REASONS
from guestpull.testing.signing import GpgHome

DIGEST = "sha256:" + "d" * 64


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    gpg = GpgHome(root / "gnupg")
    path = root / "k.gpg"
    path.write_bytes(gpg.export(gpg.generate("verify")))
    return path


def target(image: str = "reg.local/app/web:v1") -> VerifyTarget:
    ref = parse_reference(image)
    # file:// stores never touch the client; cosign is not used here.
    return VerifyTarget(ref, ref, SimpleNamespace(transport=None), DIGEST)  # type: ignore[arg-type]


def verifier(shm_path: Path, policy: dict, sigstore: str | None):
    config = ImageConfig(image_security_policy=json.dumps(policy), sigstore_config=sigstore)
    return build_verifier(config, ResourceResolver([]).sync(), shm_path / "work")


async def test_many_bad_signatures_are_summarised(shm_path: Path, keyring: Path) -> None:
    store = shm_path / "store" / f"app/web@sha256={'d' * 64}"
    store.mkdir(parents=True)
    for number in range(1, MAX_REASONS + 3):
        (store / f"signature-{number}").write_bytes(b"not an OpenPGP message")
    policy = {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(keyring)}]}
    check = verifier(shm_path, policy, f"default-docker:\n  sigstore: file://{shm_path / 'store'}\n")
    with pytest.raises(PolicyRejected) as caught:
        await check.verify(target())
    message = caught.value.message
    assert message.count("signature-") == MAX_REASONS and "(and 2 more)" in message
    assert caught.value.decision["scope"] == "default"


async def test_no_store_configured(shm_path: Path, keyring: Path) -> None:
    policy = {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(keyring)}]}
    with pytest.raises(PolicyRejected, match="no signature store"):
        await verifier(shm_path, policy, None).verify(target())


async def test_all_requirements_must_hold(shm_path: Path) -> None:
    policy = {"default": [{"type": "insecureAcceptAnything"}, {"type": "reject"}]}
    with pytest.raises(PolicyRejected) as caught:
        await verifier(shm_path, policy, None).verify(target())
    outcomes = caught.value.decision["requirements"]
    assert [(o["type"], o["accepted"]) for o in outcomes] == [("insecureAcceptAnything", True), ("reject", False)]


def test_no_policy_no_verifier(shm_path: Path) -> None:
    assert build_verifier(ImageConfig(), ResourceResolver([]).sync(), shm_path) is None
