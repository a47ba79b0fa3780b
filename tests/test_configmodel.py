"""configmodel: the strict fast path and the pydantic twin agree; only the twin judges doubt."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from guestpull import configmodel
from guestpull.config import (
    AaConfig,
    CdhConfig,
    ImageConfig,
    KbcConfig,
    Mirror,
    RegistriesConfig,
    RegistryRule,
    parse_cdh_config,
    parse_registries_config,
)
from guestpull.configmodel import Model

CDH = """\
socket = "unix:///run/cdh.sock"
skip_sealed_secret_verification = true
credentials = [{resource_uri = "kbs:///default/credential/c", path = "/run/confidential-containers/cdh/kbs/c"}]
log = {level = "debug"}
[aa]
aa_socket = "unix:///run/aa.sock"
[kbc]
name = "cc_kbc"
url = "http://1.2.3.4:8080"
[image]
work_dir = "/run/image-rs"
max_concurrent_layer_downloads_per_image = 5
image_security_policy_uri = "kbs:///default/security-policy/test"
authenticated_registry_credentials_uri = "/etc/auth.json"
extra_root_certificates = ["-----BEGIN CERTIFICATE-----\\nA\\n-----END CERTIFICATE-----"]
[image.image_pull_proxy]
https_proxy = "http://127.0.0.1:3128"
no_proxy = "localhost"
[image.registry_config]
unqualified-search-registries = ["docker.io", "quay.io"]
registry = [
    {prefix = "example.com/foo", location = "internal.example.com/bar", mirror = [{location = "m.local/foo", insecure = true}]},
    {location = "plain.local"},
]
[[image.client_certificates]]
registry = "registry.local:5000"
cert_uri = "file:///etc/client.pem"
key_uri = "kbs:///default/client/key"
"""

AA = """\
[token_configs.kbs]
url = "https://kbs.local"
tee_key_algorithm = "RSA-OAEP-256"
[token_configs.coco_as]
url = "https://as.local"
[eventlog_config]
init_pcr = 17
enable_eventlog = true
"""


def _twin_result(model: type[Model], raw: dict[str, Any], *, by_name: bool = False) -> Any:
    twin = configmodel._twin(model).model_validate(raw, by_alias=True, by_name=by_name)
    return configmodel._from_twin(twin)


@pytest.mark.parametrize(("model", "text"), [
    (CdhConfig, CDH), (AaConfig, AA), (CdhConfig, '[kbc]\nname = "offline_fs_kbc"\n'), (AaConfig, ""),
    (RegistriesConfig, '[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\nlocation = "m.io"\n'),
])
def test_plainly_valid_input_takes_the_fast_path_and_pydantic_agrees(model: type[Model], text: str) -> None:
    raw = tomllib.loads(text)
    fast = model.validate_fast(raw, by_alias=True, by_name=False)
    assert fast is not None
    assert fast == _twin_result(model, raw)
    assert type(fast) is model


def test_the_fast_result_has_the_validators_applied() -> None:
    cdh = CdhConfig.validate_fast(tomllib.loads(CDH), by_alias=True, by_name=False)
    assert cdh is not None and cdh.image is not None and cdh.image.registry_config is not None
    rules = cdh.image.registry_config.registry
    assert [r.prefix for r in rules] == ["example.com/foo", "plain.local"]  # an empty prefix is the location
    assert cdh.image.work_dir == Path("/run/image-rs") and cdh.image.registry_config.unqualified_search_registries == [
        "docker.io", "quay.io"]
    assert cdh.aa.aa_socket == "unix:///run/aa.sock" and cdh.log.level == "debug"


@pytest.mark.parametrize("raw", [
    {"registry": [{"location": "a.io", "insecure": "true"}]},  # pydantic reads "true" as True
    {"registry": [{"location": "a.io", "insecure": 1}]},
    {"unqualified-search-registries": ("a.io",)},  # a tuple, not a TOML list
])
def test_input_pydantic_would_coerce_goes_to_pydantic(raw: dict[str, Any]) -> None:
    assert RegistriesConfig.validate_fast(raw, by_alias=True, by_name=False) is None
    coerced = RegistriesConfig.model_validate(raw, by_alias=True, by_name=False)
    assert coerced == _twin_result(RegistriesConfig, raw)
    assert type(coerced) is RegistriesConfig and all(type(r) is RegistryRule for r in coerced.registry)


def test_a_bool_for_an_int_is_pydantics_call() -> None:
    raw = {"max_concurrent_layer_downloads_per_image": True}
    assert ImageConfig.validate_fast(raw) is None
    assert ImageConfig.model_validate(raw).max_concurrent_layer_downloads_per_image == 1  # pydantic's lax int


@pytest.mark.parametrize(("model", "raw"), [
    (CdhConfig, {}),  # kbc is required
    (KbcConfig, {"name": 1}),
    (ImageConfig, {"max_concurrent_layer_downloads_per_image": 0}),  # ge=1
    (ImageConfig, {"client_certificates": [{"registry": "not a registry", "cert_uri": "/c", "key_uri": "/k"}]}),
    (RegistriesConfig, {"registry": [{"insecure": True}]}),  # the model validator refuses it
    (RegistriesConfig, {"registry": [{"location": "a.io", "mirror": [{"location": ""}]}]}),
])
def test_doubtful_input_is_left_to_pydantic_which_refuses_it(model: type[Model], raw: dict[str, Any]) -> None:
    from pydantic import ValidationError

    assert model.validate_fast(raw, by_alias=True, by_name=False) is None
    with pytest.raises(ValidationError):
        model.model_validate(raw, by_alias=True, by_name=False)


def test_toml_takes_keys_only_python_takes_names_too() -> None:
    by_name = {"unqualified_search_registries": ["a.io"]}
    assert parse_registries_config('unqualified_search_registries = ["a.io"]\n', "r.conf").unqualified_search_registries == [
        "docker.io"]  # misspelt in TOML: ignored, as upstream
    assert RegistriesConfig(unqualified_search_registries=["a.io"]) == RegistriesConfig.model_validate(by_name)
    both = {"unqualified_search_registries": ["a.io"], "unqualified-search-registries": ["b.io"]}
    assert RegistriesConfig.validate_fast(both) is None  # pydantic decides which wins
    assert RegistriesConfig.model_validate(both) == _twin_result(RegistriesConfig, both, by_name=True)


def test_python_api_construction_copy_equality_and_repr() -> None:
    rules = RegistriesConfig(registry=[RegistryRule(location="a.io", mirror=[Mirror(location="m.io")])])
    image = ImageConfig(registry_config=rules)
    assert image.registry_config is rules  # an instance is kept as it is, as pydantic does
    assert image.registry_config.registry[0].prefix == "a.io"
    copy = image.model_copy(update={"max_concurrent_layer_downloads_per_image": 1})
    assert copy.max_concurrent_layer_downloads_per_image == 1 and image.max_concurrent_layer_downloads_per_image == 3
    assert copy != image and image == ImageConfig(registry_config=RegistriesConfig(
        registry=[RegistryRule(location="a.io", mirror=[Mirror(location="m.io")])]))
    assert ImageConfig.model_validate(image) is image
    assert repr(Mirror(location="m.io")) == "Mirror(location='m.io', insecure=False, pull_from_mirror='')"
    with pytest.raises(TypeError):
        hash(image)
    assert ImageConfig().extra_root_certificates is not ImageConfig().extra_root_certificates  # factories


def test_errors_still_come_from_pydantic() -> None:
    from guestpull.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_cdh_config('[kbc]\nname = "x"\n[image]\nmax_concurrent_layer_downloads_per_image = "many"\n', "cdh.toml")
    assert info.value.location is not None
    assert info.value.location.field == "image.max_concurrent_layer_downloads_per_image"
    assert "valid integer" in info.value.message and info.value.location.line == 4
