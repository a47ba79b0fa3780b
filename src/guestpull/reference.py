"""Image references: the docker/OCI grammar and its normalisation.

The accepted language is that of the upstream parser (oci-spec ``distribution/reference.rs``,
the Go ``distribution/reference`` grammar) plus bracketed IPv6 registry hosts:

    reference  := name [":" tag] ["@" digest]
    name       := [domain "/"] path-component ("/" path-component)*
    domain     := (domain-name | "[" ipv6 "]") [":" port]
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex      (sha256: 64, sha384: 96, sha512: 128 hex digits)

Normalisation (coco-behaviour.md §3.3 step 1): a first component without ``.`` or ``:`` that is
not ``localhost`` is part of the repository on ``docker.io``; single-component docker.io names
get ``library/``; ``index.docker.io`` becomes ``docker.io``; with neither tag nor digest the tag
is ``latest``.  A tag and a digest may both be kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guestpull.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_LEGACY = "index.docker.io"
DOCKER_HUB_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
PATH_RE = re.compile(rf"^{_PATH}$")
NAME_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH}$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
DIGEST_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if set, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise an image reference; raise InvalidReferenceError saying what is wrong.

    ``default_tag=False`` keeps a name without tag or digest name-only (signature identities
    and policy references are compared exactly, without adding ``latest``).
    """
    if not text:
        raise _invalid(text, "the reference is empty")
    if any(ch.isspace() for ch in text):
        raise _invalid(text, "it contains whitespace")
    name, digest = _split_digest(text)
    name, tag = _split_tag(text, name)
    _check_name(text, name)
    registry, repository = split_domain(name)
    if any(ch.isupper() for ch in repository):
        raise _invalid(text, f"repository name {repository!r} must be lowercase")
    if len(repository) > NAME_TOTAL_LENGTH_MAX:
        limit = NAME_TOTAL_LENGTH_MAX
        raise _invalid(text, f"repository name is {len(repository)} characters, at most {limit}")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def split_domain(name: str) -> tuple[str, str]:
    """Split a validated name into (registry, repository), applying docker.io defaults."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB_LEGACY:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"{DOCKER_HUB_OFFICIAL_NAMESPACE}/{repository}"
    return registry, repository


def _split_digest(text: str) -> tuple[str, str | None]:
    name, at, digest = text.partition("@")
    if not at:
        return name, None
    if "@" in digest:
        raise _invalid(text, "it contains more than one '@'")
    check_digest_syntax(digest, text)
    return name, digest


def check_digest_syntax(digest: str, context: str | None = None) -> None:
    """Check ``algorithm:hex`` for a supported algorithm and its exact hex length."""
    where = context if context is not None else digest
    match = DIGEST_RE.match(digest)
    if not match:
        raise _invalid(where, f"digest {digest!r} is not of the form 'algorithm:hex'")
    algorithm, hex_part = match.groups()
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        supported = ", ".join(DIGEST_HEX_LENGTHS)
        raise _invalid(where, f"digest algorithm {algorithm!r} is not supported ({supported})")
    if len(hex_part) != expected:
        raise _invalid(
            where, f"{algorithm} digest has {len(hex_part)} hex digits, it must have {expected}"
        )
    # Upstream's grammar lets upper-case hex through, but every registry then refuses it
    # (go-digest wants [a-f0-9]); failing here gives the user the reason.
    if hex_part != hex_part.lower():
        raise _invalid(where, "digest hex must be lower-case")


def _split_tag(text: str, name: str) -> tuple[str, str | None]:
    # A ':' after the last '/' starts the tag; earlier ones belong to a registry port
    # (or an IPv6 address).
    colon = name.rfind(":")
    if colon <= name.rfind("/"):
        return name, None
    tag = name[colon + 1 :]
    if not tag:
        raise _invalid(text, "the tag after ':' is empty")
    if not TAG_RE.match(tag):
        raise _invalid(
            text,
            f"tag {tag!r} is invalid: a tag is 1 to 128 characters of letters, digits, '_', '.' "
            "and '-', and does not start with '.' or '-'",
        )
    return name[:colon], tag


def _check_name(text: str, name: str) -> None:
    if not name:
        raise _invalid(text, "the repository name is empty")
    if NAME_RE.match(name):
        return
    first, slash, rest = name.partition("/")
    looks_like_domain = slash and ("." in first or ":" in first or first == "localhost")
    if looks_like_domain and not DOMAIN_RE.match(first):
        raise _invalid(text, f"registry {first!r} is not a valid host[:port]")
    path = rest if looks_like_domain else name
    if any(ch.isupper() for ch in path):
        raise _invalid(text, f"repository name {path!r} must be lowercase")
    raise _invalid(
        text,
        f"repository name {path!r} is invalid: components are lower-case letters and digits "
        "separated by '.', '_', '__' or '-', joined by '/'",
    )


def _invalid(text: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"invalid image reference {text!r}: {why}")
