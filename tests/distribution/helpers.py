"""What the distribution tests share: an in-memory blob sink and a client factory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from guestpull import tls
from guestpull.oci import Descriptor
from guestpull.errors import DigestError
from guestpull.distribution import (
    ProxySettings,
    RegistryClient,
    RetryPolicy,
    Transport,
    TransportSettings,
    new_session,
)
from guestpull.testing.images import BuiltLayer

def blob_of(layer: BuiltLayer, size: int | None = None) -> Descriptor:
    """The descriptor a manifest gives ``layer`` (``size`` to make it lie about its size)."""
    return Descriptor(layer.media_type, layer.digest, layer.size if size is None else size)


FAST = TransportSettings(
    connect_timeout=2, read_timeout=2, retry=RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)
)


@dataclass
class MemorySink:
    """A BlobSink keeping bytes in memory; records commit/abort so tests can check them."""

    expected_digest: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    committed: bool = False
    aborted: bool = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self) -> bytes:
        """Like the store's writer: refuse content whose digest is not the expected one."""
        data = b"".join(self.chunks)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.expected_digest is not None and actual != self.expected_digest:
            raise DigestError(f"blob digest mismatch: expected {self.expected_digest}, got {actual}")
        self.committed = True
        return data

    def abort(self) -> None:
        self.aborted = True


class Sinks:
    """Opens MemorySinks and keeps every one, so a test sees the aborted ones too."""

    def __init__(self, expected_digest: str | None = None) -> None:
        self.expected_digest = expected_digest
        self.opened: list[MemorySink] = []

    def __call__(self) -> MemorySink:
        sink = MemorySink(self.expected_digest)
        self.opened.append(sink)
        return sink


@contextlib.asynccontextmanager
async def transport(
    *,
    extra_roots: list[str] | None = None,
    proxies: ProxySettings | None = None,
    settings: TransportSettings = FAST,
    client_certificates: list[tls.ClientCertificate] | None = None,
) -> AsyncIterator[Transport]:
    trust = tls.TrustConfig(extra_roots or [], client_certificates or [])
    async with new_session(settings) as session:
        yield Transport(session, trust, proxies, settings)


def client(t: Transport, host: str, *, scheme: str = "http", credentials: object = None) -> RegistryClient:
    return RegistryClient(t, host, scheme=scheme, credentials=credentials)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Creds:
    username: str
    password: str = field(repr=False)


def server_context(chain: object, *, client_ca: bytes | None = None) -> ssl.SSLContext:
    """A server-side SSLContext for a ``testing.certs.CertChain`` (key kept off disk)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    fds = []
    try:
        for data in (chain.cert_pem, chain.key_pem):  # type: ignore[attr-defined]
            fd = os.memfd_create("test-server-tls")
            os.write(fd, data)
            fds.append(fd)
        ctx.load_cert_chain(*(f"/proc/self/fd/{fd}" for fd in fds))
    finally:
        for fd in fds:
            os.close(fd)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.decode())
    return ctx
