"""``guestpull initdata``: build, check, show, digest and encode Init-Data documents."""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from guestpull import certs
from guestpull.cli.common import emit_json, handles_errors, json_option
from guestpull.errors import EXIT_CODES, Category, ConfigError, ExistsError, Location, from_os_error
from guestpull.initdata import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    PLATFORMS,
    BuildOptions,
    InitData,
    SourceText,
    annotation_yaml,
    build,
    decode_annotation,
    encode_annotation,
    expected_pcr8,
    fit_digest,
)
from guestpull.lint import ERROR, lint

STDIN = "-"
STDIN_LABEL = "<stdin>"


@click.group("initdata")
def initdata_group() -> None:
    """Build, check and encode Init-Data (the guest's aa.toml, cdh.toml and agent policy)."""


# --- digest -----------------------------------------------------------------------------------


@initdata_group.command("digest")
@click.argument("file")
@click.option(
    "--platform",
    type=click.Choice(PLATFORMS),
    default="none",
    show_default=True,
    help="Fit the digest to this TEE's field (snp 32 bytes, tdx 48, cca/sgx 64, se 256).",
)
@json_option
@handles_errors
def digest_command(file: str, platform: str, as_json: bool) -> None:
    """Print the digest of FILE (- for stdin) as the platform binds it."""
    raw, source = read_input(file)
    document = InitData.parse(raw, source)
    fitted = fit_digest(document.digest(), platform)
    result: dict[str, Any] = {
        "algorithm": document.algorithm,
        "platform": platform,
        "size": len(fitted),
        "hex": fitted.hex(),
        "base64": base64.b64encode(fitted).decode("ascii"),
    }
    if platform == "vtpm":
        result["pcr8"] = expected_pcr8(fitted).hex()
    if as_json:
        emit_json({"ok": True, **result})
        return
    click.echo(f"algorithm: {document.algorithm}")
    click.echo(f"platform:  {platform} ({len(fitted)} bytes)")
    click.echo(f"hex:       {result['hex']}")
    click.echo(f"base64:    {result['base64']}")
    if "pcr8" in result:
        click.echo(f"pcr8:      {result['pcr8']}")


# --- annotation / decode ----------------------------------------------------------------------


@initdata_group.command("annotation")
@click.argument("file")
@click.option("--yaml", "as_yaml", is_flag=True, help="Print a pod metadata snippet.")
@handles_errors
def annotation_command(file: str, as_yaml: bool) -> None:
    """Print the pod annotation value for FILE (- for stdin): base64(gzip(bytes)).

    The annotation is io.katacontainers.config.hypervisor.cc_init_data.
    """
    raw, source = read_input(file)
    validate(raw, source)
    value = encode_annotation(raw)
    click.echo(annotation_yaml(value) if as_yaml else value, nl=not as_yaml)


@initdata_group.command("decode")
@click.argument("value")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@handles_errors
def decode_command(value: str, output: Path | None, force: bool) -> None:
    """Decode an annotation VALUE (- for stdin) back to the exact document bytes."""
    if value == STDIN:
        value = sys.stdin.read()
    raw = decode_annotation(value)
    # Structure only: the kata test vector, for one, carries an empty cdh.toml.
    InitData.parse(raw, "<annotation>")
    write_output(output, raw, force=force)


# --- build ------------------------------------------------------------------------------------


@initdata_group.command("build")
@click.option("--kbs-url", help="KBS URL: aa.toml token_configs.kbs.url and cdh.toml kbc (cc_kbc).")
@click.option("--registry-ca", "registry_cas", multiple=True, metavar="PEMFILE",
              help="CA certificate(s) to trust for registries (repeatable).")
@click.option("--insecure-registry", "insecure_registries", multiple=True, metavar="HOST[:PORT]",
              help="A registry reached over plain HTTP (repeatable).")
@click.option("--registry-config", metavar="FILE", help="A registries.conf to inline.")
@click.option("--auth-uri", help="authenticated_registry_credentials_uri (kbs:///..., file://...).")
@click.option("--policy-uri", help="image_security_policy_uri (kbs:///..., file://...).")
@click.option("--policy", metavar="FILE", help="A containers-policy.json to inline (image_security_policy).")
@click.option("--sigstore-config", metavar="FILE",
              help="A sigstore (registries.d-style) YAML to inline (sigstore_config).")
@click.option("--sigstore-config-uri", help="sigstore_config_uri (kbs:///..., file://...).")
@click.option("--https-proxy", help="Proxy for HTTPS registries.")
@click.option("--http-proxy", help="Proxy for HTTP (insecure) registries.")
@click.option("--no-proxy", help="Comma-separated hosts that bypass the proxies.")
@click.option("--agent-policy", metavar="FILE", help="Kata agent policy (default: allow all).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=DEFAULT_ALGORITHM,
              show_default=True, help="Digest algorithm (vTPM platforms need sha256).")
@click.option("--work-dir", help="Image store directory in the guest.")
@click.option("--max-concurrent-downloads", type=int, help="Layer downloads in parallel (>= 1).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@handles_errors
def build_command(
    kbs_url: str | None, registry_cas: tuple[str, ...], insecure_registries: tuple[str, ...],
    registry_config: str | None, auth_uri: str | None, policy_uri: str | None,
    policy: str | None, sigstore_config: str | None, sigstore_config_uri: str | None,
    https_proxy: str | None, http_proxy: str | None, no_proxy: str | None,
    agent_policy: str | None, algorithm: str, work_dir: str | None,
    max_concurrent_downloads: int | None, output: Path | None, force: bool,
) -> None:
    """Write an Init-Data document from options (stdout, or -o FILE); its digest goes to stderr."""
    options = BuildOptions(
        kbs_url=kbs_url,
        registry_cas=tuple(read_source(path) for path in registry_cas),
        insecure_registries=insecure_registries,
        registry_config=read_source(registry_config) if registry_config else None,
        auth_uri=auth_uri,
        policy_uri=policy_uri,
        policy=read_source(policy) if policy else None,
        sigstore_config_uri=sigstore_config_uri,
        sigstore_config=read_source(sigstore_config) if sigstore_config else None,
        https_proxy=https_proxy,
        http_proxy=http_proxy,
        no_proxy=no_proxy,
        agent_policy=read_source(agent_policy) if agent_policy else None,
        algorithm=algorithm,
        work_dir=work_dir,
        max_concurrent_downloads=max_concurrent_downloads,
    )
    raw = build(options)
    write_output(output, raw, force=force)
    document = InitData.parse(raw, str(output or "<stdout>"))
    click.echo(f"{document.algorithm}:{document.digest().hex()}", err=True)


# --- check ------------------------------------------------------------------------------------


@initdata_group.command("check")
@click.argument("file")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--platform", type=click.Choice(PLATFORMS), help="Also check the digest fits it.")
@json_option
@handles_errors
def check_command(file: str, strict: bool, platform: str | None, as_json: bool) -> None:
    """Report what will fail, or behave differently, on an upstream CoCo guest."""
    raw, source = read_input(file)
    report = lint(raw, source, platform=platform)
    if as_json:
        emit_json(report.to_dict())
    else:
        for finding in report.findings:
            click.echo(str(finding))
        errors = sum(f.severity == ERROR for f in report.findings)
        summary = f"{source}: {errors} error(s), {len(report.findings) - errors} other finding(s)"
        if report.digest:
            summary += f"; digest {report.digest}"
        click.echo(summary)
    if not report.ok:
        sys.exit(EXIT_CODES[Category.CONFIG])
    if strict and report.has_warnings:
        sys.exit(1)


# --- show -------------------------------------------------------------------------------------


@initdata_group.command("show")
@click.argument("file")
@json_option
@handles_errors
def show_command(file: str, as_json: bool) -> None:
    """Print the parts of a document: files, certificates, registry rules, proxy, URIs."""
    raw, source = read_input(file)
    document = InitData.parse(raw, source)
    summary = summarize(document)
    if as_json:
        emit_json({"ok": True, **summary})
        return
    for line in _summary_lines(summary):
        click.echo(line)


def summarize(document: InitData) -> dict[str, Any]:
    """The parts of a document as plain data (secrets in proxy URLs are masked)."""
    out: dict[str, Any] = {
        "source": document.source,
        "version": document.version,
        "algorithm": document.algorithm,
        "digest": document.digest().hex(),
        "files": [
            {"name": key, "size": len(value.encode("utf-8")), "lines": len(value.splitlines())}
            for key, value in document.data.items()
        ],
    }
    cdh = document.cdh_config()
    aa = document.aa_config()
    if aa is not None and aa.token_configs.kbs is not None:
        out["attestation_kbs_url"] = aa.token_configs.kbs.url
    if cdh is None:
        return out
    out["kbc"] = {"name": cdh.kbc.name, "url": cdh.kbc.url}
    image = cdh.image
    if image is None:
        return out
    out["certificates"] = [
        info.to_dict()
        for index, pem in enumerate(image.extra_root_certificates)
        for info in _describe_pem(pem, document.embedded_source("cdh.toml"), index)
    ]
    rules = image.registry_config.registry if image.registry_config else []
    out["registry_rules"] = [
        {
            "prefix": rule.prefix,
            "location": rule.location,
            "insecure": rule.insecure,
            "blocked": rule.blocked,
            "mirror_by_digest_only": rule.mirror_by_digest_only,
            "mirrors": [{"location": m.location, "insecure": m.insecure,
                         "pull_from_mirror": m.pull_from_mirror or "all"} for m in rule.mirror],
        }
        for rule in rules
    ]
    if image.image_pull_proxy is not None:
        proxy = image.image_pull_proxy
        out["proxy"] = {
            "https_proxy": _mask_url(proxy.https_proxy),
            "http_proxy": _mask_url(proxy.http_proxy),
            "no_proxy": proxy.no_proxy,
        }
    out["auth_uri"] = image.authenticated_registry_credentials_uri
    out["policy_uri"] = image.image_security_policy_uri
    out["registry_configuration_uri"] = image.registry_configuration_uri
    return out


def _describe_pem(pem: str, source: str, index: int) -> list[certs.CertInfo]:
    where = f"{source}: image.extra_root_certificates[{index}]"
    return [certs.describe(cert) for cert in certs.load_pem_certificates(pem, where)]


def _mask_url(url: str | None) -> str | None:
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"source:     {summary['source']}",
        f"version:    {summary['version']}",
        f"algorithm:  {summary['algorithm']}",
        f"digest:     {summary['digest']}",
        "files:",
        *(f"  {f['name']:<14} {f['size']} bytes, {f['lines']} lines" for f in summary["files"]),
    ]
    if "attestation_kbs_url" in summary:
        lines.append(f"attestation KBS: {summary['attestation_kbs_url']}")
    if "kbc" in summary:
        lines.append(f"kbc:        {summary['kbc']['name']} {summary['kbc']['url']}".rstrip())
    if summary.get("certificates"):
        lines.append("certificates:")
        for cert in summary["certificates"]:
            flags = "CA" if cert["is_ca"] else "not a CA"
            flags += ", self-signed" if cert["self_signed"] else ""
            lines.append(f"  {cert['subject']} ({flags})")
            lines.append(f"    issuer {cert['issuer']}, expires {cert['not_after']}")
    if summary.get("registry_rules"):
        lines.append("registry rules:")
        for rule in summary["registry_rules"]:
            text = f"  prefix {rule['prefix']!r} → location {rule['location']!r}"
            text += " insecure (HTTP)" if rule["insecure"] else ""
            text += " BLOCKED" if rule["blocked"] else ""
            lines.append(text)
            for mirror in rule["mirrors"]:
                http = " (HTTP)" if mirror["insecure"] else ""
                serves = "digest-only" if rule["mirror_by_digest_only"] else mirror["pull_from_mirror"]
                limit = "" if serves == "all" else f" ({serves} pulls)"
                lines.append(f"    mirror {mirror['location']}{http}{limit}")
    for key in ("proxy", "auth_uri", "policy_uri", "registry_configuration_uri"):
        if summary.get(key):
            value = summary[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items() if v)
            lines.append(f"{key}: {value}")
    return lines


# --- input and output -------------------------------------------------------------------------


def validate(raw: bytes, source: str) -> InitData:
    """Parse a document and its embedded configs; ConfigError if the guest would refuse it."""
    document = InitData.parse(raw, source)
    document.cdh_config()
    document.aa_config()
    return document


def read_input(path: str) -> tuple[bytes, str]:
    """The bytes of FILE, or of stdin for ``-``, and a label for messages."""
    if path == STDIN:
        return sys.stdin.buffer.read(), STDIN_LABEL
    source = read_source(path)
    return source.content, source.source


def read_source(path: str) -> SourceText:
    try:
        return SourceText(source=path, content=Path(path).read_bytes())
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", location=Location(file=path)) from None


def write_output(path: Path | None, data: bytes, *, force: bool) -> None:
    """Write to stdout, or to ``path`` atomically: a temp file renamed into place."""
    if path is None:
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return
    if path.exists() and not force:
        raise ExistsError("the output file exists; pass --force to replace it",
                          location=Location(file=str(path)))
    try:
        _write_atomically(path, data, force=force)
    except OSError as err:
        raise from_os_error(err, "write the output file", path) from None


def _write_atomically(path: Path, data: bytes, *, force: bool) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # fails if the file appeared meanwhile: never clobber it
            except FileExistsError:
                raise ExistsError("the output file exists; pass --force to replace it",
                                  location=Location(file=str(path))) from None
            except OSError:
                os.replace(temp, path)  # no hard links here (e.g. vfat): exists() checked above
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)

