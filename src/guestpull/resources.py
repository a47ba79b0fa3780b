"""Resource URIs: a bare path, ``file://``, or ``kbs[+plugin]://`` served by a KBC.

Upstream (coco-behaviour.md §8.4, §9): a string without ``://`` is a file path; ``file://``
reads the URL's path; ``kbs://`` and ``kbs+<plugin>://`` go to the CDH's KBC.  guestpull
implements the ``offline_fs_kbc`` (JSON files of base64 values, §9.3).  ``cc_kbc`` needs remote
attestation to a KBS and is not implemented.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from guestpull.errors import ConfigError, Location, NotFoundError, UnsupportedError
from guestpull.strictjson import load_json

OFFLINE_FS_KEYS_FILE = Path("/etc/aa-offline_fs_kbc-keys.json")
OFFLINE_FS_RESOURCES_FILE = Path("/etc/aa-offline_fs_kbc-resources.json")
OFFLINE_FS_EXTRA_ENV = "OFFLINE_FS_KBC_EXTRA_FILE_PATH"

OFFLINE_FS_KBC = "offline_fs_kbc"
CC_KBC = "cc_kbc"


@dataclass(frozen=True)
class KbsResourceUri:
    """A parsed ``kbs[+plugin]://[host[:port]]/seg/seg/...[?query]``."""

    plugin: str
    host: str
    segments: tuple[str, ...]
    query: str

    @property
    def path(self) -> str:
        """The lookup key: the segments joined with ``/`` (``repo/type/tag``)."""
        return "/".join(self.segments)


def is_kbs_uri(uri: str) -> bool:
    scheme = uri.partition("://")[0] if "://" in uri else ""
    return scheme == "kbs" or scheme.startswith("kbs+")


def parse_kbs_uri(uri: str) -> KbsResourceUri:
    """Parse a KBS resource URI (§9.1); ConfigError saying what is wrong."""
    scheme, sep, _ = uri.partition("://")
    if not sep:
        raise ConfigError(f"resource URI {uri!r} has no scheme; expected kbs:///repo/type/tag")
    if scheme == "kbs":
        plugin = "resource"
    elif scheme.startswith("kbs+"):
        plugin = scheme[len("kbs+") :]
        if not plugin:
            raise ConfigError(
                f"resource URI {uri!r}: scheme kbs+ needs a plugin name, e.g. kbs+pkcs11"
            )
    else:
        raise ConfigError(f"resource URI {uri!r}: scheme must be kbs or kbs+<plugin>")
    parts = urlsplit(uri)
    path = parts.path[1:]  # drop the one '/' that separates host and path
    if not path:
        raise ConfigError(
            f"resource URI {uri!r} has no resource path; expected kbs:///<repo>/<type>/<tag>"
        )
    return KbsResourceUri(
        plugin=plugin, host=parts.netloc, segments=tuple(path.split("/")), query=parts.query
    )


def check_resource_uri(uri: str) -> None:
    """Raise ConfigError if ``uri`` is not a form :class:`ResourceResolver` can serve."""
    if not uri:
        raise ConfigError("resource URI is empty")
    if "://" not in uri:
        return
    if is_kbs_uri(uri):
        parse_kbs_uri(uri)
        return
    scheme = uri.partition("://")[0]
    if scheme != "file":
        raise ConfigError(
            f"resource URI scheme {scheme!r} is not supported (use a path, file://, or kbs://)"
        )


def default_offline_fs_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The offline_fs KBC files in load order: keys, resources, then the env's extra list."""
    env = os.environ if environ is None else environ
    files = [OFFLINE_FS_KEYS_FILE, OFFLINE_FS_RESOURCES_FILE]
    extra = env.get(OFFLINE_FS_EXTRA_ENV, "")
    files += [Path(item.strip()) for item in extra.split(",") if item.strip()]
    return files


class ResourceResolver:
    """Turn a resource URI into bytes.

    ``offline_fs_files`` overrides the offline_fs KBC's file list (tests); ``kbc`` is the
    ``cdh.toml [kbc] name`` in force: ``cc_kbc`` makes every ``kbs://`` URI unsupported.
    """

    def __init__(
        self, offline_fs_files: list[Path] | None = None, *, kbc: str = OFFLINE_FS_KBC
    ) -> None:
        self._offline_fs_files = (
            list(offline_fs_files) if offline_fs_files is not None else default_offline_fs_files()
        )
        self._kbc = kbc
        self._offline_fs: dict[str, bytes] | None = None

    def get(self, uri: str) -> bytes:
        check_resource_uri(uri)
        if "://" not in uri:
            return _read_file(Path(uri), uri)
        if is_kbs_uri(uri):
            return self._get_kbs(parse_kbs_uri(uri), uri)
        return _read_file(Path(unquote(urlsplit(uri).path)), uri)

    def _get_kbs(self, resource: KbsResourceUri, uri: str) -> bytes:
        if self._kbc == CC_KBC:
            raise UnsupportedError(
                f"cannot fetch {uri}: the cc_kbc KBC (remote attestation to a KBS) is not "
                "implemented by guestpull",
                hint="use offline_fs_kbc resources, or a file:// path",
            )
        if self._kbc != OFFLINE_FS_KBC:
            raise ConfigError(
                f"cannot fetch {uri}: unknown kbc name {self._kbc!r} "
                f"(expected {OFFLINE_FS_KBC} or {CC_KBC})"
            )
        if self._offline_fs is None:
            self._offline_fs = load_offline_fs(self._offline_fs_files)
        try:
            return self._offline_fs[resource.path]
        except KeyError:
            raise NotFoundError(
                f"offline-fs-kbc: resource not found {resource.path} (for {uri})",
                hint="files searched: " + ", ".join(str(p) for p in self._offline_fs_files),
            ) from None


def load_offline_fs(files: list[Path]) -> dict[str, bytes]:
    """Load offline_fs KBC files; a missing file is skipped, a later duplicate key wins."""
    resources: dict[str, bytes] = {}
    for path in files:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise ConfigError(f"cannot read offline_fs KBC file: {err.strerror}",
                              location=Location(file=str(path))) from None
        resources.update(_parse_offline_fs(raw, str(path)))
    return resources


def _parse_offline_fs(raw: bytes, source: str) -> dict[str, bytes]:
    try:
        data = load_json(raw, source)
    except ConfigError as err:
        raise ConfigError(f"offline_fs KBC file: {err.message}", location=err.location) from None
    if not isinstance(data, dict):
        raise ConfigError("offline_fs KBC file must be a JSON object of \"repo/type/tag\": base64",
                          location=Location(file=source))
    out: dict[str, bytes] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError("value must be a base64 string",
                              location=Location(file=source, field=key))
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            # Never echo the value: it is usually a key or a credential.
            raise ConfigError("value is not valid standard base64",
                              location=Location(file=source, field=key)) from None
    return out


def _read_file(path: Path, uri: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"resource {uri} not found: no file {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"resource {uri}: {path} is a directory, not a file") from None
    except OSError as err:
        raise ConfigError(f"cannot read resource {uri}: {err.strerror}") from None
