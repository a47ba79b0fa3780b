"""Debian's ``docker-registry`` (CNCF distribution 2.8) on 127.0.0.1, HTTPS or plain HTTP.

``start_registry(root, ...)`` writes a config into ``root``, starts the registry on a free
port and waits (bounded) until ``/v2/`` answers.  ``root`` then holds::

    config.yml  registry.log  storage/  tls/  htpasswd  token-roots.pem  client-cas.pem
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from guestpull_testkit import (
    HarnessError,
    ManagedProcess,
    Stoppable,
    port_open,
    require_binary,
    start_on_free_port,
)
from guestpull_testkit.certs import CertChain
from guestpull_testkit.tokenserver import TokenServer

_START_TIMEOUT = 15.0


class RegistryProcess(Stoppable):
    """A running registry.  ``host`` is ``127.0.0.1:PORT``; ``url`` has the scheme."""

    def __init__(
        self,
        process: ManagedProcess,
        *,
        port: int,
        root: Path,
        tls: CertChain | None,
        htpasswd: tuple[str, str] | None,
        token: TokenServer | None,
        ca_path: Path | None,
    ) -> None:
        self.process = process
        self.port = port
        self.root = root
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token
        #: the CA file that verifies this registry (None for plain HTTP).
        self.ca_path = ca_path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The user/password clients need (htpasswd or token server), if any."""
        if self.htpasswd:
            return self.htpasswd
        if self.token:
            return (self.token.user, self.token.password)
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts only this registry's CA (None for HTTP)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cadata=self.tls.ca_cert_pem.decode())

    def stop(self) -> None:
        self.process.stop()


def start_registry(
    root: Path,
    *,
    tls: CertChain | None = None,
    htpasswd: tuple[str, str] | None = None,
    token: TokenServer | None = None,
    client_ca_pem: bytes | None = None,
) -> RegistryProcess:
    """Start a registry storing under ``root``; HTTPS when ``tls`` is given.

    ``htpasswd`` and ``token`` choose the auth scheme (at most one).  ``client_ca_pem`` turns
    on mTLS: clients must present a certificate issued by one of those CAs.
    """
    if htpasswd and token:
        raise ValueError("choose htpasswd or token auth, not both")
    if client_ca_pem and not tls:
        raise ValueError("client_ca_pem (mTLS) needs tls")
    if token is not None and not token.port:
        raise ValueError("start the TokenServer (with ...) before the registry: its realm has no port yet")
    binary = require_binary("docker-registry")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage").mkdir(exist_ok=True)
    ca_path = None
    if tls is not None:
        ca_path = tls.write(root / "tls").ca
    if htpasswd is not None:
        _write_htpasswd(root / "htpasswd", *htpasswd)
    if token is not None:
        (root / "token-roots.pem").write_bytes(token.rootcert_pem)
    if client_ca_pem is not None:
        (root / "client-cas.pem").write_bytes(client_ca_pem)

    def launch(port: int) -> ManagedProcess:
        config = _config(root, port, tls=tls is not None, htpasswd=htpasswd is not None,
                         token=token, mtls=client_ca_pem is not None)
        # JSON is YAML, and needs no YAML library to write.
        (root / "config.yml").write_text(json.dumps(config, indent=2))
        return ManagedProcess(
            [binary, "serve", str(root / "config.yml")], log_path=root / "registry.log"
        )

    # With mTLS the probe has no client certificate; the registry binds only once its
    # config is loaded, so an accepting port means ready.
    ready = _port_probe if client_ca_pem else _v2_probe(tls)
    port, process = start_on_free_port(
        launch, ready, what=f"docker-registry in {root}", timeout=_START_TIMEOUT
    )
    return RegistryProcess(
        process, port=port, root=root, tls=tls, htpasswd=htpasswd, token=token, ca_path=ca_path
    )


def _config(
    root: Path, port: int, *, tls: bool, htpasswd: bool, token: TokenServer | None, mtls: bool
) -> dict[str, object]:
    http: dict[str, object] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls:
        http["tls"] = {
            "certificate": str(root / "tls" / "cert.pem"),
            "key": str(root / "tls" / "key.pem"),
        }
        if mtls:
            http["tls"]["clientcas"] = [str(root / "client-cas.pem")]  # type: ignore[index]
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            # Upload purging is a background sweep; tests do not need it running.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if htpasswd:
        config["auth"] = {
            "htpasswd": {"realm": "guestpull-test", "path": str(root / "htpasswd")}
        }
    elif token is not None:
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(root / "token-roots.pem"),
            }
        }
    return config


def _write_htpasswd(path: Path, user: str, password: str) -> None:
    """A bcrypt entry (the only hash distribution accepts), password passed on stdin."""
    binary = require_binary("htpasswd")
    # -C 4: the lowest bcrypt cost keeps each registry request fast.
    result = subprocess.run(
        [binary, "-niB", "-C", "4", user],
        input=password.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"htpasswd failed: {result.stderr.decode(errors='replace').strip()}")
    path.write_bytes(result.stdout.strip() + b"\n")
    path.chmod(0o600)


def _v2_probe(tls: CertChain | None) -> Callable[[int], bool]:
    """Ready when ``/v2/`` answers 200, or 401 (up, and asking for credentials)."""
    scheme = "https" if tls else "http"
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # no env proxy
    if tls is not None:
        context = ssl.create_default_context(cadata=tls.ca_cert_pem.decode())
        # Readiness only: a certificate may deliberately not name 127.0.0.1 (name-mismatch tests).
        context.check_hostname = False
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)

    def probe(port: int) -> bool:
        try:
            with opener.open(f"{scheme}://127.0.0.1:{port}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError as err:
            return err.code == 401
        except (OSError, ValueError):
            return False

    return probe


def _port_probe(port: int) -> bool:
    return port_open("127.0.0.1", port)
