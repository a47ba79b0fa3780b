"""``initdata check`` on cc_kbc: the KBS URL's form, the same KBS in aa.toml and cdh.toml, kbs_cert."""

from __future__ import annotations

import pytest

from guestpull.errors import Finding
from guestpull.lint import lint
from guestpull_testkit.certs import make_ca_chain
from support.config import cdh_toml, initdata_toml

USES_KBS = {"authenticated_registry_credentials_uri": "kbs:///default/credential/test"}


def document(cdh: str, aa: str | None = None) -> bytes:
    return initdata_toml(cdh, aa).encode()


def cc_kbc(url: str, image: dict[str, str] | None = None, kbs_cert: str | None = None) -> str:
    return cdh_toml(kbc="cc_kbc", kbc_url=url, kbs_cert=kbs_cert, image=image)


def aa_toml(url: str) -> str:
    return f'[token_configs.kbs]\nurl = "{url}"\n'


def findings(raw: bytes, code: str) -> list[Finding]:
    return [f for f in lint(raw, "initdata.toml").findings if f.code == code]


@pytest.mark.parametrize("url", ["kbs.example:8080", "https://u:p@kbs.example", "https://kbs.example/?a=1", ""])
def test_bad_kbs_url_is_an_error_when_kbs_uris_are_used(url: str) -> None:
    [finding] = findings(document(cc_kbc(url, USES_KBS), aa_toml("https://kbs.example")), "kbs-url-invalid")
    assert finding.severity == "error"
    assert finding.location.field == 'data."cdh.toml".kbc.url' and finding.location.line is not None


def test_bad_kbs_url_is_a_warning_when_nothing_uses_it() -> None:
    [finding] = findings(document(cc_kbc("kbs.example:8080"), aa_toml("https://kbs.example")), "kbs-url-invalid")
    assert finding.severity == "warning"


def test_bad_aa_kbs_url_points_into_aa_toml() -> None:
    [finding] = findings(document(cc_kbc("https://kbs.example"), aa_toml("kbs.example")), "kbs-url-invalid")
    assert finding.severity == "error" and finding.location.field == 'data."aa.toml".token_configs.kbs.url'


@pytest.mark.parametrize(("cdh_url", "aa_url"), [
    ("https://KBS.example", "https://kbs.example:443/"),
    ("http://kbs.example:80/prefix/", "http://kbs.example/prefix"),
])
def test_same_kbs_written_differently(cdh_url: str, aa_url: str) -> None:
    raw = document(cc_kbc(cdh_url, USES_KBS), aa_toml(aa_url))
    assert lint(raw, "x").findings == []


@pytest.mark.parametrize("aa_url", ["https://kbs.example:8443", "http://kbs.example", "https://other.example",
                                    "https://kbs.example/prefix"])
def test_different_kbs_is_a_warning(aa_url: str) -> None:
    [finding] = findings(document(cc_kbc("https://kbs.example", USES_KBS), aa_toml(aa_url)), "kbs-url-mismatch")
    assert finding.severity == "warning"


def test_kbs_cert() -> None:
    good = make_ca_chain().ca_cert_pem.decode()
    ok = document(cc_kbc("https://kbs.example", kbs_cert=good), aa_toml("https://kbs.example"))
    assert lint(ok, "x").findings == []
    empty = document(cc_kbc("https://kbs.example", kbs_cert=""), aa_toml("https://kbs.example"))
    assert lint(empty, "x").findings == [], 'upstream\'s example config has kbs_cert = ""'
    bad = document(cc_kbc("https://kbs.example", kbs_cert="not pem"), aa_toml("https://kbs.example"))
    [finding] = findings(bad, "kbs-cert-invalid")
    assert finding.severity == "error" and finding.location.field == 'data."cdh.toml".kbc.kbs_cert'


def test_kbs_uris_under_cc_kbc_are_not_refused() -> None:
    raw = document(cc_kbc("https://kbs.example", USES_KBS), aa_toml("https://kbs.example"))
    report = lint(raw, "x")
    assert report.ok and not [f for f in report.findings if "unsupported" in f.code]
