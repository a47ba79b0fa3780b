"""Test and demo infrastructure: real registries, proxies, token servers, certificates, images.

Used by the test suite, the README demo and the benchmarks.  Everything listens on 127.0.0.1
on a free port, writes its logs to files next to its data, and stops when its context manager
exits (or, as a last resort, when this interpreter exits or dies).

This module holds the pieces the others share: finding a Debian binary, picking a port and
running a child process that cannot outlive us.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


__all__ = [
    "HarnessError",
    "ManagedProcess",
    "Stoppable",
    "TEST_PASSWORD",
    "TEST_USER",
    "free_port",
    "port_open",
    "require_binary",
    "start_on_free_port",
    "wait_for",
]

#: The credentials the test fixtures configure (htpasswd registry, token server).
TEST_USER = "alice"
TEST_PASSWORD = "s3cret-pw"

# Which Debian package ships each binary the harness runs, for the error message.
_DEBIAN_PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "tinyproxy": "tinyproxy",
    "htpasswd": "apache2-utils",
    "openssl": "openssl",
}

_PR_SET_PDEATHSIG = 1


class HarnessError(Exception):
    """The test harness could not start or drive a helper (registry, proxy, skopeo...).

    Not a :class:`guestpull.errors.GuestpullError`: the product never raises it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


def require_binary(name: str) -> str:
    """The absolute path of ``name`` on PATH, or a HarnessError naming the Debian package."""
    path = shutil.which(name)
    if path is None:
        package = _DEBIAN_PACKAGES.get(name, name)
        raise HarnessError(
            f"{name!r} is not installed (not found on PATH)",
            hint=f"apt-get install {package}",
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago.  Callers retry if they lose the race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Call ``check`` until it returns True or ``timeout`` seconds pass; True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if pytest is SIGKILLed, the kernel kills the
    # helper too, so no registry is ever left listening.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=grace)


class Stoppable:
    """The context-manager protocol for helpers whose exit is ``stop()``."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess(Stoppable):
    """A child process with its output in ``log_path``, stopped on ``stop()`` or exit.

    The child gets its own process group (so ``stop()`` also reaches anything it forks) and
    dies with its parent.  A finalizer stops it if the owner forgets to.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until exit
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        finally:
            log.close()
        self._finalizer = weakref.finalize(self, _kill_group, self.proc, 2.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds.  Idempotent."""
        if self._finalizer.alive:
            self._finalizer.detach()
            _kill_group(self.proc, grace)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_on_free_port(
    start: Callable[[int], ManagedProcess],
    ready: Callable[[int], bool],
    *,
    what: str,
    timeout: float,
    attempts: int = 3,
) -> tuple[int, ManagedProcess]:
    """Start a server on a free port and wait until ``ready(port)``.

    Another process can take the port between ``free_port()`` and the server's bind, so a
    server that exits early is tried again on a new port.  A server that neither gets ready
    nor exits within ``timeout`` is stopped.  Failing, the error shows the server's log tail.
    """
    for _ in range(attempts):
        port = free_port()
        process = start(port)
        if wait_for(lambda port=port, process=process: ready(port) or not process.running(), timeout=timeout):
            if process.running():
                return port, process
            process.stop()
            continue  # exited: maybe the port was taken; try another
        process.stop()
        break
    raise HarnessError(
        f"{what} did not start (waited up to {timeout:.0f}s on each of {attempts} ports at most); "
        f"log {process.log_path}:\n{process.log_tail()}"
    )
