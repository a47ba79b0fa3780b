"""guestpull.lint: findings about what an upstream CoCo guest refuses or treats differently."""

from __future__ import annotations

import datetime

import pytest

from guestpull.errors import Finding
from guestpull.initdata import BuildOptions, SourceText, build, render_document
from guestpull.lint import lint
from support.config import cdh_toml
from guestpull_testkit.certs import CertChain, make_ca_chain, make_leaf_signed_by, make_self_signed

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def document(cdh: str, aa: str | None = None, *, algorithm: str = "sha256", extra: dict[str, str] | None = None) -> bytes:
    data = {} if aa is None else {"aa.toml": aa}
    data["cdh.toml"] = cdh
    data.update(extra or {})
    return render_document(algorithm, data).encode()


def cdh_with_certs(*pems: bytes) -> str:
    return cdh_toml(roots=pems)


def cdh_with_rules(rules: str) -> str:
    return '[kbc]\nname = "offline_fs_kbc"\n\n' + rules


def codes(findings: list[Finding], severity: str | None = None) -> list[str]:
    return [f.code for f in findings if severity is None or f.severity == severity]


def only(findings: list[Finding], code: str) -> Finding:
    matching = [f for f in findings if f.code == code]
    assert len(matching) == 1, findings
    return matching[0]


def test_a_built_document_with_a_ca_chain_is_ok(ca_chain: CertChain) -> None:
    raw = build(BuildOptions(
        kbs_url="http://127.0.0.1:8080",
        registry_cas=(SourceText("ca.pem", ca_chain.ca_cert_pem),),
        insecure_registries=("127.0.0.1:5000",),
    ))
    report = lint(raw, "init.toml")
    assert report.ok
    # A root CA (self-signed, CA:true, no host names) is the normal trust anchor: no finding.
    assert codes(report.findings) == []
    assert not report.has_warnings
    assert report.digest is not None and report.digest.startswith("sha256:")


def test_a_self_signed_ca_false_server_cert_is_clean() -> None:
    report = lint(document(cdh_with_certs(make_self_signed(["r.test"], ca=False).cert_pem)), "x")
    assert report.findings == []


def test_parse_errors_become_one_error_finding() -> None:
    report = lint(b'version = "0.1.1"\nalgorithm = "sha256"\n[data]\n', "init.toml")
    assert not report.ok and report.digest is None
    finding = only(report.findings, "invalid-document")
    assert "unsupported version: 0.1.1, expected: 0.1.0" in finding.message
    assert finding.location.line == 1 and finding.location.file == "init.toml"


def test_embedded_syntax_error_has_the_outer_line() -> None:
    raw = document('[kbc]\nname = "cc_kbc"\nurl = = 1\n')
    finding = only(lint(raw, "init.toml").findings, "invalid-document")
    assert finding.location.line == 8  # "cdh.toml" = ''' is line 5, its line 3 is line 8


def test_invalid_cdh_model_points_into_the_outer_file() -> None:
    raw = document('[kbc]\nname = "offline_fs_kbc"\n\n[image]\nmax_concurrent_layer_downloads_per_image = 0\n')
    finding = only(lint(raw, "init.toml").findings, "invalid-cdh-toml")
    assert finding.severity == "error"
    assert finding.location.field == 'data."cdh.toml".image.max_concurrent_layer_downloads_per_image'
    assert finding.location.line == 10


def test_missing_kbc_is_an_error() -> None:
    finding = only(lint(document("[image]\n"), "x").findings, "invalid-cdh-toml")
    assert "kbc" in finding.location.field


def test_expired_certificate_is_an_error() -> None:
    old = make_self_signed(["r.test"], ca=False, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    report = lint(document(cdh_with_certs(old.cert_pem)), "init.toml")
    assert not report.ok
    finding = only(report.findings, "certificate-expired")
    assert finding.location.field == 'data."cdh.toml".image.extra_root_certificates[0]'
    assert finding.location.line == 12  # the BEGIN line


def test_not_yet_valid_certificate_is_an_error() -> None:
    future = make_self_signed(["r.test"], ca=False, not_before=NOW + DAY, not_after=NOW + 30 * DAY)
    assert "certificate-not-yet-valid" in codes(lint(document(cdh_with_certs(future.cert_pem)), "x").findings, "error")


def test_expiry_uses_the_given_time() -> None:
    cert = make_self_signed(["r.test"], ca=False)
    raw = document(cdh_with_certs(cert.cert_pem))
    assert lint(raw, "x").ok
    assert "certificate-expired" in codes(lint(raw, "x", now=NOW + 400 * DAY).findings)


def test_ca_true_self_signed_is_a_warning() -> None:
    report = lint(document(cdh_with_certs(make_self_signed(["r.test"], ca=True).cert_pem)), "x")
    assert report.ok and report.has_warnings
    finding = only(report.findings, "ca-self-signed")
    assert finding.severity == "warning" and "CaUsedAsEndEntity" in finding.message


def test_leaf_without_its_ca_cannot_be_an_anchor() -> None:
    leaf = make_leaf_signed_by(make_ca_chain(), ["r.test"])
    finding = only(lint(document(cdh_with_certs(leaf.cert_pem)), "x").findings, "not-a-trust-anchor")
    assert finding.severity == "warning"


def test_leaf_next_to_its_ca_is_only_info(ca_chain: CertChain) -> None:
    report = lint(document(cdh_with_certs(ca_chain.ca_cert_pem, ca_chain.cert_pem)), "x")
    assert only(report.findings, "leaf-in-trust-list").severity == "info"
    assert "not-a-trust-anchor" not in codes(report.findings)


def test_duplicate_certificates() -> None:
    cert = make_self_signed(["r.test"], ca=False).cert_pem
    finding = only(lint(document(cdh_with_certs(cert, cert)), "x").findings, "duplicate-certificate")
    assert finding.location.field.endswith("extra_root_certificates[1]")
    assert "extra_root_certificates[0]" in finding.message


def test_certificate_bundle_in_one_entry_is_read_block_by_block(ca_chain: CertChain) -> None:
    old = make_self_signed(["r.test"], ca=False, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    finding = only(lint(document(cdh_with_certs(ca_chain.ca_cert_pem + old.cert_pem)), "x").findings, "certificate-expired")
    assert finding.location.field.endswith("extra_root_certificates[0] certificate 2")


def test_invalid_pem_is_an_error() -> None:
    finding = only(lint(document(cdh_with_certs(b"garbage\n")), "x").findings, "invalid-certificate")
    assert finding.severity == "error" and "not PEM" in finding.message


def test_private_key_in_the_trust_list_is_an_error(ca_chain: CertChain) -> None:
    finding = only(lint(document(cdh_with_certs(ca_chain.key_pem)), "x").findings, "invalid-certificate")
    assert "PRIVATE KEY" in finding.message


def test_self_signed_leaf_without_san() -> None:
    cert = make_self_signed(["r.test"], ca=False, san=False)
    assert "no-subject-alt-name" in codes(lint(document(cdh_with_certs(cert.cert_pem)), "x").findings, "warning")


RULES_HEADER = "[[image.registry_config.registry]]\n"


def test_duplicate_registry_prefix() -> None:
    rules = RULES_HEADER + 'location = "r.test:5000"\n' + RULES_HEADER + 'prefix = "r.test:5000"\nlocation = "m.test"\n'
    finding = only(lint(document(cdh_with_rules(rules)), "x").findings, "duplicate-registry-prefix")
    assert finding.location.field.endswith("registry[1]")
    assert finding.location.line == 11  # its [[image.registry_config.registry]] header


def test_insecure_without_location() -> None:
    rules = RULES_HEADER + 'prefix = "r.test:5000"\ninsecure = true\n'
    finding = only(lint(document(cdh_with_rules(rules)), "x").findings, "insecure-without-location")
    assert finding.severity == "warning" and "upstream guests ignore it" in finding.message


def test_insecure_with_location_is_fine() -> None:
    rules = RULES_HEADER + 'location = "r.test:5000"\ninsecure = true\n'
    assert lint(document(cdh_with_rules(rules)), "x").findings == []


def test_prefix_that_upstream_matches_as_a_substring() -> None:
    rules = (
        RULES_HEADER + 'prefix = "example.com"\nlocation = "mirror.test"\n'
        + RULES_HEADER + 'location = "registry.example.com"\ninsecure = true\n'
    )
    finding = only(lint(document(cdh_with_rules(rules)), "x").findings, "upstream-substring-match")
    assert finding.location.field.endswith("registry[0]")
    assert "registry.example.com" in finding.message


def test_anchored_prefixes_do_not_warn() -> None:
    rules = RULES_HEADER + 'prefix = "example.com"\nlocation = "mirror.test"\n' + RULES_HEADER + 'location = "example.com.evil"\n'
    assert "upstream-substring-match" not in codes(lint(document(cdh_with_rules(rules)), "x").findings)


def outer_line(raw: bytes, finding: Finding) -> str:
    assert finding.location.line is not None
    return raw.decode().splitlines()[finding.location.line - 1].strip()


MIRROR_HEADER = "[[image.registry_config.registry.mirror]]\n"


def mirror_rules(*limits: str | None, by_digest_only: bool = False) -> str:
    rules = RULES_HEADER + 'location = "r.test:5000"\n'
    if by_digest_only:
        rules += "mirror-by-digest-only = true\n"
    for number, limit in enumerate(limits):
        rules += MIRROR_HEADER + f'location = "m{number}.test"\n'
        if limit is not None:
            rules += f'pull-from-mirror = "{limit}"\n'
    return rules


def test_digest_only_mirror_warns_that_upstream_resolves_tags_there() -> None:
    raw = document(cdh_with_rules(mirror_rules(None, "digest-only")))
    findings = lint(raw, "x").findings
    finding = only(findings, "upstream-ignores-mirror-limit")
    assert finding.severity == "warning"
    assert "'m1.test'" in finding.message and "resolve tags" in finding.message
    assert finding.location.field == 'data."cdh.toml".image.registry_config.registry[0].mirror[1].pull-from-mirror'
    assert outer_line(raw, finding) == 'pull-from-mirror = "digest-only"'
    assert "unknown-key" not in codes(findings)  # a key guestpull reads


def test_tag_only_mirror_is_info() -> None:
    finding = only(lint(document(cdh_with_rules(mirror_rules("tag-only"))), "x").findings,
                   "upstream-ignores-mirror-limit")
    assert finding.severity == "info" and "'m0.test'" in finding.message


def test_mirror_by_digest_only_warns_once_per_rule() -> None:
    findings = lint(document(cdh_with_rules(mirror_rules(None, None, by_digest_only=True))), "x").findings
    finding = only(findings, "upstream-ignores-mirror-limit")
    assert finding.severity == "warning" and "'m0.test', 'm1.test'" in finding.message
    assert finding.location.field.endswith("registry[0].mirror-by-digest-only")
    # without mirrors it changes nothing
    no_mirrors = RULES_HEADER + 'location = "r.test:5000"\nmirror-by-digest-only = true\n'
    assert lint(document(cdh_with_rules(no_mirrors)), "x").findings == []


def test_both_mirror_limits_conflict() -> None:
    findings = lint(document(cdh_with_rules(mirror_rules("tag-only", by_digest_only=True))), "x").findings
    conflict = only(findings, "mirror-limit-conflict")
    assert conflict.severity == "warning" and "containers/image refuses" in conflict.message
    assert conflict.location.field.endswith("registry[0].mirror[0].pull-from-mirror")


@pytest.mark.parametrize("limit", [None, "all", ""])
def test_unlimited_mirrors_are_fine(limit: str | None) -> None:
    assert lint(document(cdh_with_rules(mirror_rules(limit))), "x").findings == []


def test_bad_pull_from_mirror_is_an_error_naming_the_field() -> None:
    raw = document(cdh_with_rules(mirror_rules("digests")))
    finding = only(lint(raw, "x").findings, "invalid-cdh-toml")
    assert finding.severity == "error" and "'digests'" in finding.message
    assert finding.location.field == 'data."cdh.toml".image.registry_config.registry[0].mirror[0].pull-from-mirror'
    assert outer_line(raw, finding) == 'pull-from-mirror = "digests"'


def test_unknown_keys_in_embedded_files() -> None:
    cdh = '[kbc]\nname = "offline_fs_kbc"\n\n[image]\nskip_proxy_ips = "1.2.3.4"\n'
    aa = '[token_configs.kbs]\nurl = "http://k"\nurll = "x"\n'
    raw = document(cdh.replace("offline_fs_kbc", "cc_kbc").replace('cc_kbc"', 'cc_kbc"\nurl = "http://k"'), aa)
    findings = [f for f in lint(raw, "x").findings if f.code == "unknown-key"]
    assert {f.location.field for f in findings} == {
        'data."cdh.toml".image.skip_proxy_ips',
        'data."aa.toml".token_configs.kbs.urll',
    }
    assert all(f.severity == "warning" and f.location.line is not None for f in findings)


def test_unknown_data_key_is_info() -> None:
    raw = document('[kbc]\nname = "offline_fs_kbc"\n', extra={"notes.md": "hi"})
    finding = only(lint(raw, "x").findings, "unknown-data-key")
    assert finding.severity == "info" and finding.location.field == 'data."notes.md"'


def test_vtpm_needs_sha256() -> None:
    raw = document('[kbc]\nname = "offline_fs_kbc"\n', algorithm="sha384")
    assert lint(raw, "x").ok
    report = lint(raw, "x", platform="vtpm")
    finding = only(report.findings, "vtpm-algorithm")
    assert not report.ok and "must be sha256" in finding.message and finding.location.line == 2


def test_unknown_kbc_name() -> None:
    finding = only(lint(document('[kbc]\nname = "sample_kbc"\n'), "x").findings, "unknown-kbc")
    assert finding.severity == "error" and finding.location.field == 'data."cdh.toml".kbc.name'


def test_kbs_url_mismatch() -> None:
    raw = document('[kbc]\nname = "cc_kbc"\nurl = "http://a:8080"\n', '[token_configs.kbs]\nurl = "http://b:8080"\n')
    assert only(lint(raw, "x").findings, "kbs-url-mismatch").severity == "warning"


def test_cc_kbc_without_aa_url() -> None:
    raw = document('[kbc]\nname = "cc_kbc"\nurl = "http://a:8080"\n')
    assert "kbs-url-missing-in-aa" in codes(lint(raw, "x").findings, "warning")


@pytest.mark.parametrize("url", ["http://a:8080", "http://a:8080/"])
def test_matching_kbs_urls(url: str) -> None:
    raw = document(f'[kbc]\nname = "cc_kbc"\nurl = "{url}"\n', '[token_configs.kbs]\nurl = "http://a:8080"\n')
    assert lint(raw, "x").findings == []


def test_report_to_dict() -> None:
    report = lint(document('[kbc]\nname = "sample_kbc"\n'), "x")
    out = report.to_dict()
    assert out["ok"] is False and out["digest"] == report.digest
    assert out["findings"][0]["code"] == "unknown-kbc"
