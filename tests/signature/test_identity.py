"""signedIdentity matching (containers/image policy_reference_match.go), without servers."""

from __future__ import annotations

import pytest

from guestpull.reference import parse_reference
from guestpull.signature.identity import IdentityRule

D1 = "sha256:" + "1" * 64
BY_TAG = parse_reference("reg.local:5000/app/web:v1")
BY_DIGEST = parse_reference(f"reg.local:5000/app/web@{D1}")


@pytest.mark.parametrize(("rule", "intended", "signed", "ok"), [
    # matchRepoDigestOrExact: by tag → exact; by digest → same repository
    (IdentityRule(), BY_TAG, "reg.local:5000/app/web:v1", True),
    (IdentityRule(), BY_TAG, "reg.local:5000/app/web:v2", False),
    (IdentityRule(), BY_TAG, "reg.local:5000/app/web", False),  # cosign's tag-less identity
    (IdentityRule(), BY_TAG, "reg.local:5000/app/other:v1", False),
    (IdentityRule(), BY_DIGEST, "reg.local:5000/app/web:v1", True),
    (IdentityRule(), BY_DIGEST, "reg.local:5000/app/other:v1", False),
    # matchRepository
    (IdentityRule("matchRepository"), BY_TAG, "reg.local:5000/app/web:v9", True),
    (IdentityRule("matchRepository"), BY_TAG, "reg.local:5000/app/web", True),
    (IdentityRule("matchRepository"), BY_DIGEST, "reg.local:5000/app/web:v9", True),
    (IdentityRule("matchRepository"), BY_TAG, "reg.local:5000/app/webx:v1", False),
    # matchExact: signatures name tags, so pulls by digest never match
    (IdentityRule("matchExact"), BY_TAG, "reg.local:5000/app/web:v1", True),
    (IdentityRule("matchExact"), BY_TAG, "reg.local:5000/app/web:v2", False),
    (IdentityRule("matchExact"), BY_DIGEST, "reg.local:5000/app/web:v1", False),
    # exactReference / exactRepository ignore what was pulled
    (IdentityRule("exactReference", reference="other.local/signed:1"), BY_TAG, "other.local/signed:1", True),
    (IdentityRule("exactReference", reference="other.local/signed:1"), BY_TAG, "reg.local:5000/app/web:v1", False),
    (IdentityRule("exactRepository", reference="other.local/signed"), BY_TAG, "other.local/signed:7", True),
    (IdentityRule("exactRepository", reference="other.local/signed"), BY_TAG, "other.local/else:7", False),
    # remapIdentity: rewrite the pulled name's prefix, then matchRepoDigestOrExact
    (IdentityRule("remapIdentity", prefix="reg.local:5000/app", signed_prefix="prod.example.com/team"),
     BY_TAG, "prod.example.com/team/web:v1", True),
    (IdentityRule("remapIdentity", prefix="reg.local:5000/app", signed_prefix="prod.example.com/team"),
     BY_TAG, "reg.local:5000/app/web:v1", False),
    (IdentityRule("remapIdentity", prefix="reg.local:5000/ap", signed_prefix="prod.example.com/team"),
     BY_TAG, "reg.local:5000/app/web:v1", True),  # not a component boundary: no remap
    # normalisation: docker.io short names
    (IdentityRule(), parse_reference("busybox:1"), "docker.io/library/busybox:1", True),
    (IdentityRule(), parse_reference("busybox:1"), "busybox:1", True),
    # garbage identity never matches
    (IdentityRule("matchRepository"), BY_TAG, "NOT A REFERENCE", False),
])
def test_identity(rule: IdentityRule, intended, signed: str, ok: bool) -> None:
    assert rule.matches(intended, signed) is ok
