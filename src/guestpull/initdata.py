"""The Init-Data document: parse (keeping the exact bytes), validate, digest, fit, encode.

An Init-Data document is TOML with ``version``, ``algorithm`` and a ``[data]`` table of
strings (coco-behaviour.md §1).  Its digest is the hash named by ``algorithm`` over the exact
bytes of the document, never over a re-serialisation, so :class:`InitData` keeps ``raw``.
:func:`build` writes a document from options; judging what an upstream guest will refuse
lives in :mod:`guestpull.lint`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import ipaddress
import re
import tomllib
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from guestpull.certs import certificate_pem, fingerprint, load_pem_certificates
from guestpull.config import (
    AaConfig,
    CdhConfig,
    parse_aa_config,
    parse_cdh_config,
    parse_registries_config,
    parse_toml,
)
from guestpull.errors import ConfigError, GuestpullError, Location, UsageError
from guestpull.signature.policy import Policy
from guestpull.signature.sigstore_config import SigstoreConfig

VERSION = "0.1.0"
ALGORITHMS: tuple[str, ...] = ("sha256", "sha384", "sha512")
ANNOTATION_KEY = "io.katacontainers.config.hypervisor.cc_init_data"

AA_KEY = "aa.toml"
CDH_KEY = "cdh.toml"
POLICY_KEY = "policy.rego"
KNOWN_DATA_KEYS: tuple[str, ...] = (AA_KEY, CDH_KEY, POLICY_KEY)
# The embedded files that are TOML and must parse on their own.
TOML_DATA_KEYS: tuple[str, ...] = (AA_KEY, CDH_KEY)

# Size of the TEE field the digest is bound into (coco-behaviour.md §1.3).
PLATFORM_DIGEST_SIZES: dict[str, int] = {"snp": 32, "tdx": 48, "cca": 64, "sgx": 64, "se": 256}
PLATFORMS: tuple[str, ...] = ("snp", "tdx", "cca", "se", "sgx", "vtpm", "none")

# A decoded annotation larger than this is refused: nobody writes 16 MiB of config, and an
# unbounded gunzip of a pasted value is a memory bomb.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


def data_field(key: str) -> str:
    """The dotted name of a data key as a user writes it: ``data."cdh.toml"``."""
    return f'data."{key}"'


@dataclass(frozen=True)
class InitData:
    """A parsed, structurally valid Init-Data document and the exact bytes it came from."""

    raw: bytes
    version: str
    algorithm: str
    data: dict[str, str]
    source: str

    @classmethod
    def parse(cls, raw: bytes, source: str) -> InitData:
        """Parse and validate; ConfigError names the file, field and line of the first problem.

        Checks what the kata agent checks (version, algorithm, data is a table of strings) and
        that the embedded ``aa.toml``/``cdh.toml`` are TOML.  Their *content* (the config
        models) is checked by :meth:`cdh_config`/:meth:`aa_config` and by the linter.
        """
        text = _decode_text(raw, source)
        doc = _parse_outer(text, source)
        version = _check_version(doc, text, source)
        algorithm = _check_algorithm(doc, text, source)
        data = _check_data(doc, text, source)
        initdata = cls(raw=raw, version=version, algorithm=algorithm, data=data, source=source)
        for key in TOML_DATA_KEYS:
            if key in data:
                initdata.parse_embedded(key)
        return initdata

    # --- the parts -------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")

    @property
    def aa_toml(self) -> str | None:
        return self.data.get(AA_KEY)

    @property
    def cdh_toml(self) -> str | None:
        return self.data.get(CDH_KEY)

    @property
    def policy(self) -> str | None:
        return self.data.get(POLICY_KEY)

    @property
    def unknown_data_keys(self) -> list[str]:
        """Data keys the agent ignores (they still count in the digest)."""
        return [key for key in self.data if key not in KNOWN_DATA_KEYS]

    def digest(self) -> bytes:
        """The hash named by ``algorithm`` over the exact bytes of the document."""
        return hashlib.new(self.algorithm, self.raw).digest()

    def embedded_source(self, key: str) -> str:
        """The label for errors inside an embedded file: ``initdata.toml: data."cdh.toml"``."""
        return f"{self.source}: {data_field(key)}"

    def parse_embedded(self, key: str) -> dict[str, Any]:
        """The embedded TOML file ``key`` as a dict; a syntax error points into the outer file."""
        try:
            return parse_toml(self.data[key], self.embedded_source(key))
        except ConfigError as err:
            raise self._embedded_error(key, err) from None

    def cdh_config(self) -> CdhConfig | None:
        """The embedded ``cdh.toml`` as a model, or None when the document has none."""
        if self.cdh_toml is None:
            return None
        self.parse_embedded(CDH_KEY)  # a syntax error gets the outer line first
        return parse_cdh_config(self.cdh_toml, self.embedded_source(CDH_KEY))

    def aa_config(self) -> AaConfig | None:
        if self.aa_toml is None:
            return None
        self.parse_embedded(AA_KEY)
        return parse_aa_config(self.aa_toml, self.embedded_source(AA_KEY))

    # --- positions in the outer file -------------------------------------------------------

    def value_start(self, key: str) -> tuple[int, int] | None:
        """(line, column) in the outer file where the content of ``data[key]`` begins.

        Known only when the value is written verbatim (a literal string, or a basic string
        without escapes), so that line N of the embedded file is line start+N-1 outside.
        """
        return _verbatim_value_start(self.text, key, self.data[key])

    def top_key_line(self, key: str) -> int | None:
        """The outer line of a top-level key such as ``algorithm``."""
        return _top_key_line(self.text, key)

    def key_line(self, key: str) -> int | None:
        """The outer line that holds ``data[key]``'s key, whether or not its value is verbatim."""
        return _key_line(self.text, key)

    def outer_line(self, key: str, inner_line: int) -> int | None:
        """The outer-file line of line ``inner_line`` (1-based) of embedded file ``key``."""
        start = self.value_start(key)
        return None if start is None else start[0] + inner_line - 1

    def _embedded_error(self, key: str, err: ConfigError) -> ConfigError:
        """Re-aim a syntax error at the outer file: its line there, and the line inside."""
        inner = err.location or Location()
        where = data_field(key)
        outer_line = None
        if inner.line is not None:
            where += f" line {inner.line}" + (f", column {inner.column}" if inner.column else "")
            outer_line = self.outer_line(key, inner.line)
        return ConfigError(
            err.message,
            location=Location(file=self.source, field=where, line=outer_line or self.key_line(key)),
        )


def load(path: str | Path) -> InitData:
    """Read and parse an Init-Data file; ConfigError if it cannot be read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read the Init-Data file: {err.strerror}", location=Location(file=str(path))
        ) from None
    return InitData.parse(raw, str(path))


# --- parse helpers ---------------------------------------------------------------------------


def _decode_text(raw: bytes, source: str) -> str:
    if not raw.strip():
        raise ConfigError(
            "the document is empty; expected version, algorithm and a [data] table",
            location=Location(file=source),
        )
    if raw.startswith(_BOM):
        raise ConfigError(
            "the document starts with a UTF-8 byte order mark, which the guest's TOML parser"
            " rejects",
            location=Location(file=source, line=1, column=1),
            hint="save the file as UTF-8 without BOM",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})",
            location=Location(file=source, line=line),
            hint="Init-Data must be UTF-8 text",
        ) from None


def _parse_outer(text: str, source: str) -> dict[str, Any]:
    try:
        return parse_toml(text, source)
    except ConfigError as err:
        if err.location is not None and err.location.line is None:
            # "at end of document": the last line is where the reader gave up.
            err.location = Location(file=source, line=text.count("\n") + 1)
        raise


def _top_key_line(text: str, key: str) -> int | None:
    match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _check_version(doc: dict[str, Any], text: str, source: str) -> str:
    where = Location(file=source, field="version", line=_top_key_line(text, "version"))
    if "version" not in doc:
        raise ConfigError(f'missing "version"; expected version = "{VERSION}"', location=where)
    version = doc["version"]
    if not isinstance(version, str):
        raise ConfigError(f'"version" must be the string "{VERSION}"', location=where)
    if version != VERSION:
        raise ConfigError(
            f"unsupported version: {version}, expected: {VERSION}",
            location=where,
            hint=f'the kata agent accepts only version = "{VERSION}"',
        )
    return version


def _check_algorithm(doc: dict[str, Any], text: str, source: str) -> str:
    where = Location(file=source, field="algorithm", line=_top_key_line(text, "algorithm"))
    supported = ", ".join(ALGORITHMS)
    if "algorithm" not in doc:
        raise ConfigError(f'missing "algorithm"; expected one of {supported}', location=where)
    algorithm = doc["algorithm"]
    if not isinstance(algorithm, str):
        raise ConfigError(f'"algorithm" must be a string, one of {supported}', location=where)
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"unsupported algorithm: {algorithm}, supported algorithms: {supported}",
            location=where,
            hint=_algorithm_hint(algorithm),
        )
    return algorithm


def _algorithm_hint(algorithm: str) -> str | None:
    folded = algorithm.lower().replace("-", "").replace("_", "")
    if folded in ALGORITHMS:
        return f'write algorithm = "{folded}" (lower case, no dash)'
    if folded == "sm3":
        return "the attestation agent knows sm3 but the kata agent does not"
    return None


def _check_data(doc: dict[str, Any], text: str, source: str) -> dict[str, str]:
    if "data" not in doc:
        raise ConfigError(
            "missing the [data] table (it holds aa.toml, cdh.toml and policy.rego)",
            location=Location(file=source, field="data"),
        )
    data = doc["data"]
    if not isinstance(data, dict):
        raise ConfigError(
            "data must be a table of strings",
            location=Location(file=source, field="data", line=_top_key_line(text, "data")),
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"must be a string (the whole file's content), not {_toml_type(value)}",
                location=Location(file=source, field=data_field(key), line=_key_line(text, key)),
            )
    return dict(data)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _key_pattern(key: str) -> str:
    """A data key as written on its line: bare, "basic" or 'literal', optionally data.-dotted."""
    quoted = "|".join(
        [re.escape(f'"{key}"'), re.escape(f"'{key}'")]
        + ([re.escape(key)] if re.fullmatch(r"[A-Za-z0-9_-]+", key) else [])
    )
    return rf"^[ \t]*(?:data[ \t]*\.[ \t]*)?(?:{quoted})[ \t]*=[ \t]*"


def _key_line(text: str, key: str) -> int | None:
    match = re.search(_key_pattern(key), text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _verbatim_value_start(text: str, key: str, value: str) -> tuple[int, int] | None:
    for match in re.finditer(_key_pattern(key), text, re.MULTILINE):
        start = _content_start(text, match.end())
        if start is not None and text.startswith(value, start):
            line = text.count("\n", 0, start) + 1
            column = start - (text.rfind("\n", 0, start) + 1) + 1
            return line, column
    return None


def _content_start(text: str, pos: int) -> int | None:
    """Offset of a string value's first content character, given the offset of its opener."""
    for opener in ("'''", '"""'):
        if text.startswith(opener, pos):
            pos += 3
            # TOML trims a newline right after a multi-line opener.
            if text.startswith("\r\n", pos):
                return pos + 2
            if text.startswith("\n", pos):
                return pos + 1
            return pos
    if text.startswith(("'", '"'), pos):
        return pos + 1
    return None


# --- digest fitting --------------------------------------------------------------------------


def fit_digest(digest: bytes, platform: str) -> bytes:
    """The digest as the platform's TEE field holds it: truncated, or zero-padded at the end.

    ``vtpm`` extends PCR 8 with the digest itself, which must be sha256 (32 bytes);
    ``none`` leaves it unchanged.
    """
    if platform == "none":
        return digest
    if platform == "vtpm":
        if len(digest) != 32:
            raise ConfigError(
                "vTPM platforms extend PCR 8 with the digest, which must be sha256"
                f" (got {len(digest)} bytes)",
                location=Location(field="algorithm"),
                hint='use algorithm = "sha256"',
            )
        return digest
    if platform not in PLATFORM_DIGEST_SIZES:
        raise UsageError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}")
    size = PLATFORM_DIGEST_SIZES[platform]
    return digest[:size].ljust(size, b"\0")


def expected_pcr8(digest: bytes) -> bytes:
    """PCR 8 after one extend with the digest from its reset value: sha256(32×0x00 ‖ digest)."""
    fitted = fit_digest(digest, "vtpm")
    return hashlib.sha256(b"\0" * 32 + fitted).digest()


# --- annotation ------------------------------------------------------------------------------


def encode_annotation(raw: bytes) -> str:
    """base64(gzip(raw)) for the pod annotation; gzip mtime 0 so the value is reproducible."""
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def decode_annotation(value: str) -> bytes:
    """The document bytes inside an annotation value (not yet parsed: call InitData.parse).

    Also accepts the pasted forms ``key=value`` and ``key: "value"``.
    """
    encoded = _annotation_value(value)
    if not encoded:
        raise ConfigError("the annotation value is empty", location=Location(field=ANNOTATION_KEY))
    try:
        compressed = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConfigError(
            f"the annotation value is not valid base64 (standard alphabet): {err}",
            location=Location(field=ANNOTATION_KEY),
        ) from None
    raw = _gunzip(compressed)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"the decompressed annotation is not UTF-8 text (offset {err.start})",
            location=Location(field=ANNOTATION_KEY),
        ) from None
    return raw


def _annotation_value(value: str) -> str:
    text = value.strip()
    for separator in ("=", ":"):
        head, found, tail = text.partition(separator)
        if found and head.strip().strip("\"'") == ANNOTATION_KEY:
            text = tail.strip()
            break
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return "".join(text.split())


def _gunzip(compressed: bytes) -> bytes:
    where = Location(field=ANNOTATION_KEY)
    decoder = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer required
    try:
        raw = decoder.decompress(compressed, MAX_DOCUMENT_SIZE + 1)
    except zlib.error as err:
        raise ConfigError(f"the annotation value is not gzip data: {err}", location=where) from None
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise ConfigError(
            f"the decompressed annotation is larger than {MAX_DOCUMENT_SIZE} bytes", location=where
        )
    if not decoder.eof:
        raise ConfigError("the annotation value is truncated gzip data", location=where)
    if decoder.unused_data:
        # Go's reader would read a second member, Rust's GzDecoder would ignore it: refuse
        # anything whose meaning depends on the reader.
        raise ConfigError("the annotation value has data after the gzip stream", location=where)
    return raw


def annotation_yaml(value: str) -> str:
    """A pod metadata snippet carrying the annotation."""
    return f'metadata:\n  annotations:\n    {ANNOTATION_KEY}: "{value}"\n'


# --- build -----------------------------------------------------------------------------------

DEFAULT_ALGORITHM = "sha256"  # the only one every platform takes (vTPM needs sha256)
DEFAULT_POLICY_RESOURCE = "agent-policy-allow-all.rego"
_URI_SCHEMES = ("kbs", "file")


@dataclass(frozen=True)
class SourceText:
    """The content of a file the user named, with the name for error messages."""

    source: str
    content: bytes


@dataclass(frozen=True)
class BuildOptions:
    """What ``guestpull initdata build`` takes; file arguments arrive already read."""

    kbs_url: str | None = None
    registry_cas: tuple[SourceText, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    registry_config: SourceText | None = None
    auth_uri: str | None = None
    policy_uri: str | None = None
    policy: SourceText | None = None  # a containers-policy.json to inline
    sigstore_config_uri: str | None = None
    sigstore_config: SourceText | None = None  # a registries.d-style YAML to inline
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None
    agent_policy: SourceText | None = None  # None: the allow-all policy
    algorithm: str = DEFAULT_ALGORITHM
    work_dir: str | None = None
    max_concurrent_downloads: int | None = None


def build(options: BuildOptions) -> bytes:
    """A complete Init-Data document; it is re-parsed and validated before it is returned."""
    if options.algorithm not in ALGORITHMS:
        raise UsageError(
            f"unsupported algorithm {options.algorithm!r}; expected one of {', '.join(ALGORITHMS)}",
            hint=_algorithm_hint(options.algorithm),
        )
    data: dict[str, str] = {}
    if options.kbs_url is not None:
        kbs_url = _check_url(options.kbs_url, "--kbs-url")
        data[AA_KEY] = dump_toml({"token_configs": {"kbs": {"url": kbs_url}}})
    data[CDH_KEY] = dump_toml(_cdh_table(options))
    data[POLICY_KEY] = _policy_text(options.agent_policy)
    raw = render_document(options.algorithm, data).encode("utf-8")
    _check_round_trip(raw, data)
    return raw


def _check_round_trip(raw: bytes, data: dict[str, str]) -> None:
    # Proof that the writer and the reader agree: the guest will see exactly these files.
    built = InitData.parse(raw, "<built document>")
    if built.data != data:
        raise GuestpullError("internal error: the built document does not read back as written")
    built.cdh_config()
    built.aa_config()


def _cdh_table(options: BuildOptions) -> dict[str, Any]:
    kbc: dict[str, Any] = {"name": "offline_fs_kbc"}
    if options.kbs_url is not None:
        kbc = {"name": "cc_kbc", "url": _check_url(options.kbs_url, "--kbs-url")}
    table: dict[str, Any] = {"kbc": kbc}
    image = _image_table(options)
    # An absent [image] makes the guest read the kernel command line instead: only write
    # one when there is something to say.
    if image:
        table["image"] = image
    return table


def _image_table(options: BuildOptions) -> dict[str, Any]:
    image: dict[str, Any] = {}
    if options.work_dir is not None:
        if not options.work_dir.startswith("/"):
            raise UsageError(f"--work-dir must be an absolute path, not {options.work_dir!r}")
        image["work_dir"] = options.work_dir
    if options.max_concurrent_downloads is not None:
        if options.max_concurrent_downloads < 1:
            raise UsageError(
                "--max-concurrent-downloads must be at least 1 (0 never makes progress)"
            )
        image["max_concurrent_layer_downloads_per_image"] = options.max_concurrent_downloads
    if options.auth_uri is not None:
        image["authenticated_registry_credentials_uri"] = _check_uri(options.auth_uri, "--auth-uri")
    image.update(_signature_settings(options))
    certs = _root_certificates(options.registry_cas)
    if certs:
        image["extra_root_certificates"] = certs
    proxy = _proxy_table(options)
    if proxy:
        image["image_pull_proxy"] = proxy
    registry_config = _registry_config(options.registry_config, options.insecure_registries)
    if registry_config:
        image["registry_config"] = registry_config
    return image


def _signature_settings(options: BuildOptions) -> dict[str, str]:
    """Policy and sigstore config, inline (checked as the guest will read them) or by URI."""
    out: dict[str, str] = {}
    pairs = (("policy", "image_security_policy", Policy.parse),
             ("sigstore-config", "sigstore_config", SigstoreConfig.parse))
    for option, key, parse in pairs:
        uri: str | None = getattr(options, f"{option.replace('-', '_')}_uri")
        file: SourceText | None = getattr(options, option.replace("-", "_"))
        if uri is not None and file is not None:
            raise UsageError(f"give --{option} or --{option}-uri, not both (the URI would win)")
        if uri is not None:
            out[f"{key}_uri"] = _check_uri(uri, f"--{option}-uri")
        if file is not None:
            parse(file.content, file.source)  # refuse what the guest would refuse
            out[key] = _decode_text(file.content, file.source)
    return out


def _root_certificates(files: tuple[SourceText, ...]) -> list[str]:
    pems: list[str] = []
    seen: set[str] = set()
    for file in files:
        for cert in load_pem_certificates(file.content, file.source):
            # One certificate per entry: whether a multi-PEM string adds every block as a
            # root differs between upstream TLS stacks (coco-behaviour.md open question 4).
            if fingerprint(cert) not in seen:
                seen.add(fingerprint(cert))
                pems.append(certificate_pem(cert))
    return pems


def _proxy_table(options: BuildOptions) -> dict[str, str]:
    proxy: dict[str, str] = {}
    if options.https_proxy is not None:
        proxy["https_proxy"] = _check_url(options.https_proxy, "--https-proxy")
    if options.http_proxy is not None:
        proxy["http_proxy"] = _check_url(options.http_proxy, "--http-proxy")
    if options.no_proxy is not None:
        proxy["no_proxy"] = options.no_proxy
    return proxy


def _registry_config(file: SourceText | None, insecure: tuple[str, ...]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if file is not None:
        text = _decode_text(file.content, file.source)
        parse_registries_config(text, file.source)  # refuse what the guest would refuse
        table = tomllib.loads(text)
    for host in insecure:
        _add_insecure_rule(table, check_host_port(host), file)
    return table


def _add_insecure_rule(table: dict[str, Any], host: str, file: SourceText | None) -> None:
    rules: list[dict[str, Any]] = table.setdefault("registry", [])
    for rule in rules:
        if (rule.get("prefix") or rule.get("location")) != host:
            continue
        location = rule.get("location", "")
        if location not in ("", host):
            where = file.source if file else "the registry config"
            raise UsageError(
                f"--insecure-registry {host} conflicts with the rule in {where} that remaps"
                f" {host} to {location}; set insecure = true in that file instead"
            )
        # insecure = true only takes effect upstream on a rule with a location.
        rule["location"] = host
        rule["insecure"] = True
        return
    rules.append({"location": host, "insecure": True})


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def check_host_port(value: str) -> str:
    """``HOST[:PORT]`` (a DNS name, IPv4 address or ``[IPv6]``); UsageError otherwise."""
    def bad(why: str, hint: str | None = None) -> UsageError:
        return UsageError(f"--insecure-registry {value!r}: {why}", hint=hint)

    if "://" in value:
        raise bad(
            "expected HOST[:PORT] without a scheme", "insecure = true means plain HTTP already"
        )
    if "/" in value:
        raise bad("expected HOST[:PORT] without a path")
    host, port = value, None
    if value.startswith("["):
        inner, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise bad("unterminated '[' in an IPv6 address")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise bad(f"{inner!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise bad("expected ':PORT' after ']'")
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        raise bad("an IPv6 address needs brackets", "write it as [::1]:5000")
    else:
        host, _, port = value.partition(":")
        port = port if ":" in value else None
        if not _HOSTNAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or IPv4 address")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise bad(f"port {port!r} is not a number from 1 to 65535")
    return value


def _check_url(value: str, option: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.netloc:
        raise UsageError(f"{option} {value!r}: expected a URL such as http://127.0.0.1:8080")
    if option == "--kbs-url" and parts.scheme not in ("http", "https"):
        raise UsageError(f"{option} {value!r}: the KBS is reached over http or https")
    return value


def _check_uri(value: str, option: str) -> str:
    scheme, found, _ = value.partition("://")
    if value.startswith("/") or (found and scheme in _URI_SCHEMES):
        return value
    raise UsageError(
        f"{option} {value!r}: expected kbs:///REPO/TYPE/TAG, file:///PATH or an absolute path"
    )


def _policy_text(policy: SourceText | None) -> str:
    if policy is None:
        return (files("guestpull") / "data" / DEFAULT_POLICY_RESOURCE).read_text("utf-8")
    return _decode_text(policy.content, policy.source)


# --- TOML writing ----------------------------------------------------------------------------
# A small emitter for generated documents: deterministic, readable, and checked by re-parsing.


def render_document(algorithm: str, data: dict[str, str]) -> str:
    """The outer Init-Data TOML, each embedded file as a multi-line string."""
    entries = [f"{_toml_key(key)} = {_multiline_string(value)}" for key, value in data.items()]
    header = f'version = "{VERSION}"\nalgorithm = {_basic_string(algorithm)}\n\n[data]\n'
    return header + "\n\n".join(entries) + "\n"


def dump_toml(table: dict[str, Any]) -> str:
    """TOML text for a table of tables, arrays of tables and scalars (key order kept)."""
    return "\n".join(_table_blocks(table, ())).strip("\n") + "\n"


def _table_blocks(
    table: dict[str, Any], path: tuple[str, ...], header: str | None = None
) -> list[str]:
    scalars = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_table_array(v)]
    # A table holding only sub-tables is implied by their headers; an empty one must be written.
    lines = [header] if header and (scalars or not table) else []
    lines += [f"{_toml_key(k)} = {_toml_value(v, f'{_dotted(path + (k,))}')}" for k, v in scalars]
    blocks = ["\n".join(lines) + "\n"] if lines else []
    for key, value in table.items():
        sub = path + (key,)
        if _is_table(value):
            blocks += _table_blocks(value, sub, f"[{_dotted(sub)}]")
        elif _is_table_array(value):
            for item in value:
                blocks += _table_blocks(item, sub, f"[[{_dotted(sub)}]]")
    return blocks


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_toml_key(part) for part in path)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _basic_string(key)


def _toml_value(value: Any, field: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _multiline_basic_string(value) if "\n" in value else _basic_string(value)
    if isinstance(value, list):
        items = [_toml_value(item, field) for item in value]
        if any("\n" in item for item in items) or len(", ".join(items)) > 80:
            return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
        return "[" + ", ".join(items) + "]"
    raise ConfigError(
        f"cannot write a {type(value).__name__} value in generated TOML",
        location=Location(field=field),
    )


_NAMED_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}


def _escape_char(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def _basic_string(value: str) -> str:
    return '"' + "".join(_escape_char(c) for c in value) + '"'


def _multiline_basic_string(value: str) -> str:
    # Newlines and tabs stay as they are; everything else that needs it is escaped.
    body = "".join(c if c in "\n\t" else _escape_char(c) for c in value)
    return '"""\n' + body + '"""'


def _multiline_string(value: str) -> str:
    """A ''' literal (the content verbatim), or an escaped basic string when it cannot be one."""
    literal_ok = (
        "'''" not in value
        and not value.endswith("'")
        and not any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F for c in value)
    )
    if literal_ok:
        return "'''\n" + value + "'''"
    return _multiline_basic_string(value)
