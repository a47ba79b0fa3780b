"""The one builder of valid cdh.toml and Init-Data text for the tests, the demo and the benchmark.

The text is written by the library's own renderer (:mod:`guestpull.initdata.render`), so it is
valid TOML by construction and quoted the way ``guestpull initdata build`` quotes.  Tests of
malformed or hand-crafted input (line numbers, exact text) write their literal strings instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestpull.initdata.document import AA_KEY, CDH_KEY
from guestpull.initdata.render import dump_toml, render_document

OFFLINE_KBC = "offline_fs_kbc"


@dataclass(frozen=True)
class Mirror:
    """A ``[[image.registry_config.registry.mirror]]`` entry."""

    location: str
    insecure: bool = False
    pull_from_mirror: str | None = None  # "all" | "digest-only" | "tag-only"; None: not written

    def table(self) -> dict[str, Any]:
        out: dict[str, Any] = {"location": self.location, "insecure": self.insecure}
        if self.pull_from_mirror is not None:
            out["pull-from-mirror"] = self.pull_from_mirror
        return out


@dataclass(frozen=True)
class Rule:
    """A ``[[image.registry_config.registry]]`` entry (registries.conf v2)."""

    location: str | None = None  # None: a prefix-only rule (e.g. blocked)
    insecure: bool = False
    prefix: str | None = None
    blocked: bool | None = None
    mirrors: tuple[Mirror, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # odd or unsupported keys

    def table(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prefix": self.prefix} if self.prefix is not None else {}
        if self.location is not None:
            out["location"] = self.location
        out["insecure"] = self.insecure
        if self.blocked is not None:
            out["blocked"] = self.blocked
        out.update(self.extra)
        if self.mirrors:
            out["mirror"] = [m.table() for m in self.mirrors]
        return out


@dataclass(frozen=True)
class ClientCert:
    """A ``[[image.client_certificates]]`` entry: an mTLS identity for ``registry``.

    A :class:`~pathlib.Path` is written as a ``file://`` URI, a string as the URI it is."""

    registry: str
    cert: Path | str
    key: Path | str

    def table(self) -> dict[str, str]:
        return {"registry": self.registry, "cert_uri": _uri(self.cert), "key_uri": _uri(self.key)}


def file_uri(path: Path | str) -> str:
    return f"file://{path}"


def _uri(value: Path | str) -> str:
    return file_uri(value) if isinstance(value, Path) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def cdh_toml(
    *,
    kbc: str = OFFLINE_KBC,
    kbc_url: str | None = None,
    kbs_cert: bytes | str | None = None,
    aa_socket: str | None = None,
    socket: str | None = None,
    roots: Iterable[bytes | str] = (),
    insecure: Iterable[str] = (),
    rules: Iterable[Rule] = (),
    auth_file: Path | str | None = None,
    proxy: Mapping[str, str] | None = None,
    client_certs: Iterable[ClientCert] = (),
    policy_file: Path | str | None = None,
    sigstore_file: Path | str | None = None,
    image: Mapping[str, Any] | None = None,
    top: Mapping[str, Any] | None = None,
) -> str:
    """A cdh.toml.  ``insecure`` hosts get an ``insecure = true`` rule each (after ``rules``);
    ``image`` adds raw ``[image]`` keys, ``top`` raw top-level tables or keys (odd inputs)."""
    table: dict[str, Any] = {}
    if socket is not None:
        table["socket"] = socket
    kbc_table: dict[str, Any] = {"name": kbc}
    if kbc_url is not None:
        kbc_table["url"] = kbc_url
    if kbs_cert is not None:
        kbc_table["kbs_cert"] = _text(kbs_cert)
    table["kbc"] = kbc_table
    if aa_socket is not None:
        table["aa"] = {"aa_socket": aa_socket}
    table.update(top or {})
    table["image"] = _image_table(
        roots=roots, auth_file=auth_file, policy_file=policy_file, sigstore_file=sigstore_file,
        image=image, proxy=proxy, client_certs=client_certs,
        rules=[*rules, *(Rule(host, insecure=True) for host in insecure)],
    )
    return dump_toml(table)


def _image_table(
    *,
    roots: Iterable[bytes | str],
    auth_file: Path | str | None,
    policy_file: Path | str | None,
    sigstore_file: Path | str | None,
    image: Mapping[str, Any] | None,
    proxy: Mapping[str, str] | None,
    client_certs: Iterable[ClientCert],
    rules: list[Rule],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pems = [_text(root) for root in roots]
    if pems:
        out["extra_root_certificates"] = pems
    uris = (("authenticated_registry_credentials_uri", auth_file),
            ("image_security_policy_uri", policy_file), ("sigstore_config_uri", sigstore_file))
    out.update({key: file_uri(path) for key, path in uris if path is not None})
    out.update(image or {})
    if proxy:
        out["image_pull_proxy"] = dict(proxy)
    certs = [cert.table() for cert in client_certs]
    if certs:
        out["client_certificates"] = certs
    if rules:
        out["registry_config"] = {"registry": [rule.table() for rule in rules]}
    return out


def write_cdh(path: Path, **options: Any) -> Path:
    """Write :func:`cdh_toml` (same keywords) to ``path``."""
    path.write_text(cdh_toml(**options))
    return path


def initdata_toml(cdh_text: str, aa_text: str | None = None, *, algorithm: str = "sha256") -> str:
    """An Init-Data document embedding ``cdh_text`` (and ``aa_text``) as the guest reads it."""
    data = {CDH_KEY: cdh_text}
    if aa_text is not None:
        data[AA_KEY] = aa_text
    return render_document(algorithm, data)


def write_initdata(path: Path, cdh_text: str, aa_text: str | None = None) -> Path:
    path.write_text(initdata_toml(cdh_text, aa_text))
    return path
