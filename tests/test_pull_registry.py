"""``guestpull pull`` against the real Debian docker-registry (HTTPS, HTTP, Basic, token, mTLS)
and tinyproxy: the behaviours issue 3 says must be shown."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from distribution.helpers import server_context
from support.cli import write_auth_json
from support.config import ClientCert, Mirror, Rule, cdh_toml, write_initdata
from guestpull.cli import main
from guestpull.errors import EXIT_CODES, Category
from guestpull.image.store import open_store
from guestpull_testkit import TEST_PASSWORD
from guestpull_testkit.certs import make_ca_chain
from guestpull_testkit.images import File, ImageSpec, LayerSpec, LayoutDigests, push, write_layout

pytestmark = pytest.mark.registry


# --- helpers ---------------------------------------------------------------------------------


def spec(name: str = "img", *, arch: str = "amd64", variant: str | None = None) -> ImageSpec:
    return ImageSpec(
        [
            LayerSpec([File(f"{name}/a.txt", f"{name} {arch} {variant}".encode())]),
            LayerSpec([File(f"{name}/b.bin", bytes(range(256)) * 64)], compression="zstd"),
        ],
        architecture=arch,
        variant=variant,
    )


def push_image(tmp: Path, registry, repo: str, specs: ImageSpec | list[ImageSpec], tag: str = "v1") -> LayoutDigests:
    layout = tmp / "layout"
    multi = isinstance(specs, list)
    digests = write_layout(layout, specs, tag, index=multi)
    push(
        layout, tag, f"{registry.host}/{repo}:{tag}",
        tls_ca=registry.ca_path, tls_verify=registry.tls is not None,
        creds=registry.credentials, all_platforms=multi,
    )
    return digests


def pull(tmp: Path, image: str, cdh: str, *extra: str, initdata: bool = False):
    if initdata:
        args = ["--initdata", str(write_initdata(tmp / "initdata.toml", cdh))]
    else:
        (tmp / "cdh.toml").write_text(cdh)
        args = ["--config", str(tmp / "cdh.toml")]
    result = CliRunner().invoke(
        main, ["pull", image, *args, "--work-dir", str(tmp / "work"), "--json", *extra]
    )
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


def assert_store_verified(work: Path, digests: list[str]) -> None:
    store = open_store(work)
    for digest in digests:
        algorithm, hexpart = digest.split(":")
        assert hashlib.new(algorithm, store.content.read(digest)).hexdigest() == hexpart


# --- 1, 2: HTTPS and trust -------------------------------------------------------------------


def test_https_with_extra_root_from_initdata(https_registry, ca_chain, repo_name, shm_path) -> None:
    pushed = push_image(shm_path, https_registry, repo_name, spec())
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem]), initdata=True)
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest
    assert out["result"]["scheme"] == "https"
    assert_store_verified(shm_path / "work", [pushed.manifest_digest, pushed.config_digest, *pushed.layer_digests])


def test_https_without_ca_is_unknown_issuer(https_registry, repo_name, shm_path) -> None:
    push_image(shm_path, https_registry, repo_name, spec())
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh_toml())
    assert result.exit_code == EXIT_CODES[Category.TLS], result.output
    attempts = out["error"]["attempts"]
    assert [a["scheme"] for a in attempts] == ["https"]  # no HTTP attempt
    message = attempts[0]["error"]["message"]
    assert "unknown issuer" in message and "guestpull test root CA" in message


# --- 3: HTTP ---------------------------------------------------------------------------------


def test_http_registry_with_insecure_rule(http_registry, repo_name, shm_path) -> None:
    pushed = push_image(shm_path, http_registry, repo_name, spec())
    cdh = cdh_toml(rules=[Rule(http_registry.host, insecure=True)])
    result, out = pull(shm_path, f"{http_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == 0, result.output
    assert out["result"]["scheme"] == "http"
    assert_store_verified(shm_path / "work", [pushed.manifest_digest, pushed.config_digest, *pushed.layer_digests])


def test_http_registry_without_rule_says_mark_insecure(http_registry, repo_name, shm_path) -> None:
    push_image(shm_path, http_registry, repo_name, spec())
    log_before = http_registry.log_path.read_text(errors="replace")
    result, out = pull(shm_path, f"{http_registry.host}/{repo_name}:v1", cdh_toml())
    assert result.exit_code == EXIT_CODES[Category.TLS], result.output
    error = out["error"]["attempts"][0]["error"]
    assert "speaks plain HTTP" in error["message"] and "insecure = true" in error["hint"]
    # Nothing was fetched over HTTP: the registry logged no new request for the repository.
    log_after = http_registry.log_path.read_text(errors="replace")[len(log_before):]
    assert repo_name not in log_after
    assert not (shm_path / "work" / "content" / "sha256").exists() or not any((shm_path / "work" / "content" / "sha256").iterdir())


def test_insecure_rule_on_https_registry_says_it_speaks_tls(https_registry, repo_name, shm_path) -> None:
    cdh = cdh_toml(rules=[Rule(https_registry.host, insecure=True)])
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == EXIT_CODES[Category.TLS], result.output
    assert "speaks HTTPS" in out["error"]["attempts"][0]["error"]["message"]


# --- 4: mirrors ------------------------------------------------------------------------------


def test_mirror_down_falls_back_to_original(https_registry, ca_chain, repo_name, shm_path) -> None:
    pushed = push_image(shm_path, https_registry, repo_name, spec())
    dead = "127.0.0.1:9"  # nothing listens on the discard port here
    cdh = cdh_toml(roots=[ca_chain.ca_cert_pem], rules=[Rule(https_registry.host, mirrors=(Mirror(dead),))])
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest
    failed = out["result"]["failed_attempts"]
    assert [(a["reference"], a["kind"]) for a in failed] == [(f"{dead}/{repo_name}:v1", "mirror")]
    assert failed[0]["error"]["category"] == "network"


def test_mirror_and_original_both_fail_lists_both(https_registry, repo_name, shm_path) -> None:
    dead = "127.0.0.1:9"
    cdh = cdh_toml(rules=[Rule(https_registry.host, mirrors=(Mirror(dead),))])
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == EXIT_CODES[Category.TLS], result.output
    attempts = out["error"]["attempts"]
    assert [(a["reference"], a["kind"], a["scheme"], a["error"]["category"]) for a in attempts] == [
        (f"{dead}/{repo_name}:v1", "mirror", "https", "network"),
        (f"{https_registry.host}/{repo_name}:v1", "original", "https", "tls"),
    ]
    plain = CliRunner().invoke(main, ["pull", f"{https_registry.host}/{repo_name}:v1", "--config", str(shm_path / "cdh.toml"), "--work-dir", str(shm_path / "w2")])
    assert dead in plain.stderr and https_registry.host in plain.stderr


def _pull_in(tmp: Path, name: str, image: str, cdh: str):
    where = tmp / name
    where.mkdir()
    return pull(where, image, cdh)


def _mirrored(primary, mirror, ca_chain, pull_from_mirror: str) -> str:
    limited = Mirror(mirror.host, insecure=True, pull_from_mirror=pull_from_mirror)
    return cdh_toml(roots=[ca_chain.ca_cert_pem], rules=[Rule(primary.host, mirrors=(limited,))])


def test_tag_pull_never_asks_a_digest_only_mirror(https_registry, http_registry, ca_chain, repo_name, shm_path) -> None:
    # The mirror's tag points at another image (stale, or hostile): only the primary may say
    # what v1 is.  The mirror holds the primary's image too, under another tag.
    (shm_path / "p").mkdir()
    (shm_path / "m").mkdir()
    (shm_path / "m2").mkdir()
    primary = push_image(shm_path / "p", https_registry, repo_name, spec("primary"))
    other = push_image(shm_path / "m", http_registry, repo_name, spec("other"))
    push_image(shm_path / "m2", http_registry, repo_name, spec("primary"), tag="copy")
    image = f"{https_registry.host}/{repo_name}:v1"

    log_before = http_registry.log_path.read_text(errors="replace")
    result, out = _pull_in(shm_path, "tag", image, _mirrored(https_registry, http_registry, ca_chain, "digest-only"))
    assert result.exit_code == 0, result.output
    served = out["result"]
    assert (served["reference"], served["kind"], served["manifest_digest"]) == (image, "original", primary.manifest_digest)
    assert served["failed_attempts"] == []
    assert repo_name not in http_registry.log_path.read_text(errors="replace")[len(log_before):]

    # By digest, the same mirror serves the pull (the digest is checked, whoever serves it).
    pinned = f"{https_registry.host}/{repo_name}@{primary.manifest_digest}"
    result, out = _pull_in(shm_path, "digest", pinned, _mirrored(https_registry, http_registry, ca_chain, "digest-only"))
    assert result.exit_code == 0, result.output
    assert (out["result"]["reference"], out["result"]["kind"]) == (
        f"{http_registry.host}/{repo_name}@{primary.manifest_digest}", "mirror")

    # The same configuration with "all" (what upstream does with any value): the mirror's v1.
    result, out = _pull_in(shm_path, "all", image, _mirrored(https_registry, http_registry, ca_chain, "all"))
    assert result.exit_code == 0, result.output
    assert (out["result"]["kind"], out["result"]["manifest_digest"]) == ("mirror", other.manifest_digest)


def test_digest_pull_skips_a_tag_only_mirror(https_registry, http_registry, ca_chain, repo_name, shm_path) -> None:
    (shm_path / "p").mkdir()
    (shm_path / "m").mkdir()
    primary = push_image(shm_path / "p", https_registry, repo_name, spec("primary"))
    push_image(shm_path / "m", http_registry, repo_name, spec("primary"))
    pinned = f"{https_registry.host}/{repo_name}@{primary.manifest_digest}"
    cdh = _mirrored(https_registry, http_registry, ca_chain, "tag-only")
    result, out = _pull_in(shm_path, "digest", pinned, cdh)
    assert result.exit_code == 0, result.output
    assert (out["result"]["reference"], out["result"]["kind"], out["result"]["failed_attempts"]) == (pinned, "original", [])
    result, out = _pull_in(shm_path, "tag", f"{https_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == 0, result.output
    assert (out["result"]["kind"], out["result"]["manifest_digest"]) == ("mirror", primary.manifest_digest)


def test_a_mirror_pull_is_judged_by_the_name_asked_for(https_registry, http_registry, ca_chain, repo_name, shm_path) -> None:
    (shm_path / "p").mkdir()
    (shm_path / "m").mkdir()
    primary = push_image(shm_path / "p", https_registry, repo_name, spec("primary"))
    push_image(shm_path / "m", http_registry, repo_name, spec("primary"))
    pinned = f"{https_registry.host}/{repo_name}@{primary.manifest_digest}"
    limited = Mirror(http_registry.host, insecure=True, pull_from_mirror="digest-only")

    def rejecting(scope: str) -> str:
        policy = shm_path / f"policy-{len(list(shm_path.glob('policy-*')))}.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                                      "transports": {"docker": {scope: [{"type": "reject"}]}}}))
        return cdh_toml(roots=[ca_chain.ca_cert_pem], policy_file=policy,
                        rules=[Rule(https_registry.host, mirrors=(limited,))])

    # A scope for the mirror's name does not apply: the mirror served it, the primary was asked for.
    result, out = _pull_in(shm_path, "mirror-scope", pinned, rejecting(f"{http_registry.host}/{repo_name}"))
    assert result.exit_code == 0, result.output
    assert out["result"]["kind"] == "mirror"
    assert out["result"]["policy"]["scope"] == "default"
    # A scope for the name asked for applies to what the mirror serves.
    result, out = _pull_in(shm_path, "asked-scope", pinned, rejecting(f"{https_registry.host}/{repo_name}"))
    assert result.exit_code == EXIT_CODES[Category.POLICY], result.output
    attempts = out["error"]["attempts"]
    assert [(a["kind"], a["error"]["category"]) for a in attempts] == [("mirror", "policy"), ("original", "policy")]


def test_bad_pull_from_mirror_refuses_the_pull_naming_the_field(https_registry, ca_chain, repo_name, shm_path) -> None:
    result, out = _pull_in(shm_path, "bad", f"{https_registry.host}/{repo_name}:v1",
                           _mirrored(https_registry, https_registry, ca_chain, "digests-only"))
    assert result.exit_code == EXIT_CODES[Category.CONFIG], result.output
    error = out["error"]
    assert error["category"] == "config"
    assert "pull-from-mirror" in json.dumps(error["location"]) and "'digests-only'" in error["message"]


# --- 5: auth ---------------------------------------------------------------------------------


def test_basic_auth_with_write_auth_json(basic_auth_registry, ca_chain, repo_name, shm_path) -> None:
    pushed = push_image(shm_path, basic_auth_registry, repo_name, spec())
    auth = write_auth_json(shm_path / "auth.json", basic_auth_registry.host)
    result, out = pull(shm_path, f"{basic_auth_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem], auth_file=auth))
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest
    assert TEST_PASSWORD not in result.output


def test_basic_auth_wrong_password_names_realm(basic_auth_registry, ca_chain, repo_name, shm_path) -> None:
    push_image(shm_path, basic_auth_registry, repo_name, spec())
    auth = write_auth_json(shm_path / "auth.json", basic_auth_registry.host, password="wrong-pw-77")
    result, out = pull(shm_path, f"{basic_auth_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem], auth_file=auth))
    assert result.exit_code == EXIT_CODES[Category.AUTH], result.output
    message = out["error"]["attempts"][0]["error"]["message"]
    assert "realm" in message and "401" in message
    assert "wrong-pw-77" not in result.output


def test_token_auth(token_registry, ca_chain, repo_name, shm_path) -> None:
    pushed = push_image(shm_path, token_registry, repo_name, spec())
    auth = write_auth_json(shm_path / "auth.json", token_registry.host)
    result, out = pull(shm_path, f"{token_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem], auth_file=auth))
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest


def test_token_auth_wrong_password_names_realm_and_status(token_registry, ca_chain, repo_name, shm_path) -> None:
    push_image(shm_path, token_registry, repo_name, spec())
    auth = write_auth_json(shm_path / "auth.json", token_registry.host, password="wrong-pw-78")
    result, out = pull(shm_path, f"{token_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem], auth_file=auth))
    assert result.exit_code == EXIT_CODES[Category.AUTH], result.output
    message = out["error"]["attempts"][0]["error"]["message"]
    assert token_registry.token.realm.split("?")[0] in message and "HTTP 401" in message
    assert "wrong-pw-78" not in result.output


# --- 6: platforms and digests ----------------------------------------------------------------


@pytest.fixture
def multiarch(https_registry, repo_name, shm_path):
    specs = [spec("m", arch="amd64"), spec("m", arch="arm64", variant="v8"), spec("m", arch="arm", variant="v7"), spec("m", arch="arm", variant="v6")]
    return push_image(shm_path, https_registry, repo_name, specs)


@pytest.mark.parametrize(("platform", "index"), [("linux/amd64", 0), ("linux/arm64/v8", 1), ("linux/arm64", 1), ("linux/arm/v7", 2), ("linux/arm/v6", 3)])
def test_index_platform_selection(multiarch, https_registry, ca_chain, repo_name, shm_path, platform, index) -> None:
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem]), "--platform", platform)
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == multiarch.manifests[index].digest
    assert out["result"]["index_digest"] == multiarch.index_digest


def test_unknown_platform_lists_offered(multiarch, https_registry, ca_chain, repo_name, shm_path) -> None:
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh_toml(roots=[ca_chain.ca_cert_pem]), "--platform", "linux/s390x")
    assert result.exit_code == EXIT_CODES[Category.PLATFORM], result.output
    message = out["error"]["attempts"][0]["error"]["message"]
    for offered in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/arm/v6"):
        assert offered in message


@pytest.mark.parametrize("form", ["digest", "tag+digest"])
def test_pull_by_digest(https_registry, ca_chain, repo_name, shm_path, form) -> None:
    pushed = push_image(shm_path, https_registry, repo_name, spec())
    ref = f"{https_registry.host}/{repo_name}" + (":v1" if form == "tag+digest" else "") + f"@{pushed.manifest_digest}"
    result, out = pull(shm_path, ref, cdh_toml(roots=[ca_chain.ca_cert_pem]))
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest


def test_pull_by_wrong_digest_fails(https_registry, ca_chain, repo_name, shm_path) -> None:
    push_image(shm_path, https_registry, repo_name, spec())
    result, out = pull(shm_path, f"{https_registry.host}/{repo_name}@sha256:{'1' * 64}", cdh_toml(roots=[ca_chain.ca_cert_pem]))
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND], result.output


# --- 7: proxy --------------------------------------------------------------------------------


def test_https_through_connect_proxy_and_no_proxy_bypass(https_registry, ca_chain, forward_proxy, repo_name, shm_path) -> None:
    push_image(shm_path, https_registry, repo_name, spec())
    image = f"{https_registry.host}/{repo_name}:v1"
    connect = f"CONNECT {https_registry.host}"
    before = sum(connect in r for r in forward_proxy.requests())
    via = cdh_toml(roots=[ca_chain.ca_cert_pem], proxy={"https_proxy": forward_proxy.url})
    result, _ = pull(shm_path, image, via)
    assert result.exit_code == 0, result.output
    during = sum(connect in r for r in forward_proxy.requests())
    assert during > before

    bypass = cdh_toml(roots=[ca_chain.ca_cert_pem], proxy={"https_proxy": forward_proxy.url, "no_proxy": "localhost,127.0.0.0/8"})
    (shm_path / "work2").mkdir()
    result = CliRunner().invoke(main, ["pull", image, "--config", str(_write(shm_path / "b.toml", bypass)), "--work-dir", str(shm_path / "work2"), "--json"])
    assert result.exit_code == 0, result.output
    assert sum(connect in r for r in forward_proxy.requests()) == during


def test_http_candidate_uses_http_proxy(http_registry, forward_proxy, repo_name, shm_path) -> None:
    push_image(shm_path, http_registry, repo_name, spec())
    cdh = cdh_toml(rules=[Rule(http_registry.host, insecure=True)],
                   proxy={"https_proxy": "http://127.0.0.1:9", "http_proxy": forward_proxy.url})
    result, _ = pull(shm_path, f"{http_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == 0, result.output
    assert any(f"http://{http_registry.host}/v2/{repo_name}/manifests/v1" in r for r in forward_proxy.requests())


@contextlib.contextmanager
def tls_connect_proxy() -> Iterator[tuple[str, bytes, list[bytes]]]:
    """An ``https://`` CONNECT proxy on 127.0.0.1 (its own CA): URL, CA PEM, request heads seen."""
    chain = make_ca_chain()
    context = server_context(chain)
    heads: list[bytes] = []
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        host, _, port = head.split()[1].decode().rpartition(":")
        assert host == "127.0.0.1"  # tests reach 127.0.0.1 only
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", chain.ca_cert_pem, heads
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def test_https_registry_through_an_https_proxy(https_registry, ca_chain, repo_name, shm_path) -> None:
    # TLS to the proxy (verified with its own CA) and, inside the CONNECT tunnel, TLS to the
    # registry (verified with the registry's): TLS in TLS.
    push_image(shm_path, https_registry, repo_name, spec())
    with tls_connect_proxy() as (proxy, proxy_ca, heads):
        cdh = cdh_toml(roots=[ca_chain.ca_cert_pem, proxy_ca], proxy={"https_proxy": proxy})
        result, _ = pull(shm_path, f"{https_registry.host}/{repo_name}:v1", cdh)
    assert result.exit_code == 0, result.output
    assert heads and all(h.startswith(f"CONNECT {https_registry.host} HTTP/1.1".encode()) for h in heads)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- mTLS ------------------------------------------------------------------------------------


def test_mtls_client_certificate(mtls_registry, mtls_client_cert, ca_chain, repo_name, shm_path) -> None:
    paths = mtls_client_cert.write(shm_path / "client")
    layout = shm_path / "layout"
    pushed = write_layout(layout, spec(), "v1")
    push(layout, "v1", f"{mtls_registry.host}/{repo_name}:v1", tls_ca=mtls_registry.ca_path, client_cert=(paths.cert, paths.key))
    image = f"{mtls_registry.host}/{repo_name}:v1"

    result, out = pull(shm_path, image, cdh_toml(roots=[ca_chain.ca_cert_pem]))
    assert result.exit_code == EXIT_CODES[Category.TLS], result.output
    assert "requires a client certificate" in out["error"]["attempts"][0]["error"]["message"]

    cdh = cdh_toml(roots=[ca_chain.ca_cert_pem], client_certs=[ClientCert(mtls_registry.host, paths.cert, paths.key)])
    result, out = pull(shm_path, image, cdh)
    assert result.exit_code == 0, result.output
    assert out["result"]["manifest_digest"] == pushed.manifest_digest
