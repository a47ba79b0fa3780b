"""The TLS to an ``https://`` proxy is verified with the pull's trust, whatever the registry's
scheme: a plain-HTTP registry must not make the proxy connection unverified."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from distribution.helpers import server_context
from support.config import Rule, cdh_toml

from guestpull.cli import main
from guestpull_testkit.certs import CertChain, make_ca_chain

BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.fixture
def tls_proxy() -> Iterator[tuple[str, CertChain, list[bytes]]]:
    """A TLS listener on 127.0.0.1 that answers every request 502 (a proxy that reaches nothing)."""
    chain = make_ca_chain()
    context = server_context(chain)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    seen.append(conn.recv(65536))
                    conn.sendall(BAD_GATEWAY)
            except (OSError, ssl.SSLError):
                raw.close()  # the client refused our certificate: what the test wants to see

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}", chain, seen
    stop.set()
    thread.join(timeout=5)
    server.close()


def _pull_through(shm_path: Path, proxy: str, roots: list[bytes]) -> dict:
    # Port 9 has nothing: the request only ever reaches the proxy.
    cdh = cdh_toml(roots=roots, rules=[Rule("127.0.0.1:9", insecure=True)],
                   proxy={"http_proxy": proxy})
    (shm_path / "cdh.toml").write_text(cdh)
    result = CliRunner().invoke(main, ["pull", "127.0.0.1:9/app:v1", "--config", str(shm_path / "cdh.toml"),
                                       "--work-dir", str(shm_path / "work"), "--json"])
    assert result.exit_code != 0
    return json.loads(result.stdout)["error"]


def test_untrusted_https_proxy_is_refused_for_an_http_registry(shm_path: Path, tls_proxy) -> None:
    proxy, _, seen = tls_proxy
    error = _pull_through(shm_path, proxy, roots=[])
    # No request was sent over an unverified connection (the error message reads the proxy's
    # certificate on a handshake-only connection: it sends nothing).
    assert all(data == b"" for data in seen)
    assert "certificate" in json.dumps(error).lower()


def test_https_proxy_signed_by_an_extra_root_is_used(shm_path: Path, tls_proxy) -> None:
    proxy, chain, seen = tls_proxy
    error = _pull_through(shm_path, proxy, roots=[chain.ca_cert_pem])
    assert seen and seen[0].startswith(b"GET http://127.0.0.1:9/v2/")
    assert "certificate" not in json.dumps(error).lower()
