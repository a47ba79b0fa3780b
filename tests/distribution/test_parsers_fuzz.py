"""Property-based: random bytes and mutated valid documents into every network parser.

Only GuestpullError subclasses may escape: manifests and indexes (with any Content-Type and
pointing descriptor), image configs, WWW-Authenticate challenges and the realm URLs built
from them, token responses, redirect locations, Retry-After, and the strict JSON loader
under all of them.  The example counts (EXAMPLES) are reported in docs/threat-model.md.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestpull.url import URL

from guestpull import oci
from guestpull.distribution import auth, transport
from guestpull.errors import GuestpullError
from guestpull.strictjson import load_json
from guestpull_testkit.images import File, ImageSpec, LayerSpec, build_index
from support.fuzz import EXAMPLES, mutated

# EXAMPLES (400, or $GUESTPULL_FUZZ_EXAMPLES) per property; docs/threat-model.md reports it.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_IMAGE = ImageSpec([LayerSpec([File("a", b"a")]), LayerSpec([File("b", b"b")])]).build()
VALID = {
    "manifest": _IMAGE.manifest,
    "index": build_index([_IMAGE]),
    "config": _IMAGE.config,
    "token": json.dumps({"token": "abc.def.ghi", "expires_in": 60, "issued_at": "x"}).encode(),
}
MEDIA_TYPES = st.sampled_from(
    ["", oci.OCI_MANIFEST, oci.OCI_INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_MANIFEST_LIST,
     "application/json", "application/vnd.docker.distribution.manifest.v1+prettyjws", "text/\r\nx"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def value_replaced(draw: st.DrawFn, kind: str) -> bytes:
    """A valid document with one value, at a random depth, replaced by random JSON."""
    doc = json.loads(VALID[kind])
    target: Any = doc
    while isinstance(target, (dict, list)) and target and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target))))
        if not isinstance(target[key], (dict, list)):
            break
        target = target[key]
    if isinstance(target, dict) and target:
        target[draw(st.sampled_from(sorted(target)))] = draw(JSON_VALUES)
    elif isinstance(target, list) and target:
        target[draw(st.integers(0, len(target) - 1))] = draw(JSON_VALUES)
    return json.dumps(doc).encode()


def documents(kind: str) -> st.SearchStrategy[bytes]:
    """Random bytes, byte-level damage (support.fuzz), or a JSON value replaced."""
    return st.binary(max_size=300) | mutated(VALID[kind]) | value_replaced(kind)


def only_typed(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except GuestpullError:
        pass


@FUZZ
@given(documents("manifest") | documents("index"), MEDIA_TYPES, MEDIA_TYPES)
def test_manifest_documents(data: bytes, content_type: str, expected: str) -> None:
    only_typed(oci.parse_manifest_document, data, content_type, "m", expected_media_type=expected)
    only_typed(oci.ImageManifest.parse, data)
    only_typed(oci.ImageIndex.parse, data)


@FUZZ
@given(documents("config"))
def test_image_configs(data: bytes) -> None:
    only_typed(oci.ConfigFile.parse, data)


@FUZZ
@given(documents("token"))
def test_token_responses(data: bytes) -> None:
    only_typed(auth.token_from_response, data, now=0.0, wall_now=0.0)


@FUZZ
@given(st.text(max_size=200) | st.sampled_from([
    'Bearer realm="https://auth.example/token",service="r",scope="repository:a:pull"',
    'Basic realm="x", Bearer realm="file:///etc/passwd"',
    'Bearer realm="http://[::1",service=x',
    'Bearer realm="http://a:99999/t"',
]))
def test_www_authenticate(header: str) -> None:
    challenges = auth.parse_challenges(header)  # never raises
    for challenge in challenges:
        only_typed(auth.token_url, challenge, "repository:a:pull")
        auth.realm_for_message(challenge)
        auth.auth_failure("r", "a", challenge, status=401, had_credentials=True)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))
def test_strict_json(data: bytes) -> None:
    only_typed(load_json, data, "doc")


@FUZZ
@given(st.text(max_size=120) | st.sampled_from(["file:///etc/passwd", "//other:1/x", "http://[::1",
                                                 "http://a:99999/", "javascript:x", "https://ok/x"]))
def test_redirect_locations(location: str) -> None:
    try:
        target = transport._redirect_target(URL("https://registry.example/v2/x"), location)
    except GuestpullError:
        return
    assert target.scheme == "https" and target.host


@FUZZ
@given(st.text(max_size=60))
def test_retry_after(value: str) -> None:
    delay = transport._retry_after(value)
    assert delay is None or delay >= 0
