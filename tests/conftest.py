"""Shared fixtures: tmpfs work dirs, a test CA, and real registries / a proxy on 127.0.0.1.

The registry and proxy fixtures are session-scoped and lazy: a process starts only when the
first test asks for it, and stops at the end of the session.  Tests sharing a registry must use
their own repository name (the ``repo_name`` fixture gives one).  Tests that use any of them are
marked ``registry`` automatically, so ``-m "not registry"`` runs the fast unit tests alone.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestpull.image.fsops import remove_path
from guestpull_testkit import TEST_PASSWORD, TEST_USER
from guestpull_testkit.certs import CertChain, make_ca_chain, make_client_cert
from guestpull_testkit.proxy import ProxyProcess, start_proxy
from guestpull_testkit.realtools import Containers
from guestpull_testkit.registry import RegistryProcess, start_registry
from guestpull_testkit.tokenserver import TokenServer

REGISTRY_FIXTURES = frozenset({
    "https_registry",
    "http_registry",
    "basic_auth_registry",
    "token_registry",
    "mtls_registry",
    "forward_proxy",
})

_SHM = Path("/dev/shm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REGISTRY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.registry)


def _fresh_dir(prefix: str) -> Path:
    base = _SHM if _SHM.is_dir() else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "test"


@pytest.fixture
def shm_path(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm), removed after the test."""
    path = _fresh_dir(f"guestpull-{_slug(request.node.name)}-")
    try:
        yield path
    finally:
        _unmount_below(path)  # overlay bundles a test pulled as root and left mounted
        with contextlib.suppress(OSError):
            remove_path(path)  # shutil.rmtree recurses: a hostile-layer test may leave depth


def _unmount_below(path: Path) -> None:
    """Unmount every mount at or below ``path``, deepest first (a mount point cannot be removed)."""
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [line.split()[4] for line in f]
    below = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(set(below), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60, check=False)


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, e.g. ``test/push-keeps-digests-1a2b3c4d``."""
    return f"test/{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def session_shm() -> Iterator[Path]:
    """The session's tmpfs directory, holding the registries' storage and logs."""
    path = _fresh_dir("guestpull-session-")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            remove_path(path)  # shutil.rmtree recurses: a hostile-layer test may leave depth


@pytest.fixture(scope="session")
def ca_chain() -> CertChain:
    """Root CA → server certificate for 127.0.0.1, localhost and ::1."""
    return make_ca_chain()


@pytest.fixture(scope="session")
def https_registry(session_shm: Path, ca_chain: CertChain) -> Iterator[RegistryProcess]:
    with start_registry(session_shm / "https-registry", tls=ca_chain) as registry:
        yield registry


@pytest.fixture(scope="session")
def http_registry(session_shm: Path) -> Iterator[RegistryProcess]:
    with start_registry(session_shm / "http-registry") as registry:
        yield registry


@pytest.fixture(scope="session")
def basic_auth_registry(session_shm: Path, ca_chain: CertChain) -> Iterator[RegistryProcess]:
    """HTTPS + htpasswd; ``.credentials`` is (``alice``, ``s3cret-pw``)."""
    with start_registry(
        session_shm / "basic-auth-registry", tls=ca_chain, htpasswd=(TEST_USER, TEST_PASSWORD)
    ) as registry:
        yield registry


@pytest.fixture(scope="session")
def token_registry(session_shm: Path, ca_chain: CertChain) -> Iterator[RegistryProcess]:
    """HTTPS + bearer tokens from a TokenServer (HTTPS, same CA) at ``.token``."""
    with TokenServer(TEST_USER, TEST_PASSWORD, tls=ca_chain) as token_server, start_registry(
        session_shm / "token-registry", tls=ca_chain, token=token_server
    ) as registry:
        yield registry


@pytest.fixture(scope="session")
def mtls_client_cert(ca_chain: CertChain) -> CertChain:
    """A client certificate (issued by ``ca_chain``'s CA) that ``mtls_registry`` accepts."""
    return make_client_cert(ca_chain, "guestpull-test-client")


@pytest.fixture(scope="session")
def mtls_registry(session_shm: Path, ca_chain: CertChain) -> Iterator[RegistryProcess]:
    """HTTPS that requires a client certificate issued by ``ca_chain``'s CA."""
    with start_registry(
        session_shm / "mtls-registry", tls=ca_chain, client_ca_pem=ca_chain.ca_cert_pem
    ) as registry:
        yield registry


@pytest.fixture(scope="session")
def forward_proxy(session_shm: Path) -> Iterator[ProxyProcess]:
    """tinyproxy; ``.url`` for clients, ``.requests()`` / ``.log_text()`` for assertions."""
    with start_proxy(session_shm / "forward-proxy") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def containers(session_shm: Path) -> Containers:
    """buildah and podman on a private store (vfs) for the session; needs root."""
    return Containers(session_shm / "containers")
