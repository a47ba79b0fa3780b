"""cc_kbc against the test KBS: token use and refresh, statuses, TLS trust, JWE faults, bounds.

The KBS encrypts with joserfc, the client decrypts with jwcrypto (see guestpull_testkit.kbs).
"""

from __future__ import annotations

import asyncio
import logging
import pytest

from guestpull.errors import (
    AuthError,
    Category,
    ConfigError,
    DigestError,
    GuestpullError,
    NetworkError,
    NotFoundError,
    PullTimeoutError,
    TLSError,
    UnsupportedError,
)
from guestpull.kbs import KbsSettings
from guestpull.resources import ResourceResolver, parse_kbs_uri
from guestpull_testkit import free_port
from guestpull_testkit.certs import CertChain
from guestpull_testkit.kbs import TestAttestationAgent, TestKbs
from kbs.conftest import SECRET
from kbs.helpers import InProcessTokenProvider, kbc_for

URI = "kbs:///default/credential/test"


async def get(kbc: object, uri: str = URI) -> bytes:
    return await ResourceResolver(kbc=kbc).get(uri)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p521", "rsa"])
async def test_resource_is_fetched_and_decrypted(kbs: TestKbs, key_type: str) -> None:
    aa = TestAttestationAgent(kbs, key_type=key_type)  # type: ignore[arg-type]
    kbc = kbc_for(kbs, aa)
    assert await get(kbc) == SECRET
    assert [(r.path, r.had_token, r.status) for r in kbs.requests] == [
        ("default/credential/test", True, 200)]
    assert await get(kbc, "kbs:///default/key/k") == b"k"
    assert aa.calls == 1, "the token is reused while it is valid"


async def test_resource_is_cached_in_memory_for_the_ttl(kbs: TestKbs) -> None:
    aa = TestAttestationAgent(kbs)
    cached = kbc_for(kbs, aa)
    await get(cached)
    await get(cached)
    assert len(kbs.requests) == 1
    uncached = kbc_for(kbs, aa, cache_ttl=0)
    await get(uncached)
    await get(uncached)
    assert len(kbs.requests) == 3


@pytest.mark.filterwarnings("ignore::UserWarning")
async def test_rsa1_5_is_accepted_with_an_rsa_key_as_upstream(kbs: TestKbs) -> None:
    kbs.rsa_alg = "RSA1_5"
    assert await get(kbc_for(kbs, TestAttestationAgent(kbs, key_type="rsa"))) == SECRET


async def test_expired_token_is_refreshed_before_use(kbs: TestKbs) -> None:
    # exp within the refresh margin (5 s): every use needs a new token, and none meets a 401.
    # 4 s, not less: the test KBS itself refuses an expired token, and a loaded machine can
    # take over a second between issuing the token and using it.
    aa = TestAttestationAgent(kbs, ttl=4)
    kbc = kbc_for(kbs, aa, cache_ttl=0)
    assert await get(kbc) == SECRET
    assert await get(kbc) == SECRET
    assert aa.calls == 2
    assert [r.status for r in kbs.requests] == [200, 200]


async def test_token_refused_with_401_is_refreshed(kbs: TestKbs) -> None:
    aa = TestAttestationAgent(kbs)
    kbc = kbc_for(kbs, aa, cache_ttl=0)
    await get(kbc)
    kbs.revoke_tokens()
    assert await get(kbc) == SECRET
    assert [r.status for r in kbs.requests] == [200, 401, 200]
    assert aa.calls == 2


@pytest.mark.parametrize("path", ["default/credential/test", "default/credential/absent"])
async def test_401_three_times_is_an_auth_error_naming_the_uri(kbs: TestKbs, path: str) -> None:
    kbs.denied.add("default/credential/test")
    aa = TestAttestationAgent(kbs)
    uri = f"kbs:///{path}"
    with pytest.raises(AuthError) as info:
        await get(kbc_for(kbs, aa), uri)
    message = str(info.value)
    assert uri in message and "not found or not released to this guest" in message
    assert f"access to resource {path} denied by policy" in message  # the KBS's detail
    assert [r.status for r in kbs.requests] == [401, 401, 401]
    assert aa.calls == 3, "a new token before each retry"
    assert info.value.category == Category.AUTH


async def test_404_is_not_found(kbs: TestKbs) -> None:
    with pytest.raises(NotFoundError, match=r"kbs\+other:///a/b/c not found.*plugin other not found"):
        await get(kbc_for(kbs, TestAttestationAgent(kbs)), "kbs+other:///a/b/c")
    assert [r.status for r in kbs.requests] == [404]


async def test_kbs_cert_is_trusted(https_kbs: TestKbs) -> None:
    assert await get(kbc_for(https_kbs, TestAttestationAgent(https_kbs))) == SECRET


async def test_kbs_without_its_cert_is_a_tls_error(https_kbs: TestKbs, ca_chain: CertChain) -> None:
    aa = TestAttestationAgent(https_kbs)
    for other in (None, ca_chain.ca_cert_pem.decode()):
        with pytest.raises(TLSError) as info:
            await get(kbc_for(https_kbs, aa, kbs_cert=other))
        assert "unknown issuer" in str(info.value) and "kbs_cert" in (info.value.hint or "")
    assert https_kbs.requests == []


async def test_a_bad_kbs_cert_names_the_field(https_kbs: TestKbs) -> None:
    kbc = kbc_for(https_kbs, TestAttestationAgent(https_kbs), kbs_cert="not a certificate")
    with pytest.raises(ConfigError) as info:
        await get(kbc)
    assert info.value.location is not None and info.value.location.field == "kbc.kbs_cert"


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa"])
@pytest.mark.parametrize(("fault", "error", "fragment"), [
    ("wrong-tag", DigestError, f"cannot decrypt the KBS response for {URI} ({{alg}}, A256GCM): "
                               "the authentication tag does not verify"),
    ("wrong-aad", DigestError, f"cannot decrypt the KBS response for {URI} ({{alg}}, A256GCM): "
                               "the authentication tag does not verify"),
    ("wrong-key", DigestError, f"cannot decrypt the KBS response for {URI} ({{alg}}, A256GCM): "
                               "the content key does not unwrap with this guest's TEE key"),
    ("not-jwe", DigestError, "not a flattened JWE"),
])
async def test_bad_jwe_is_a_clear_decryption_error(
    kbs: TestKbs, key_type: str, fault: str, error: type[GuestpullError], fragment: str,
) -> None:
    kbs.fault = fault  # type: ignore[assignment]
    with pytest.raises(error) as info:
        await get(kbc_for(kbs, TestAttestationAgent(kbs, key_type=key_type)))  # type: ignore[arg-type]
    alg = "RSA-OAEP-256" if key_type == "rsa" else "ECDH-ES+A256KW"
    assert fragment.format(alg=alg) in str(info.value)
    assert b"c2VjcmV0" not in str(info.value).encode()


@pytest.mark.parametrize(("fault", "fragment"), [
    ("oversize", "is 17825794 bytes; resources are limited to 16 MiB"),
    ("oversize-chunked", "is larger than 16 MiB"),
])
async def test_oversized_response_is_refused(kbs: TestKbs, fault: str, fragment: str) -> None:
    kbs.fault = fault  # type: ignore[assignment]
    with pytest.raises(UnsupportedError, match=fragment):
        await get(kbc_for(kbs, TestAttestationAgent(kbs)))


async def test_slow_kbs_times_out(kbs: TestKbs) -> None:
    kbs.fault, kbs.delay = "slow", 5.0
    with pytest.raises(PullTimeoutError, match="did not answer .* within 0.3 s"):
        await get(kbc_for(kbs, TestAttestationAgent(kbs), timeout=0.3))


async def test_unreachable_kbs_is_a_network_error(kbs: TestKbs) -> None:
    kbc = kbc_for(kbs, TestAttestationAgent(kbs))
    kbc.settings = KbsSettings(f"http://127.0.0.1:{free_port()}", retry_delay=0.01)
    with pytest.raises(NetworkError, match="cannot connect to the KBS at http://127.0.0.1"):
        await get(kbc)


async def test_failing_token_provider_stops_the_fetch(kbs: TestKbs) -> None:
    class Refusing(InProcessTokenProvider):
        async def get_token(self):  # type: ignore[no-untyped-def]
            raise AuthError("the attestation agent could not get a KBS token")

    kbc = kbc_for(kbs, TestAttestationAgent(kbs))
    kbc._provider = Refusing(TestAttestationAgent(kbs))
    with pytest.raises(AuthError, match="could not get a KBS token"):
        await get(kbc)
    assert kbs.requests == []


async def test_no_secret_in_logs(kbs: TestKbs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    aa = TestAttestationAgent(kbs)
    kbc = kbc_for(kbs, aa, cache_ttl=0)
    await get(kbc)
    token = kbc._credentials[0].text  # type: ignore[index]
    kbs.revoke_tokens()
    await get(kbc)
    assert "401" in caplog.text  # the refresh is logged...
    assert token not in caplog.text and SECRET.decode() not in caplog.text  # ...without secrets
    assert token not in repr(kbc._credentials)


def test_request_path_keeps_plugin_and_query() -> None:
    assert parse_kbs_uri("kbs:///a/b/c?x=1").request_path == "/kbs/v0/resource/a/b/c?x=1"
    assert parse_kbs_uri("kbs+pkcs11://ignored:1/k/1").request_path == "/kbs/v0/pkcs11/k/1"


@pytest.mark.parametrize(("url", "fragment"), [
    ("", "empty"),
    ("kbs.local:8080", "must start with https://"),
    ("ftp://kbs.local", "must start with https://"),
    ("https://", "no host"),
    ("https://u:p@kbs.local", "user-info"),
    ("https://kbs.local/?x=1", "query or fragment"),
    ("https://kbs.local:99999", "not a URL"),
    ("https://kbś.local", "not a URL"),  # urlsplit takes these; the request's URL would not
    ("https://kbs.lo\tcal", "not a URL"),
    ("https://kbs local:8080", "not a URL"),
])
def test_bad_kbs_url(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        KbsSettings(url, source="cdh.toml")
    assert info.value.location is not None and info.value.location.field == "kbc.url"


def test_kbs_url_trailing_slash_is_trimmed() -> None:
    assert KbsSettings("https://kbs.local:8080/prefix//").url == "https://kbs.local:8080/prefix"


async def test_concurrent_fetches_share_one_token(kbs: TestKbs) -> None:
    aa = TestAttestationAgent(kbs)
    kbc = kbc_for(kbs, aa, cache_ttl=0)
    results = await asyncio.gather(*(get(kbc) for _ in range(5)))
    assert results == [SECRET] * 5 and aa.calls == 1
