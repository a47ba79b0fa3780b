"""Cosign signature checks for each key type cosign signs with, without a registry."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from guestpull.errors import ConfigError
from guestpull.signature.cosign import CosignSignature, signature_tag, verify_cosign
from guestpull.signature.keys import CosignPublicKey, parse_cosign_key
from guestpull.signature.simple import SignatureInvalid

PAYLOAD = b'{"critical":{"identity":{"docker-reference":"r/a:v1"}}}'


def _sign(key: object) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[key.curve.key_size]
        return key.sign(PAYLOAD, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(PAYLOAD, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(PAYLOAD)


PRIVATE_KEYS = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


def public(key: object) -> CosignPublicKey:
    pem = key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return CosignPublicKey(parse_cosign_key(pem, "key.pub"), "key.pub")


@pytest.mark.parametrize("kind", list(PRIVATE_KEYS))
def test_each_key_type_verifies_and_rejects(kind: str) -> None:
    key, other = PRIVATE_KEYS[kind](), PRIVATE_KEYS[kind]()
    signature = CosignSignature(PAYLOAD, _sign(key), "layer 0")
    assert verify_cosign(signature, [public(other), public(key)]).source == "key.pub"
    with pytest.raises(SignatureInvalid):
        verify_cosign(signature, [public(other)])
    with pytest.raises(SignatureInvalid):
        verify_cosign(CosignSignature(PAYLOAD + b" ", signature.signature, "layer 0"), [public(key)])


def test_unsupported_and_broken_keys() -> None:
    with pytest.raises(ConfigError, match="not a PEM public key"):
        parse_cosign_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "k.pub")


def test_signature_tag() -> None:
    assert signature_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"
