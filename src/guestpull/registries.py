"""Registry rules → the ordered list of pull candidates (coco-behaviour.md §3.3).

Same algorithm as image-rs ``RegistryHandler::process`` with guestpull's deliberate
differences (DESIGN.md §2):

- a ``prefix`` matches only at the start of the reference, and the next character must be the
  end, ``/``, ``:`` or ``@`` (containers-registries.conf); ``*.domain`` matches the host only.
  Upstream searches for the prefix anywhere (:func:`upstream_prefix_match` reproduces that so
  the linter can warn where the two differ);
- ``insecure = true`` on a rule without ``location`` means the original reference over HTTP
  (upstream ignores it);
- an unqualified-search candidate keeps both tag and digest (upstream keeps only the tag when
  both are given, losing the digest pin);
- ``pull-from-mirror`` and the legacy ``mirror-by-digest-only`` limit which pulls a mirror may
  serve (containers-registries.conf(5); upstream ignores both): a pull by tag skips
  digest-only mirrors, a pull by digest skips tag-only ones, and the pull falls through to the
  next candidate.  A reference with both a tag and a digest is a pull by digest, as in
  containers/image.  Given both keys (containers/image refuses that), a mirror serves only
  the pulls both allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from guestpull.config import Mirror, RegistriesConfig, RegistryRule
from guestpull.errors import BlockedError, ConfigError, InvalidReferenceError
from guestpull.reference import DOCKER_HUB, Reference, parse_reference

SEPARATORS = (":", "/", "@")


class Scheme(StrEnum):
    HTTPS = "https"
    HTTP = "http"


class CandidateKind(StrEnum):
    ORIGINAL = "original"
    REMAPPED = "remapped"
    MIRROR = "mirror"
    UNQUALIFIED = "unqualified-search"


@dataclass(frozen=True)
class PullCandidate:
    """One place to try: a reference, the scheme to use, why it is here, and the rule used."""

    reference: Reference
    scheme: Scheme
    kind: CandidateKind
    # Not part of equality or hash: pydantic models are unhashable, and two candidates that
    # pull the same thing the same way are the same candidate.
    rule: RegistryRule | None = field(default=None, compare=False)


def resolve_candidates(
    reference: Reference, config: RegistriesConfig | None
) -> list[PullCandidate]:
    """The ordered candidates for ``reference``; BlockedError if rules leave none."""
    if config is None:
        return [PullCandidate(reference, Scheme.HTTPS, CandidateKind.ORIGINAL, None)]
    candidates: list[PullCandidate] = []
    blocking: list[RegistryRule] = []
    for seed in seed_candidates(reference, config):
        rule = matching_rule(str(seed.reference), config.registry)
        if rule is None:
            candidates.append(seed)
        elif rule.blocked:
            blocking.append(rule)
        else:
            candidates += apply_rule(seed, rule)
    if not candidates:
        raise BlockedError(f"image {reference} is blocked by registry rule{_describe(blocking)}")
    return candidates


def seed_candidates(reference: Reference, config: RegistriesConfig) -> list[PullCandidate]:
    """Before rules: the reference itself, or for docker.io one per unqualified-search registry."""
    if reference.registry != DOCKER_HUB:
        return [PullCandidate(reference, Scheme.HTTPS, CandidateKind.ORIGINAL, None)]
    seeds = []
    for registry in config.unqualified_search_registries:
        if registry == DOCKER_HUB:
            seed = reference
        else:
            repository = reference.repository.removeprefix("library/")
            seed = _compose(
                f"{registry}/{repository}{_suffix(reference)}",
                f"unqualified-search-registries entry {registry!r}",
            )
        seeds.append(PullCandidate(seed, Scheme.HTTPS, CandidateKind.UNQUALIFIED, None))
    return seeds


def matching_rule(ref_text: str, rules: list[RegistryRule]) -> RegistryRule | None:
    """The rule with the longest anchored match; on a tie the last one, as upstream."""
    best: RegistryRule | None = None
    best_length = -1
    for rule in rules:
        length = prefix_match(rule.prefix, ref_text)
        if length is not None and length >= best_length:
            best, best_length = rule, length
    return best


def apply_rule(seed: PullCandidate, rule: RegistryRule) -> list[PullCandidate]:
    """Mirrors in order, then the remapped location, else the seed (over HTTP if insecure)."""
    ref_text = str(seed.reference)
    length = prefix_match(rule.prefix, ref_text)
    assert length is not None, "apply_rule needs a rule that matches"
    rest = ref_text[length:]
    by_digest = seed.reference.digest is not None
    out = []
    for mirror in rule.mirror:
        if not mirror_serves(rule, mirror, by_digest=by_digest):
            continue
        origin = f"mirror {mirror.location!r} of rule {rule.prefix!r}"
        ref = _compose(mirror.location + rest, origin)
        out.append(PullCandidate(ref, _scheme(mirror.insecure), CandidateKind.MIRROR, rule))
    if rule.location:
        ref = _compose(rule.location + rest, f"location {rule.location!r} of rule {rule.prefix!r}")
        # A rule that maps a reference to itself (the usual `location = "host:5000"`,
        # `insecure = true` form) is not a remap; keeping the seed's kind says so in errors.
        same = ref == seed.reference or rule.location == DOCKER_HUB
        kind = seed.kind if same else CandidateKind.REMAPPED
        out.append(PullCandidate(ref, _scheme(rule.insecure), kind, rule))
    else:
        out.append(PullCandidate(seed.reference, _scheme(rule.insecure), seed.kind, rule))
    return out


def mirror_serves(rule: RegistryRule, mirror: Mirror, *, by_digest: bool) -> bool:
    """May ``mirror`` of ``rule`` serve a pull by digest (``by_digest``), or by tag?"""
    if rule.mirror_by_digest_only and not by_digest:
        return False
    if mirror.pull_from_mirror == "digest-only":
        return by_digest
    if mirror.pull_from_mirror == "tag-only":
        return not by_digest
    return True


def prefix_match(prefix: str, ref_text: str) -> int | None:
    """guestpull's anchored match: the length of ``ref_text`` that ``prefix`` covers, or None."""
    if prefix.startswith("*."):
        return _wildcard_match(prefix[1:], ref_text)
    if not prefix or not ref_text.startswith(prefix):
        return None
    return len(prefix) if _ends_at_separator(ref_text, len(prefix)) else None


def _wildcard_match(suffix: str, ref_text: str) -> int | None:
    # suffix is ".domain" optionally followed by "/path"; the domain must end the host name
    # (before any port) and the host must have at least one more label in front of it.
    domain, slash, path = suffix.partition("/")
    host_end = ref_text.find("/")
    host_end = len(ref_text) if host_end < 0 else host_end
    host = ref_text[:host_end]
    hostname = host if host.startswith("[") else host.partition(":")[0]
    if not hostname.endswith(domain) or len(hostname) == len(domain):
        return None
    if not slash:
        return len(hostname)
    if host != hostname:  # a port sits between the host and the path
        return None
    end = host_end + 1 + len(path)
    if ref_text[host_end : end] != "/" + path or not _ends_at_separator(ref_text, end):
        return None
    return end


def upstream_prefix_match(prefix: str, ref_text: str) -> int | None:
    """image-rs ``match_reference_prefix``: unanchored substring search (for the linter).

    Returns the end index of the match (upstream's "length"), or None when upstream would not
    match.  Use it to warn where upstream picks a different rule than :func:`prefix_match`.
    """
    if prefix.startswith("*."):
        needle = prefix[1:]
        pos = ref_text.find(needle)
        if pos < 0 or "/" in ref_text[:pos]:
            return None
    else:
        needle = prefix
        pos = ref_text.find(needle)
        if pos < 0:
            return None
    end = pos + len(needle)
    return end if _ends_at_separator(ref_text, end) else None


def _ends_at_separator(text: str, index: int) -> bool:
    return index == len(text) or text[index] in SEPARATORS


def _suffix(reference: Reference) -> str:
    text = f":{reference.tag}" if reference.tag is not None else ""
    if reference.digest is not None:
        text += f"@{reference.digest}"
    return text


def _scheme(insecure: bool) -> Scheme:
    return Scheme.HTTP if insecure else Scheme.HTTPS


def _compose(text: str, origin: str) -> Reference:
    try:
        return parse_reference(text)
    except InvalidReferenceError as err:
        raise ConfigError(
            f"failed to compose a legal image reference from {origin}: {err.message}"
        ) from None


def _describe(rules: list[RegistryRule]) -> str:
    if not rules:
        return " (unqualified-search-registries is empty)"
    names = ", ".join(
        f"prefix {rule.prefix!r}" + (f" location {rule.location!r}" if rule.location else "")
        for rule in rules
    )
    return f" ({names}, blocked = true)"
