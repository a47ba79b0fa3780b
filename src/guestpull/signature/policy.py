"""containers-policy.json: parse it, and find the requirements for an image reference.

Semantics of containers-policy.json(5) and containers/image 5.x (signatures.md): ``default``,
``transports.docker`` scopes looked up most specific first, requirements that must all hold.
Only the ``docker`` transport is used (a guest pulls from registries); other transports are
checked for shape and otherwise ignored.  Evaluating a requirement needs signatures: that is
:mod:`guestpull.signature.verify`'s job; this module is pure data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from guestpull.errors import ConfigError, Location, UnsupportedError
from guestpull.reference import Reference
from guestpull.signature.identity import IdentityRule, parse_identity_rule

DOCKER = "docker"
#: The transport-wide default scope, used before the policy's ``default``.
TRANSPORT_DEFAULT = '""'
DEFAULT = "default"
#: Requirement types of containers-policy.json(5) that guestpull evaluates.
REQUIREMENT_TYPES = ("insecureAcceptAnything", "reject", "signedBy", "sigstoreSigned")
#: sigstoreSigned fields for keyless (Fulcio certificates, Rekor transparency log) signing.
KEYLESS_FIELDS = ("fulcio", "rekorPublicKeyPath", "rekorPublicKeyData", "rekorPublicKeyPaths")
MAX_POLICY_SIZE = 1 << 20


@dataclass(frozen=True)
class KeySource:
    """Where a requirement's keys come from: resource URIs (``keyPath(s)``) or inline data."""

    paths: tuple[str, ...] = ()
    data: bytes | None = None
    field: str = ""  # e.g. "keyPath", for messages

    def describe(self) -> str:
        if self.data is not None:
            return f"{self.field} (inline)"
        return f"{self.field} {', '.join(self.paths)}"


@dataclass(frozen=True)
class Requirement:
    """One entry of a scope's list.  ``keys`` and ``identity`` are set for the signed types."""

    type: str
    keys: KeySource | None = None
    identity: IdentityRule | None = None
    where: str = ""  # field path in the policy, for messages

    def describe(self) -> str:
        if self.keys is None:
            return self.type
        return f"{self.type} ({self.keys.describe()}, signedIdentity {self.identity})"


@dataclass(frozen=True)
class ScopeMatch:
    """The scope that applies to an image: its name as written in the policy, and its list."""

    scope: str  # the scope key, '""' for the transport default, or "default"
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True)
class Policy:
    """A parsed containers-policy.json (docker transport)."""

    source: str
    default: tuple[Requirement, ...]
    docker: dict[str, tuple[Requirement, ...]]

    @classmethod
    def parse(cls, raw: bytes, source: str) -> Policy:
        """Parse and validate; ConfigError naming the file and field for anything wrong."""
        if len(raw) > MAX_POLICY_SIZE:
            raise ConfigError("the signature policy is larger than 1 MiB", location=Location(file=source))
        try:
            doc = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, UnicodeDecodeError) as err:
            line = getattr(err, "lineno", None)
            raise ConfigError(f"the signature policy is not valid JSON: {err}",
                              location=Location(file=source, line=line)) from None
        where = _Where(source)
        _object(doc, where, "")
        _only_keys(doc, ("default", "transports"), where, "")
        if "default" not in doc:
            raise where.error("default", "the policy has no \"default\" requirement list")
        default = _requirements(doc["default"], where, "default")
        transports = _object(doc.get("transports", {}), where, "transports")
        docker: dict[str, tuple[Requirement, ...]] = {}
        for name, scopes in transports.items():
            scopes = _object(scopes, where, f"transports.{name}")
            for scope, reqs in scopes.items():
                parsed = _requirements(reqs, where, f"transports.{name}[{scope!r}]")
                if name == DOCKER:
                    docker[scope] = parsed
        return cls(source, default, docker)

    def scope_for(self, reference: Reference) -> ScopeMatch:
        """The most specific scope that matches ``reference`` (containers-policy.json(5))."""
        for scope in policy_scopes(reference):
            if scope in self.docker:
                return ScopeMatch(scope, self.docker[scope])
        if "" in self.docker:
            return ScopeMatch(TRANSPORT_DEFAULT, self.docker[""])
        return ScopeMatch(DEFAULT, self.default)

    def all_requirements(self) -> Iterator[Requirement]:
        yield from self.default
        for reqs in self.docker.values():
            yield from reqs


def policy_scopes(reference: Reference) -> list[str]:
    """Scope names for ``reference``, most specific first, without ``""`` and ``default``.

    The exact reference; the repository; each parent namespace at ``/`` boundaries down to the
    host; then ``*.``-wildcard domains of the host without its port (containers/image's
    PolicyConfigurationIdentity and PolicyConfigurationNamespaces; registries.d uses the same).
    """
    scopes = [str(reference)]
    if reference.tag is not None and reference.digest is not None:
        scopes += [f"{reference.name}@{reference.digest}", f"{reference.name}:{reference.tag}"]
    name = reference.name
    while True:
        scopes.append(name)
        slash = name.rfind("/")
        if slash < 0:
            break
        name = name[:slash]
    host = _host_without_port(reference.registry)
    while "." in host:
        host = host.split(".", 1)[1]
        scopes.append(f"*.{host}")
    return scopes


def _host_without_port(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.find("]") + 1]
    return registry.split(":", 1)[0]


# --- parsing helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    source: str

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(message, location=Location(file=self.source, field=field or None))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Go's encoding/json keeps the last one; a reader cannot tell which rule holds.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _object(value: Any, where: _Where, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(field, "expected a JSON object")
    return value


def _only_keys(value: dict[str, Any], allowed: tuple[str, ...], where: _Where, field: str) -> None:
    for key in value:
        if key not in allowed:
            raise where.error(f"{field}.{key}".strip("."),
                              f"unknown field {key!r} (expected {', '.join(allowed)})")


def _requirements(value: Any, where: _Where, field: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise where.error(field, "expected a list of requirements")
    if not value:
        # containers/image refuses an empty list; image-rs reads it as "accept anything".
        # Neither is safe to guess: say so.
        raise where.error(field, "the requirement list is empty; write "
                          "[{\"type\": \"insecureAcceptAnything\"}] or [{\"type\": \"reject\"}]")
    return tuple(_requirement(item, where, f"{field}[{i}]") for i, item in enumerate(value))


def _requirement(value: Any, where: _Where, field: str) -> Requirement:
    item = _object(value, where, field)
    kind = item.get("type")
    if kind in ("insecureAcceptAnything", "reject"):
        _only_keys(item, ("type",), where, field)
        return Requirement(kind, where=field)
    if kind == "signedBy":
        _only_keys(item, ("type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"),
                   where, field)
        if item.get("keyType") != "GPGKeys":
            raise where.error(f"{field}.keyType",
                              f"keyType must be \"GPGKeys\", not {item.get('keyType')!r}")
        keys = _key_source(item, ("keyPath", "keyPaths", "keyData"), where, field)
    elif kind == "sigstoreSigned":
        keyless = [k for k in KEYLESS_FIELDS if k in item]
        if keyless:
            raise UnsupportedError(
                "keyless sigstore verification (Fulcio certificates, Rekor) is not supported: "
                "use a public key (keyPath or keyData)",
                location=Location(file=where.source, field=f"{field}.{keyless[0]}"))
        _only_keys(item, ("type", "keyPath", "keyData", "signedIdentity"), where, field)
        keys = _key_source(item, ("keyPath", "keyData"), where, field)
    else:
        raise where.error(f"{field}.type", f"unknown requirement type {kind!r} "
                          f"(expected one of {', '.join(REQUIREMENT_TYPES)})")
    identity = parse_identity_rule(item.get("signedIdentity"), where.source, f"{field}.signedIdentity")
    return Requirement(kind, keys, identity, where=field)


def _key_source(item: dict[str, Any], fields: tuple[str, ...], where: _Where, field: str) -> KeySource:
    present = [f for f in fields if f in item]
    if len(present) != 1:
        raise where.error(field, f"exactly one of {', '.join(fields)} is required")
    name = present[0]
    value = item[name]
    if name == "keyPaths":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise where.error(f"{field}.keyPaths", "expected a non-empty list of paths")
        return KeySource(paths=tuple(value), field=name)
    if not isinstance(value, str) or not value:
        raise where.error(f"{field}.{name}", "expected a non-empty string")
    if name == "keyPath":
        return KeySource(paths=(value,), field=name)
    return KeySource(data=value.encode(), field=name)
