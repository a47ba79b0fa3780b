"""``guestpull serve``: the CDH socket, the long-lived puller behind it, and a clean stop.

Start-up follows ``confidential-data-hub``: the socket from cdh.toml (``--socket`` overrides);
a socket another server answers on is refused; a stale socket file is removed; the socket is
created with mode 0600.  SIGTERM / SIGINT stop accepting, give running calls ``grace``
seconds, cancel the rest (their partial bundles are removed by the puller), remove the socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestpull.config import CdhConfig
from guestpull.errors import ConfigError, ExistsError, Location, from_os_error
from guestpull.service.aa import RuntimeMeasurer
from guestpull.service.cdh import ConfidentialDataHub, ImagePuller, write_kbs_credentials
from guestpull.ttrpc import CallRecord, Code, TtrpcServer, code_name, unix_socket_path

log = logging.getLogger(__name__)
request_log = logging.getLogger("guestpull.service.requests")

#: How long running calls may go on after SIGTERM before they are cancelled.
SHUTDOWN_GRACE = 30.0
#: Threads for the puller's blocking work (see _size_thread_pool).
THREAD_POOL_SIZE = 32

PullerFactory = Callable[[CdhConfig, Path | None], AbstractAsyncContextManager[ImagePuller]]


@dataclass(frozen=True)
class ServeOptions:
    socket: str | None = None  # overrides cdh.toml's socket
    work_dir: Path | None = None  # overrides [image] work_dir
    grace: float = SHUTDOWN_GRACE


def default_puller(cdh: CdhConfig, work_dir: Path | None) -> AbstractAsyncContextManager[ImagePuller]:
    from guestpull.pull import Puller  # the puller's imports are paid once, at start-up

    return Puller(cdh, work_dir=work_dir)  # type: ignore[return-value,unused-ignore]


async def serve(cdh: CdhConfig, options: ServeOptions, *, puller_factory: PullerFactory = default_puller,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM / SIGINT (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    _size_thread_pool()
    address = options.socket or cdh.socket
    path = unix_socket_path(address)
    claim_socket_path(path)
    measurer = RuntimeMeasurer(cdh.aa.aa_socket)
    async with puller_factory(cdh, options.work_dir) as puller:
        await write_kbs_credentials(cdh.credentials, puller)
        await puller.warm_up()  # settings and TLS before the first call, not during it
        server = TtrpcServer(ConfidentialDataHub(puller, measurer).services(), on_call=log_call)
        async with _listening(server, path), _stop_on_signals(stop):
            log.info("serving the CDH API on %s", address)
            notify_systemd("READY=1")
            await stop.wait()
            notify_systemd("STOPPING=1")
            log.info("stopping: %d call(s) running, %.0f s to finish", server.in_flight(), options.grace)
            await server.shutdown(options.grace)
        await measurer.close()
    log.info("stopped")


def _size_thread_pool() -> None:
    # The puller runs blocking work on the loop's default executor: every downloaded chunk's
    # write and hash, store locks, and whole-layer unpacks.  Python's default (cores + 4
    # threads) lets a few concurrent pulls' unpacks hold every thread while the other pulls'
    # chunk writes queue behind them: downloads stall with the CPU idle.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=THREAD_POOL_SIZE, thread_name_prefix="guestpull"))


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free for a new socket: refuse if a server answers there or it is not a
    socket; remove a stale socket file."""
    try:
        _claim_socket_path(path)
    except OSError as err:  # a path the user gave that cannot hold a socket
        raise from_os_error(err, "prepare the socket path", path) from None


def _claim_socket_path(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise ExistsError(f"{path} exists and is not a socket", hint="remove it, or choose another --socket")
    if socket_answers(path):
        raise ExistsError(f"another server is listening on {path}",
                          hint="stop it first (is the CDH's image service still running?)")
    path.unlink()


def socket_answers(path: Path) -> bool:
    """Whether a server accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def _listening(server: TtrpcServer, path: Path) -> AsyncIterator[None]:
    # The socket is born 0600: no moment where another user could connect.
    old_umask = os.umask(0o177)
    try:
        await server.start_unix(path)
    except OSError as err:  # e.g. a read-only directory
        raise from_os_error(err, "listen on the socket", path) from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    identity = path.stat().st_ino
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == identity:  # still ours, not a successor's
                path.unlink()


@contextlib.asynccontextmanager
async def _stop_on_signals(stop: asyncio.Event) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def notify_systemd(state: str) -> None:
    """sd_notify(3) for ``Type=notify`` units: READY=1 once the socket accepts calls."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target  # "@" = abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as err:
            log.warning("could not notify systemd (%s): %s", target, err)


def log_call(record: CallRecord) -> None:
    """One structured line per request; fields are names, paths and digests, never payloads."""
    fields: dict[str, Any] = {"method": record.context.path, **record.context.log_fields,
                              "duration_s": round(record.duration, 3), "outcome": code_name(record.code)}
    if record.code != Code.OK:
        fields["error"] = record.message
    level = logging.INFO if record.code == Code.OK else logging.WARNING
    request_log.log(level, "request", extra={"fields": fields})


class JsonLogFormatter(logging.Formatter):
    """A log record as one JSON object per line (journald keeps it as one entry)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_level(level))


#: cdh.toml [log] level (env_logger's names) → logging level.
LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 10}


def _level(name: str) -> int:
    try:
        return LOG_LEVELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown log level {name!r} (expected one of {', '.join(LOG_LEVELS)})",
                          location=Location(field="log.level")) from None
