"""Property tests (issue 9): random and mutated user input to the parsers of Init-Data,
cdh.toml, registries.conf and auth.json — only GuestpullError subclasses escape.

Each test states its example count (``max_examples``); mutated inputs start from a valid
document and flip, insert or delete bytes, so most examples get past the first check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fuzz import EXAMPLES, mutated

from guestpull.authfile import AuthFile
from guestpull.config import parse_aa_config, parse_cdh_config, parse_registries_config
from guestpull.errors import GuestpullError
from guestpull.initdata import InitData, decode_annotation, encode_annotation
from guestpull.reference import parse_reference

SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

CDH_TOML = b'''[kbc]
name = "offline_fs_kbc"
url = "http://127.0.0.1:8080"

[image]
work_dir = "/run/image"
max_concurrent_layer_downloads_per_image = 3
image_security_policy_uri = "kbs:///default/security-policy/test"
extra_root_certificates = ["""-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----"""]

[image.image_pull_proxy]
https_proxy = "http://proxy:3128"
no_proxy = "localhost"

[[image.registry_config.registry]]
location = "registry.example:5000"
insecure = true
[[image.registry_config.registry.mirror]]
location = "mirror.example"
'''

REGISTRIES_CONF = b'''unqualified-search-registries = ["docker.io", "quay.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "example.com/foo"
location = "internal.example/foo"
insecure = false
blocked = false
[[registry.mirror]]
location = "mirror.example/foo"
pull-from-mirror = "digest-only"
'''

INITDATA = ('''version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = \'\'\'
[token_configs.kbs]
url = "http://kbs"
\'\'\'
"cdh.toml" = \'\'\'
''' + CDH_TOML.decode() .replace("'''", "") + '''\'\'\'
"policy.rego" = \'\'\'
package agent_policy
default AllowRequestsFailingPolicy := true
\'\'\'
''').encode()

AUTH_JSON = json.dumps({"auths": {
    "registry.example:5000": {"auth": base64.b64encode(b"user:pass").decode()},
    "docker.io/library": {"auth": base64.b64encode(b"u:p\n").decode()},
    "quay.io": {"auth": "bm9jb2xvbg=="},
}}).encode()


def only_typed_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except GuestpullError:
        pass


def some_input(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600), mutated(valid))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# --- Init-Data -------------------------------------------------------------------------


def _use_initdata(data: bytes) -> None:
    document = InitData.parse(data, "initdata.toml")
    for key in document.data:
        if key.endswith(".toml"):
            document.parse_embedded(key)
    document.cdh_config()
    document.aa_config()
    assert isinstance(document.unknown_data_keys, list)
    assert isinstance(document.digest(), bytes)


@SETTINGS
@given(some_input(INITDATA))
def test_initdata_parse_raises_only_typed_errors(data: bytes) -> None:
    only_typed_errors(lambda: _use_initdata(data))


@SETTINGS
@given(st.one_of(st.text(max_size=300), mutated(encode_annotation(INITDATA).encode()).map(
    lambda b: b.decode("latin-1"))))
def test_initdata_annotation_decoding_raises_only_typed_errors(value: str) -> None:
    only_typed_errors(lambda: _use_initdata(decode_annotation(value)))


# --- cdh.toml, aa.toml, registries.conf ------------------------------------------------


@SETTINGS
@given(some_input(CDH_TOML))
def test_cdh_toml_raises_only_typed_errors(data: bytes) -> None:
    only_typed_errors(lambda: parse_cdh_config(_text(data), "cdh.toml"))
    only_typed_errors(lambda: parse_aa_config(_text(data), "aa.toml"))


@SETTINGS
@given(some_input(REGISTRIES_CONF))
def test_registries_conf_raises_only_typed_errors(data: bytes) -> None:
    only_typed_errors(lambda: parse_registries_config(_text(data), "registries.conf"))


# --- auth.json -------------------------------------------------------------------------

REFERENCES = [parse_reference(r) for r in (
    "registry.example:5000/a/b:1", "docker.io/library/busybox", "quay.io/x/y@sha256:" + "a" * 64,
)]


def _use_auth(data: bytes) -> None:
    auth = AuthFile.parse(data, "auth.json")
    for ref in REFERENCES:
        only_typed_errors(lambda ref=ref: auth.lookup(ref))


@SETTINGS
@given(some_input(AUTH_JSON))
def test_auth_json_raises_only_typed_errors(data: bytes) -> None:
    only_typed_errors(lambda: _use_auth(data))


def test_the_valid_samples_are_valid() -> None:
    """The mutations start from documents each parser accepts (else they test little)."""
    _use_initdata(INITDATA)
    parse_cdh_config(CDH_TOML.decode(), "cdh.toml")
    parse_registries_config(REGISTRIES_CONF.decode(), "registries.conf")
    auth = AuthFile.parse(AUTH_JSON, "auth.json")
    assert auth.lookup(REFERENCES[0]) is not None
