"""KBS tokens and TEE keys, as the attestation agent hands them out (coco-behaviour.md §9.2).

The AA answers ``GetToken("kbs")`` with JSON ``{"token": <JWT>, "tee_keypair": <PEM>}``: the
KBS token it obtained by attestation, and the private half of the key whose public half it
sent to the KBS, to which the KBS encrypts every resource.  The JWT's ``exp``/``nbf`` are read,
not verified (the KBS verifies it), as upstream's ``Token::new``.

Neither the token text nor the key ever appears in a repr, a log line or an error.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from guestpull.errors import AuthError, ConfigError
from guestpull.strictjson import load_json

if TYPE_CHECKING:
    from jwcrypto.jwk import JWK

#: Refresh a token this many seconds before its ``exp``, so it does not expire in flight.
EXPIRY_MARGIN = 5.0

#: The curves a TEE EC key may use (``kbs_protocol/src/keypair.rs``).
EC_CURVES = ("P-256", "P-521")


@dataclass(frozen=True)
class KbsToken:
    """A KBS bearer token and the validity it claims."""

    text: str = field(repr=False)
    exp: float | None = None
    nbf: float | None = None

    def expired(self, now: float | None = None) -> bool:
        """True once ``exp`` (less :data:`EXPIRY_MARGIN`) has passed; a token without exp never expires."""
        now = time.time() if now is None else now
        return self.exp is not None and self.exp - EXPIRY_MARGIN <= now


@dataclass(frozen=True)
class TeeKey:
    """The TEE's private key, as a jwcrypto JWK: RSA, or EC on P-256 / P-521."""

    jwk: JWK = field(repr=False)
    kind: str  # "RSA" | "EC"
    curve: str | None = None

    @classmethod
    def from_pem(cls, pem: str) -> TeeKey:
        """Load the AA's ``tee_keypair`` (RSA PKCS#1 or EC PKCS#8 PEM, as upstream)."""
        from jwcrypto.jwk import JWK

        try:
            jwk = JWK.from_pem(pem.encode())
        except (ValueError, TypeError):
            # The PEM is a private key: name nothing of it.
            raise AuthError(_bad_reply("tee_keypair is not a PEM private key")) from None
        if not jwk.has_private:
            raise AuthError(_bad_reply("tee_keypair is not a private key"))
        kind = jwk.get("kty")
        curve = jwk.get("crv")
        if kind == "RSA":
            return cls(jwk, "RSA")
        if kind == "EC" and curve in EC_CURVES:
            return cls(jwk, "EC", curve)
        raise AuthError(_bad_reply(
            f"tee_keypair is a {kind}{' ' + curve if curve else ''} key, not RSA nor EC P-256/P-521"))


class TokenProvider(Protocol):
    """Where a KBS token and its TEE key come from (the attestation agent, or a test stand-in)."""

    async def get_token(self) -> tuple[KbsToken, TeeKey]: ...


def parse_token(text: str) -> KbsToken:
    """Read ``exp``/``nbf`` from a JWT's claims without verifying it."""
    parts = text.split(".")
    if len(parts) != 3:
        raise AuthError(_bad_reply("the token is not a JWT (header.claims.signature)"))
    try:
        claims = load_json(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)), "JWT claims")
    except (binascii.Error, ValueError, ConfigError):
        raise AuthError(_bad_reply("the token's claims are not base64url JSON")) from None
    if not isinstance(claims, dict):
        raise AuthError(_bad_reply("the token's claims are not a JSON object"))
    return KbsToken(text, _timestamp(claims, "exp"), _timestamp(claims, "nbf"))


def parse_token_reply(data: bytes) -> tuple[KbsToken, TeeKey]:
    """The AA's ``GetTokenResponse.Token``: JSON ``{"token", "tee_keypair"}``."""
    try:
        reply = load_json(data, "GetToken reply")
    except ConfigError as err:
        raise AuthError(_bad_reply(f"it is not JSON: {err.message}")) from None
    if not isinstance(reply, dict):
        raise AuthError(_bad_reply("it is not a JSON object"))
    token, pem = reply.get("token"), reply.get("tee_keypair")
    if not isinstance(token, str) or not isinstance(pem, str):
        raise AuthError(_bad_reply('it lacks the strings "token" and "tee_keypair"'))
    return parse_token(token), TeeKey.from_pem(pem)


def printable(text: str) -> str:
    """``text`` a peer sent, fit for a one-line message: control characters become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def _timestamp(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(_bad_reply(f"the token's {name} claim is not a number"))
    return float(value)


def _bad_reply(why: str) -> str:
    return f"the attestation agent's KBS token reply is unusable: {why}"
