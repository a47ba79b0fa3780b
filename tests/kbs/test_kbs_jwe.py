"""JWE checks that the test KBS does not produce: algorithms against the key, enc, curve, extras."""

from __future__ import annotations

import base64
import json

import pytest
from joserfc import jwe
from joserfc.jwk import import_key

from guestpull.errors import DigestError, UnsupportedError
from guestpull.kbs.jwe import decrypt_response
from guestpull.kbs.token import TeeKey
from guestpull.testing.kbs import new_tee_key, tee_key_pem, tee_public_jwk


def encrypt(kind: str, alg: str, enc: str = "A256GCM", plaintext: bytes = b"payload") -> tuple[dict[str, str], TeeKey]:
    private = new_tee_key(kind)  # type: ignore[arg-type]
    public = import_key({k: v for k, v in tee_public_jwk(private).items() if k != "alg"})
    compact = jwe.encrypt_compact({"alg": alg, "enc": enc}, plaintext, public, algorithms=[alg, enc])
    names = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
    return dict(zip(names, compact.split("."), strict=True)), TeeKey.from_pem(tee_key_pem(private))


def body(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


def test_extra_members_are_ignored_as_upstream() -> None:
    doc, key = encrypt("ec-p256", "ECDH-ES+A256KW")
    # Upstream reads only the five members: an aad or unprotected header changes nothing.
    extra = {**doc, "aad": "ZXh0cmE", "header": {"alg": "dir"}}
    assert decrypt_response(body(extra), key, "kbs:///a/b/c") == b"payload"


@pytest.mark.parametrize(("kind", "alg", "fragment"), [
    ("rsa", "ECDH-ES+A256KW", "RSA TEE key takes RSA-OAEP-256 or RSA1_5"),
    ("ec-p256", "RSA-OAEP-256", r"EC TEE key takes ECDH-ES\+A256KW"),
])
def test_alg_must_fit_the_key(kind: str, alg: str, fragment: str) -> None:
    doc, _ = encrypt("ec-p256" if alg.startswith("ECDH") else "rsa", alg)
    _, key = encrypt(kind, "ECDH-ES+A256KW" if kind != "rsa" else "RSA-OAEP-256")
    with pytest.raises(UnsupportedError, match=fragment):
        decrypt_response(body(doc), key, "kbs:///a/b/c")


def test_other_enc_is_refused() -> None:
    doc, key = encrypt("rsa", "RSA-OAEP-256", enc="A128GCM")
    with pytest.raises(UnsupportedError, match="enc 'A128GCM'"):
        decrypt_response(body(doc), key, "kbs:///a/b/c")


def test_curve_must_match() -> None:
    doc, _ = encrypt("ec-p521", "ECDH-ES+A256KW")
    _, key = encrypt("ec-p256", "ECDH-ES+A256KW")
    with pytest.raises(DigestError, match="ephemeral key is on P-521, this guest's TEE key on P-256"):
        decrypt_response(body(doc), key, "kbs:///a/b/c")


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"<html>", "not JSON"),
    (b"[1]", "not a JSON object"),
    (body({"protected": "x"}), "no encrypted_key, iv, ciphertext, tag"),
])
def test_not_a_jwe(raw: bytes, fragment: str) -> None:
    _, key = encrypt("ec-p256", "ECDH-ES+A256KW")
    with pytest.raises(DigestError, match=fragment):
        decrypt_response(raw, key, "kbs:///a/b/c")


def test_protected_header_must_be_json() -> None:
    doc, key = encrypt("ec-p256", "ECDH-ES+A256KW")
    doc["protected"] = base64.urlsafe_b64encode(b"nope").decode()
    with pytest.raises(DigestError, match="protected header is not base64url JSON"):
        decrypt_response(body(doc), key, "kbs:///a/b/c")


def test_duplicate_members_are_refused() -> None:
    # Two "ciphertext" members: readers that keep the first and the last would disagree.
    doc, key = encrypt("ec-p256", "ECDH-ES+A256KW")
    raw = body(doc)[:-1] + b', "ciphertext": "AAAA"}'
    with pytest.raises(DigestError, match="duplicate key 'ciphertext'"):
        decrypt_response(raw, key, "kbs:///a/b/c")
