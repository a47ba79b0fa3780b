"""cdh.toml / aa.toml / registries.conf models (coco-behaviour.md §2, §3.1–3.2)."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest

from guestpull.config import (
    AaConfig,
    CdhConfig,
    ImageConfig,
    RegistriesConfig,
    field_line,
    load_cdh_config,
    parse_aa_config,
    parse_cdh_config,
    parse_registries_config,
    unknown_keys,
)
from guestpull.errors import ConfigError
from guestpull.resources import ResourceResolver

FULL_CDH = """\
socket = "unix:///run/cdh-test.sock"
skip_sealed_secret_verification = true

[aa]
aa_socket = "unix:///run/aa-test.sock"

[kbc]
name = "cc_kbc"
url = "http://1.2.3.4:8080"
kbs_cert = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----"

[[credentials]]
resource_uri = "kbs:///default/credential/test"
path = "/run/confidential-containers/cdh/kbs/kbs-file"

[log]
level = "debug"

[image]
work_dir = "/run/image-rs"
max_concurrent_layer_downloads_per_image = 5
image_security_policy_uri = "kbs:///default/security-policy/test"
image_security_policy = '{"default": [{"type": "insecureAcceptAnything"}]}'
sigstore_config_uri = "file:///etc/sigstore.yaml"
sigstore_config = "default-docker: {}"
authenticated_registry_credentials_uri = "/etc/auth.json"
registry_configuration_uri = "kbs:///default/registry/conf"
extra_root_certificates = ["-----BEGIN CERTIFICATE-----\\nA\\n-----END CERTIFICATE-----"]

[image.image_pull_proxy]
https_proxy = "http://127.0.0.1:3128"
http_proxy = "http://127.0.0.1:3129"
no_proxy = "localhost,127.0.0.1"

[image.registry_config]
unqualified-search-registries = ["docker.io", "example1.com"]

[[image.registry_config.registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"
insecure = true

[[image.registry_config.registry.mirror]]
location = "mirror.local/foo"
insecure = true

[[image.client_certificates]]
registry = "registry.local:5000"
cert_uri = "kbs:///default/mtls/cert"
key_uri = "/run/keys/client.key"
"""


def test_full_cdh_config() -> None:
    cfg = parse_cdh_config(FULL_CDH, "cdh.toml")
    assert cfg.socket == "unix:///run/cdh-test.sock"
    assert cfg.skip_sealed_secret_verification is True
    assert cfg.aa.aa_socket == "unix:///run/aa-test.sock"
    assert (cfg.kbc.name, cfg.kbc.url) == ("cc_kbc", "http://1.2.3.4:8080")
    assert cfg.kbc.kbs_cert is not None and cfg.kbc.kbs_cert.startswith("-----BEGIN")
    assert cfg.credentials[0].path == "/run/confidential-containers/cdh/kbs/kbs-file"
    assert cfg.log.level == "debug"
    image = cfg.image
    assert image is not None
    assert image.work_dir == Path("/run/image-rs")
    assert image.max_concurrent_layer_downloads_per_image == 5
    assert image.image_security_policy_uri == "kbs:///default/security-policy/test"
    assert image.image_security_policy is not None and "insecureAcceptAnything" in image.image_security_policy
    assert image.sigstore_config_uri == "file:///etc/sigstore.yaml"
    assert image.sigstore_config == "default-docker: {}"
    assert image.authenticated_registry_credentials_uri == "/etc/auth.json"
    assert image.registry_configuration_uri == "kbs:///default/registry/conf"
    assert len(image.extra_root_certificates) == 1
    assert image.image_pull_proxy is not None
    assert image.image_pull_proxy.https_proxy == "http://127.0.0.1:3128"
    assert image.image_pull_proxy.http_proxy == "http://127.0.0.1:3129"
    assert image.image_pull_proxy.no_proxy == "localhost,127.0.0.1"
    reg = image.registry_config
    assert reg is not None
    assert reg.unqualified_search_registries == ["docker.io", "example1.com"]
    rule = reg.registry[0]
    assert (rule.prefix, rule.location, rule.insecure, rule.blocked) == (
        "example.com/foo", "internal.example.com/bar", True, False)
    assert rule.mirror[0].location == "mirror.local/foo" and rule.mirror[0].insecure
    cert = image.client_certificates[0]
    assert (cert.registry, cert.cert_uri, cert.key_uri) == (
        "registry.local:5000", "kbs:///default/mtls/cert", "/run/keys/client.key")
    assert unknown_keys(tomllib.loads(FULL_CDH), CdhConfig) == []


def test_defaults() -> None:
    cfg = parse_cdh_config('[kbc]\nname = "offline_fs_kbc"\n[image]\n', "cdh.toml")
    assert cfg.socket == "unix:///run/confidential-containers/cdh.sock"
    assert cfg.aa.aa_socket.endswith("attestation-agent.sock")
    assert cfg.kbc.url == ""
    assert cfg.credentials == [] and cfg.log.level == "info"
    image = cfg.image
    assert image == ImageConfig()
    assert image is not None and image.work_dir == Path("/run/kata-containers/image")
    assert image.max_concurrent_layer_downloads_per_image == 3
    assert image.registry_config is None and image.extra_root_certificates == []
    assert image.client_certificates == []


def test_absent_image_table_uses_kernel_cmdline() -> None:
    cfg = parse_cdh_config('[kbc]\nname = "offline_fs_kbc"\n', "cdh.toml")
    assert cfg.image is None
    cmdline = (
        "quiet agent.https_proxy=http://p:1 agent.no_proxy=a,b agent.image_registry_auth=kbs:///x/y/z "
        "agent.image_policy_file=kbs:///p/o/l agent.enable_signature_verification=true "
        "agent.https_proxy=http://p:2"
    )
    image = cfg.image_config(cmdline)
    assert image.image_pull_proxy is not None
    assert image.image_pull_proxy.https_proxy == "http://p:2"  # later duplicate wins
    assert image.image_pull_proxy.no_proxy == "a,b"
    assert image.authenticated_registry_credentials_uri == "kbs:///x/y/z"
    assert image.image_security_policy_uri == "kbs:///p/o/l"
    off = cfg.image_config("agent.image_policy_file=/p agent.enable_signature_verification=yes")
    assert off.image_security_policy_uri is None
    assert cfg.image_config("") == ImageConfig()


def test_environment_overrides_auth_uri() -> None:
    image = ImageConfig(authenticated_registry_credentials_uri="/etc/a.json")
    env = {"CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS": "kbs:///d/auth/x"}
    assert image.with_environment(env).authenticated_registry_credentials_uri == "kbs:///d/auth/x"
    assert image.with_environment({}).authenticated_registry_credentials_uri == "/etc/a.json"


def test_unknown_keys_ignored_and_reported() -> None:
    text = """
top_level_typo = 1
[kbc]
name = "offline_fs_kbc"
[image]
some_undefined_field = "x"
[image.registry_config]
unqualified_search_registries = ["quay.io"]
[[image.registry_config.registry]]
location = "r.local"
aliases = ["x"]
[[image.registry_config.registry.mirror]]
location = "m.local"
pull_from_mirror = "digest-only"
[registries.insecure]
registries = ["r.local"]
"""
    cfg = parse_cdh_config(text, "cdh.toml")
    assert cfg.image is not None and cfg.image.registry_config is not None
    # the underscore spelling is not upstream's key: ignored, default kept
    assert cfg.image.registry_config.unqualified_search_registries == ["docker.io"]
    assert cfg.image.registry_config.registry[0].mirror[0].pull_from_mirror == ""
    assert unknown_keys(tomllib.loads(text), CdhConfig) == [
        "top_level_typo",
        "image.some_undefined_field",
        "image.registry_config.unqualified_search_registries",
        "image.registry_config.registry[0].aliases",
        "image.registry_config.registry[0].mirror[0].pull_from_mirror",
        "registries",
    ]


def test_python_construction_by_field_name() -> None:
    cfg = RegistriesConfig(unqualified_search_registries=["a.io"])
    assert cfg.unqualified_search_registries == ["a.io"]


@pytest.mark.parametrize("value", [0, -1])
def test_concurrency_must_be_positive(value: int) -> None:
    text = f'[kbc]\nname = "offline_fs_kbc"\n\n[image]\nmax_concurrent_layer_downloads_per_image = {value}\n'
    with pytest.raises(ConfigError) as info:
        parse_cdh_config(text, "cdh.toml")
    err = info.value
    assert err.location is not None
    assert err.location.field == "image.max_concurrent_layer_downloads_per_image"
    assert err.location.file == "cdh.toml"
    assert err.location.line == 5
    assert "greater than or equal to 1" in err.message
    assert f"got {value}" in err.message


def test_wrong_type_names_field_and_expectation() -> None:
    text = '[kbc]\nname = "x"\n[image]\nextra_root_certificates = "not-a-list"\n'
    with pytest.raises(ConfigError) as info:
        parse_cdh_config(text, "cdh.toml")
    assert info.value.location is not None
    assert info.value.location.field == "image.extra_root_certificates"
    assert "list" in info.value.message


def test_missing_kbc() -> None:
    with pytest.raises(ConfigError) as info:
        parse_cdh_config("[image]\n", "cdh.toml")
    assert info.value.location is not None and info.value.location.field == "kbc"
    assert "missing" in info.value.message
    with pytest.raises(ConfigError) as info:
        parse_cdh_config('[kbc]\nurl = "http://x"\n', "cdh.toml")
    assert info.value.location is not None and info.value.location.field == "kbc.name"
    assert info.value.location.line == 1  # the [kbc] header


def test_toml_syntax_error_location() -> None:
    source = 'initdata.toml: data."cdh.toml"'
    with pytest.raises(ConfigError) as info:
        parse_cdh_config('[kbc]\nname = "a"\nurl = = 3\n', source, line_offset=10)
    err = info.value
    assert err.location is not None
    assert (err.location.file, err.location.line, err.location.column) == (source, 13, 7)
    assert "(at line" not in err.message
    assert str(err).startswith('initdata.toml: data."cdh.toml":13:7: invalid TOML')


@pytest.mark.parametrize(
    ("entry", "field", "fragment"),
    [
        ('registry = "https://r.local"\ncert_uri = "/c"\nkey_uri = "/k"', "registry", "host[:port]"),
        ('registry = "r.local"\ncert_uri = "/c"\nkey_uri = "http://x/k"', "key_uri", "not supported"),
        ('registry = "r.local"\ncert_uri = "/c"', "key_uri", "missing"),
    ],
)
def test_client_certificate_errors(entry: str, field: str, fragment: str) -> None:
    text = f'[kbc]\nname = "x"\n[[image.client_certificates]]\n{entry}\n'
    with pytest.raises(ConfigError) as info:
        parse_cdh_config(text, "cdh.toml")
    assert info.value.location is not None
    assert info.value.location.field == f"image.client_certificates[0].{field}"
    assert fragment in info.value.message


def test_inline_private_key_is_refused_without_echo() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nSECRETMATERIAL\n-----END PRIVATE KEY-----"
    text = (
        '[kbc]\nname = "x"\n[[image.client_certificates]]\nregistry = "r.local:5000"\n'
        f'cert_uri = "/c"\nkey_uri = """{key}"""\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_cdh_config(text, "cdh.toml")
    assert "SECRETMATERIAL" not in str(info.value)
    assert "Init-Data is visible to the host" in info.value.message


def test_duplicate_client_certificate_registry() -> None:
    entry = '[[image.client_certificates]]\nregistry = "r.local"\ncert_uri = "/c"\nkey_uri = "/k"\n'
    with pytest.raises(ConfigError, match="two client certificates"):
        parse_cdh_config('[kbc]\nname = "x"\n' + entry + entry, "cdh.toml")


def test_credentials_path_must_be_under_kbs_dir() -> None:
    for path in ("/etc/x", "/run/confidential-containers/cdh/kbs/../../x"):
        text = f'[kbc]\nname = "x"\n[[credentials]]\nresource_uri = "kbs:///a/b/c"\npath = "{path}"\n'
        with pytest.raises(ConfigError) as info:
            parse_cdh_config(text, "cdh.toml")
        assert info.value.location is not None
        assert info.value.location.field == "credentials[0].path"
    with pytest.raises(ConfigError, match="resource_uri"):
        parse_cdh_config('[kbc]\nname = "x"\n[[credentials]]\npath = "/run/confidential-containers/cdh/kbs/a"\n', "c")


# --- registries.conf ----------------------------------------------------------------------


def test_registries_defaults_and_tidy() -> None:
    cfg = parse_registries_config('[[registry]]\nlocation = "localhost:5000"\ninsecure = true\n', "r.toml")
    assert cfg.unqualified_search_registries == ["docker.io"]
    assert cfg.registry[0].prefix == "localhost:5000"
    # the reverse copy does not happen
    cfg = parse_registries_config('[[registry]]\nprefix = "a.io"\nblocked = true\n', "r.toml")
    assert cfg.registry[0].location == ""
    cfg = parse_registries_config('unqualified-search-registries = []\n', "r.toml")
    assert cfg.unqualified_search_registries == []


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("[[registry]]\ninsecure = true\n", "registry[0]", "both location and prefix are empty"),
        ('[[registry]]\nprefix = "*.a.com"\n', "registry[0]", "location is unset and prefix is with wildcard"),
        ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\nlocation = ""\n', "registry[0]", "mirror location is empty"),
        ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\ninsecure = true\n', "registry[0].mirror[0].location", "missing"),
        ('[[registry]]\nlocation = "a.io"\ninsecure = "maybe"\n', "registry[0].insecure", "boolean"),
    ],
)
def test_registries_validation(text: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_registries_config(text, "registries.conf")
    assert info.value.location is not None
    assert info.value.location.field == field
    assert info.value.location.file == "registries.conf"
    assert fragment in info.value.message


def test_error_line_in_array_of_tables() -> None:
    text = (
        '[[registry]]\nlocation = "a.io"\n\n[[registry]]\nlocation = "b.io"\n'
        'insecure = "maybe"\n\n[[registry]]\nprefix = ""\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_registries_config(text, "registries.conf")
    assert info.value.location is not None
    assert (info.value.location.field, info.value.location.line) == ("registry[1].insecure", 6)
    with pytest.raises(ConfigError) as info:
        parse_registries_config(text.replace('"maybe"', "true"), "registries.conf")
    assert info.value.location is not None
    assert (info.value.location.field, info.value.location.line) == ("registry[2]", 8)


def test_field_line_finds_keys_headers_and_stops_on_foreign_parts() -> None:
    text = '[image]\nwork_dir = 1\n\n[[image.registry_config.registry]]\nlocation = "a"\n'
    assert field_line(text, "image.work_dir") == 2
    assert field_line(text, "image.registry_config.registry[0].location") == 5
    assert field_line(text, "image.registry_config.registry[0].prefix") == 4  # its table
    # A pydantic union member ("list[str]") is not a TOML key: the search goes on above it.
    assert field_line(text, "image.work_dir.list[str][0]") == 2
    assert field_line(text, "kbc.name") is None


def test_registries_from_uri_and_inline_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "from-file.local"\n')
    kbc = tmp_path / "kbc.json"
    encoded = base64.b64encode(b'[[registry]]\nlocation = "from-kbs.local"\n').decode()
    kbc.write_text(json.dumps({"d/registry/c": encoded}))
    resolver = ResourceResolver([kbc]).sync()
    by_file = ImageConfig(registry_configuration_uri=str(conf)).registries(resolver)
    assert by_file is not None and by_file.registry[0].location == "from-file.local"
    by_kbs = ImageConfig(registry_configuration_uri="kbs:///d/registry/c").registries(resolver)
    assert by_kbs is not None and by_kbs.registry[0].location == "from-kbs.local"
    inline = parse_cdh_config(
        f'[kbc]\nname = "x"\n[image]\nregistry_configuration_uri = "{conf}"\n'
        '[[image.registry_config.registry]]\nlocation = "inline.local"\n',
        "cdh.toml",
    ).image
    assert inline is not None
    got = inline.registries(resolver)
    assert got is not None and got.registry[0].location == "inline.local"
    assert ImageConfig().registries(resolver) is None


def test_registries_uri_errors_name_the_uri(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[[registry]]\nprefix = \n")
    with pytest.raises(ConfigError) as info:
        ImageConfig(registry_configuration_uri=str(bad)).registries(ResourceResolver([]).sync())
    assert info.value.location is not None and info.value.location.file == str(bad)
    assert info.value.location.line == 2
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        ImageConfig(registry_configuration_uri=str(bad)).registries(ResourceResolver([]).sync())


# --- aa.toml ------------------------------------------------------------------------------


def test_aa_config() -> None:
    text = """
[token_configs.kbs]
url = "http://kbs:8080"
cert = "PEM"
[token_configs.coco_as]
url = "http://as:50004"
[eventlog_config]
init_pcr = 16
enable_eventlog = true
[log]
level = "warn"
"""
    cfg = parse_aa_config(text, "aa.toml")
    assert cfg.token_configs.kbs is not None
    assert cfg.token_configs.kbs.url == "http://kbs:8080"
    assert cfg.token_configs.kbs.tee_key_algorithm == "ECDH-ES+A256KW-P256"
    assert cfg.token_configs.coco_as is not None and cfg.token_configs.coco_as.url == "http://as:50004"
    assert (cfg.eventlog_config.init_pcr, cfg.eventlog_config.enable_eventlog) == (16, True)
    assert cfg.log.level == "warn"
    empty = parse_aa_config("", "aa.toml")
    assert empty.token_configs.kbs is None
    assert (empty.eventlog_config.init_pcr, empty.eventlog_config.enable_eventlog) == (17, False)
    assert unknown_keys({"token_configs": {"kbs": {"url": "x", "urll": "y"}}}, AaConfig) == [
        "token_configs.kbs.urll"
    ]


def test_aa_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_aa_config('[token_configs.kbs]\ntee_key_algorithm = "RSA-OAEP-256"\n', "aa.toml")
    assert info.value.location is not None and info.value.location.field == "token_configs.kbs.url"
    with pytest.raises(ConfigError) as info:
        parse_aa_config('[token_configs.kbs]\nurl = "x"\ntee_key_algorithm = "RSA"\n', "aa.toml")
    assert info.value.location is not None
    assert info.value.location.field == "token_configs.kbs.tee_key_algorithm"
    assert "ECDH-ES+A256KW-P521" in info.value.message


def test_load_cdh_config(tmp_path: Path) -> None:
    path = tmp_path / "cdh.toml"
    path.write_text(FULL_CDH)
    assert load_cdh_config(path).kbc.name == "cc_kbc"
    with pytest.raises(ConfigError, match="not found"):
        load_cdh_config(tmp_path / "absent.toml")
