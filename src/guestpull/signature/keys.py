"""The keys a policy names: OpenPGP keyrings (signedBy) and cosign public keys (sigstoreSigned).

Key files are resource URIs (bare path, ``file://``, ``kbs://``) read through the pull's
resource getter; inline ``keyData`` is base64 (containers/image) — for sigstoreSigned also raw
PEM, as image-rs reads it.  Loaded keys are cached per source: a long-lived verifier reads each
key once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pysequoia
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from guestpull.config import ResourceGetter
from guestpull.errors import ConfigError
from guestpull.signature.policy import KeySource

MAX_KEY_SIZE = 1 << 20

CosignKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class GpgKeyring:
    certs: tuple[pysequoia.Cert, ...]
    source: str

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(c.fingerprint for c in self.certs)


@dataclass(frozen=True)
class CosignPublicKey:
    key: CosignKey
    source: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo (what ``cosign public-key`` users compare)."""
        der = self.key.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        return "sha256:" + digest.finalize().hex()


class KeyLoader:
    """Loads and caches the keys of a :class:`KeySource`."""

    def __init__(self, resolver: ResourceGetter, policy_source: str) -> None:
        self._resolver = resolver
        self._policy_source = policy_source
        self._cache: dict[tuple[str, KeySource], Any] = {}

    def gpg(self, keys: KeySource) -> GpgKeyring:
        return self._cached("gpg", keys, self._load_gpg)  # type: ignore[no-any-return]

    def cosign(self, keys: KeySource) -> list[CosignPublicKey]:
        return self._cached("cosign", keys, self._load_cosign)  # type: ignore[no-any-return]

    def _cached(self, kind: str, keys: KeySource, load: Callable[[KeySource], Any]) -> Any:
        if (kind, keys) not in self._cache:
            self._cache[(kind, keys)] = load(keys)
        return self._cache[(kind, keys)]

    def _blobs(self, keys: KeySource, *, raw_pem_ok: bool) -> list[tuple[bytes, str]]:
        if keys.data is not None:
            where = f"{self._policy_source}: {keys.field}"
            return [(decode_key_data(keys.data, where, raw_pem_ok=raw_pem_ok), where)]
        out = []
        for uri in keys.paths:
            data = self._resolver.get(uri)
            if len(data) > MAX_KEY_SIZE:
                raise ConfigError(f"key file {uri} is larger than 1 MiB")
            out.append((data, uri))
        return out

    def _load_gpg(self, keys: KeySource) -> GpgKeyring:
        certs: list[pysequoia.Cert] = []
        for data, where in self._blobs(keys, raw_pem_ok=False):
            certs += parse_gpg_keyring(data, where)
        return GpgKeyring(tuple(certs), keys.describe())

    def _load_cosign(self, keys: KeySource) -> list[CosignPublicKey]:
        return [CosignPublicKey(parse_cosign_key(data, where), where)
                for data, where in self._blobs(keys, raw_pem_ok=True)]


def decode_key_data(data: bytes, where: str, *, raw_pem_ok: bool) -> bytes:
    if raw_pem_ok and data.lstrip().startswith(b"-----BEGIN"):
        return data
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where} is not valid base64") from None


def parse_gpg_keyring(data: bytes, where: str) -> list[pysequoia.Cert]:
    """Every OpenPGP certificate in a keyring (binary or armored); ConfigError if none."""
    try:
        certs = pysequoia.Cert.split_bytes(data)
    except Exception as err:  # pysequoia raises plain exceptions (ValueError/RuntimeError)
        raise ConfigError(f"{where} is not an OpenPGP keyring: {first_line(err)}") from None
    if not certs:
        raise ConfigError(f"{where} holds no OpenPGP key")
    return list(certs)


def parse_cosign_key(data: bytes, where: str) -> CosignKey:
    """A PEM public key of a type cosign signs with (ECDSA, RSA, Ed25519)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise ConfigError(f"{where} is not a PEM public key: {first_line(err)}") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise ConfigError(f"{where}: {type(key).__name__} keys are not supported for cosign "
                          "(ECDSA, RSA or Ed25519)")
    return key


def first_line(err: BaseException) -> str:
    """pysequoia appends a Rust backtrace to its messages: keep the sentence."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
