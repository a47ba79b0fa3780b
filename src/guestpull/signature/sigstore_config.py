"""Where simple-signing signatures live: the registries.d-style "sigstore config" YAML.

```yaml
default-docker:
  sigstore: file:///var/lib/sigstore
docker:
  registry.local:5000/app:
    sigstore: http://registry.local:8080/sigstore
```

containers-registries.d(5): ``lookaside`` is the current name of ``sigstore`` (both are read);
the ``-staging`` variants, ``use-sigstore-attachments`` and other keys are for writers and are
ignored, as upstream.  Documents are merged as upstream image-rs does (coco-behaviour.md §8.2):
a second ``default-docker`` or a scope defined twice is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guestpull.errors import ConfigError, Location
from guestpull.reference import Reference
from guestpull.signature.policy import policy_scopes
from guestpull.url import URL

MAX_CONFIG_SIZE = 1 << 20
#: Upstream's directory of extra sigstore config files, below the image work_dir.
CONFIG_DIR = Path("image-security/simple_signing/sigstore_config")
URL_KEYS = ("lookaside", "sigstore")


@dataclass(frozen=True)
class Lookaside:
    """The signature store base URL that applies to an image, and which entry chose it."""

    url: str
    scope: str  # "default-docker" or the docker scope
    source: str


@dataclass
class SigstoreConfig:
    default: Lookaside | None = None
    scopes: dict[str, Lookaside] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, source: str) -> SigstoreConfig:
        config = cls()
        config.merge(raw, source)
        return config

    def merge(self, raw: bytes, source: str) -> None:
        """Add one document; ConfigError on a conflict with what is already there."""
        doc = load_yaml(raw, source)
        if "default-docker" in doc:
            url = _url(doc["default-docker"], source, "default-docker")
            if url is not None:
                if self.default is not None:
                    raise ConfigError(
                        f"default-docker is also defined in {self.default.source}",
                        location=Location(file=source, field="default-docker"))
                self.default = Lookaside(url, "default-docker", source)
        docker = doc.get("docker") or {}
        if not isinstance(docker, dict):
            raise ConfigError("docker must be a mapping of scope → settings",
                              location=Location(file=source, field="docker"))
        for scope, entry in docker.items():
            where = f"docker.{scope}"
            if scope in self.scopes:
                raise ConfigError(f"scope {scope!r} is also defined in {self.scopes[scope].source}",
                                  location=Location(file=source, field=where))
            url = _url(entry, source, where)
            if url is not None:
                self.scopes[str(scope)] = Lookaside(url, str(scope), source)

    def lookaside_for(self, reference: Reference) -> Lookaside | None:
        """The most specific scope with a URL, else ``default-docker``, else None."""
        for scope in policy_scopes(reference):
            if scope in self.scopes:
                return self.scopes[scope]
        return self.default


def load_sigstore_config(
    inline: tuple[bytes, str] | None, work_dir: Path
) -> SigstoreConfig:
    """The configured document (if any) merged with ``<work_dir>/image-security/.../*.yaml``."""
    config = SigstoreConfig()
    if inline is not None:
        config.merge(*inline)
    directory = Path(work_dir) / CONFIG_DIR
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".yaml" and p.is_file())
    except FileNotFoundError:
        files = []
    except OSError as err:
        raise ConfigError(f"cannot list sigstore config directory: {err.strerror}",
                          location=Location(file=str(directory))) from None
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read: {err.strerror}", location=Location(file=str(path))) from None
        config.merge(raw, str(path))
    return config


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice (YAML says keys are unique; PyYAML keeps
    the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call,unused-ignore]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(raw: bytes, source: str) -> dict[str, Any]:
    if len(raw) > MAX_CONFIG_SIZE:
        raise ConfigError("the sigstore config is larger than 1 MiB", location=Location(file=source))
    try:
        doc = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"the sigstore config is not valid YAML: {problem}",
                          location=Location(file=source, line=line)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("the sigstore config must be a YAML mapping", location=Location(file=source))
    return doc


def _url(entry: Any, source: str, where: str) -> str | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ConfigError("expected a mapping with sigstore: URL", location=Location(file=source, field=where))
    for key in URL_KEYS:
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith(("file://", "http://", "https://")):
            raise ConfigError(f"{key} must be a file://, http:// or https:// URL, not {value!r}",
                              location=Location(file=source, field=f"{where}.{key}"))
        if not value.startswith("file://"):
            _check_http_url(value, source, f"{where}.{key}")
        return value.rstrip("/")
    return None


def _check_http_url(value: str, source: str, field: str) -> None:
    """Refuse at load what the signature requests could not be built from (port, spaces, non-ASCII host)."""
    try:
        URL(value)
    except ValueError as err:
        raise ConfigError(f"{value!r} is not a usable URL: {err}", location=Location(file=source, field=field)) from None
