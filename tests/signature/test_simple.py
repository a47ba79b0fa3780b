"""The lookaside store is as hostile as the registry: sizes and counts are bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestpull import tls
from guestpull.distribution import RetryPolicy, Transport, TransportSettings, new_session
from guestpull.errors import HTTPStatusError, UnsupportedError
from guestpull.signature import simple
from guestpull.testing.signing import serve_directory

DIGEST = "sha256:" + "c" * 64


def signature_dir(root: Path) -> Path:
    path = root / f"app/web@sha256={'c' * 64}"
    path.mkdir(parents=True)
    return path


async def read(base: str) -> list[simple.StoredSignature]:
    settings = TransportSettings(retry=RetryPolicy(attempts=1))
    async with new_session(settings) as session:
        transport = Transport(session, tls.TrustConfig([], []), settings=settings)
        return await simple.read_signatures(base, "app/web", DIGEST, transport)


@pytest.mark.parametrize("scheme", ["file", "http"])
async def test_reads_until_the_first_missing(shm_path: Path, scheme: str) -> None:
    directory = signature_dir(shm_path)
    for number in (1, 2, 4):
        (directory / f"signature-{number}").write_bytes(f"sig {number}".encode())
    with serve_directory(shm_path) as url:
        found = await read(url if scheme == "http" else f"file://{shm_path}")
    assert [s.data for s in found] == [b"sig 1", b"sig 2"]
    assert found[0].location.endswith(f"/app/web@sha256={'c' * 64}/signature-1")


@pytest.mark.parametrize("scheme", ["file", "http"])
async def test_an_oversized_signature_is_refused(shm_path: Path, scheme: str) -> None:
    directory = signature_dir(shm_path)
    (directory / "signature-1").write_bytes(b"x" * (simple.MAX_SIGNATURE_SIZE + 1))
    with serve_directory(shm_path) as url, pytest.raises(UnsupportedError, match="larger than 4 MiB"):
        await read(url if scheme == "http" else f"file://{shm_path}")


async def test_too_many_signatures_are_refused(shm_path: Path) -> None:
    directory = signature_dir(shm_path)
    for number in range(1, simple.MAX_SIGNATURES + 2):
        (directory / f"signature-{number}").write_bytes(b"s")
    with pytest.raises(UnsupportedError, match=f"more than {simple.MAX_SIGNATURES} signatures"):
        await read(f"file://{shm_path}")


async def test_a_server_error_is_not_a_missing_signature(shm_path: Path) -> None:
    signature_dir(shm_path)
    path = f"/app/web@sha256={'c' * 64}/signature-1"
    with serve_directory(shm_path, errors={path: 503}) as url, pytest.raises(HTTPStatusError, match="503"):
        await read(url)
