"""Trust: extra roots added to the system roots, partial chains, no CN fallback, IP SANs, mTLS,
and TLS failures named for a human.  Servers are the FAKE registry with test certificates."""

from __future__ import annotations

import datetime
import ssl
import threading

import pytest
from cryptography import x509

from guestpull import tls
from guestpull.errors import ConfigError, NetworkError, TLSError
from guestpull_testkit.certs import make_ca_chain, make_client_cert, make_self_signed
from guestpull_testkit.fakeregistry import FakeRegistry

from distribution.helpers import client, server_context, transport

NOW = datetime.datetime.now(datetime.UTC)


async def _ping(fake: FakeRegistry, *, roots: list[str], host: str | None = None, scheme: str = "https", **kw) -> None:
    async with transport(extra_roots=roots, **kw) as t:
        await client(t, host or fake.host, scheme=scheme).ping()


@pytest.fixture
async def tls_fake(request):
    chain = getattr(request, "param", None) or make_ca_chain()
    fake = await FakeRegistry(ssl_context=server_context(chain)).start()
    try:
        yield fake, chain
    finally:
        await fake.stop()


def test_extra_roots_are_added_to_system_roots() -> None:
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    ctx = tls.new_ssl_context([make_ca_chain().ca_cert_pem.decode()])
    assert ctx.cert_store_stats()["x509_ca"] == system + 1
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert not ctx.hostname_checks_common_name
    assert ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN


def test_invalid_extra_root_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"cdh.toml: image.extra_root_certificates\[1\]"):
        tls.new_ssl_context([make_ca_chain().ca_cert_pem.decode(), "not a pem"], source="cdh.toml")
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match=r"extra_root_certificates\[0\]"):
        tls.new_ssl_context([broken])


async def test_trusted_with_extra_root(tls_fake) -> None:
    fake, chain = tls_fake
    await _ping(fake, roots=[chain.ca_cert_pem.decode()])
    assert fake.requests_to("/v2/")


async def test_unknown_issuer_names_the_issuer(tls_fake) -> None:
    fake, _ = tls_fake
    with pytest.raises(TLSError) as info:
        await _ping(fake, roots=[])
    message = str(info.value)
    assert "unknown issuer" in message
    assert '"guestpull test root CA"' in message  # the issuer of the peer's certificate
    assert "extra_root_certificates" in message
    assert not fake.requests  # no request was sent


async def test_intermediate_alone_is_an_anchor() -> None:
    chain = make_ca_chain(intermediate=True)
    intermediate = x509.load_pem_x509_certificates(chain.cert_pem)[1]
    from cryptography.hazmat.primitives.serialization import Encoding

    fake = await FakeRegistry(ssl_context=server_context(chain)).start()
    try:
        await _ping(fake, roots=[intermediate.public_bytes(Encoding.PEM).decode()])
    finally:
        await fake.stop()


@pytest.mark.parametrize("tls_fake", [make_ca_chain(["registry.example"])], indirect=True)
async def test_hostname_mismatch_lists_what_the_cert_covers(tls_fake) -> None:
    fake, chain = tls_fake
    with pytest.raises(TLSError) as info:
        await _ping(fake, roots=[chain.ca_cert_pem.decode()])
    message = str(info.value)
    assert "does not cover the IP address 127.0.0.1" in message
    assert "DNS:registry.example" in message


@pytest.mark.parametrize("tls_fake", [make_ca_chain(["127.0.0.2"])], indirect=True)
async def test_ip_registry_checked_against_ip_sans(tls_fake) -> None:
    fake, chain = tls_fake
    with pytest.raises(TLSError, match="IP:127.0.0.2"):
        await _ping(fake, roots=[chain.ca_cert_pem.decode()])


async def test_no_common_name_fallback() -> None:
    chain = make_self_signed(["localhost"], ca=False, san=False)
    fake = await FakeRegistry(ssl_context=server_context(chain)).start()
    try:
        with pytest.raises(TLSError, match="no subjectAltName"):
            await _ping(fake, roots=[chain.ca_cert_pem.decode()], host=f"localhost:{fake.port}")
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    "tls_fake",
    [make_ca_chain(not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1))],
    indirect=True,
)
async def test_expired(tls_fake) -> None:
    fake, chain = tls_fake
    with pytest.raises(TLSError, match="has expired"):
        await _ping(fake, roots=[chain.ca_cert_pem.decode()])


async def test_self_signed_not_trusted() -> None:
    chain = make_self_signed(ca=False)
    fake = await FakeRegistry(ssl_context=server_context(chain)).start()
    try:
        with pytest.raises(TLSError, match="self-signed and is not trusted"):
            await _ping(fake, roots=[])
        await _ping(fake, roots=[chain.ca_cert_pem.decode()])  # trusted once given
    finally:
        await fake.stop()


async def test_https_candidate_meets_plain_http_server() -> None:
    fake = await FakeRegistry().start()
    try:
        with pytest.raises(TLSError) as info:
            await _ping(fake, roots=[])
        assert "speaks plain HTTP" in str(info.value)
        assert "insecure = true" in str(info.value)
        assert not fake.requests  # nothing was sent over HTTP
    finally:
        await fake.stop()


async def test_http_candidate_meets_tls_server(tls_fake) -> None:
    fake, _ = tls_fake
    with pytest.raises(TLSError, match="speaks HTTPS"):
        await _ping(fake, roots=[], scheme="http")


async def test_mutual_tls_with_client_certificate() -> None:
    chain = make_ca_chain()
    client_chain = make_client_cert(chain, "guest-1")
    fake = await FakeRegistry(ssl_context=server_context(chain, client_ca=chain.ca_cert_pem)).start()
    try:
        roots = [chain.ca_cert_pem.decode()]
        # asyncio's TLS server hangs up without an alert, so no reason can be named here;
        # tests/test_pull_registry.py checks the message against the real registry.
        with pytest.raises((TLSError, NetworkError)):
            await _ping(fake, roots=roots)
        identity = tls.ClientCertificate(fake.host, client_chain.cert_pem, client_chain.key_pem)
        await _ping(fake, roots=roots, client_certificates=[identity])
        assert fake.requests_to("/v2/")
    finally:
        await fake.stop()


def test_client_certificate_key_mismatch_is_config_error() -> None:
    chain = make_ca_chain()
    other = make_client_cert(chain, "other")
    mine = make_client_cert(chain, "mine")
    identity = tls.ClientCertificate("r.local:5000", mine.cert_pem, other.key_pem)
    with pytest.raises(ConfigError, match="r.local:5000") as info:
        tls.new_ssl_context([], client_certificate=identity)
    assert other.key_pem.decode().splitlines()[1] not in str(info.value)


def test_client_certificate_only_for_its_registry() -> None:
    chain = make_ca_chain()
    mine = make_client_cert(chain, "mine")
    trust = tls.TrustConfig([], [tls.ClientCertificate("r.local:5000", mine.cert_pem, mine.key_pem)])
    assert trust.context_for("r.local:5000") is not trust.context_for("other.local:5000")
    assert trust.context_for("other.local:5000") is trust.context_for("r.local")


def test_the_shared_context_is_built_on_first_use_and_bad_roots_still_refuse_at_once() -> None:
    chain = make_ca_chain()
    trust = tls.TrustConfig([chain.ca_cert_pem.decode()], source="cdh.toml")
    assert trust._default is None  # nothing has asked for HTTPS yet: no system bundle loaded
    shared = trust.prepare()
    assert trust.context_for("any.local") is shared and trust.prepare() is shared
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert shared.cert_store_stats()["x509_ca"] == system + 1 and shared.verify_mode == ssl.CERT_REQUIRED
    # a bad extra root is still a ConfigError when the settings load, HTTPS or not
    with pytest.raises(ConfigError, match=r"cdh.toml: image.extra_root_certificates\[1\]"):
        tls.TrustConfig([chain.ca_cert_pem.decode(), "not a certificate"], source="cdh.toml")
    garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match=r"extra_root_certificates\[0\]: cannot load the certificate"):
        tls.TrustConfig([garbled])


def test_preloaded_system_roots_are_the_roots_a_context_would_load_and_serve_one_taker(monkeypatch) -> None:
    # cli/pull.py loads the system bundle in a thread while it imports (issue 15): the context
    # that takes it trusts exactly what one built on the spot trusts, plus the extra roots.
    chain = make_ca_chain()
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert system > 0
    built_in: list[str] = []
    create = ssl.create_default_context

    def counted(*args, **kwargs):
        built_in.append(threading.current_thread().name)
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    tls.preload_system_roots()
    tls.preload_system_roots()  # a second call starts no second load
    preloaded = tls.new_ssl_context([chain.ca_cert_pem.decode()])
    assert preloaded.cert_store_stats()["x509_ca"] == system + 1
    assert preloaded.verify_mode == ssl.CERT_REQUIRED and preloaded.check_hostname
    assert not preloaded.hostname_checks_common_name
    again = tls.new_ssl_context()  # nothing preloaded any more: built on the spot, not shared
    assert again is not preloaded and again.cert_store_stats()["x509_ca"] == system
    assert built_in == ["guestpull-system-roots", threading.current_thread().name]
