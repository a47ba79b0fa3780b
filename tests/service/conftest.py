"""Fixtures for the service tests: the Go ttrpc peer, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.ttrpcpeer import build_peer


@pytest.fixture(scope="session")
def ttrpc_peer(session_shm: Path) -> Path:
    """The ``ttrpcpeer`` binary (containerd/ttrpc, Go): see tests/support/ttrpcpeer.py."""
    return build_peer(session_shm / "ttrpcpeer")
