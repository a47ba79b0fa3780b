"""``guestpull probe`` against real registries: right CA, wrong CA, CA:true leaf, HTTP, htpasswd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestpull.config import ImageConfig, parse_cdh_config
from guestpull.probe import probe_targets
from guestpull.registries import Scheme
from guestpull_testkit import TEST_USER
from guestpull_testkit.certs import CertChain, make_ca_chain, make_self_signed
from guestpull_testkit.registry import RegistryProcess, start_registry
from support.cli import invoke, write_auth_json
from support.config import cdh_toml


def _probe(directory: Path, cdh: str, *names: str) -> tuple[int, dict]:
    path = directory / "cdh.toml"
    path.write_text(cdh)
    result = invoke("probe", "--config", str(path), "--json", *names)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(str(result)) from None


def _only(report: dict, registry: str, scheme: str) -> dict:
    found = [r for r in report["registries"] if r["registry"] == registry and r["scheme"] == scheme]
    assert len(found) == 1, report
    return found[0]


def test_https_right_ca_names_the_anchor(shm_path: Path, https_registry: RegistryProcess,
                                        ca_chain: CertChain) -> None:
    code, report = _probe(shm_path, cdh_toml(roots=[ca_chain.ca_cert_pem]),
                          https_registry.host)
    entry = _only(report, https_registry.host, "https")
    assert code == 0 and report["ok"], report
    assert entry["status"] == "ok"
    assert entry["tls"] == {"verified": True, "anchor": "CN=guestpull test root CA,O=guestpull tests",
                            "anchor_source": "image.extra_root_certificates[0]"}
    assert entry["auth"]["required"] is False
    assert entry["sources"] == ["command line"]


def test_https_wrong_ca_is_an_unknown_issuer(shm_path: Path, https_registry: RegistryProcess) -> None:
    other = make_ca_chain()
    code, report = _probe(shm_path, cdh_toml(roots=[other.ca_cert_pem]),
                          https_registry.host)
    entry = _only(report, https_registry.host, "https")
    assert code == 5 and not report["ok"]
    assert entry["status"] == "failed" and entry["tls"]["verified"] is False
    assert entry["error"]["category"] == "tls"
    assert "unknown issuer" in entry["error"]["message"]
    assert "guestpull test root CA" in entry["error"]["message"]  # who issued the server's cert


def test_http_registry_probed_over_https_says_plain_http(shm_path: Path, http_registry: RegistryProcess) -> None:
    code, report = _probe(shm_path, cdh_toml(), http_registry.host)
    entry = _only(report, http_registry.host, "https")
    assert code == 5
    assert "speaks plain HTTP" in entry["error"]["message"]
    assert "insecure = true" in entry["error"]["hint"]


def test_http_rule_probes_plain_http(shm_path: Path, http_registry: RegistryProcess) -> None:
    code, report = _probe(shm_path, cdh_toml(insecure=[http_registry.host]))
    entry = _only(report, http_registry.host, "http")
    assert code == 0, report
    assert entry["status"] == "ok" and entry["tls"] is None
    assert entry["sources"] == ["image.registry_config.registry[0].location"]


def test_insecure_rule_on_an_https_registry_says_it_speaks_tls(
    shm_path: Path, https_registry: RegistryProcess
) -> None:
    code, report = _probe(shm_path, cdh_toml(insecure=[https_registry.host]))
    entry = _only(report, https_registry.host, "http")
    assert code == 5
    assert "speaks HTTPS" in entry["error"]["message"]


def _serving(session_shm: Path, name: str, chain: CertChain) -> Iterator[tuple[RegistryProcess, CertChain]]:
    """A registry of this module's own, presenting ``chain`` (for module-scoped fixtures)."""
    with start_registry(session_shm / f"probe-{name}-registry", tls=chain) as registry:
        yield registry, chain


@pytest.fixture(scope="module")
def ca_true_registry(session_shm: Path) -> Iterator[tuple[RegistryProcess, CertChain]]:
    yield from _serving(session_shm, "ca-true", make_self_signed(ca=True))


def test_ca_true_self_signed_leaf_is_verified_by_itself(
    shm_path: Path, ca_true_registry: tuple[RegistryProcess, CertChain]
) -> None:
    """OpenSSL accepts it (guestpull pulls); the anchor is the server's own certificate."""
    registry, chain = ca_true_registry
    code, report = _probe(shm_path, cdh_toml(roots=[chain.cert_pem]), registry.host)
    entry = _only(report, registry.host, "https")
    assert code == 0, report
    assert entry["tls"]["verified"] and entry["tls"]["anchor"].startswith("CN=127.0.0.1,")


def test_ca_true_self_signed_leaf_not_trusted_is_named_self_signed(
    shm_path: Path, ca_true_registry: tuple[RegistryProcess, CertChain]
) -> None:
    registry, _ = ca_true_registry
    code, report = _probe(shm_path, cdh_toml(), registry.host)
    entry = _only(report, registry.host, "https")
    assert code == 5
    assert "is self-signed and is not trusted" in entry["error"]["message"]


def _auth_cdh(host: str, ca_pem: bytes, auth_json: Path | None) -> str:
    cdh = cdh_toml(roots=[ca_pem])
    if auth_json is not None:
        cdh = cdh.replace("[image]\n", f'[image]\nauthenticated_registry_credentials_uri = "file://{auth_json}"\n')
    return cdh


@pytest.mark.parametrize(("password", "expected"), [("s3cret-pw", "accepted"), ("wrong", "refused"),
                                                     (None, "refused")])
def test_basic_auth_credentials_checked(
    shm_path: Path, basic_auth_registry: RegistryProcess, ca_chain: CertChain,
    password: str | None, expected: str,
) -> None:
    auth_json = None
    if password is not None:
        auth_json = write_auth_json(shm_path / "auth.json", basic_auth_registry.host, password)
    code, report = _probe(shm_path, _auth_cdh(basic_auth_registry.host, ca_chain.ca_cert_pem, auth_json),
                          basic_auth_registry.host)
    entry = _only(report, basic_auth_registry.host, "https")
    assert entry["auth"]["required"] and entry["auth"]["scheme"] == "basic"
    assert entry["auth"]["credentials"] == expected
    if expected == "accepted":
        assert code == 0 and entry["error"] is None
    else:
        assert code == 6 and entry["error"]["category"] == "auth"
        assert "s3cret" not in json.dumps(report) and TEST_USER not in entry["error"]["message"]


def test_token_auth_credentials_checked(shm_path: Path, token_registry: RegistryProcess,
                                        ca_chain: CertChain) -> None:
    auth_json = write_auth_json(shm_path / "auth.json", token_registry.host)
    code, report = _probe(shm_path, _auth_cdh(token_registry.host, ca_chain.ca_cert_pem, auth_json),
                          f"{token_registry.host}/some/app:1")
    entry = _only(report, token_registry.host, "https")
    assert code == 0, report
    assert entry["auth"]["scheme"] == "bearer" and entry["auth"]["credentials"] == "accepted"


def test_text_report(shm_path: Path, https_registry: RegistryProcess, ca_chain: CertChain) -> None:
    path = shm_path / "cdh.toml"
    path.write_text(cdh_toml(roots=[ca_chain.ca_cert_pem]))
    result = invoke("probe", "--config", str(path), https_registry.host)
    assert result.exit_code == 0, result
    assert f"https://{https_registry.host}  (command line)" in result.stdout
    assert "TLS: verified by 'CN=guestpull test root CA,O=guestpull tests' (image.extra_root_certificates[0])" in result.stdout


# --- targets from the configuration (no network) ---------------------------------------------

_RULES = """
[kbc]
name = "offline_fs_kbc"
[image.registry_config]
[[image.registry_config.registry]]
prefix = "docker.io"
location = "10.0.0.5:5000/hub"
insecure = true
[[image.registry_config.registry.mirror]]
location = "mirror.internal:5443"
[[image.registry_config.registry]]
prefix = "quay.io"
blocked = true
[[image.registry_config.registry]]
prefix = "*.corp.example"
location = "registry.corp.example"
"""


def _config() -> ImageConfig:
    image = parse_cdh_config(_RULES, "cdh.toml").image
    assert image is not None
    return image


def test_targets_from_rules_and_mirrors() -> None:
    image = _config()
    targets = probe_targets(image, image.registry_config)
    got = {(t.registry, str(t.scheme)): (t.sources, t.blocked) for t in targets}
    assert got == {
        ("mirror.internal:5443", "https"): (["image.registry_config.registry[0].mirror[0]"], None),
        ("10.0.0.5:5000", "http"): (["image.registry_config.registry[0].location"], None),
        ("quay.io", "https"): (["image.registry_config.registry[1] (blocked)"],
                               "rule prefix 'quay.io' has blocked = true"),
        ("registry.corp.example", "https"): (["image.registry_config.registry[2].location"], None),
    }


def test_command_line_image_goes_through_the_rules() -> None:
    image = _config()
    targets = probe_targets(image, image.registry_config, ["quay.io/app:1", "docker.io/library/busybox"])
    blocked = [t for t in targets if t.registry == "quay.io"][0]
    assert blocked.sources[-1] == "command line" and "blocked" in (blocked.blocked or "")
    mirror = [t for t in targets if t.registry == "mirror.internal:5443"][0]
    assert mirror.sources[-1] == "command line (mirror)" and mirror.scheme == Scheme.HTTPS


def test_blocked_image_on_the_command_line_fails(shm_path: Path) -> None:
    blocked_only = '[kbc]\nname = "offline_fs_kbc"\n[[image.registry_config.registry]]\nprefix = "quay.io"\nblocked = true\n'
    code, report = _probe(shm_path, blocked_only, "quay.io/app:1")
    assert code == 9 and not report["ok"]
    assert _only(report, "quay.io", "https")["status"] == "blocked"


def test_nothing_to_probe_is_a_usage_error(shm_path: Path) -> None:
    path = shm_path / "cdh.toml"
    path.write_text('[kbc]\nname = "offline_fs_kbc"\n')
    result = invoke("probe", "--config", str(path))
    assert result.exit_code == 2 and "nothing to probe" in result.stderr


# --- proxies --------------------------------------------------------------------------------


def test_probe_goes_through_the_configured_proxy(shm_path: Path, https_registry: RegistryProcess,
                                               ca_chain: CertChain, forward_proxy) -> None:  # type: ignore[no-untyped-def]
    connect = f"CONNECT {https_registry.host}"
    before = sum(connect in r for r in forward_proxy.requests())
    cdh = cdh_toml(roots=[ca_chain.ca_cert_pem])
    cdh += f'[image.image_pull_proxy]\nhttps_proxy = "{forward_proxy.url}"\n'
    code, report = _probe(shm_path, cdh, https_registry.host)
    entry = _only(report, https_registry.host, "https")
    assert code == 0, report
    assert entry["tls"]["verified"] and entry["tls"]["anchor_source"] == "(through the proxy: not inspected)"
    assert sum(connect in r for r in forward_proxy.requests()) > before


def test_probe_names_a_dead_proxy(shm_path: Path, https_registry: RegistryProcess, ca_chain: CertChain) -> None:
    cdh = cdh_toml(roots=[ca_chain.ca_cert_pem])
    cdh += '[image.image_pull_proxy]\nhttps_proxy = "http://127.0.0.1:9"\n'
    code, report = _probe(shm_path, cdh, https_registry.host)
    entry = _only(report, https_registry.host, "https")
    assert code == 4 and entry["error"]["category"] == "network"
    assert "proxy" in entry["error"]["message"]


# --- what the docs promise about anchors and names --------------------------------------------


@pytest.fixture(scope="module")
def intermediate_registry(session_shm: Path) -> Iterator[tuple[RegistryProcess, CertChain]]:
    """Serves its certificate followed by the intermediate CA that issued it."""
    yield from _serving(session_shm, "intermediate", make_ca_chain(intermediate=True))


@pytest.mark.parametrize(("listed", "anchor"), [("root", "CN=guestpull test root CA"),
                                                ("intermediate", "CN=guestpull test intermediate CA")])
def test_the_anchor_is_the_listed_certificate_nearest_the_server(
    shm_path: Path, intermediate_registry: tuple[RegistryProcess, CertChain], listed: str, anchor: str
) -> None:
    registry, chain = intermediate_registry
    intermediate_pem = b"-----BEGIN CERTIFICATE-----" + chain.cert_pem.split(b"-----BEGIN CERTIFICATE-----")[2]
    pem = chain.ca_cert_pem if listed == "root" else intermediate_pem
    code, report = _probe(shm_path, cdh_toml(roots=[pem]), registry.host)
    entry = _only(report, registry.host, "https")
    assert code == 0, report
    assert entry["tls"]["anchor"].startswith(anchor + ",")


@pytest.fixture(scope="module")
def name_only_registry(session_shm: Path) -> Iterator[tuple[RegistryProcess, CertChain]]:
    """A certificate for DNS:localhost only, reached at 127.0.0.1."""
    yield from _serving(session_shm, "name-only", make_ca_chain(("localhost",)))


def test_an_ip_address_not_in_the_certificate_is_named(
    shm_path: Path, name_only_registry: tuple[RegistryProcess, CertChain]
) -> None:
    registry, chain = name_only_registry
    code, report = _probe(shm_path, cdh_toml(roots=[chain.ca_cert_pem]), registry.host)
    message = _only(report, registry.host, "https")["error"]["message"]
    assert code == 5
    assert "does not cover the IP address 127.0.0.1; it covers DNS:localhost" in message


class _FileGetter:
    """config.ResourceGetter for file:// URIs only."""

    def get(self, uri: str) -> bytes:
        return Path(uri.removeprefix("file://")).read_bytes()


def test_rules_from_registry_configuration_uri_are_named_by_their_file(shm_path: Path) -> None:
    conf = shm_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "10.0.0.5:5000"\ninsecure = true\n')
    image = parse_cdh_config(
        f'[kbc]\nname = "offline_fs_kbc"\n[image]\nregistry_configuration_uri = "file://{conf}"\n', "cdh.toml"
    ).image
    assert image is not None
    targets = probe_targets(image, image.registries(_FileGetter()))
    assert [(t.registry, t.sources) for t in targets] == [
        ("10.0.0.5:5000", [f"file://{conf}: registry[0].location"])]
