"""The ``offline_fs_kbc``: JSON files mapping ``repo/type/tag`` to base64 (coco-behaviour.md §9.3)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from guestpull.errors import ConfigError, Location, NotFoundError
from guestpull.strictjson import load_json
from guestpull.resources.uri import KbsResourceUri

OFFLINE_FS_KEYS_FILE = Path("/etc/aa-offline_fs_kbc-keys.json")
OFFLINE_FS_RESOURCES_FILE = Path("/etc/aa-offline_fs_kbc-resources.json")
OFFLINE_FS_EXTRA_ENV = "OFFLINE_FS_KBC_EXTRA_FILE_PATH"

OFFLINE_FS_KBC = "offline_fs_kbc"


def default_offline_fs_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The offline_fs KBC files in load order: keys, resources, then the env's extra list."""
    env = os.environ if environ is None else environ
    files = [OFFLINE_FS_KEYS_FILE, OFFLINE_FS_RESOURCES_FILE]
    extra = env.get(OFFLINE_FS_EXTRA_ENV, "")
    files += [Path(item.strip()) for item in extra.split(",") if item.strip()]
    return files


class OfflineFsKbc:
    """The ``offline_fs_kbc``: resources from local JSON files, loaded on first use."""

    name = OFFLINE_FS_KBC

    def __init__(self, files: list[Path] | None = None) -> None:
        self._files = list(files) if files is not None else default_offline_fs_files()
        self._resources: dict[str, bytes] | None = None

    async def get(self, resource: KbsResourceUri, uri: str) -> bytes:
        if self._resources is None:
            self._resources = load_offline_fs(self._files)
        try:
            return self._resources[resource.path]
        except KeyError:
            raise NotFoundError(
                f"offline-fs-kbc: resource not found {resource.path} (for {uri})",
                hint="files searched: " + ", ".join(str(p) for p in self._files),
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
