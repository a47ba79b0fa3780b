"""``guestpull initdata`` through click's CliRunner: the behaviour a user sees."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from guestpull.cli import main
from guestpull.errors import EXIT_CODES, Category
from guestpull_testkit.certs import CertChain, make_self_signed

KATA_ANNOTATION = (
    "H4sIAFlC92cAAytLLSrOzM9TsFVQMtAz1DNQ4krMSc8vyizJyAWJFWckGpmaKXFFpySWJMZyKSUm6pXk5+YoAeXU1dW5"
    "QJhLKTklA4toQX5OZnKlXlFqej6yBABS/5JkcQAAAA=="
)
KATA_SHA256 = "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5"
CONFIG_EXIT = EXIT_CODES[Category.CONFIG]
QUOTES = "'''"


def run(*args: str | Path, stdin: bytes | str | None = None) -> Result:
    return CliRunner().invoke(main, ["initdata", *map(str, args)], input=stdin)


@pytest.fixture
def built(shm_path: Path, ca_chain: CertChain) -> Path:
    """The issue's scenario: a private CA, an HTTP registry and a KBS."""
    ca = shm_path / "ca.pem"
    ca.write_bytes(ca_chain.ca_cert_pem)
    out = shm_path / "initdata.toml"
    result = run(
        "build", "--registry-ca", ca, "--insecure-registry", "127.0.0.1:5000",
        "--kbs-url", "http://127.0.0.1:8080", "-o", out,
    )
    assert result.exit_code == 0, result.output
    return out


def test_kata_vector_through_decode_and_digest() -> None:
    decoded = run("decode", KATA_ANNOTATION)
    assert decoded.exit_code == 0, decoded.output
    digest = run("digest", "-", "--json", stdin=decoded.stdout_bytes)
    assert digest.exit_code == 0, digest.output
    out = json.loads(digest.stdout)
    assert out["algorithm"] == "sha256" and out["hex"] == KATA_SHA256
    assert out["base64"] == base64.b64encode(bytes.fromhex(KATA_SHA256)).decode()


def test_built_document_passes_check(built: Path) -> None:
    result = run("check", built)
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.stdout


def test_build_prints_the_digest_of_the_written_bytes_to_stderr(built: Path, shm_path: Path, ca_chain: CertChain) -> None:
    result = run("build", "--registry-ca", shm_path / "ca.pem", "--insecure-registry", "127.0.0.1:5000",
                 "--kbs-url", "http://127.0.0.1:8080")
    assert result.exit_code == 0
    assert result.stdout_bytes == built.read_bytes()  # stdout is the clean document
    assert result.stderr.strip() == f"sha256:{hashlib.sha256(built.read_bytes()).hexdigest()}"


def test_digest_for_tdx_is_48_bytes_zero_padded(built: Path) -> None:
    result = run("digest", built, "--platform", "tdx", "--json")
    assert result.exit_code == 0, result.output
    fitted = bytes.fromhex(json.loads(result.stdout)["hex"])
    assert len(fitted) == 48
    assert fitted == hashlib.sha256(built.read_bytes()).digest() + bytes(16)
    assert base64.b64decode(json.loads(result.stdout)["base64"]) == fitted


def test_digest_text_output(built: Path) -> None:
    result = run("digest", built, "--platform", "snp")
    sha = hashlib.sha256(built.read_bytes()).digest()
    assert f"hex:       {sha.hex()}" in result.stdout
    assert f"base64:    {base64.b64encode(sha).decode()}" in result.stdout


def test_digest_for_vtpm_prints_pcr8(built: Path) -> None:
    result = run("digest", built, "--platform", "vtpm")
    sha = hashlib.sha256(built.read_bytes()).digest()
    assert f"pcr8:      {hashlib.sha256(bytes(32) + sha).hexdigest()}" in result.stdout


def test_digest_for_vtpm_refuses_sha384(shm_path: Path) -> None:
    out = shm_path / "i.toml"
    assert run("build", "--algorithm", "sha384", "-o", out).exit_code == 0
    result = run("digest", out, "--platform", "vtpm")
    assert result.exit_code == CONFIG_EXIT
    assert "must be sha256" in result.stderr


def test_annotation_then_decode_gives_identical_bytes(built: Path, shm_path: Path) -> None:
    annotation = run("annotation", built)
    assert annotation.exit_code == 0
    value = annotation.stdout.strip()
    assert gzip.decompress(base64.b64decode(value)) == built.read_bytes()
    decoded = shm_path / "decoded.toml"
    assert run("decode", value, "-o", decoded).exit_code == 0
    assert decoded.read_bytes() == built.read_bytes()
    assert run("decode", "-", stdin=value).stdout_bytes == built.read_bytes()


def test_annotation_yaml(built: Path) -> None:
    result = run("annotation", built, "--yaml")
    lines = result.stdout.splitlines()
    assert lines[:2] == ["metadata:", "  annotations:"]
    key, _, value = lines[2].strip().partition(": ")
    assert key == "io.katacontainers.config.hypervisor.cc_init_data"
    assert gzip.decompress(base64.b64decode(value.strip('"'))) == built.read_bytes()


def test_annotation_refuses_an_invalid_document(shm_path: Path) -> None:
    bad = shm_path / "bad.toml"
    bad.write_text('version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"cdh.toml" = "[image]"\n')
    result = run("annotation", bad)
    assert result.exit_code == CONFIG_EXIT and result.stdout == ""
    assert "kbc" in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("%%%not-base64%%%", "not valid base64"),
        (base64.b64encode(b"hello").decode(), "not gzip"),
        (base64.b64encode(gzip.compress(b"\xff\xfe bad")).decode(), "not UTF-8"),
        (base64.b64encode(gzip.compress(b'version = "0.1.0"\n')).decode(), "missing \"algorithm\""),
    ],
)
def test_decode_refuses_garbage(value: str, message: str, shm_path: Path) -> None:
    out = shm_path / "out.toml"
    result = run("decode", value, "-o", out)
    assert result.exit_code == CONFIG_EXIT
    assert message in result.stderr
    assert not out.exists()


# --- bad input to check -----------------------------------------------------------------------


def check_bad(shm_path: Path, text: str | bytes, *args: str) -> Result:
    path = shm_path / "initdata.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = run("check", path, *args)
    assert result.exit_code == CONFIG_EXIT, result.output
    return result


HEADER = 'version = "0.1.0"\nalgorithm = "sha256"\n'


def test_check_malformed_outer_toml(shm_path: Path) -> None:
    result = check_bad(shm_path, HEADER + '[data]\n"aa.toml" = \n')
    assert "initdata.toml:4:" in result.stdout and "invalid TOML" in result.stdout


def test_check_malformed_embedded_toml(shm_path: Path) -> None:
    text = HEADER + "\n[data]\n\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = = 1\n'''\n"
    result = check_bad(shm_path, text)
    assert 'initdata.toml:8: data."cdh.toml" line 3, column 7: invalid TOML' in result.stdout


def test_check_wrong_version(shm_path: Path) -> None:
    result = check_bad(shm_path, 'version = "0.1.1"\nalgorithm = "sha256"\n[data]\n')
    assert "initdata.toml:1: version: unsupported version: 0.1.1, expected: 0.1.0" in result.stdout


def test_check_wrong_algorithm_spelling(shm_path: Path) -> None:
    result = check_bad(shm_path, 'version = "0.1.0"\nalgorithm = "SHA-384"\n[data]\n')
    assert "initdata.toml:2: algorithm" in result.stdout and 'write algorithm = "sha384"' in result.stdout


def test_check_non_string_data(shm_path: Path) -> None:
    result = check_bad(shm_path, HEADER + '[data]\n"cdh.toml" = 42\n')
    assert 'initdata.toml:4: data."cdh.toml": must be a string' in result.stdout


def test_check_invalid_pem(shm_path: Path) -> None:
    cdh = '[kbc]\nname = "offline_fs_kbc"\n[image]\nextra_root_certificates = ["not a pem"]\n'
    result = check_bad(shm_path, HEADER + f"[data]\n\"cdh.toml\" = '''\n{cdh}'''\n")
    assert 'initdata.toml:8: data."cdh.toml".image.extra_root_certificates[0]' in result.stdout
    assert "not PEM" in result.stdout


def test_check_expired_certificate(shm_path: Path) -> None:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    old = make_self_signed(["r.test"], ca=False, not_before=now - datetime.timedelta(days=9),
                           not_after=now - datetime.timedelta(days=1))
    cdh = f'[kbc]\nname = "offline_fs_kbc"\n[image]\nextra_root_certificates = ["""\n{old.cert_pem.decode()}"""]\n'
    result = check_bad(shm_path, HEADER + f"[data]\n\"cdh.toml\" = '''\n{cdh}'''\n")
    assert "expired on" in result.stdout and "[certificate-expired]" in result.stdout


def test_check_ca_true_leaf_is_a_warning_and_strict_fails(shm_path: Path) -> None:
    cert = make_self_signed(["r.test"], ca=True)
    ca = shm_path / "ca.pem"
    ca.write_bytes(cert.cert_pem)
    out = shm_path / "i.toml"
    assert run("build", "--registry-ca", ca, "-o", out).exit_code == 0
    relaxed = run("check", out)
    assert relaxed.exit_code == 0 and "warning:" in relaxed.stdout and "CaUsedAsEndEntity" in relaxed.stdout
    assert run("check", out, "--strict").exit_code == 1


def test_check_json(shm_path: Path) -> None:
    result = check_bad(shm_path, 'version = "0.1.1"\nalgorithm = "sha256"\n[data]\n', "--json")
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["digest"] is None
    assert out["findings"][0]["location"] == {"file": str(shm_path / "initdata.toml"), "field": "version", "line": 1}


def test_check_json_digest(built: Path) -> None:
    out = json.loads(run("check", built, "--json").stdout)
    assert out["ok"] is True
    assert out["digest"] == f"sha256:{hashlib.sha256(built.read_bytes()).hexdigest()}"


def test_check_from_stdin(built: Path) -> None:
    result = run("check", "-", stdin=built.read_bytes())
    assert result.exit_code == 0 and "<stdin>" in result.stdout


def test_check_missing_file(shm_path: Path) -> None:
    result = run("check", shm_path / "absent.toml")
    assert result.exit_code == CONFIG_EXIT and "absent.toml" in result.stderr


# --- build refusals and atomic output ---------------------------------------------------------


def test_build_refuses_a_private_key_as_ca(shm_path: Path, ca_chain: CertChain) -> None:
    key = shm_path / "server.key"
    key.write_bytes(ca_chain.key_pem)
    out = shm_path / "out.toml"
    result = run("build", "--registry-ca", key, "-o", out)
    assert result.exit_code == CONFIG_EXIT
    assert str(key) in result.stderr and "PRIVATE KEY" in result.stderr
    assert not out.exists() and list(shm_path.iterdir()) == [key]


def test_build_refuses_a_file_without_certificates(shm_path: Path) -> None:
    notes = shm_path / "notes.txt"
    notes.write_text("just text\n")
    result = run("build", "--registry-ca", notes)
    assert result.exit_code == CONFIG_EXIT and str(notes) in result.stderr and result.stdout == ""


def test_build_refuses_a_bad_insecure_registry() -> None:
    result = run("build", "--insecure-registry", "http://127.0.0.1:5000")
    assert result.exit_code == EXIT_CODES[Category.USAGE] and "without a scheme" in result.stderr


def test_build_does_not_overwrite_without_force(built: Path, shm_path: Path) -> None:
    before = built.read_bytes()
    result = run("build", "--kbs-url", "http://other:8080", "-o", built)
    assert result.exit_code == EXIT_CODES[Category.EXISTS] and "--force" in result.stderr
    assert built.read_bytes() == before
    assert sorted(p.name for p in shm_path.iterdir()) == ["ca.pem", "initdata.toml"]  # no temp left
    assert run("build", "--kbs-url", "http://other:8080", "-o", built, "--force").exit_code == 0
    assert b"http://other:8080" in built.read_bytes()


def test_failed_build_leaves_the_existing_file_untouched(built: Path, shm_path: Path) -> None:
    before = built.read_bytes()
    result = run("build", "--registry-ca", shm_path / "missing.pem", "-o", built, "--force")
    assert result.exit_code == CONFIG_EXIT and "missing.pem" in result.stderr
    assert built.read_bytes() == before
    assert sorted(p.name for p in shm_path.iterdir()) == ["ca.pem", "initdata.toml"]


def test_build_with_registry_config_and_policy(shm_path: Path) -> None:
    conf = shm_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "127.0.0.1:5000"\ninsecure = true\n'
                    '[[registry.mirror]]\nlocation = "127.0.0.1:5001"\npull-from-mirror = "digest-only"\n')
    policy = shm_path / "policy.rego"
    policy.write_text("package agent_policy\n\ndefault PullImageRequest := true\n")
    result = run("build", "--registry-config", conf, "--agent-policy", policy, "--insecure-registry", "[::1]:5000")
    assert result.exit_code == 0, result.output
    show = run("show", "-", "--json", stdin=result.stdout_bytes)
    rules = json.loads(show.stdout)["registry_rules"]
    assert [(r["prefix"], r["location"], r["insecure"]) for r in rules] == [
        ("docker.io", "127.0.0.1:5000", True), ("[::1]:5000", "[::1]:5000", True)]
    assert rules[0]["mirrors"] == [{"location": "127.0.0.1:5001", "insecure": False, "pull_from_mirror": "digest-only"}]
    assert [r["mirror_by_digest_only"] for r in rules] == [False, False]
    expected_policy = policy.read_text()
    assert f'"policy.rego" = {QUOTES}\n{expected_policy}{QUOTES}' in result.stdout


# --- show -------------------------------------------------------------------------------------


def test_show_text(built: Path) -> None:
    result = run("show", built)
    assert result.exit_code == 0, result.output
    assert "algorithm:  sha256" in result.stdout
    assert "CN=guestpull test root CA" in result.stdout and "(CA, self-signed)" in result.stdout
    assert "prefix '127.0.0.1:5000' → location '127.0.0.1:5000' insecure (HTTP)" in result.stdout
    assert "kbc:        cc_kbc http://127.0.0.1:8080" in result.stdout


def test_show_json_masks_proxy_passwords(shm_path: Path) -> None:
    built = run("build", "--https-proxy", "http://user:s3cret@proxy.test:3128", "--no-proxy", "127.0.0.1")
    result = run("show", "-", "--json", stdin=built.stdout_bytes)
    assert "s3cret" not in result.stdout
    out = json.loads(result.stdout)
    assert out["proxy"]["https_proxy"] == "http://user:***@proxy.test:3128"
    assert [f["name"] for f in out["files"]] == ["cdh.toml", "policy.rego"]
    assert out["digest"] == hashlib.sha256(built.stdout_bytes).hexdigest()
