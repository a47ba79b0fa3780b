"""Registry credentials from a docker ``auth.json`` (coco-behaviour.md §6.1, §6.2).

The file is checked when parsed (``auths`` present, every entry has a string ``auth``), as
image-rs does at build time; an entry's base64 is decoded only when a pull needs it, so a bad
entry for another registry does not stop this one.  No message ever contains a secret.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from guestpull.errors import ConfigError, Location
from guestpull.strictjson import load_json
from guestpull.reference import Reference

DOCKER_HUB_AUTH_REGISTRY = "index.docker.io"
_DOCKER_HUB_ALIASES = ("docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


class AuthFile:
    """The ``auths`` map of an auth.json, in file order."""

    def __init__(self, auths: dict[str, str], source: str) -> None:
        self._auths = auths
        self.source = source

    @classmethod
    def parse(cls, data: bytes, source: str) -> AuthFile:
        try:
            # Strict: a duplicate registry key would leave two readers with two passwords.
            # Parser messages carry positions and keys, never values (the passwords).
            document = load_json(data, source)
        except ConfigError as err:
            raise ConfigError(f"invalid registry auth file: {err.message}", location=err.location) from None
        if not isinstance(document, dict) or not isinstance(document.get("auths"), dict):
            raise ConfigError(
                'invalid registry auth file: expected an object with an "auths" object',
                location=Location(file=source, field="auths"),
            )
        auths: dict[str, str] = {}
        for key, entry in document["auths"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
                raise ConfigError(
                    'invalid registry auth file: every entry needs a string "auth" '
                    "(base64 of user:password)",
                    location=Location(file=source, field=f"auths.{key}"),
                )
            auths[key] = entry["auth"]
        return cls(auths, source)

    @property
    def keys(self) -> list[str]:
        return list(self._auths)

    def lookup(self, ref: Reference) -> Credentials | None:
        """Credentials for ``ref``: full name, then parent paths, then the normalised registry."""
        key = self.matching_key(ref)
        return None if key is None else self._decode(key)

    def matching_key(self, ref: Reference) -> str | None:
        """The auth.json key whose entry applies to ``ref`` (image-rs auth_config.rs order)."""
        for candidate in _path_keys(ref.name):
            if candidate in self._auths:
                return candidate
        registry = normalize_registry(ref.registry)
        for key in self._auths:  # upstream picks arbitrarily among equals; file order here
            if _normalize_key(key) == registry:
                return key
        return None

    def _decode(self, key: str) -> Credentials:
        where = Location(file=self.source, field=f"auths.{key}.auth")
        try:
            text = base64.b64decode(self._auths[key], validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ConfigError(
                "illegal registry auth: not standard base64 of UTF-8 text", location=where
            ) from None
        username, colon, password = text.partition(":")
        if not colon:
            raise ConfigError(
                "illegal registry auth: the decoded value has no ':' between user and password",
                location=where,
            )
        # Recipes like `echo "$u:$p" | base64` add a newline; upstream trims only '\n'.
        return Credentials(username=username, password=password.strip("\n"))


def normalize_registry(registry: str) -> str:
    """docker.io's names all mean ``index.docker.io`` for credential matching."""
    return DOCKER_HUB_AUTH_REGISTRY if registry in _DOCKER_HUB_ALIASES else registry


def _normalize_key(key: str) -> str:
    # A key with a scheme is a URL: keep only its host.  Without one, a path stays (so
    # "quay.io/ns" never matches here), as upstream.
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            return normalize_registry(key[len(scheme) :].partition("/")[0])
    return normalize_registry(key)


def _path_keys(name: str) -> list[str]:
    """``a/b/c`` → ``a/b/c``, ``a/b``, ``a``."""
    keys = [name]
    while "/" in name:
        name = name.rpartition("/")[0]
        keys.append(name)
    return keys
