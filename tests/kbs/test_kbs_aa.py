"""GetToken from an attestation agent over ttrpc: the three key kinds, an absent or failing AA."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestpull.errors import AuthError, ConfigError, NetworkError
from guestpull.kbs import CcKbc, KbsSettings
from guestpull.kbs.aa import AaTokenProvider
from guestpull.resources import ResourceResolver
from guestpull.testing.kbs import TestKbs
from kbs.conftest import SECRET, serve_aa

URI = "kbs:///default/credential/test"


def kbc(kbs: TestKbs, aa_socket: str) -> ResourceResolver:
    return ResourceResolver(kbc=CcKbc(KbsSettings(kbs.url, retry_delay=0.01), AaTokenProvider(aa_socket)))


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p521", "rsa"])
async def test_token_and_key_from_the_aa_decrypt_the_resource(
    kbs: TestKbs, shm_path: Path, key_type: str,
) -> None:
    with serve_aa(kbs, shm_path, key_type=key_type) as aa:
        assert await kbc(kbs, aa.address).get(URI) == SECRET
    assert aa.requests == ["kbs"]


async def test_expired_token_means_a_second_get_token(kbs: TestKbs, shm_path: Path) -> None:
    with serve_aa(kbs, shm_path, ttl=1) as aa:
        resolver = ResourceResolver(kbc=CcKbc(KbsSettings(kbs.url, cache_ttl=0), AaTokenProvider(aa.address)))
        assert await resolver.get(URI) == SECRET
        assert await resolver.get(URI) == SECRET
    assert aa.requests == ["kbs", "kbs"]


async def test_absent_aa_names_the_uri_and_the_socket_setting(kbs: TestKbs, shm_path: Path) -> None:
    with pytest.raises(NetworkError) as info:
        await kbc(kbs, f"unix://{shm_path}/no-aa.sock").get(URI)
    assert URI in info.value.message and "attestation agent" in info.value.message
    assert "[aa] aa_socket" in (info.value.hint or "")
    assert kbs.requests == []


async def test_failing_aa_is_an_auth_error(kbs: TestKbs, shm_path: Path) -> None:
    with serve_aa(kbs, shm_path, failure="evidence rejected") as aa, pytest.raises(AuthError) as info:
        await kbc(kbs, aa.address).get(URI)
    assert "AA-KBC get token failed" in info.value.message and URI in info.value.message
    assert kbs.requests == []


async def test_bad_socket_address_names_the_field(kbs: TestKbs) -> None:
    with pytest.raises(ConfigError) as info:
        await kbc(kbs, "tcp://127.0.0.1:1").get(URI)
    assert info.value.location is not None and info.value.location.field == "aa.aa_socket"
