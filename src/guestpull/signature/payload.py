"""The signed JSON both formats carry: what image (manifest digest) under which name.

```json
{"critical": {"identity": {"docker-reference": "reg.local:5000/app/web:v1"},
              "image": {"docker-manifest-digest": "sha256:…"},
              "type": "atomic container signature"},
 "optional": {…}}
```

containers-signature(5): ``critical`` holds exactly these three, ``type`` names the format
(``atomic container signature`` for simple signing, ``cosign container image signature`` for
cosign).  Parsing happens only after the cryptographic signature verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from guestpull.errors import clip

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"


class PayloadError(Exception):
    """The payload is not a valid signature claim (the reason is for the policy message)."""


@dataclass(frozen=True)
class SignedClaim:
    manifest_digest: str
    docker_reference: str


def parse_payload(data: bytes, expected_type: str) -> SignedClaim:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("the signed payload is not JSON") from None
    critical = _object(doc, "payload").get("critical")
    critical = _object(critical, "critical")
    if set(critical) != {"type", "image", "identity"}:
        raise PayloadError(f"critical has fields {clip(sorted(critical))}, expected identity, image and type")
    if critical["type"] != expected_type:
        raise PayloadError(f"critical.type is {clip(repr(critical['type']))}, expected {expected_type!r}")
    digest = _object(critical["image"], "critical.image").get("docker-manifest-digest")
    reference = _object(critical["identity"], "critical.identity").get("docker-reference")
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise PayloadError("critical.image.docker-manifest-digest and "
                           "critical.identity.docker-reference must be strings")
    optional = doc.get("optional")
    if optional is not None and not isinstance(optional, dict):
        raise PayloadError("optional must be an object")
    return SignedClaim(digest, reference)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} is not a JSON object")
    return value
