"""One async ``get(uri) -> bytes`` for every resource URI, with the KBC that ``[kbc] name`` chooses.

Upstream (coco-behaviour.md §8.4, §9): a string without ``://`` is a file path; ``file://``
reads the URL's path; ``kbs://`` and ``kbs+<plugin>://`` go to the CDH's KBC:
``offline_fs_kbc`` (local JSON files, §9.3) or ``cc_kbc`` (the KBS, with a token from the
attestation agent, §9.2; see :mod:`guestpull.kbs`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from guestpull.errors import ConfigError, Location, NotFoundError
from guestpull.resources.offline_fs import OFFLINE_FS_KBC, OfflineFsKbc
from guestpull.resources.uri import KbsResourceUri, check_resource_uri, is_kbs_uri, parse_kbs_uri

if TYPE_CHECKING:
    from guestpull.config import CdhConfig
    from guestpull.kbs.token import TokenProvider

CC_KBC = "cc_kbc"
KBC_NAMES = (CC_KBC, OFFLINE_FS_KBC)

T = TypeVar("T")


class Kbc(Protocol):
    """A key broker client: serves ``kbs[+plugin]://`` URIs."""

    name: str

    async def get(self, resource: KbsResourceUri, uri: str) -> bytes: ...


class _MisconfiguredKbc:
    """A KBC that cannot work as configured: every ``kbs://`` URI fails with the same error."""

    def __init__(self, name: str, error: ConfigError) -> None:
        self.name = name
        self._error = error

    async def get(self, resource: KbsResourceUri, uri: str) -> bytes:
        raise ConfigError(f"cannot fetch {uri}: {self._error.message}",
                          location=self._error.location, hint=self._error.hint)


class ResourceResolver:
    """Turn a resource URI into bytes (async).  :meth:`sync` adapts it for synchronous callers.

    ``kbc`` is a KBC object, or the ``[kbc] name`` for one that needs no settings
    (``offline_fs_kbc``, whose files ``offline_fs_files`` overrides for tests).  Build the
    resolver for a whole ``cdh.toml`` with :meth:`for_cdh`.
    """

    def __init__(self, offline_fs_files: list[Path] | None = None, *, kbc: str | Kbc = OFFLINE_FS_KBC) -> None:
        self.kbc: Kbc = kbc if not isinstance(kbc, str) else _kbc_by_name(kbc, offline_fs_files)

    @classmethod
    def for_cdh(
        cls,
        cdh: CdhConfig,
        *,
        source: str | None = None,
        token_provider: TokenProvider | None = None,
        offline_fs_files: list[Path] | None = None,
    ) -> ResourceResolver:
        """The resolver for a ``cdh.toml``: its ``[kbc]`` and, for cc_kbc, ``[aa] aa_socket``.

        A cc_kbc that is misconfigured (bad URL or ``kbs_cert``) fails only when a ``kbs://``
        URI is fetched, as upstream, where a pull that names none still works.
        """
        if cdh.kbc.name != CC_KBC:
            return cls(offline_fs_files, kbc=cdh.kbc.name)
        from guestpull.kbs import CcKbc, KbsSettings

        try:
            settings = KbsSettings.from_kbc_config(cdh.kbc, source=source)
        except ConfigError as err:
            return cls(kbc=_MisconfiguredKbc(CC_KBC, err))
        if token_provider is None:
            from guestpull.kbs.aa import AaTokenProvider

            token_provider = AaTokenProvider(cdh.aa.aa_socket)
        return cls(kbc=CcKbc(settings, token_provider))

    async def get(self, uri: str) -> bytes:
        check_resource_uri(uri)
        if "://" not in uri:
            return await _read_file(Path(uri), uri)
        if is_kbs_uri(uri):
            return await self.kbc.get(parse_kbs_uri(uri), uri)
        return await _read_file(Path(unquote(urlsplit(uri).path)), uri)

    def sync(self) -> SyncResourceGetter:
        return SyncResourceGetter(self)


class SyncResourceGetter:
    """``get(uri) -> bytes`` without ``await``, for configuration loading (config.ResourceGetter).

    Inside a running event loop the fetch runs on a short-lived thread with its own loop: the
    caller's loop is blocked meanwhile, which is acceptable only while loading configuration.
    """

    def __init__(self, resolver: ResourceResolver) -> None:
        self.resolver = resolver

    def get(self, uri: str) -> bytes:
        return run_sync(self.resolver.get(uri))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, with or without a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="guestpull-resource") as pool:
        return pool.submit(asyncio.run, coro).result()


def _kbc_by_name(name: str, offline_fs_files: list[Path] | None) -> Kbc:
    if name == OFFLINE_FS_KBC:
        return OfflineFsKbc(offline_fs_files)
    if name == CC_KBC:
        return _MisconfiguredKbc(name, ConfigError(
            "cc_kbc needs the KBS settings of a cdh.toml ([kbc] url, [aa] aa_socket)",
            location=Location(field="kbc")))
    return _MisconfiguredKbc(name, ConfigError(
        f"unknown kbc name {name!r} (expected {OFFLINE_FS_KBC} or {CC_KBC})",
        location=Location(field="kbc.name")))


async def _read_file(path: Path, uri: str) -> bytes:
    # Local files are small configuration files: reading them inline does not stall the loop.
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"resource {uri} not found: no file {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"resource {uri}: {path} is a directory, not a file") from None
    except OSError as err:
        raise ConfigError(f"cannot read resource {uri}: {err.strerror}") from None
