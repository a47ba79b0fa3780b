"""The registry, token server and proxy fixtures work against real clients (urllib, skopeo)."""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from guestpull_testkit import TEST_PASSWORD, TEST_USER, HarnessError, ManagedProcess
from guestpull_testkit.certs import CertChain, make_ca_chain
from guestpull_testkit.proxy import ProxyProcess
from guestpull_testkit.registry import RegistryProcess, start_registry
from guestpull_testkit.tokenserver import TokenServer

pytestmark = pytest.mark.registry


def _opener(context: ssl.SSLContext | None = None, proxy: str | None = None) -> urllib.request.OpenerDirector:
    proxies = {"http": proxy, "https": proxy} if proxy else {}
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler(proxies)]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _get(url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
         proxy: str | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _opener(context, proxy).open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer_params(challenge: str) -> dict[str, str]:
    scheme, _, params = challenge.partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


# --- plain registries --------------------------------------------------------------------------


def test_https_registry_answers_v2_with_its_ca(https_registry: RegistryProcess) -> None:
    assert https_registry.url == f"https://{https_registry.host}"
    assert https_registry.host.startswith("127.0.0.1:")
    status, headers, _ = _get(f"{https_registry.url}/v2/", context=https_registry.ssl_context())
    assert status == 200
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_https_registry_is_refused_without_its_ca(https_registry: RegistryProcess) -> None:
    other_ca = ssl.create_default_context(cadata=make_ca_chain().ca_cert_pem.decode())
    with pytest.raises(urllib.error.URLError) as info:
        _get(f"{https_registry.url}/v2/", context=other_ca)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_https_registry_ca_file_is_written(https_registry: RegistryProcess, ca_chain: CertChain) -> None:
    assert https_registry.ca_path is not None
    assert https_registry.ca_path.read_bytes() == ca_chain.ca_cert_pem
    context = ssl.create_default_context(cafile=str(https_registry.ca_path))
    assert _get(f"{https_registry.url}/v2/", context=context)[0] == 200


def test_http_registry_answers_plain_http(http_registry: RegistryProcess) -> None:
    assert http_registry.url == f"http://{http_registry.host}"
    assert http_registry.ssl_context() is None and http_registry.ca_path is None
    assert _get(f"{http_registry.url}/v2/")[0] == 200


# --- basic auth ------------------------------------------------------------------------------


def test_basic_auth_registry(basic_auth_registry: RegistryProcess) -> None:
    url, ctx = f"{basic_auth_registry.url}/v2/", basic_auth_registry.ssl_context()
    status, headers, _ = _get(url, context=ctx)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert basic_auth_registry.credentials == (TEST_USER, TEST_PASSWORD)
    assert _get(url, context=ctx, headers=_basic(TEST_USER, TEST_PASSWORD))[0] == 200
    assert _get(url, context=ctx, headers=_basic(TEST_USER, "wrong"))[0] == 401
    assert TEST_PASSWORD.encode() not in (basic_auth_registry.root / "htpasswd").read_bytes()


# --- token auth -------------------------------------------------------------------------------


def test_token_flow_end_to_end(token_registry: RegistryProcess, repo_name: str) -> None:
    ctx = token_registry.ssl_context()
    url = f"{token_registry.url}/v2/{repo_name}/tags/list"
    status, headers, _ = _get(url, context=ctx)
    assert status == 401
    challenge = _bearer_params(headers["WWW-Authenticate"])
    assert challenge["realm"] == token_registry.token.realm  # type: ignore[union-attr]
    assert challenge["scope"] == f"repository:{repo_name}:pull"

    token_url = f"{challenge['realm']}?service={challenge['service']}&scope={challenge['scope']}"
    status, _, body = _get(token_url, context=ctx, headers=_basic(TEST_USER, TEST_PASSWORD))
    assert status == 200
    token = json.loads(body)["token"]

    status, _, body = _get(url, context=ctx, headers={"Authorization": f"Bearer {token}"})
    # authorized: the registry now answers about the repository itself (nothing pushed yet)
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"

    record = token_registry.token.requests[-1]  # type: ignore[union-attr]
    assert record.authorized and record.user == TEST_USER
    assert record.scopes == [f"repository:{repo_name}:pull"]
    assert record.granted == [{"type": "repository", "name": repo_name, "actions": ["pull"]}]


def test_token_server_refuses_wrong_credentials(token_registry: RegistryProcess) -> None:
    token_server = token_registry.token
    assert token_server is not None
    ctx = token_registry.ssl_context()
    url = f"{token_server.realm}?service={token_server.service}&scope=repository:x:pull"
    assert _get(url, context=ctx, headers=_basic(TEST_USER, "nope"))[0] == 401
    assert _get(url, context=ctx)[0] == 401
    assert [r.authorized for r in token_server.requests[-2:]] == [False, False]


def test_registry_refuses_a_token_for_another_repository(token_registry: RegistryProcess) -> None:
    token_server = token_registry.token
    assert token_server is not None
    token = token_server.issue(TEST_USER, [{"type": "repository", "name": "other", "actions": ["pull"]}])
    status, _, _ = _get(f"{token_registry.url}/v2/mine/tags/list", context=token_registry.ssl_context(),
                        headers={"Authorization": f"Bearer {token}"})
    assert status == 401


def test_registry_refuses_a_token_from_an_untrusted_signer(token_registry: RegistryProcess) -> None:
    with TokenServer(service=token_registry.token.service,  # type: ignore[union-attr]
                     issuer=token_registry.token.issuer) as impostor:  # type: ignore[union-attr]
        token = impostor.issue(TEST_USER, [{"type": "repository", "name": "x", "actions": ["pull"]}])
    status, _, _ = _get(f"{token_registry.url}/v2/x/tags/list", context=token_registry.ssl_context(),
                        headers={"Authorization": f"Bearer {token}"})
    assert status == 401


def test_token_server_post_form() -> None:
    with TokenServer("bob", "pw") as server:
        assert server.realm.startswith("http://127.0.0.1:")
        form = f"grant_type=password&username=bob&password=pw&service={server.service}&scope=repository:a/b:push".encode()
        request = urllib.request.Request(server.realm, data=form, method="POST")
        with _opener().open(request, timeout=10) as response:
            token = json.load(response)["access_token"]
    header, claims, _ = token.split(".")
    claims_json = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert claims_json["access"] == [{"type": "repository", "name": "a/b", "actions": ["push"]}]
    assert claims_json["aud"] == server.service and claims_json["iss"] == server.issuer


def test_token_server_signature_verifies_with_pyjwt() -> None:
    jwt = pytest.importorskip("jwt")
    from cryptography import x509

    with TokenServer() as server:
        token = server.issue("alice", [])
    header = jwt.get_unverified_header(token)
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert cert.issuer == x509.load_pem_x509_certificate(server.rootcert_pem).subject
    claims = jwt.decode(token, cert.public_key(), algorithms=["ES256"], audience=server.service)
    assert claims["sub"] == "alice"


# --- mTLS ----------------------------------------------------------------------------------------


def test_mtls_registry_needs_a_client_cert(
    mtls_registry: RegistryProcess, mtls_client_cert: CertChain, shm_path: Path
) -> None:
    url = f"{mtls_registry.url}/v2/"
    # TLS 1.3 reports the missing certificate after the handshake, as an SSLError on read.
    with pytest.raises((urllib.error.URLError, ssl.SSLError)):
        _get(url, context=mtls_registry.ssl_context())
    paths = mtls_client_cert.write(shm_path)
    ctx = mtls_registry.ssl_context()
    assert ctx is not None
    ctx.load_cert_chain(paths.cert, paths.key)
    assert _get(url, context=ctx)[0] == 200


# --- proxy -----------------------------------------------------------------------------------------


def test_proxy_logs_connect_and_absolute_requests(
    forward_proxy: ProxyProcess, https_registry: RegistryProcess, http_registry: RegistryProcess
) -> None:
    assert forward_proxy.url == f"http://{forward_proxy.host}"
    status, _, _ = _get(f"{https_registry.url}/v2/", context=https_registry.ssl_context(),
                        proxy=forward_proxy.url)
    assert status == 200
    assert _get(f"{http_registry.url}/v2/", proxy=forward_proxy.url)[0] == 200
    requests = forward_proxy.requests()
    assert f"CONNECT {https_registry.host} HTTP/1.0" in requests or any(
        r.startswith(f"CONNECT {https_registry.host} ") for r in requests)
    assert any(r.startswith(f"GET http://{http_registry.host}/v2/ ") for r in requests)
    assert https_registry.host in forward_proxy.log_text()


# --- lifecycle and errors ----------------------------------------------------------------------------


def test_registry_stops_and_frees_its_port(shm_path: Path) -> None:
    registry = start_registry(shm_path / "r")
    with registry:
        assert _get(f"{registry.url}/v2/")[0] == 200
    assert not registry.process.running()
    with pytest.raises(urllib.error.URLError):
        _get(f"{registry.url}/v2/")
    registry.stop()  # idempotent


def test_registry_start_failure_shows_the_log(shm_path: Path) -> None:
    good, other = make_ca_chain(), make_ca_chain()
    mismatched = CertChain(good.ca_cert_pem, good.ca_key_pem, good.cert_pem, other.key_pem)
    with pytest.raises(HarnessError) as info:
        start_registry(shm_path / "bad", tls=mismatched)
    assert "registry.log" in str(info.value)
    assert "private key does not match public key" in str(info.value)


def test_missing_binary_names_the_package(shm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(shm_path))
    with pytest.raises(HarnessError) as info:
        start_registry(shm_path / "r")
    assert "docker-registry" in str(info.value) and "apt-get install docker-registry" in str(info.value)


def test_managed_process_stops_its_group_and_captures_output(shm_path: Path) -> None:
    log = shm_path / "child.log"
    with ManagedProcess(["sh", "-c", "echo started; sleep 30 & wait"], log_path=log) as process:
        assert process.running()
        from guestpull_testkit import wait_for
        assert wait_for(lambda: "started" in log.read_text(), timeout=5)
    assert not process.running()
    assert process.log_tail() == "started"
