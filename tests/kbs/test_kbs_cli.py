"""``guestpull kbs get``: the resource to stdout or a 0600 file; errors and JSON without secrets."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from guestpull.errors import EXIT_CODES, Category
from guestpull_testkit.kbs import TestKbs
from kbs.conftest import SECRET, serve_aa
from support.cli import invoke, run
from support.config import write_cdh, write_initdata

URI = "kbs:///default/credential/test"


def write_kbs_cdh(directory: Path, kbs: TestKbs, aa_address: str) -> Path:
    cert = kbs.tls.ca_cert_pem if kbs.tls else None
    return write_cdh(directory / "cdh.toml", kbc="cc_kbc", kbc_url=kbs.url, kbs_cert=cert, aa_socket=aa_address)


def test_resource_to_stdout_in_a_real_process(https_kbs: TestKbs, shm_path: Path) -> None:
    with serve_aa(https_kbs, shm_path, key_type="rsa") as aa:
        result = run("kbs", "get", URI, "--config", str(write_kbs_cdh(shm_path, https_kbs, aa.address)))
    assert result.exit_code == 0, result
    assert result.stdout.encode() == SECRET and result.stderr == ""


def test_resource_to_a_private_file(kbs: TestKbs, shm_path: Path) -> None:
    out = shm_path / "auth.json"
    with serve_aa(kbs, shm_path) as aa:
        config = str(write_kbs_cdh(shm_path, kbs, aa.address))
        first = invoke("kbs", "get", URI, "--config", config, "-o", str(out), "--json")
        again = invoke("kbs", "get", URI, "--config", config, "-o", str(out))
        forced = invoke("kbs", "get", "kbs:///default/key/k", "--config", config, "-o", str(out), "--force")
    assert first.exit_code == 0, first
    assert json.loads(first.stdout) == {"ok": True, "result": {"uri": URI, "output": str(out), "bytes": len(SECRET)}}
    assert again.exit_code == EXIT_CODES[Category.EXISTS] and "--force" in again.stderr
    assert forced.exit_code == 0, forced
    assert out.read_bytes() == b"k" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in shm_path.iterdir() if p.name.startswith(".auth.json")] == []


def test_through_initdata(kbs: TestKbs, shm_path: Path) -> None:
    with serve_aa(kbs, shm_path) as aa:
        cdh = write_kbs_cdh(shm_path, kbs, aa.address).read_text()
        initdata = write_initdata(shm_path / "initdata.toml", cdh)
        result = invoke("kbs", "get", URI, "--initdata", str(initdata))
    assert result.exit_code == 0, result
    assert result.stdout.encode() == SECRET


def test_refusal_says_why_without_secrets(kbs: TestKbs, shm_path: Path) -> None:
    kbs.denied.add("default/credential/test")
    with serve_aa(kbs, shm_path) as aa:
        result = invoke("kbs", "get", URI, "--config", str(write_kbs_cdh(shm_path, kbs, aa.address)))
    assert result.exit_code == EXIT_CODES[Category.AUTH]
    assert "not found or not released to this guest" in result.stderr and URI in result.stderr
    assert "eyJ" not in result.stderr + result.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["https://x/y"], "not a KBS resource URI"),
    ([URI], "give --config"),
    ([URI, "--json"], "--json needs -o"),
])
def test_usage_errors(args: list[str], fragment: str) -> None:
    result = invoke("kbs", "get", *args)
    assert result.exit_code == EXIT_CODES[Category.USAGE] and fragment in result.stderr + result.stdout
