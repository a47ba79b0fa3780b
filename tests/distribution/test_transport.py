"""Transport pieces: no_proxy matching, Retry-After, backoff, redirects, and auth parsing."""

from __future__ import annotations

import base64
import json
import time

import pytest
from guestpull.url import URL

from guestpull.distribution import auth
from guestpull.distribution.transport import (
    ProxySettings,
    RetryPolicy,
    _retry_after,
    authority,
    no_proxy_matches,
)
from guestpull.errors import AuthError, TLSError
from guestpull_testkit.fakeregistry import Fault, FakeRegistry

from guestpull_testkit.certs import make_ca_chain

from .helpers import client, server_context, transport


@pytest.mark.parametrize(
    ("host", "port", "entries", "expected"),
    [
        ("registry.local", 5000, ["*"], True),
        ("registry.local", 5000, ["registry.local"], True),
        ("a.b.registry.local", 5000, [".registry.local"], True),
        ("a.registry.local", 5000, ["registry.local"], True),
        ("evilregistry.local", 5000, ["registry.local"], False),
        ("registry.local", 5000, ["registry.local:5000"], True),
        ("registry.local", 443, ["registry.local:5000"], False),
        ("10.1.2.3", None, ["10.0.0.0/8"], True),
        ("11.1.2.3", None, ["10.0.0.0/8"], False),
        ("127.0.0.1", 5000, ["127.0.0.1"], True),
        ("::1", 5000, ["::1"], True),
        ("::1", 5000, ["[::1]:5000"], True),
        ("fd00::5", None, ["fd00::/8"], True),
        ("127.0.0.1", None, ["localhost"], False),
        ("registry.local", None, ["", " "], False),
    ],
)
def test_no_proxy(host: str, port: int | None, entries: list[str], expected: bool) -> None:
    assert no_proxy_matches(host, port, entries) is expected


def test_proxy_chosen_by_scheme() -> None:
    class Cfg:
        https_proxy = "http://proxy:3128"
        http_proxy = "http://plainproxy:3128"
        no_proxy = "internal.local, 10.0.0.0/8"

    proxies = ProxySettings.from_config(Cfg())
    assert proxies.proxy_for(URL("https://r.example/v2/")) == "http://proxy:3128"
    assert proxies.proxy_for(URL("http://r.example/v2/")) == "http://plainproxy:3128"
    assert proxies.proxy_for(URL("https://x.internal.local/v2/")) is None
    assert proxies.proxy_for(URL("https://10.2.3.4:5000/v2/")) is None
    assert ProxySettings.from_config(None).proxy_for(URL("https://r.example/")) is None


def test_retry_after_and_backoff() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (_retry_after(date) or 0) <= 31
    policy = RetryPolicy(attempts=5, first_delay=0.5, max_delay=3)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.delay(1, retry_after=100) == 3  # capped
    assert policy.delay(1, retry_after=0) == 0


def test_authority_as_references_write_it() -> None:
    assert authority(URL("https://127.0.0.1:5000/v2/")) == "127.0.0.1:5000"
    assert authority(URL("https://[::1]:5000/v2/")) == "[::1]:5000"
    assert authority(URL("https://registry.local/v2/")) == "registry.local"


async def test_redirect_from_https_to_http_refused() -> None:
    chain = make_ca_chain()
    plain = await FakeRegistry().start()
    secure = await FakeRegistry(ssl_context=server_context(chain)).start()
    try:
        secure.inject("/v2/", Fault("redirect", location=f"{plain.url}/v2/"))
        async with transport(extra_roots=[chain.ca_cert_pem.decode()]) as t:
            with pytest.raises(TLSError, match="leave HTTPS for plain HTTP"):
                await client(t, secure.host, scheme="https").ping()
        assert not plain.requests
    finally:
        await plain.stop()
        await secure.stop()


# --- auth parsing ----------------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
    (challenge,) = auth.parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull",
    }


def test_parse_several_challenges_prefers_bearer() -> None:
    challenges = auth.parse_challenges('Basic realm="r1", Bearer realm="https://t/x",service="s"')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    picked = auth.pick_challenge(challenges)
    assert picked is not None and picked.realm == "https://t/x"
    assert auth.pick_challenge(auth.parse_challenges('Negotiate abc')) is None


def test_token_url_keeps_realm_query() -> None:
    challenge = auth.Challenge("bearer", {"realm": "https://t.example/token?x=1", "service": "svc"})
    url = auth.token_url(challenge, "repository:a:pull")
    assert url.query["x"] == "1" and url.query["service"] == "svc"
    assert url.query["scope"] == "repository:a:pull"
    with pytest.raises(AuthError, match="realm"):
        auth.token_url(auth.Challenge("bearer", {"realm": "not-a-url"}), "s")


def _jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def test_token_lifetime_sources() -> None:
    wall = 1_000_000.0
    body = json.dumps({"token": "opaque", "expires_in": 120}).encode()
    assert auth.token_from_response(body, now=10, wall_now=wall).expires_at == 130
    body = json.dumps({"access_token": _jwt({"exp": wall + 300})}).encode()
    assert auth.token_from_response(body, now=10, wall_now=wall).expires_at == 310
    body = json.dumps({"token": "opaque"}).encode()
    assert auth.token_from_response(body, now=10, wall_now=wall).expires_at == 70
    body = json.dumps({"token": "t1", "access_token": "t2"}).encode()
    assert auth.token_from_response(body, now=0).value == "t1"
    with pytest.raises(AuthError):
        auth.token_from_response(b"{}", now=0)


def test_token_cache_expiry() -> None:
    now = [100.0]
    cache = auth.TokenCache(clock=lambda: now[0])
    cache.put("r", "a/b", "repository:a/b:pull", auth.Token("t", expires_at=200))
    assert cache.get("r", "a/b", "repository:a/b:pull") is not None
    assert cache.get("r", "a/c", "repository:a/c:pull") is None
    now[0] = 196.0  # inside the renewal margin
    assert cache.get("r", "a/b", "repository:a/b:pull") is None


def test_token_repr_hides_value() -> None:
    token = auth.Token("sekrit-token", expires_at=1)
    assert "sekrit-token" not in repr(token)
