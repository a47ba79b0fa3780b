"""Debian's ``tinyproxy`` as a forward (CONNECT and absolute-form) proxy on 127.0.0.1.

The generated config has no ``ConnectPort`` line, which tinyproxy reads as "CONNECT to any
port" (its packaged config limits CONNECT to 443 and 563, which would refuse our registries on
high ports).  ``LogLevel Connect`` logs every request line, so a test can see which hosts went
through the proxy.
"""

from __future__ import annotations

import re
from pathlib import Path

from guestpull_testkit import ManagedProcess, Stoppable, port_open, require_binary, start_on_free_port

_START_TIMEOUT = 10.0


class ProxyProcess(Stoppable):
    """A running tinyproxy.  ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, process: ManagedProcess, *, port: int, log_file: Path) -> None:
        self.process = process
        self.port = port
        self.log_file = log_file

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_text(self) -> str:
        """Everything tinyproxy logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests(self) -> list[str]:
        """The request lines seen, e.g. ``CONNECT 127.0.0.1:5000 HTTP/1.1``."""
        return re.findall(r'Request \(file descriptor \d+\): (.+)', self.log_text())

    def stop(self) -> None:
        self.process.stop()


def start_proxy(workdir: Path) -> ProxyProcess:
    """Start tinyproxy with its config and logs in ``workdir``; wait until it accepts."""
    binary = require_binary("tinyproxy")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "tinyproxy.log"
    config_file = workdir / "tinyproxy.conf"

    def launch(port: int) -> ManagedProcess:
        config_file.write_text(_config(port, log_file))
        # tinyproxy's own log goes to log_file; stderr only has start-up failures.
        return ManagedProcess(
            [binary, "-d", "-c", str(config_file)], log_path=workdir / "tinyproxy.stderr"
        )

    port, process = start_on_free_port(
        launch, lambda port: port_open("127.0.0.1", port), what="tinyproxy",
        timeout=_START_TIMEOUT,
    )
    return ProxyProcess(process, port=port, log_file=log_file)


def _config(port: int, log_file: Path) -> str:
    return "\n".join([
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        "MaxClients 50",
        "Allow 127.0.0.1",
        f'LogFile "{log_file}"',
        "LogLevel Connect",
        "DisableViaHeader Yes",
        "",
    ])

