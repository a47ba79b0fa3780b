"""The preflight probe: can the guest reach each registry its configuration names?

``guestpull probe`` connects to every registry that the ``[image]`` configuration names (rule
locations and prefixes, mirrors, client-certificate registries) and to those given on the
command line, with the guest's exact trust (system roots + ``extra_root_certificates``,
client certificates), proxies and credentials, through the same transport and registry client
a pull uses.  For each registry and scheme it reports what a pull would meet: TLS verified
and by which trust anchor, the TLS failure in plain words, plain HTTP where HTTPS was expected
(or the reverse), whether a login is required and whether the configured credentials work,
or that a rule blocks it.  Nothing is pulled; only ``GET /v2/`` (and a token request) is sent.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from guestpull.url import URL

from guestpull import certs, tls
from guestpull.authfile import AuthFile
from guestpull.config import ImageConfig, RegistriesConfig, ResourceGetter
from guestpull.distribution import (
    ProxySettings,
    RegistryClient,
    RetryPolicy,
    Transport,
    TransportSettings,
    new_session,
)
from guestpull.errors import BlockedError, GuestpullError, InvalidReferenceError
from guestpull.pull import load_auth_file, load_trust
from guestpull.reference import parse_reference
from guestpull.registries import Scheme, resolve_candidates

#: The repository a probe logs in for when no image names one (the token scope needs one).
PROBE_REPOSITORY = "guestpull/probe"

#: A probe waits less than a pull, and tries once: it reports, it does not persevere.
PROBE_SETTINGS = TransportSettings(
    connect_timeout=10.0, read_timeout=10.0, retry=RetryPolicy(attempts=1)
)


class Status(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"


@dataclass
class Target:
    """One registry and scheme to probe, and every reason the configuration names it."""

    registry: str
    scheme: Scheme
    sources: list[str] = field(default_factory=list)
    repository: str = PROBE_REPOSITORY
    blocked: str | None = None  # why a rule blocks it
    skipped: str | None = None  # why it cannot be probed


@dataclass
class TLSReport:
    verified: bool
    anchor: str | None = None  # subject of the certificate that anchored the chain
    anchor_source: str | None = None  # "image.extra_root_certificates[N]" or "system roots"

    def to_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "anchor": self.anchor, "anchor_source": self.anchor_source}


@dataclass
class AuthReport:
    required: bool
    scheme: str | None = None  # "basic" | "bearer"
    realm: str | None = None
    credentials: str = "not needed"  # "not needed" | "accepted" | "anonymous accepted" | "refused"

    def to_dict(self) -> dict[str, Any]:
        return {"required": self.required, "scheme": self.scheme, "realm": self.realm,
                "credentials": self.credentials}


@dataclass
class RegistryProbe:
    """What a pull from one registry over one scheme would meet."""

    registry: str
    scheme: str
    sources: list[str]
    status: Status
    tls: TLSReport | None = None
    auth: AuthReport | None = None
    error: GuestpullError | None = None
    note: str | None = None  # why blocked or skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "scheme": self.scheme,
            "url": f"{self.scheme}://{self.registry}/v2/",
            "sources": self.sources,
            "status": str(self.status),
            "tls": self.tls.to_dict() if self.tls else None,
            "auth": self.auth.to_dict() if self.auth else None,
            "error": self.error.to_dict() if self.error else None,
            "note": self.note,
        }


@dataclass
class ProbeReport:
    results: list[RegistryProbe]

    @property
    def ok(self) -> bool:
        """No registry failed (a blocked or skipped one named only by the configuration is fine)."""
        return not any(r.status == Status.FAILED or _asked_but_unusable(r) for r in self.results)

    @property
    def first_error(self) -> GuestpullError | None:
        for result in self.results:
            if result.error is not None:
                return result.error
            if _asked_but_unusable(result):
                return BlockedError(result.note or f"{result.registry} is blocked")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "registries": [r.to_dict() for r in self.results]}


def _asked_but_unusable(result: RegistryProbe) -> bool:
    return result.status == Status.BLOCKED and COMMAND_LINE in result.sources


COMMAND_LINE = "command line"


# --- what to probe -------------------------------------------------------------------------


def probe_targets(
    image_config: ImageConfig, registries: RegistriesConfig | None, names: Sequence[str] = ()
) -> list[Target]:
    """Every (registry, scheme) the configuration names, then those for ``names``.

    A name is a registry (``host[:port]``) or an image reference; it goes through the registry
    rules as a pull would, so a mirror, a remapping or a block applies to it.
    """
    targets: dict[tuple[str, Scheme], Target] = {}

    def add(target: Target) -> None:
        key = (target.registry, target.scheme)
        if key in targets:
            targets[key].sources += target.sources
        else:
            targets[key] = target

    # Where the rules came from: inline, or the file registry_configuration_uri names.
    origin = "image.registry_config.registry"
    if image_config.registry_config is None and image_config.registry_configuration_uri:
        origin = f"{image_config.registry_configuration_uri}: registry"
    for index, rule in enumerate(registries.registry if registries else []):
        where = f"{origin}[{index}]"
        if rule.blocked:
            add(Target(_host(rule.location or rule.prefix), Scheme.HTTPS, [f"{where} (blocked)"],
                       blocked=f"rule prefix {rule.prefix!r} has blocked = true"))
            continue
        for number, mirror in enumerate(rule.mirror):
            add(Target(_host(mirror.location), _scheme(mirror.insecure), [f"{where}.mirror[{number}]"]))
        name = rule.location or rule.prefix
        if name.startswith("*."):
            add(Target(name, Scheme.HTTPS, [where], skipped="a wildcard prefix names no single registry"))
        else:
            add(Target(_host(name), _scheme(rule.insecure), [f"{where}" + (".location" if rule.location else ".prefix")]))
    for index, cert in enumerate(image_config.client_certificates):
        add(Target(cert.registry, Scheme.HTTPS, [f"image.client_certificates[{index}]"]))
    for name in names:
        for target in _command_line_targets(name, registries):
            add(target)
    return list(targets.values())


def _command_line_targets(name: str, registries: RegistriesConfig | None) -> list[Target]:
    is_image = "/" in name
    reference = parse_reference(name if is_image else f"{name}/{PROBE_REPOSITORY}")
    if not is_image and reference.registry != name:
        raise InvalidReferenceError(f"{name!r} is neither a registry host[:port] nor an image reference")
    try:
        candidates = resolve_candidates(reference, registries)
    except BlockedError as err:
        return [Target(reference.registry, Scheme.HTTPS, [COMMAND_LINE], blocked=err.message)]
    return [
        Target(c.reference.registry, c.scheme,
               [COMMAND_LINE if c.reference.registry == reference.registry else f"{COMMAND_LINE} ({c.kind})"],
               repository=c.reference.repository if is_image else PROBE_REPOSITORY)
        for c in candidates
    ]


def _host(location: str) -> str:
    return location.split("/", 1)[0]


def _scheme(insecure: bool) -> Scheme:
    return Scheme.HTTP if insecure else Scheme.HTTPS


# --- probing -------------------------------------------------------------------------------


async def probe(
    image_config: ImageConfig,
    resolver: ResourceGetter,
    names: Sequence[str] = (),
    *,
    settings: TransportSettings = PROBE_SETTINGS,
) -> ProbeReport:
    """Probe every target concurrently with the guest's trust, proxies and credentials."""
    registries = image_config.registries(resolver)
    trust = load_trust(image_config, resolver)
    auth_file = load_auth_file(image_config, resolver)
    proxies = ProxySettings.from_config(image_config.image_pull_proxy)
    targets = probe_targets(image_config, registries, names)
    async with new_session(settings) as session:
        transport = Transport(session, trust, proxies, settings)
        anchors = _Anchors(image_config.extra_root_certificates)
        results = await asyncio.gather(
            *(_probe_one(target, transport, auth_file, anchors) for target in targets)
        )
    return ProbeReport(list(results))


async def _probe_one(
    target: Target, transport: Transport, auth_file: AuthFile | None, anchors: _Anchors
) -> RegistryProbe:
    result = RegistryProbe(target.registry, str(target.scheme), target.sources, Status.OK)
    if target.blocked or target.skipped:
        result.status = Status.BLOCKED if target.blocked else Status.SKIPPED
        result.note = target.blocked or target.skipped
        return result
    reference = parse_reference(f"{target.registry}/{target.repository}")
    credentials = auth_file.lookup(reference) if auth_file else None
    client = RegistryClient(transport, target.registry, scheme=str(target.scheme), credentials=credentials)
    try:
        await client.ping()
    except GuestpullError as err:
        result.status, result.error = Status.FAILED, err
        if target.scheme == Scheme.HTTPS and err.category == "tls":
            result.tls = TLSReport(verified=False)
        return result
    if target.scheme == Scheme.HTTPS:
        result.tls = await anchors.report(target.registry, transport)
    challenge = client.challenge
    result.auth = AuthReport(required=challenge is not None,
                             scheme=challenge.scheme if challenge else None,
                             realm=challenge.realm or None if challenge else None)
    if challenge is None:
        return result
    try:
        await client.check_login(target.repository)
        result.auth.credentials = "accepted" if credentials else "anonymous accepted"
    except GuestpullError as err:
        result.auth.credentials = "refused"
        result.status, result.error = Status.FAILED, err
    return result


class _Anchors:
    """Names the trust anchor of a verified connection, and where the guest got it."""

    def __init__(self, extra_root_certificates: Sequence[str]) -> None:
        self._extra: dict[bytes, str] = {}
        for index, pem in enumerate(extra_root_certificates):
            for cert in certs.load_pem_certificates(pem, f"image.extra_root_certificates[{index}]"):
                self._extra[cert.public_bytes(Encoding.DER)] = f"image.extra_root_certificates[{index}]"

    async def report(self, registry: str, transport: Transport) -> TLSReport:
        url = URL(f"https://{registry}/")
        if transport.proxies.proxy_for(url) is not None or url.host is None:
            # Through a proxy the handshake is inside a CONNECT tunnel: verified, anchor unseen.
            return TLSReport(verified=True, anchor_source="(through the proxy: not inspected)")
        chain = await tls.verified_chain(url.host, url.port or 443, transport.trust.context_for(registry))
        if not chain:
            return TLSReport(verified=True)
        anchor = x509.load_der_x509_certificate(chain[-1])
        return TLSReport(verified=True, anchor=certs.describe(anchor).subject,
                         anchor_source=self._extra.get(chain[-1], "system roots"))


# --- text ----------------------------------------------------------------------------------


def report_lines(report: ProbeReport) -> list[str]:
    """The report as a person reads it: one paragraph per registry and scheme."""
    lines: list[str] = []
    for result in report.results:
        lines.append(f"{result.scheme}://{result.registry}  ({'; '.join(result.sources)})")
        lines.extend(f"  {line}" for line in _result_lines(result))
    failed = sum(r.status == Status.FAILED for r in report.results)
    lines.append(f"{len(report.results)} registr{'y' if len(report.results) == 1 else 'ies'} probed,"
                 f" {failed} failed" + ("" if report.ok else "; a pull from those will fail"))
    return lines


def _result_lines(result: RegistryProbe) -> list[str]:
    if result.status in (Status.BLOCKED, Status.SKIPPED):
        return [f"{result.status}: {result.note}"]
    lines = []
    if result.tls is not None and result.tls.verified:
        anchor = f" by {result.tls.anchor!r}" if result.tls.anchor else ""
        source = f" ({result.tls.anchor_source})" if result.tls.anchor_source else ""
        lines.append(f"TLS: verified{anchor}{source}")
    elif result.scheme == "http" and result.error is None:
        lines.append("plain HTTP (a registry rule says insecure = true): nothing is encrypted or authenticated")
    if result.auth is not None:
        lines.append(_auth_line(result.auth))
    if result.error is not None:
        lines.append(f"FAILED [{result.error.category}]: {result.error}")
    else:
        lines.append("ok: GET /v2/ answered as a registry")
    return lines


def _auth_line(report: AuthReport) -> str:
    if not report.required:
        return "login: not required"
    realm = f", realm {report.realm!r}" if report.realm else ""
    return f"login: required ({report.scheme}{realm}); credentials {report.credentials}"
