"""Fixtures for the cc_kbc tests: a test KBS and an attestation agent stand-in on ttrpc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guestpull.testing.aa import AttestationAgentServer
from guestpull.testing.certs import CertChain, make_ca_chain
from guestpull.testing.kbs import TestAttestationAgent, TestKbs

SECRET = b'{"auths": {"r.local": {"auth": "c2VjcmV0LXZhbHVl"}}}'


@pytest.fixture(scope="session")
def kbs_chain() -> CertChain:
    """The KBS's own CA: not the registries' (ca_chain)."""
    return make_ca_chain(common_name="guestpull test KBS")


@pytest.fixture
def kbs() -> Iterator[TestKbs]:
    with TestKbs(resources={"default/credential/test": SECRET, "default/key/k": b"k"}) as server:
        yield server


@pytest.fixture
def https_kbs(kbs_chain: CertChain) -> Iterator[TestKbs]:
    with TestKbs(tls=kbs_chain, resources={"default/credential/test": SECRET}) as server:
        yield server


def serve_aa(kbs: TestKbs, directory: Path, **agent: object) -> AttestationAgentServer:
    """An AA stand-in for ``kbs`` on a socket in ``directory`` (start it with ``with``)."""
    return AttestationAgentServer(TestAttestationAgent(kbs, **agent), directory / "aa.sock")  # type: ignore[arg-type]
