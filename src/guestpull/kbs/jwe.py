"""Decrypt a KBS resource response: a flattened JWE (coco-behaviour.md §9.2).

Trustee encrypts each resource to the TEE key named in the token: ``ECDH-ES+A256KW`` (P-256,
P-521) or ``RSA-OAEP-256`` (and the deprecated ``RSA1_5``, which upstream accepts whenever the
TEE key is RSA), content always ``A256GCM`` with the ``protected`` text as AAD.  The JOSE work
is jwcrypto's; this module only chooses what is allowed, as upstream's ``decrypt_response``:

* only ``protected``, ``encrypted_key``, ``iv``, ``ciphertext`` and ``tag`` are read: upstream
  ignores an ``aad`` or unprotected ``header`` member, so they must not change the result here;
* the algorithm must fit the TEE key (EC: ECDH-ES+A256KW on the key's curve; RSA: RSA-OAEP-256
  or RSA1_5) and ``enc`` must be A256GCM (upstream decrypts A256GCM whatever ``enc`` says;
  Trustee always says A256GCM, so anything else is refused rather than reinterpreted).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from guestpull.errors import ConfigError, DigestError, UnsupportedError, clip
from guestpull.kbs.token import TeeKey
from guestpull.strictjson import load_json

log = logging.getLogger(__name__)

ECDH_ES_A256KW = "ECDH-ES+A256KW"
RSA_OAEP_256 = "RSA-OAEP-256"
RSA1_5 = "RSA1_5"
A256GCM = "A256GCM"

_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
_ALGS_FOR_KEY = {"EC": (ECDH_ES_A256KW,), "RSA": (RSA_OAEP_256, RSA1_5)}


def decrypt_response(body: bytes, key: TeeKey, what: str) -> bytes:
    """The plaintext of a KBS response ``body`` for ``what`` (the resource URI, for messages)."""
    members = _members(body, what)
    header = _protected_header(members["protected"], what)
    alg = _check_header(header, key, what)
    from jwcrypto.common import JWException
    from jwcrypto.jwe import JWE

    jwe = JWE(algs=[alg, A256GCM])
    try:
        jwe.deserialize(json.dumps(members), key=key.jwk)
    except (JWException, ValueError, TypeError) as err:
        raise DigestError(
            f"cannot decrypt the KBS response for {what} ({alg}, {A256GCM}): "
            f"{_reason(err)}",
            hint="the KBS encrypted it to another key than this guest's TEE key, or the "
            "response was altered in transit",
        ) from None
    if alg == RSA1_5:
        log.warning("the KBS used the deprecated RSA1_5 key encryption for %s", what)
    payload: bytes = jwe.payload
    return payload


def _members(body: bytes, what: str) -> dict[str, str]:
    try:
        doc = load_json(body, "KBS response")
    except ConfigError as err:
        raise DigestError(f"the KBS response for {what} is not JSON (expected a JWE): {err.message}") from None
    if not isinstance(doc, dict):
        raise DigestError(f"the KBS response for {what} is not a JSON object (expected a JWE)")
    missing = [name for name in _MEMBERS if not isinstance(doc.get(name), str)]
    if missing:
        raise DigestError(
            f"the KBS response for {what} is not a flattened JWE: no {', '.join(missing)}")
    return {name: doc[name] for name in _MEMBERS}


def _protected_header(text: str, what: str) -> dict[str, Any]:
    try:
        header = load_json(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "JWE header")
    except (binascii.Error, ValueError, ConfigError):
        raise DigestError(f"the KBS response for {what}: the JWE protected header is not "
                          "base64url JSON") from None
    if not isinstance(header, dict):
        raise DigestError(f"the KBS response for {what}: the JWE protected header is not an object")
    return header


def _check_header(header: dict[str, Any], key: TeeKey, what: str) -> str:
    alg, enc = header.get("alg"), header.get("enc")
    allowed = _ALGS_FOR_KEY[key.kind]
    if alg not in allowed:
        raise UnsupportedError(
            f"the KBS encrypted {what} with alg {alg!r}; this guest's {key.kind} TEE key "
            f"takes {' or '.join(allowed)}")
    if enc != A256GCM:
        raise UnsupportedError(
            f"the KBS encrypted {what} with enc {enc!r}; the KBS protocol uses {A256GCM}")
    if key.kind == "EC":
        epk = header.get("epk")
        curve = epk.get("crv") if isinstance(epk, dict) else None
        if curve != key.curve:
            raise DigestError(
                f"the KBS response for {what}: the JWE's ephemeral key is on "
                f"{curve or 'no curve'}, this guest's TEE key on {key.curve}")
    return str(alg)


def _reason(err: Exception) -> str:
    # jwcrypto reports the failure of each recipient in its message; name the cause in words.
    text = str(err)
    if "InvalidTag" in text:
        return ("the authentication tag does not verify: the ciphertext, IV, tag or protected "
                "header (the AAD) was altered, or the content key is wrong")
    if "InvalidUnwrap" in text or "Decryption failed" in text:
        return "the content key does not unwrap with this guest's TEE key"
    return clip(text.strip() or type(err).__name__)
