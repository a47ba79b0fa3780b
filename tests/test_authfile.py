"""auth.json parsing and credential matching (coco-behaviour.md §6.1–6.2)."""

from __future__ import annotations

import base64
import json

import pytest

from guestpull.authfile import AuthFile, Credentials
from guestpull.errors import ConfigError
from guestpull.reference import parse_reference

SECRET = "Passw0rd!qaz"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def auth_file(entries: dict[str, str]) -> AuthFile:
    data = {"auths": {key: {"auth": value} for key, value in entries.items()}}
    return AuthFile.parse(json.dumps(data).encode(), "auth.json")


def test_upstream_example() -> None:
    # The upstream test data: the value decodes to "liudalibj:Passw0rd!qaz\n".
    value = "bGl1ZGFsaWJqOlBhc3N3MHJkIXFhego="
    auths = auth_file({"https://index.docker.io/v1/": value, "quay.io": value})
    expected = Credentials("liudalibj", SECRET)
    assert auths.lookup(parse_reference("mysql:latest")) == expected
    assert auths.lookup(parse_reference("quay.io/confidential-containers/image:latest")) == expected
    assert auths.lookup(parse_reference("gcr.io/google-containers/busybox:1.27.2")) is None


def test_longest_path_wins_over_registry() -> None:
    auths = auth_file(
        {
            "registry.local:5000": b64("host:h"),
            "registry.local:5000/team": b64("team:t"),
            "registry.local:5000/team/app": b64("app:a"),
        }
    )
    assert auths.lookup(parse_reference("registry.local:5000/team/app:1")) == Credentials("app", "a")
    assert auths.lookup(parse_reference("registry.local:5000/team/other")) == Credentials("team", "t")
    assert auths.lookup(parse_reference("registry.local:5000/x/y")) == Credentials("host", "h")
    # a key is a path prefix by component, not by characters
    assert auths.lookup(parse_reference("registry.local:5000/teamx/app")) == Credentials("host", "h")


@pytest.mark.parametrize(
    "key",
    ["docker.io", "https://index.docker.io/v1/", "http://registry-1.docker.io/x", "index.docker.io",
     "registry-1.docker.io", "https://docker.io/v1/"],
)
def test_docker_hub_keys_match_docker_io_images(key: str) -> None:
    auths = auth_file({key: b64("u:p")})
    assert auths.lookup(parse_reference("busybox")) == Credentials("u", "p")


def test_key_with_scheme_matches_by_host_only() -> None:
    auths = auth_file({"https://registry.local:5000/v2/whatever": b64("u:p")})
    assert auths.lookup(parse_reference("registry.local:5000/a")) == Credentials("u", "p")
    assert auths.lookup(parse_reference("registry.local:5001/a")) is None


def test_key_with_path_and_no_scheme_does_not_match_other_paths() -> None:
    auths = auth_file({"quay.io/ns": b64("u:p")})
    assert auths.lookup(parse_reference("quay.io/other/img")) is None
    assert auths.lookup(parse_reference("quay.io/ns/img")) == Credentials("u", "p")


@pytest.mark.parametrize(
    ("decoded", "user", "password"),
    [
        ("u:p", "u", "p"),
        ("u:p:with:colons", "u", "p:with:colons"),
        ("u:\np\n\n", "u", "p"),
        ("u:p\r\n", "u", "p\r"),
        ("\nu:p", "\nu", "p"),
        ("u:", "u", ""),
        (":p", "", "p"),
    ],
)
def test_decoding(decoded: str, user: str, password: str) -> None:
    auths = auth_file({"r.local": b64(decoded)})
    assert auths.lookup(parse_reference("r.local/x")) == Credentials(user, password)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", '"auths"'),
        (b"{}", '"auths"'),
        (b'{"auths": []}', '"auths"'),
        (b'{"auths": {"r.local": {"identitytoken": "x"}}}', 'string "auth"'),
        (b'{"auths": {"r.local": {"auth": 5}}}', 'string "auth"'),
        (b'{"auths": {"r.local": "x"}}', 'string "auth"'),
        # Strict JSON (issue 9): two entries for one registry are ambiguous, not "last wins".
        (b'{"auths": {"r.local": {"auth": "eDp5"}, "r.local": {"auth": "eDp6"}}}', "duplicate key 'r.local'"),
        ('{"auths": {}}'.encode("utf-16"), "UTF-8"),
        (b"[" * 100 + b"]" * 100, "nested 100 levels"),
    ],
)
def test_parse_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AuthFile.parse(data, "auth.json")
    assert fragment in str(info.value)
    assert "auth.json" in str(info.value)


def test_strict_json_errors_never_show_a_password() -> None:
    secret = base64.b64encode(b"user:hunter2-secret").decode()
    for data in (f'{{"auths": {{"r": {{"auth": "{secret}", "auth": "{secret}"}}}}}}',
                 f'{{"auths": {{"r": {{"auth": "{secret}"}}}}, }}'):
        with pytest.raises(ConfigError) as info:
            AuthFile.parse(data.encode(), "auth.json")
        assert secret not in str(info.value) and "hunter2" not in str(info.value)


def test_other_fields_ignored() -> None:
    data = {
        "auths": {"r.local": {"auth": b64("u:p"), "email": "x"}},
        "credHelpers": {"x": "y"},
        "insecure-registries": ["r.local"],
    }
    auths = AuthFile.parse(json.dumps(data).encode(), "auth.json")
    assert auths.lookup(parse_reference("r.local/a")) == Credentials("u", "p")


@pytest.mark.parametrize(
    "value",
    [
        b64("no-colon-" + SECRET),
        "%%%" + SECRET,
        b64("u:" + SECRET)[:-2],
        base64.b64encode(b"u:\xff" + SECRET.encode()).decode(),
    ],
)
def test_decode_errors_never_show_the_secret(value: str) -> None:
    auths = auth_file({"r.local": value, "other.local": b64("u:p")})
    # a bad entry for another registry does not matter
    assert auths.lookup(parse_reference("other.local/a")) == Credentials("u", "p")
    with pytest.raises(ConfigError) as info:
        auths.lookup(parse_reference("r.local/a"))
    text = str(info.value) + json.dumps(info.value.to_dict())
    assert "illegal registry auth" in text
    assert "auths.r.local.auth" in text
    assert SECRET not in text
    assert value not in text


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("alice", SECRET)
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert "alice" in repr(creds)
