"""``signedIdentity``: does the identity a signature names fit the image being pulled?

containers-policy.json(5) and containers/image's ``policy_reference_match.go``.  "Intended" is
the reference the user asked for; "signed" is the payload's ``critical.identity.docker-reference``.
References are compared normalised (``docker.io/library/x``) and never get a default tag: a
signature naming a repository without a tag matches only rules that compare repositories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guestpull.errors import ConfigError, GuestpullError, Location
from guestpull.reference import Reference, parse_reference

MATCH_REPO_DIGEST_OR_EXACT = "matchRepoDigestOrExact"
IDENTITY_TYPES = (
    MATCH_REPO_DIGEST_OR_EXACT, "matchRepository", "matchExact",
    "exactReference", "exactRepository", "remapIdentity",
)


@dataclass(frozen=True)
class IdentityRule:
    type: str = MATCH_REPO_DIGEST_OR_EXACT
    reference: str | None = None  # exactReference: dockerReference; exactRepository: dockerRepository
    prefix: str | None = None  # remapIdentity
    signed_prefix: str | None = None

    def __str__(self) -> str:
        if self.reference is not None:
            return f"{self.type} {self.reference}"
        if self.prefix is not None:
            return f"{self.type} {self.prefix} → {self.signed_prefix}"
        return self.type

    def matches(self, intended: Reference, signed: str) -> bool:
        """Whether a signature naming ``signed`` may stand for a pull of ``intended``."""
        signature = _parse(signed)
        if signature is None:
            return False
        if self.type == "matchExact":
            return _has_tag_or_digest(signature) and str(signature) == str(intended)
        if self.type == "matchRepository":
            return signature.name == intended.name
        if self.type == "exactReference":
            wanted = _parse(self.reference or "")
            return wanted is not None and _has_tag_or_digest(wanted) and (
                _has_tag_or_digest(signature) and str(signature) == str(wanted))
        if self.type == "exactRepository":
            wanted = _parse(self.reference or "")
            return wanted is not None and signature.name == wanted.name
        if self.type == "remapIdentity":
            return _repo_digest_or_exact(self.remap(intended), signature)
        return _repo_digest_or_exact(intended, signature)

    def remap(self, intended: Reference) -> Reference:
        """remapIdentity: ``intended`` with ``prefix`` replaced by ``signedPrefix``, if it matches."""
        text = str(intended)
        assert self.prefix is not None and self.signed_prefix is not None
        if not prefix_matches(text, self.prefix):
            return intended
        remapped = _parse(self.signed_prefix + text[len(self.prefix):])
        return remapped if remapped is not None else intended


def prefix_matches(text: str, prefix: str) -> bool:
    """``prefix`` covers ``text`` up to a ``/``, ``:`` or ``@`` boundary (refMatchesPrefix)."""
    if not text.startswith(prefix):
        return False
    return len(text) == len(prefix) or text[len(prefix)] in "/:@"


def _repo_digest_or_exact(intended: Reference, signature: Reference) -> bool:
    if not _has_tag_or_digest(signature):
        return False
    if intended.tag is not None:
        return str(signature) == str(intended)
    if intended.digest is not None:
        # The digest itself is checked against the signed manifest digest elsewhere.
        return signature.name == intended.name
    return False


def _has_tag_or_digest(ref: Reference) -> bool:
    return ref.tag is not None or ref.digest is not None


def _parse(text: str) -> Reference | None:
    try:
        return parse_reference(text, default_tag=False)
    except GuestpullError:
        return None


def parse_identity_rule(value: Any, source: str, field: str) -> IdentityRule:
    """A ``signedIdentity`` object (absent: matchRepoDigestOrExact); ConfigError if malformed."""
    if value is None:
        return IdentityRule()

    def error(message: str, sub: str = "") -> ConfigError:
        return ConfigError(message, location=Location(file=source, field=field + sub))

    if not isinstance(value, dict):
        raise error("expected a JSON object")
    kind = value.get("type")
    fields = {
        "exactReference": ("dockerReference",),
        "exactRepository": ("dockerRepository",),
        "remapIdentity": ("prefix", "signedPrefix"),
    }.get(kind, ()) if isinstance(kind, str) else ()
    if kind not in IDENTITY_TYPES:
        raise error(f"unknown signedIdentity type {kind!r} (expected one of {', '.join(IDENTITY_TYPES)})",
                    ".type")
    for key in value:
        if key != "type" and key not in fields:
            raise error(f"unknown field {key!r} for signedIdentity type {kind}", f".{key}")
    texts = {}
    for key in fields:
        text = value.get(key)
        if not isinstance(text, str) or not text:
            raise error(f"{kind} needs {key} (a non-empty string)", f".{key}")
        texts[key] = text
    if kind == "exactReference":
        ref = _parse(texts["dockerReference"])
        if ref is None or not _has_tag_or_digest(ref):
            raise error("dockerReference must be a reference with a tag or digest", ".dockerReference")
        return IdentityRule(kind, reference=texts["dockerReference"])
    if kind == "exactRepository":
        ref = _parse(texts["dockerRepository"])
        if ref is None:
            raise error("dockerRepository is not a valid repository name", ".dockerRepository")
        return IdentityRule(kind, reference=texts["dockerRepository"])
    if kind == "remapIdentity":
        return IdentityRule(kind, prefix=texts["prefix"], signed_prefix=texts["signedPrefix"])
    return IdentityRule(kind)
