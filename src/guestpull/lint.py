"""The Init-Data linter: what an upstream CoCo guest will refuse, or treat differently.

guestpull accepts every document upstream accepts and does the safe thing where upstream has a
defect (DESIGN.md §2).  The linter tells the user when a document *relies* on guestpull's
behaviour, or will fail on a real guest: an ``error`` finding means the guest will refuse it, a
``warning`` that it may fail or behave differently upstream, ``info`` is worth knowing.
All certificate rules live here; :mod:`guestpull.certs` only reads certificates.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from guestpull import certs
from guestpull.config import (
    KNOWN_KBC_NAMES,
    AaConfig,
    CdhConfig,
    ImageConfig,
    RegistriesConfig,
    RegistryRule,
    field_line,
    unknown_keys,
)
from guestpull.errors import ConfigError, Finding, GuestpullError, Location
from guestpull.initdata import AA_KEY, CDH_KEY, InitData, data_field, fit_digest
from guestpull.registries import prefix_match, upstream_prefix_match
from guestpull.resources import check_kbs_url, is_kbs_uri
from guestpull.signature.check import check_policy, check_sigstore_config, unprotected_registries

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass
class LintReport:
    """The findings about one document, and its digest when it parsed."""

    source: str
    findings: list[Finding] = field(default_factory=list)
    initdata: InitData | None = None

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def has_warnings(self) -> bool:
        return any(f.severity == WARNING for f in self.findings)

    @property
    def digest(self) -> str | None:
        """``<algorithm>:<hex>`` of the exact bytes, or None when the document did not parse."""
        if self.initdata is None:
            return None
        return f"{self.initdata.algorithm}:{self.initdata.digest().hex()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "digest": self.digest,
        }


def lint(
    raw: bytes,
    source: str,
    *,
    platform: str | None = None,
    now: datetime.datetime | None = None,
) -> LintReport:
    """Every finding about an Init-Data document (never raises for a bad document)."""
    report = LintReport(source=source)
    try:
        initdata = InitData.parse(raw, source)
    except ConfigError as err:
        report.findings.append(_error_finding("invalid-document", err))
        return report
    report.initdata = initdata
    context = _Context(initdata, report.findings, now or datetime.datetime.now(datetime.UTC))
    _check_platform(context, platform)
    for key in initdata.unknown_data_keys:
        context.add(
            INFO,
            "unknown-data-key",
            f"the guest ignores data key {key!r} (it still counts in the digest)",
            Location(file=source, field=data_field(key), line=initdata.key_line(key)),
        )
    aa = _load_config(context, AA_KEY, initdata.aa_config, AaConfig)
    cdh = _load_config(context, CDH_KEY, initdata.cdh_config, CdhConfig)
    if cdh is not None:
        _check_kbc(context, cdh, aa)
        if cdh.image is not None:
            _check_signatures(context, cdh.image)
            _check_certificates(context, cdh.image.extra_root_certificates)
            if cdh.image.registry_config is not None:
                _check_registry_rules(context, cdh.image.registry_config)
            if cdh.image.registry_config is not None and cdh.image.registry_configuration_uri:
                context.add_in(
                    INFO,
                    "registry-config-overrides-uri",
                    "the inline registry_config takes precedence; registry_configuration_uri"
                    " is not read",
                    "image.registry_configuration_uri",
                )
    elif initdata.cdh_toml is None:
        context.add(
            INFO,
            "no-cdh-config",
            "no cdh.toml: the guest's CDH takes its image settings from the kernel command line",
            Location(file=source, field="data"),
        )
    return report


@dataclass
class _Context:
    initdata: InitData
    findings: list[Finding]
    now: datetime.datetime

    def add(self, severity: str, code: str, message: str, location: Location) -> None:
        self.findings.append(Finding(severity, code, message, location))

    def add_in(
        self, severity: str, code: str, message: str, inner_field: str,
        *, key: str = CDH_KEY, inner_line: int | None = None,
    ) -> None:
        """A finding about ``inner_field`` of embedded file ``key``."""
        self.add(severity, code, message, self.location_in(key, inner_field, inner_line))

    def location_in(self, key: str, inner_field: str | None, inner_line: int | None) -> Location:
        if inner_line is None and inner_field:
            inner_line = _field_line(self.initdata.data[key], inner_field)
        line = None if inner_line is None else self.initdata.outer_line(key, inner_line)
        name = data_field(key) + (f".{inner_field}" if inner_field else "")
        line = line or self.initdata.key_line(key)
        return Location(file=self.initdata.source, field=name, line=line)


def _error_finding(code: str, err: GuestpullError) -> Finding:
    message = err.message + (f" (hint: {err.hint})" if err.hint else "")
    return Finding(ERROR, code, message, err.location or Location())


def _check_platform(context: _Context, platform: str | None) -> None:
    if platform is None:
        return
    try:
        fit_digest(context.initdata.digest(), platform)
    except ConfigError as err:
        line = context.initdata.top_key_line("algorithm")
        where = Location(file=context.initdata.source, field="algorithm", line=line)
        context.add(ERROR, f"{platform}-algorithm", err.message, where)


def _load_config(context: _Context, key: str, parse: Callable[[], Any], model: type) -> Any:
    """The embedded config as a model; a problem becomes a finding pointing into the outer file."""
    if key not in context.initdata.data:
        return None
    try:
        config = parse()
    except ConfigError as err:
        inner = err.location or Location()
        location = inner
        if inner.file == context.initdata.embedded_source(key):
            location = context.location_in(key, inner.field, inner.line)
        finding = _error_finding(f"invalid-{key.replace('.', '-')}", err)
        context.add(ERROR, finding.code, finding.message, location)
        return None
    for path in unknown_keys(context.initdata.parse_embedded(key), model):
        context.add_in(
            WARNING,
            "unknown-key",
            f"unknown key {path!r} in {key}: the guest ignores it",
            path,
            key=key,
        )
    return config


# --- kbc / KBS --------------------------------------------------------------------------------


def _check_signatures(context: _Context, image: ImageConfig) -> None:
    """The policy and sigstore config the guest will read: inline, or a file on this host."""
    policy_field, policy_raw = _signature_input(context, image, "image_security_policy")
    policy = None
    if policy_raw is not None:
        policy, problems = check_policy(policy_raw, policy_field)
        if policy is not None:
            problems += unprotected_registries(policy, _insecure_locations(image))
        for problem in problems:
            context.add_in(problem.severity, problem.code, problem.message, policy_field)
    sigstore_field, sigstore_raw = _signature_input(context, image, "sigstore_config")
    if sigstore_raw is not None:
        for problem in check_sigstore_config(sigstore_raw, sigstore_field):
            context.add_in(problem.severity, problem.code, problem.message, sigstore_field)
    configured = image.sigstore_config_uri or image.sigstore_config
    if policy is not None and not configured and any(
            r.type == "signedBy" for r in policy.all_requirements()):
        context.add_in(WARNING, "no-signature-store",
                       "the policy has signedBy requirements but no sigstore config says where "
                       "simple signatures are (unless the guest's work_dir holds one)", policy_field)


def _signature_input(context: _Context, image: ImageConfig, key: str) -> tuple[str, bytes | None]:
    """(field, bytes) of ``key`` or ``key_uri``: the URI wins; a kbs:// one is not checked here."""
    uri = getattr(image, f"{key}_uri")
    inline = getattr(image, key)
    if uri and inline:
        context.add_in(INFO, f"{key.replace('_', '-')}-uri-overrides-inline",
                       f"{key}_uri takes precedence; the inline {key} is not read", f"image.{key}")
    if not uri:
        return f"image.{key}", inline.encode() if inline else None
    if is_kbs_uri(uri):
        return f"image.{key}_uri", None
    path = Path(unquote(urlsplit(uri).path)) if "://" in uri else Path(uri)
    try:
        return f"image.{key}_uri", path.read_bytes()
    except OSError as err:
        context.add_in(WARNING, "signature-file-not-checked",
                       f"{uri} cannot be read on this host ({err.strerror}): the guest refuses "
                       "every pull if it cannot read it either", f"image.{key}_uri")
        return f"image.{key}_uri", None


def _insecure_locations(image: ImageConfig) -> list[str]:
    rules = image.registry_config.registry if image.registry_config else []
    found = [r.location or r.prefix for r in rules if r.insecure]
    found += [m.location for r in rules for m in r.mirror if m.insecure]
    return [x for x in found if x]


def _resource_uris(image: ImageConfig) -> Iterator[tuple[str, str]]:
    """(field, URI) for every resource URI in ``[image]``."""
    for key in ("image_security_policy_uri", "sigstore_config_uri",
                "authenticated_registry_credentials_uri", "registry_configuration_uri"):
        uri = getattr(image, key)
        if uri:
            yield f"image.{key}", uri
    for index, cert in enumerate(image.client_certificates):
        yield f"image.client_certificates[{index}].cert_uri", cert.cert_uri
        yield f"image.client_certificates[{index}].key_uri", cert.key_uri


def _check_kbc(context: _Context, cdh: CdhConfig, aa: AaConfig | None) -> None:
    if cdh.kbc.name not in KNOWN_KBC_NAMES:
        context.add_in(
            ERROR,
            "unknown-kbc",
            f"unknown kbc name {cdh.kbc.name!r}: the CDH accepts {' or '.join(KNOWN_KBC_NAMES)}",
            "kbc.name",
        )
    if cdh.kbc.name != "cc_kbc":
        return
    kbc_url = _kbs_url(context, cdh.kbc.url, "kbc.url", CDH_KEY, needed=_uses_kbs(cdh))
    _check_kbs_cert(context, cdh.kbc.kbs_cert)
    aa_kbs = aa.token_configs.kbs if aa is not None else None
    if aa_kbs is None:
        context.add_in(
            WARNING,
            "kbs-url-missing-in-aa",
            "cc_kbc needs an attestation token: set aa.toml [token_configs.kbs] url too",
            "kbc.url",
        )
        return
    aa_url = _kbs_url(context, aa_kbs.url, "token_configs.kbs.url", AA_KEY, needed=True)
    if kbc_url is not None and aa_url is not None and _same_kbs(kbc_url, aa_url) is False:
        context.add_in(
            WARNING,
            "kbs-url-mismatch",
            f"kbc.url {cdh.kbc.url!r} differs from aa.toml token_configs.kbs.url"
            f" {aa_kbs.url!r}: the token is obtained from one KBS and used at the other",
            "kbc.url",
        )


def _uses_kbs(cdh: CdhConfig) -> bool:
    """Does anything in this cdh.toml fetch from the KBS (a kbs:// URI or a [[credentials]])?"""
    uris = [uri for _, uri in _resource_uris(cdh.image)] if cdh.image is not None else []
    return bool(cdh.credentials) or any(is_kbs_uri(uri) for uri in uris)


def _kbs_url(context: _Context, url: str, inner_field: str, key: str, *, needed: bool) -> str | None:
    """The KBS URL in canonical form, or None after a finding (an error when it is ``needed``)."""
    try:
        return check_kbs_url(url, field=inner_field)
    except ConfigError as err:
        severity = ERROR if needed else WARNING
        context.add_in(severity, "kbs-url-invalid", err.message, inner_field, key=key)
        return None


def _same_kbs(first: str, second: str) -> bool:
    """Do two valid KBS URLs name the same KBS (scheme, host, port and path, default port filled in)?"""
    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        return parts.scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")

    return key(first) == key(second)


def _check_kbs_cert(context: _Context, pem: str | None) -> None:
    if not pem or not pem.strip():
        return
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        context.add_in(ERROR, "kbs-cert-invalid",
                       "kbc.kbs_cert is not a PEM certificate: the KBS cannot be trusted with it",
                       "kbc.kbs_cert")


# --- certificates -----------------------------------------------------------------------------


def _check_certificates(context: _Context, pems: list[str]) -> None:
    seen: dict[str, str] = {}
    loaded: list[tuple[str, x509.Certificate]] = []
    for index, pem in enumerate(pems):
        where = f"image.extra_root_certificates[{index}]"
        try:
            found = certs.load_pem_certificates(pem, where)
        except ConfigError as err:
            context.add_in(ERROR, "invalid-certificate", err.message, where,
                           inner_line=_field_line(context.initdata.data[CDH_KEY], where))
            continue
        for number, cert in enumerate(found):
            name = where if len(found) == 1 else f"{where} certificate {number + 1}"
            loaded.append((name, cert))
    anchors = [cert for _, cert in loaded]
    for name, cert in loaded:
        line = _certificate_line(context.initdata.data[CDH_KEY], cert)
        for severity, code, message in _certificate_findings(cert, anchors, context.now):
            context.add_in(severity, code, message, name, inner_line=line)
        fp = certs.fingerprint(cert)
        if fp in seen:
            context.add_in(WARNING, "duplicate-certificate", f"the same certificate as {seen[fp]}",
                           name, inner_line=line)
        seen.setdefault(fp, name)


def _certificate_findings(
    cert: x509.Certificate, anchors: list[x509.Certificate], now: datetime.datetime
) -> Iterator[tuple[str, str, str]]:
    info = certs.describe(cert)
    label = f"certificate {info.subject!r}"
    if info.not_after < now:
        yield ERROR, "certificate-expired", (
            f"{label} expired on {info.not_after:%Y-%m-%d %H:%M} UTC"
        )
    if info.not_before > now:
        yield ERROR, "certificate-not-yet-valid", (
            f"{label} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC (check the clocks)"
        )
    if info.self_signed and info.is_ca and info.sans:
        # A root CA names no hosts; a CA:true certificate that carries the registry's host
        # names is a server certificate made with CA:true, which rustls refuses.
        yield WARNING, "ca-self-signed", (
            f"{label} is a self-signed CA (CA:true) that names hosts ({', '.join(info.sans)}):"
            " it looks like the registry's own server certificate, and an upstream guest"
            " (rustls) rejects a CA:true certificate presented by the server"
            " (CaUsedAsEndEntity); make the self-signed server certificate CA:false, or sign"
            " a CA:false server certificate with this CA"
        )
    if info.self_signed and not info.is_ca and not info.sans:
        yield WARNING, "no-subject-alt-name", (
            f"{label} has no subjectAltName: rustls and Go ignore the common name, so no host"
            " name can match it"
        )
    if not info.self_signed and not info.is_ca:
        issuer_listed = any(certs.issued_by(cert, other) for other in anchors if other is not cert)
        if issuer_listed:
            yield INFO, "leaf-in-trust-list", (
                f"{label} is a server certificate (CA:false) whose issuer is also listed; only"
                " the issuer is needed"
            )
        else:
            yield WARNING, "not-a-trust-anchor", (
                f"{label} is neither a CA nor self-signed, and its issuer {info.issuer!r} is not"
                " in the list: the guest cannot use it to verify anything; add the CA that"
                " issued it instead"
            )


def _certificate_line(cdh_text: str, cert: x509.Certificate) -> int | None:
    # The first base64 line of a PEM written with standard 64-column lines is unique to it.
    body_line = certs.certificate_pem(cert).splitlines()[1]
    position = cdh_text.find(body_line)
    if position < 0:
        return None
    return cdh_text.count("\n", 0, position)  # the BEGIN line above it


# --- registry rules ---------------------------------------------------------------------------


def _check_registry_rules(context: _Context, config: RegistriesConfig) -> None:
    # The model fills in prefix from location; the raw table says what the user wrote.
    raw_config = context.initdata.parse_embedded(CDH_KEY)["image"]["registry_config"]
    raw_rules = [r if isinstance(r, dict) else {} for r in raw_config.get("registry", [])]
    first_by_prefix: dict[str, int] = {}
    for index, rule in enumerate(config.registry):
        where = f"image.registry_config.registry[{index}]"
        raw = raw_rules[index] if index < len(raw_rules) else {}
        if rule.prefix in first_by_prefix:
            context.add_in(
                WARNING,
                "duplicate-registry-prefix",
                f"prefix {rule.prefix!r} is also the prefix of"
                f" registry[{first_by_prefix[rule.prefix]}]: upstream uses the last of equal"
                " matches, so only one of them is ever used",
                where,
            )
        first_by_prefix.setdefault(rule.prefix, index)
        _check_mirror_limits(context, rule, where)
        if rule.insecure and not raw.get("location"):
            context.add_in(
                WARNING,
                "insecure-without-location",
                f"insecure = true on a rule without location (prefix {rule.prefix!r}): upstream"
                f" guests ignore it and use HTTPS; guestpull uses HTTP. Add location ="
                f" {rule.prefix!r} to make it work on both",
                where,
            )
    _check_substring_matches(context, config)


def _check_mirror_limits(context: _Context, rule: RegistryRule, where: str) -> None:
    """Mirror limits guestpull honours and upstream ignores (it uses every mirror for every pull)."""
    if rule.mirror_by_digest_only and rule.mirror:
        names = ", ".join(repr(m.location) for m in rule.mirror)
        context.add_in(
            WARNING,
            "upstream-ignores-mirror-limit",
            f"mirror-by-digest-only = true (prefix {rule.prefix!r}): upstream guests ignore it"
            f" and also resolve tags on {names}; guestpull pulls a tag from the primary"
            " location only",
            f"{where}.mirror-by-digest-only",
        )
    for number, mirror in enumerate(rule.mirror):
        limit = mirror.pull_from_mirror
        inner = f"{where}.mirror[{number}].pull-from-mirror"
        if rule.mirror_by_digest_only and limit:
            context.add_in(
                WARNING,
                "mirror-limit-conflict",
                f"pull-from-mirror = {limit!r} on mirror {mirror.location!r} of a rule with"
                " mirror-by-digest-only = true: containers/image refuses the pair; guestpull"
                " uses the mirror only for the pulls both allow",
                inner,
            )
        elif limit == "digest-only":
            context.add_in(
                WARNING,
                "upstream-ignores-mirror-limit",
                f"pull-from-mirror = 'digest-only' on mirror {mirror.location!r}: upstream guests"
                " ignore it and also resolve tags on this mirror; guestpull asks it for pulls by"
                " digest only",
                inner,
            )
        elif limit == "tag-only":
            context.add_in(
                INFO,
                "upstream-ignores-mirror-limit",
                f"pull-from-mirror = 'tag-only' on mirror {mirror.location!r}: upstream guests"
                " ignore it and also pull by digest from this mirror; guestpull does not",
                inner,
            )


def _check_substring_matches(context: _Context, config: RegistriesConfig) -> None:
    names = _registry_names(config)
    for index, rule in enumerate(config.registry):
        for name in names:
            reference = f"{name}/image:latest"
            if prefix_match(rule.prefix, reference) is not None:
                continue
            if upstream_prefix_match(rule.prefix, reference) is not None:
                context.add_in(
                    WARNING,
                    "upstream-substring-match",
                    f"upstream guests also apply the rule for prefix {rule.prefix!r} to images"
                    f" from {name!r}, because they match a prefix anywhere in the reference;"
                    " guestpull matches from the start only",
                    f"image.registry_config.registry[{index}]",
                )


def _registry_names(config: RegistriesConfig) -> list[str]:
    names: list[str] = []
    for rule in config.registry:
        names += [rule.prefix, rule.location, *(m.location for m in rule.mirror)]
    names += config.unqualified_search_registries
    return list(dict.fromkeys(n for n in names if n and not n.startswith("*.")))


def _field_line(text: str, dotted: str) -> int | None:
    # A certificate's finding sits on the line of the field that holds it.
    return field_line(text, re.sub(r" certificate \d+$", "", dotted))
