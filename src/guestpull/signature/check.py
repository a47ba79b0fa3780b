"""Host-side checks of a signature policy and sigstore config (for ``initdata check``).

Everything the guest would refuse, and the mistakes that make a policy protect less than its
author thinks: unknown requirement types, keys that cannot be loaded, scopes that can never
match, and images from a plain-HTTP registry that nothing protects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from guestpull.errors import ConfigError, GuestpullError, InvalidReferenceError
from guestpull.reference import DOMAIN_RE, parse_reference
from guestpull.resources import is_kbs_uri
from guestpull.signature.keys import KeyLoader
from guestpull.signature.policy import REQUIREMENT_TYPES, Policy, Requirement
from guestpull.signature.sigstore_config import SigstoreConfig

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Problem:
    severity: str
    code: str
    message: str


class _HostFiles:
    """Reads key files on the host: bare paths and file:// (kbs:// is the guest's business)."""

    def get(self, uri: str) -> bytes:
        try:
            return _host_path(uri).read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read {uri}: {err.strerror}") from None


def _host_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path)) if "://" in uri else Path(uri)


def check_policy(raw: bytes, source: str) -> tuple[Policy | None, list[Problem]]:
    """Parse the policy and check it; the policy is None when it does not parse."""
    problems = list(_unknown_types(raw))
    try:
        policy = Policy.parse(raw, source)
    except GuestpullError as err:
        if not problems:
            problems.append(Problem(ERROR, "invalid-signature-policy", str(err)))
        return None, problems
    problems += _key_problems(policy)
    problems += _scope_problems(policy)
    return policy, problems


def check_sigstore_config(raw: bytes, source: str) -> list[Problem]:
    try:
        SigstoreConfig.parse(raw, source)
    except ConfigError as err:
        return [Problem(ERROR, "invalid-sigstore-config", str(err))]
    return []


def unprotected_registries(policy: Policy, insecure_locations: list[str]) -> list[Problem]:
    """Plain-HTTP registries whose images fall to a scope that accepts anything."""
    problems = []
    for location in insecure_locations:
        try:
            reference = parse_reference(f"{location}/image")
        except InvalidReferenceError:
            continue
        match = policy.scope_for(reference)
        if all(r.type == "insecureAcceptAnything" for r in match.requirements):
            problems.append(Problem(WARNING, "insecure-registry-unprotected", (
                f"images from the plain-HTTP registry {location} fall to scope {match.scope} of "
                f"{policy.source}, which is insecureAcceptAnything: nothing protects them from "
                "whoever controls the network; add a signedBy or sigstoreSigned scope for it")))
    return problems


def _unknown_types(raw: bytes) -> Iterator[Problem]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(doc, dict):
        return
    lists = [("default", doc.get("default"))]
    transports = doc.get("transports")
    if isinstance(transports, dict):
        for name, scopes in transports.items():
            if isinstance(scopes, dict):
                lists += [(f"transports.{name}[{scope!r}]", reqs) for scope, reqs in scopes.items()]
    for field, reqs in lists:
        for index, req in enumerate(reqs if isinstance(reqs, list) else []):
            kind = req.get("type") if isinstance(req, dict) else None
            if kind not in REQUIREMENT_TYPES:
                yield Problem(ERROR, "unknown-requirement-type", (
                    f"{field}[{index}]: requirement type {kind!r} is not one of "
                    f"{', '.join(REQUIREMENT_TYPES)}: the guest refuses the whole policy"))


def _key_problems(policy: Policy) -> Iterator[Problem]:
    loader = KeyLoader(_HostFiles(), policy.source)
    seen: set[object] = set()
    for requirement in policy.all_requirements():
        keys = requirement.keys
        if keys is None or keys in seen:
            continue
        seen.add(keys)
        if any(is_kbs_uri(p) for p in keys.paths):
            yield Problem(INFO, "key-in-kbs", (
                f"{requirement.where}: {keys.describe()} is fetched from the KBS in the guest; "
                "it is not checked here"))
            continue
        missing = [p for p in keys.paths if not _host_path(p).exists()]
        if missing:
            yield Problem(WARNING, "key-not-found", (
                f"{requirement.where}: {', '.join(missing)} does not exist on this host: the guest "
                "refuses every pull this requirement applies to unless it has the file"))
            continue
        try:
            _load(loader, requirement)
        except GuestpullError as err:
            yield Problem(ERROR, "unreadable-key", f"{requirement.where}: {err.message}")


def _load(loader: KeyLoader, requirement: Requirement) -> None:
    assert requirement.keys is not None
    if requirement.type == "signedBy":
        loader.gpg(requirement.keys)
    else:
        loader.cosign(requirement.keys)


def _scope_problems(policy: Policy) -> Iterator[Problem]:
    for scope in policy.docker:
        why = never_matches(scope)
        if why:
            yield Problem(WARNING, "scope-never-matches",
                          f"transports.docker[{scope!r}] can never match an image: {why}")


def never_matches(scope: str) -> str | None:
    """Why a docker scope can never match a (normalised) reference, or None if it can."""
    if scope == "":
        return None
    if scope.startswith("*."):
        domain = scope[2:]
        if ":" in domain:
            return "wildcard scopes match the host name without its port"
        return None if DOMAIN_RE.match(domain) else f"{domain!r} is not a domain name"
    if "/" not in scope:
        if DOMAIN_RE.match(scope) and ("." in scope or ":" in scope or scope == "localhost"):
            return None
        return "a scope without '/' must be a registry host[:port] (e.g. registry.local:5000)"
    try:
        ref = parse_reference(scope, default_tag=False)
    except InvalidReferenceError as err:
        return err.message
    if str(ref) != scope:
        return f"references are matched in their normalised form {str(ref)!r}"
    return None
