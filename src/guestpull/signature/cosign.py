"""Cosign key-based signatures: the ``sha256-<hex>.sig`` tag next to the image, checked with
``cryptography``.

Layout (signatures.md): an OCI image manifest tagged ``<algo>-<hex>.sig`` in the image's own
repository; one layer per signature, media type ``application/vnd.dev.cosign.simplesigning.v1+json``,
whose blob is the JSON payload and whose annotation ``dev.cosignproject.cosign/signature`` is
the base64 signature over the blob bytes.  The tag and blobs are read with the candidate's own
:class:`RegistryClient`: the same scheme (HTTP for an ``insecure`` registry), trust and
credentials as the image.  A missing tag means "no signature", never a network error.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from guestpull.distribution import RegistryClient
from guestpull.errors import NotFoundError, UnsupportedError
from guestpull.oci import Descriptor
from guestpull.signature.keys import CosignPublicKey
from guestpull.signature.simple import SignatureInvalid

SIGNATURE_LAYER_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
#: A payload is a few hundred bytes.
MAX_PAYLOAD_SIZE = 1 << 20
#: Signature layers read per image at most.
MAX_SIGNATURES = 64


@dataclass(frozen=True)
class CosignSignature:
    payload: bytes
    signature: bytes
    location: str  # e.g. "reg/app:sha256-….sig layer 0"


def signature_tag(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.sig"


async def read_cosign_signatures(
    client: RegistryClient, repository: str, digest: str
) -> list[CosignSignature]:
    """The signatures attached to ``digest`` (empty when the ``.sig`` tag does not exist)."""
    tag = signature_tag(digest)
    where = f"{client.registry}/{repository}:{tag}"
    try:
        manifest = await client.get_manifest(repository, tag)
    except NotFoundError:
        return []
    try:
        layers = json.loads(manifest.data).get("layers") or []
    except (ValueError, AttributeError):
        raise UnsupportedError(f"cosign signature manifest {where} is not a JSON object") from None
    if not isinstance(layers, list):
        raise UnsupportedError(f"cosign signature manifest {where}: layers is not a list")
    if len(layers) > MAX_SIGNATURES:
        raise UnsupportedError(f"cosign signature manifest {where} has {len(layers)} layers; "
                               f"at most {MAX_SIGNATURES} are read")
    found = []
    for number, layer in enumerate(layers):
        signature = await _read_layer(client, repository, layer, f"{where} layer {number}")
        if signature is not None:
            found.append(signature)
    return found


async def _read_layer(
    client: RegistryClient, repository: str, layer: object, where: str
) -> CosignSignature | None:
    if not isinstance(layer, dict) or layer.get("mediaType") != SIGNATURE_LAYER_TYPE:
        return None
    annotations = layer.get("annotations") or {}
    encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(encoded, str) or not isinstance(digest, str) or not isinstance(size, int):
        return None
    try:
        signature = base64.b64decode(encoded.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        signature = b""  # verification fails and says so
    payload = await client.fetch_blob_bytes(repository, Descriptor(SIGNATURE_LAYER_TYPE, digest, size), MAX_PAYLOAD_SIZE)
    return CosignSignature(payload, signature, where)


def verify_cosign(signature: CosignSignature, keys: list[CosignPublicKey]) -> CosignPublicKey:
    """The key that verifies ``signature`` over its payload; SignatureInvalid if none does."""
    for key in keys:
        if _verifies(key, signature.payload, signature.signature):
            return key
    raise SignatureInvalid("the signature does not verify with "
                           + ("the key" if len(keys) == 1 else f"any of the {len(keys)} keys"))


def _verifies(key: CosignPublicKey, payload: bytes, signature: bytes) -> bool:
    public = key.key
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(_hash_for(public)))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, payload)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _hash_for(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    # cosign (sigstore signature/ecdsa) pairs each curve with its hash size.
    size = key.curve.key_size
    if size > 384:
        return hashes.SHA512()
    if size > 256:
        return hashes.SHA384()
    return hashes.SHA256()
