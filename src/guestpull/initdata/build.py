"""``guestpull initdata build``: an Init-Data document from options, checked as the guest reads it.

Every file the user passes (registry CAs, a registries.conf, a signature policy, a sigstore
config, an agent policy) is checked the way the guest will check it before it is embedded, and
the finished document is read back (:func:`build`) so the writer and the reader provably agree.
The TOML text itself is written by :mod:`guestpull.initdata.render`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from guestpull.certs import certificate_pem, fingerprint, load_pem_certificates
from guestpull.config import parse_registries_config
from guestpull.errors import GuestpullError, UsageError
from guestpull.initdata.document import (
    AA_KEY,
    ALGORITHMS,
    CDH_KEY,
    POLICY_KEY,
    InitData,
    algorithm_hint,
    decode_text,
)
from guestpull.initdata.render import dump_toml, render_document
from guestpull.signature.policy import Policy
from guestpull.signature.sigstore_config import SigstoreConfig

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
            hint=algorithm_hint(options.algorithm),
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
            out[key] = decode_text(file.content, file.source)
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
        text = decode_text(file.content, file.source)
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
    return decode_text(policy.content, policy.source)
