"""The strict JSON reader: every refusal of issue 9 item 2/6/7, and what it still accepts."""

from __future__ import annotations

import pytest

from guestpull.errors import AuthError, ConfigError
from guestpull.strictjson import MAX_JSON_DEPTH, json_depth, load_json


def test_accepts_ordinary_json_with_brackets_in_strings() -> None:
    assert load_json(b'{"a": [1, {"b": "[[{{\\"]]"}], "c": null}', "d") == {
        "a": [1, {"b": '[[{{"]]'}], "c": None
    }


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b'{"layers": [], "layers": [1]}', "duplicate key 'layers'"),
        (b'{"a": {"digest": "x", "digest": "y"}}', "duplicate key 'digest'"),
        (b"[" * 5000 + b"]" * 5000, "nested 5000 levels"),
        ('{"a": 1}'.encode("utf-16"), "UTF-8 without a byte order mark"),
        ('{"a": 1}'.encode("utf-16-le"), "UTF-8 without a byte order mark"),
        ('{"a": 1}'.encode("utf-32-be"), "UTF-8 without a byte order mark"),
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        (b'{"a": "\xff"}', "UTF-8: invalid byte at offset 7"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"a": }', "not valid JSON"),
    ],
)
def test_refuses(data: bytes, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as caught:
        load_json(data, "image manifest x")
    assert caught.value.location is not None and caught.value.location.file == "image manifest x"
    assert len(str(caught.value)) < 400


def test_depth_limit_is_exact() -> None:
    assert load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, "d") is not None
    with pytest.raises(ConfigError):
        load_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "d")


def test_depth_ignores_brackets_in_strings_and_escapes() -> None:
    assert json_depth(b'{"a": "[[[[\\"[[[", "b": [1]}') == 2
    assert json_depth(b'"' + b"[" * 100000 + b'"') == 0


def test_error_class_is_the_callers() -> None:
    with pytest.raises(AuthError):
        load_json(b"{", "token response", error=AuthError)
