"""The AA's GetToken reply: JWT claims read (not verified), TEE keys of the three kinds."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from guestpull.errors import AuthError
from guestpull.kbs.token import EXPIRY_MARGIN, KbsToken, TeeKey, parse_token, parse_token_reply
from guestpull.testing.kbs import new_tee_key, tee_key_pem


def jwt(claims: object) -> str:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFUzI1NiJ9.{part}.c2ln"


def test_claims_are_read_without_verification() -> None:
    token = parse_token(jwt({"exp": 2000, "nbf": 1000}))
    assert (token.exp, token.nbf) == (2000.0, 1000.0)
    assert token.expired(now=2000 - EXPIRY_MARGIN) and not token.expired(now=1990 - EXPIRY_MARGIN)
    assert not parse_token(jwt({})).expired(), "no exp: valid until the KBS says 401"


@pytest.mark.parametrize(("text", "fragment"), [
    ("abc", "not a JWT"),
    ("a.%%%.c", "not base64url JSON"),
    (jwt([1]), "not a JSON object"),
    (jwt({"exp": "soon"}), "exp claim is not a number"),
])
def test_bad_tokens(text: str, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment) as info:
        parse_token(text)
    assert text not in str(info.value)


@pytest.mark.parametrize(("kind", "curve"), [("ec-p256", "P-256"), ("ec-p521", "P-521"), ("rsa", None)])
def test_tee_keys(kind: str, curve: str | None) -> None:
    key = TeeKey.from_pem(tee_key_pem(new_tee_key(kind)))  # type: ignore[arg-type]
    assert key.kind == ("RSA" if kind == "rsa" else "EC") and key.curve == curve
    assert "PRIVATE" not in repr(key) and "'d'" not in repr(key)


@pytest.mark.parametrize("private", [ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()])
def test_other_keys_are_refused(private: object) -> None:
    pem = private.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(AuthError, match="not RSA nor EC P-256/P-521"):
        TeeKey.from_pem(pem.decode())


@pytest.mark.parametrize(("reply", "fragment"), [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"token": jwt({})}).encode(), '"token" and "tee_keypair"'),
    (json.dumps({"token": jwt({}), "tee_keypair": "-----BEGIN PRIVATE KEY-----\nsecretstuff\n"}).encode(),
     "not a PEM private key"),
])
def test_bad_replies_name_no_secret(reply: bytes, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment) as info:
        parse_token_reply(reply)
    assert "secretstuff" not in str(info.value) and "eyJ" not in str(info.value)


def test_token_text_is_not_in_repr() -> None:
    assert "eyJ" not in repr(KbsToken(jwt({"exp": 1})))


def test_duplicate_token_in_the_reply_is_refused() -> None:
    reply = b'{"token": "a.b.c", "token": "d.e.f", "tee_keypair": ""}'
    with pytest.raises(AuthError, match="duplicate key 'token'") as info:
        parse_token_reply(reply)
    assert "a.b.c" not in str(info.value)
