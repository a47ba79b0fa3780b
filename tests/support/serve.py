"""Run ``guestpull serve`` as a real process (as systemd would) for the service tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cli import GUESTPULL, Registry, cdh_for, child_env

from guestpull.service.server import socket_answers
from guestpull_testkit import wait_for


def serve_cdh_toml(registry: Registry, socket: Path, aa_socket: Path, **options: Any) -> str:
    """A cdh.toml for the service: the registry's (support.cli.cdh_for) plus the sockets."""
    return cdh_for(registry, socket=f"unix://{socket}", aa_socket=f"unix://{aa_socket}", **options)


@dataclass
class ServeProcess:
    """A running ``guestpull serve``; its stderr (JSON log lines) goes to ``log``."""

    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("message") == "request"]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_serve(directory: Path, config_text: str, socket: Path, *, work_dir: Path | None = None,
                command: list[str] | None = None, env: dict[str, str] | None = None,
                timeout: float = 30.0) -> ServeProcess:
    """Write ``config_text`` (a cdh.toml) into ``directory``, start ``guestpull serve --config``
    on it (or ``command`` + its path: e.g. ``--initdata`` and an Init-Data text) and wait until
    ``socket`` answers."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.toml"
    config.write_text(config_text)
    log = directory / "serve.log"
    argv = [*command, str(config)] if command else [*GUESTPULL, "serve", "--config", str(config)]
    if work_dir is not None:
        argv += ["--work-dir", str(work_dir)]
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**child_env(), **(env or {})},
            start_new_session=True,
        )
    served = ServeProcess(proc, socket, log)
    if not wait_for(lambda: socket_answers(socket) or proc.poll() is not None, timeout=timeout) or proc.poll() is not None:
        served.__exit__()
        raise AssertionError(f"guestpull serve did not start:\n{log.read_text(errors='replace')}")
    return served
