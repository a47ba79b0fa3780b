"""containers-policy.json parsing and scope lookup, without servers."""

from __future__ import annotations

import json

import pytest

from guestpull.errors import ConfigError, UnsupportedError
from guestpull.reference import parse_reference
from guestpull.signature.policy import Policy, policy_scopes

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def parse(doc: dict) -> Policy:
    return Policy.parse(json.dumps(doc).encode(), "policy.json")


def scope(doc: dict, image: str) -> str:
    return parse(doc).scope_for(parse_reference(image)).scope


def test_scopes_most_specific_first() -> None:
    ref = parse_reference("reg.example.com:5000/a/b/c:v1")
    assert policy_scopes(ref) == [
        "reg.example.com:5000/a/b/c:v1", "reg.example.com:5000/a/b/c", "reg.example.com:5000/a/b",
        "reg.example.com:5000/a", "reg.example.com:5000", "*.example.com", "*.com",
    ]


def test_scopes_of_a_digest_and_tag_reference() -> None:
    digest = "sha256:" + "a" * 64
    scopes = policy_scopes(parse_reference(f"reg.local/app:v1@{digest}"))
    assert scopes[:3] == [f"reg.local/app:v1@{digest}", f"reg.local/app@{digest}", "reg.local/app:v1"]


SCOPED = {
    "default": REJECT,
    "transports": {"docker": {
        "reg.example.com/team/app:v1": ACCEPT,
        "reg.example.com/team/app": ACCEPT,
        "reg.example.com/team": ACCEPT,
        "reg.example.com": ACCEPT,
        "*.example.com": ACCEPT,
        "": ACCEPT,
    }},
}


@pytest.mark.parametrize(("image", "expected"), [
    ("reg.example.com/team/app:v1", "reg.example.com/team/app:v1"),
    ("reg.example.com/team/app:v2", "reg.example.com/team/app"),
    ("reg.example.com/team/app-more:v1", "reg.example.com/team"),  # not a prefix of app
    ("reg.example.com/team/app/sub:v1", "reg.example.com/team/app"),
    ("reg.example.com/other:v1", "reg.example.com"),
    ("reg.example.com:5000/other:v1", "*.example.com"),  # port: another registry; wildcard ignores it
    ("other.example.com/x:v1", "*.example.com"),
    ("example.com/x:v1", '""'),  # *.example.com does not match the bare domain
    ("quay.io/x:v1", '""'),
])
def test_precedence(image: str, expected: str) -> None:
    assert scope(SCOPED, image) == expected


def test_default_when_nothing_matches() -> None:
    doc = {"default": REJECT, "transports": {"docker": {"reg.local/app": ACCEPT}}}
    match = parse(doc).scope_for(parse_reference("reg.local/other"))
    assert match.scope == "default" and match.requirements[0].type == "reject"


def test_docker_hub_names_are_normalised() -> None:
    doc = {"default": REJECT, "transports": {"docker": {"docker.io/library/busybox": ACCEPT}}}
    assert scope(doc, "busybox") == "docker.io/library/busybox"


def test_digest_scope() -> None:
    digest = "sha256:" + "b" * 64
    doc = {"default": REJECT, "transports": {"docker": {f"reg.local/app@{digest}": ACCEPT}}}
    assert scope(doc, f"reg.local/app@{digest}") == f"reg.local/app@{digest}"
    assert scope(doc, "reg.local/app:v1") == "default"


def test_requirements_parse() -> None:
    doc = {"default": [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"},
        {"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/a", "/b"],
         "signedIdentity": {"type": "matchRepository"}},
        {"type": "signedBy", "keyType": "GPGKeys", "keyData": "AAAA"},
        {"type": "sigstoreSigned", "keyData": "AAAA",
         "signedIdentity": {"type": "exactReference", "dockerReference": "reg/app:v1"}},
    ]}
    reqs = parse(doc).default
    assert reqs[0].keys.paths == ("/k.gpg",) and str(reqs[0].identity) == "matchRepoDigestOrExact"
    assert reqs[1].keys.paths == ("/a", "/b") and reqs[1].identity.type == "matchRepository"
    assert reqs[2].keys.data == b"AAAA"
    assert reqs[3].identity.reference == "reg/app:v1"


@pytest.mark.parametrize(("doc", "field", "words"), [
    ({}, "default", "no \"default\""),
    ({"default": []}, "default", "empty"),
    ({"default": [{"type": "signedBaseLayer"}]}, "default[0].type", "unknown requirement type"),
    ({"default": [{"type": "signedBy", "keyType": "X509Certificates", "keyPath": "/k"}]},
     "default[0].keyType", "GPGKeys"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}, "default[0]", "exactly one"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a", "keyData": "AA"}]},
     "default[0]", "exactly one"),
    ({"default": [{"type": "reject", "keyPath": "/a"}]}, "default[0].keyPath", "unknown field"),
    ({"default": ACCEPT, "transports": {"docker": {"reg": [{"type": "nope"}]}}},
     "transports.docker['reg'][0].type", "unknown requirement type"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k",
                   "signedIdentity": {"type": "matchSomething"}}]},
     "default[0].signedIdentity.type", "unknown signedIdentity"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k",
                   "signedIdentity": {"type": "exactReference", "dockerReference": "reg/app"}}]},
     "default[0].signedIdentity.dockerReference", "tag or digest"),
])
def test_invalid_policies_name_the_field(doc: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(doc)
    assert caught.value.location.file == "policy.json"
    assert caught.value.location.field == field
    assert words in caught.value.message


def test_duplicate_keys_and_bad_json_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'default'"):
        Policy.parse(b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}', "p")
    with pytest.raises(ConfigError) as caught:
        Policy.parse(b'{\n"default": [\n', "p")
    assert caught.value.location.line is not None


def test_keyless_sigstore_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="keyless") as caught:
        parse({"default": [{"type": "sigstoreSigned", "fulcio": {}, "rekorPublicKeyPath": "/r"}]})
    assert caught.value.location.field == "default[0].fulcio"
