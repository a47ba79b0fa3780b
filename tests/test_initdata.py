"""guestpull.initdata: parsing, digest, platform fitting, annotation and build."""

from __future__ import annotations

import base64
import gzip
import hashlib
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestpull.errors import ConfigError, UsageError
from guestpull.initdata import (
    ANNOTATION_KEY,
    BuildOptions,
    InitData,
    SourceText,
    build,
    check_host_port,
    decode_annotation,
    dump_toml,
    encode_annotation,
    expected_pcr8,
    fit_digest,
    load,
    render_document,
)
from guestpull.testing.certs import CertChain

KATA_ANNOTATION = (
    "H4sIAFlC92cAAytLLSrOzM9TsFVQMtAz1DNQ4krMSc8vyizJyAWJFWckGpmaKXFFpySWJMZyKSUm6pXk5+YoAeXU1dW5"
    "QJhLKTklA4toQX5OZnKlXlFqej6yBABS/5JkcQAAAA=="
)
KATA_SHA256 = "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5"

HEADER = 'version = "0.1.0"\nalgorithm = "sha256"\n'


def doc(body: str, header: str = HEADER) -> bytes:
    return (header + body).encode()


def parse_error(raw: bytes, source: str = "initdata.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        InitData.parse(raw, source)
    return info.value


# --- parse ------------------------------------------------------------------------------------


def test_kata_test_vector() -> None:
    document = InitData.parse(decode_annotation(KATA_ANNOTATION), "kata")
    assert document.digest().hex() == KATA_SHA256
    assert document.data == {"aa.toml": "", "cdh.toml": "", "policy.rego": ""}


def test_digest_is_over_the_exact_bytes() -> None:
    raw = doc('# a comment\r\n[data]\r\n"cdh.toml" = """\n[kbc]\nname = "offline_fs_kbc"\n"""\n')
    document = InitData.parse(raw, "x")
    assert document.raw is raw
    assert document.digest() == hashlib.sha256(raw).digest()
    assert document.cdh_toml == '[kbc]\nname = "offline_fs_kbc"\n'


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_each_algorithm(algorithm: str) -> None:
    raw = doc("[data]\n", header=f'version = "0.1.0"\nalgorithm = "{algorithm}"\n')
    assert InitData.parse(raw, "x").digest() == hashlib.new(algorithm, raw).digest()


def test_unknown_data_keys_are_kept() -> None:
    raw = doc('[data]\n"notes.txt" = "hello"\n"policy.rego" = ""\n')
    document = InitData.parse(raw, "x")
    assert document.data["notes.txt"] == "hello"
    assert document.unknown_data_keys == ["notes.txt"]


def test_empty_document() -> None:
    err = parse_error(b" \n")
    assert "empty" in err.message and err.location.file == "initdata.toml"


def test_byte_order_mark() -> None:
    err = parse_error(b"\xef\xbb\xbf" + doc("[data]\n"))
    assert "byte order mark" in err.message and err.location.line == 1


def test_not_utf8_names_the_line() -> None:
    err = parse_error(doc('[data]\n"x" = "caf\xe9"\n').replace("é".encode(), b"\xe9"))
    assert "UTF-8" in err.message and err.location.line == 4


def test_missing_data() -> None:
    err = parse_error(doc(""))
    assert "[data]" in err.message and err.location.field == "data"


def test_malformed_outer_toml_gives_line_and_column() -> None:
    err = parse_error(doc('[data]\n"aa.toml" = \n'))
    assert err.location.line == 4 and err.location.column is not None
    assert str(err).startswith("initdata.toml:4:")


@pytest.mark.parametrize("version", ["0.1.1", "0.2.0", "1"])
def test_wrong_version(version: str) -> None:
    err = parse_error(doc("[data]\n", header=f'version = "{version}"\nalgorithm = "sha256"\n'))
    assert f"unsupported version: {version}, expected: 0.1.0" in err.message
    assert err.location.field == "version" and err.location.line == 1


def test_version_must_be_a_string() -> None:
    err = parse_error(b'version = 0.1\nalgorithm = "sha256"\n[data]\n')
    assert err.location.field == "version"


@pytest.mark.parametrize(
    ("spelling", "fix"),
    [("sha-256", "sha256"), ("SHA256", "sha256"), ("SHA-384", "sha384"), ("Sha_512", "sha512")],
)
def test_algorithm_spelling_gets_a_hint(spelling: str, fix: str) -> None:
    err = parse_error(doc("[data]\n", header=f'version = "0.1.0"\nalgorithm = "{spelling}"\n'))
    assert f"unsupported algorithm: {spelling}" in err.message
    assert err.hint is not None and f'"{fix}"' in err.hint
    assert err.location.line == 2


def test_unknown_algorithm_has_no_false_hint() -> None:
    err = parse_error(doc("[data]\n", header='version = "0.1.0"\nalgorithm = "md5"\n'))
    assert "md5" in err.message and err.hint is None


@pytest.mark.parametrize("value", ["1", "true", "['a']", "{ a = 'b' }"])
def test_data_values_must_be_strings(value: str) -> None:
    err = parse_error(doc(f'[data]\n"aa.toml" = ""\n"cdh.toml" = {value}\n'))
    assert err.location.field == 'data."cdh.toml"' and err.location.line == 5
    assert "must be a string" in err.message


CDH_WITH_ERROR_ON_LINE_3 = """\
version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://127.0.0.1:8080"
'''

# The CDH configuration.

"cdh.toml" = '''
[kbc]
name = "cc_kbc"
url = = "http://127.0.0.1:8080"
'''
"""


def test_malformed_embedded_toml_points_into_the_outer_file() -> None:
    err = parse_error(CDH_WITH_ERROR_ON_LINE_3.encode())
    # The embedded file starts on line 13; its line 3 is line 15 of initdata.toml.
    assert err.location.line == 15
    assert str(err).startswith('initdata.toml:15: data."cdh.toml" line 3, column 7: invalid TOML')


def test_malformed_embedded_toml_in_an_escaped_string_names_the_key_line() -> None:
    # With escapes the inner lines do not map onto outer lines: only the key line is known.
    raw = doc('[data]\n"aa.toml" = "[token_configs.kbs]\\nurl = = 1\\n"\n')
    err = parse_error(raw)
    assert err.location.line == 4 and 'data."aa.toml" line 2' in str(err)


def test_embedded_error_on_the_first_line_of_a_same_line_string() -> None:
    err = parse_error(doc("[data]\n\"cdh.toml\" = '''[kbc\n'''\n"))
    assert err.location.line == 4 and 'data."cdh.toml" line 1' in str(err)


def test_outer_line_mapping() -> None:
    document = InitData.parse(CDH_WITH_ERROR_ON_LINE_3.replace("= =", "=").encode(), "x")
    assert document.value_start("cdh.toml") == (13, 1)
    assert document.outer_line("aa.toml", 2) == 7


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load(tmp_path / "absent.toml")
    assert info.value.location.file.endswith("absent.toml")


# --- platform fitting -------------------------------------------------------------------------

FITTING = [
    ("snp", 32), ("tdx", 48), ("cca", 64), ("sgx", 64), ("se", 256),
]


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize(("platform", "size"), FITTING)
def test_fit_truncates_or_pads(algorithm: str, platform: str, size: int) -> None:
    digest = hashlib.new(algorithm, b"initdata").digest()
    fitted = fit_digest(digest, platform)
    assert len(fitted) == size
    kept = min(size, len(digest))
    assert fitted[:kept] == digest[:kept]
    assert fitted[kept:] == b"\0" * (size - kept)


def test_fit_none_is_unchanged() -> None:
    digest = hashlib.sha384(b"x").digest()
    assert fit_digest(digest, "none") == digest


def test_vtpm_takes_sha256_and_gives_pcr8() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert fit_digest(digest, "vtpm") == digest
    pcr8 = expected_pcr8(digest)
    assert pcr8 == hashlib.sha256(bytes(32) + digest).digest() and pcr8 != digest


@pytest.mark.parametrize("algorithm", ["sha384", "sha512"])
def test_vtpm_refuses_other_digests(algorithm: str) -> None:
    with pytest.raises(ConfigError, match="vTPM platforms extend PCR 8 with the digest, which must be sha256"):
        fit_digest(hashlib.new(algorithm, b"x").digest(), "vtpm")


def test_unknown_platform() -> None:
    with pytest.raises(UsageError, match="unknown platform"):
        fit_digest(bytes(32), "sev")


# --- annotation -------------------------------------------------------------------------------


def test_annotation_round_trip_and_is_deterministic() -> None:
    raw = CDH_WITH_ERROR_ON_LINE_3.encode()
    value = encode_annotation(raw)
    assert value == encode_annotation(raw)
    assert base64.b64decode(value)[4:8] == b"\0\0\0\0"  # gzip mtime
    assert gzip.decompress(base64.b64decode(value)) == raw
    assert decode_annotation(value) == raw


@pytest.mark.parametrize(
    "wrap",
    [
        "{v}",
        f"{ANNOTATION_KEY}={{v}}",
        f'{ANNOTATION_KEY}: "{{v}}"',
        '  "{v}"\n',
    ],
)
def test_decode_accepts_pasted_forms(wrap: str) -> None:
    assert decode_annotation(wrap.format(v=KATA_ANNOTATION)).startswith(b'version = "0.1.0"')


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"plain text, not gzip").decode(), "not gzip"),
        (base64.b64encode(gzip.compress(b"caf\xe9")).decode(), "not UTF-8"),
        (base64.b64encode(gzip.compress(b"x")[:-4]).decode(), "truncated"),
        (base64.b64encode(gzip.compress(b"x") + b"junk").decode(), "after the gzip stream"),
        ("", "empty"),
    ],
)
def test_decode_refuses_garbage(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decode_annotation(value)


# --- build ------------------------------------------------------------------------------------


def test_build_minimal_is_offline_fs() -> None:
    document = InitData.parse(build(BuildOptions()), "built")
    assert document.aa_toml is None
    assert tomllib.loads(document.cdh_toml) == {"kbc": {"name": "offline_fs_kbc"}}
    assert "package agent_policy" in document.policy
    assert "default PullImageRequest := true" in document.policy


def test_build_everything(ca_chain: CertChain) -> None:
    options = BuildOptions(
        kbs_url="https://kbs.test:8080",
        registry_cas=(SourceText("ca.pem", ca_chain.ca_cert_pem), SourceText("dup.pem", ca_chain.ca_cert_pem)),
        insecure_registries=("127.0.0.1:5000", "[::1]:5001"),
        auth_uri="kbs:///default/credential/auth",
        policy_uri="file:///etc/policy.json",
        https_proxy="http://proxy.test:3128",
        http_proxy="http://proxy.test:3128",
        no_proxy="127.0.0.1,localhost",
        agent_policy=SourceText("p.rego", b"package agent_policy\ndefault PullImageRequest := true\n"),
        algorithm="sha512",
        work_dir="/run/guestpull",
        max_concurrent_downloads=5,
    )
    raw = build(options)
    document = InitData.parse(raw, "built")
    assert document.algorithm == "sha512"
    cdh = document.cdh_config()
    assert cdh.kbc.name == "cc_kbc" and cdh.kbc.url == "https://kbs.test:8080"
    assert document.aa_config().token_configs.kbs.url == "https://kbs.test:8080"
    image = cdh.image
    assert image.extra_root_certificates == [ca_chain.ca_cert_pem.decode()]  # duplicate dropped
    rules = image.registry_config.registry
    assert [(r.location, r.insecure) for r in rules] == [("127.0.0.1:5000", True), ("[::1]:5001", True)]
    assert image.image_pull_proxy.no_proxy == "127.0.0.1,localhost"
    assert str(image.work_dir) == "/run/guestpull"
    assert image.max_concurrent_layer_downloads_per_image == 5
    assert document.policy.startswith("package agent_policy")
    # Literal strings keep the embedded files readable.
    assert "\"cdh.toml\" = '''\n[kbc]" in raw.decode()


def test_build_is_deterministic(ca_chain: CertChain) -> None:
    options = BuildOptions(registry_cas=(SourceText("ca.pem", ca_chain.ca_cert_pem),))
    assert build(options) == build(options)


# The bytes of a built document are what a KBS reference value pins (its digest): a writer
# change that moves them must show up here, not in a user's attestation.
BUILT_DOCUMENT = """\
version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "https://kbs.test"
'''

"cdh.toml" = '''
[kbc]
name = "cc_kbc"
url = "https://kbs.test"

[image]
work_dir = "/run/guestpull"
image_security_policy_uri = "kbs:///default/security-policy/test"

[image.image_pull_proxy]
https_proxy = "http://proxy.test:3128"
no_proxy = "127.0.0.1,localhost"

[[image.registry_config.registry]]
location = "127.0.0.1:5000"
insecure = true
'''

"policy.rego" = '''
package agent_policy
default PullImageRequest := true
'''
"""


def test_build_writes_the_same_bytes_as_before() -> None:
    options = BuildOptions(
        kbs_url="https://kbs.test",
        insecure_registries=("127.0.0.1:5000",),
        policy_uri="kbs:///default/security-policy/test",
        https_proxy="http://proxy.test:3128",
        no_proxy="127.0.0.1,localhost",
        agent_policy=SourceText("p.rego", b"package agent_policy\ndefault PullImageRequest := true\n"),
        algorithm="sha384",
        work_dir="/run/guestpull",
    )
    assert build(options).decode() == BUILT_DOCUMENT


def test_build_refuses_a_private_key_as_ca(ca_chain: CertChain) -> None:
    with pytest.raises(ConfigError, match="PRIVATE KEY") as info:
        build(BuildOptions(registry_cas=(SourceText("server.key", ca_chain.key_pem),)))
    assert info.value.location.file == "server.key"


def test_build_merges_insecure_hosts_into_a_registry_config() -> None:
    conf = b'unqualified-search-registries = ["docker.io"]\n[[registry]]\nprefix = "127.0.0.1:5000"\n'
    raw = build(BuildOptions(registry_config=SourceText("r.conf", conf), insecure_registries=("127.0.0.1:5000",)))
    rules = InitData.parse(raw, "b").cdh_config().image.registry_config.registry
    assert [(r.prefix, r.location, r.insecure) for r in rules] == [("127.0.0.1:5000", "127.0.0.1:5000", True)]


def test_build_refuses_an_insecure_host_that_a_rule_remaps() -> None:
    conf = b'[[registry]]\nprefix = "r.test"\nlocation = "mirror.test"\n'
    with pytest.raises(UsageError, match="conflicts"):
        build(BuildOptions(registry_config=SourceText("r.conf", conf), insecure_registries=("r.test",)))


def test_build_refuses_an_invalid_registry_config() -> None:
    with pytest.raises(ConfigError) as info:
        build(BuildOptions(registry_config=SourceText("r.conf", b"[[registry]]\ninsecure = true\n")))
    assert "both location and prefix are empty" in str(info.value) and "r.conf" in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:5000", "localhost:5000", "reg.example.com", "[::1]:5000", "[fe80::1]"])
def test_host_port_accepted(host: str) -> None:
    assert check_host_port(host) == host


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:5000", "127.0.0.1:5000/ns", "::1", "[::1", "[nothex]:1", "host:0", "host:70000", "host:abc", "-bad.test", "a b", ""],
)
def test_host_port_refused(host: str) -> None:
    with pytest.raises(UsageError, match="--insecure-registry"):
        check_host_port(host)


@pytest.mark.parametrize(
    "options",
    [
        BuildOptions(kbs_url="127.0.0.1:8080"),
        BuildOptions(auth_uri="https://example.com/auth.json"),
        BuildOptions(work_dir="relative/dir"),
        BuildOptions(max_concurrent_downloads=0),
        BuildOptions(algorithm="SHA256"),
        BuildOptions(https_proxy="proxy:3128"),
    ],
)
def test_build_refuses_bad_options(options: BuildOptions) -> None:
    with pytest.raises(UsageError):
        build(options)


def test_content_with_triple_quotes_falls_back_to_an_escaped_string() -> None:
    data = {"policy.rego": "a = '''x'''\n\"\"\" \\ \t end'", "aa.toml": "x = 1\n"}
    text = render_document("sha256", data)
    assert InitData.parse(text.encode(), "x").data == data
    assert "\"aa.toml\" = '''" in text  # the other file still uses a literal string


def test_carriage_returns_are_escaped_so_every_reader_sees_them() -> None:
    # TOML lets a reader turn a raw CRLF in a multi-line string into LF (tomllib does).
    data = {"policy.rego": "a\r\nb\r", "notes": "x\r\n"}
    text = render_document("sha256", data)
    assert "\r" not in text
    assert InitData.parse(text.encode(), "x").data == data


def test_quotes_next_to_the_closing_quotes_are_escaped() -> None:
    # Valid TOML 1.0 unescaped, but readers older than 1.0-rc.1 end the string early.
    text = dump_toml({"t": {"s": 'line\n"quoted"'}, "u": {"s": "it's\n'"}})
    assert text.count('\\""""') == 1  # the last quote of t.s is escaped
    assert tomllib.loads(text) == {"t": {"s": 'line\n"quoted"'}, "u": {"s": "it's\n'"}}
    assert render_document("sha256", {"k": "it's'"}).endswith('k = """\nit\'s\'"""\n')


def test_dump_toml_keeps_an_array_table_item_that_holds_only_tables() -> None:
    # Without its own [[registry]] header the mirror would join the first rule.
    table = {"registry": [{"location": "a"}, {"mirror": {"location": "m"}}]}
    assert tomllib.loads(dump_toml(table)) == table


def test_dump_toml_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="cannot write a NoneType") as info:
        dump_toml({"image": {"registry_config": {"v": None}}})
    assert info.value.location.field == "image.registry_config.v"


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text, _text, max_size=4))
def test_render_document_round_trips_any_text(data: dict[str, str]) -> None:
    assert tomllib.loads(render_document("sha256", data))["data"] == data


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(_text, st.booleans(), st.integers(), st.lists(_text, max_size=3),
                  st.dictionaries(st.text(min_size=1, max_size=5), _text, max_size=2)),
        max_size=4,
    )
)
def test_dump_toml_round_trips(table: dict) -> None:
    assert tomllib.loads(dump_toml({"t": table})) == {"t": table}
