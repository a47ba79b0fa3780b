"""The CDH services, driven by the Go ttrpc client as kata-agent drives them, over a stub puller;
the runtime measurement, received by the Go stand-in AA.

The stub stands for guestpull.pull.Puller (tested on its own); tests/service/test_serve.py runs
the real one behind ``guestpull serve`` against real registries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.ttrpcpeer import (
    KATA_PULL_TIMEOUT_NS,
    aa_event_bytes,
    call_async,
    pull_call,
    raw_call,
    resource_call,
    start_aa,
)

from guestpull.config import CdhConfig, KbcConfig, KbsCredential
from guestpull.errors import AllCandidatesFailed, Attempt, ConfigError, GuestpullError, NotFoundError
from guestpull import protos as proto
from guestpull.service.aa import RuntimeMeasurer, measurement_event
from guestpull.service.cdh import ConfidentialDataHub, write_kbs_credentials
from guestpull.service.server import ServeOptions, serve
from guestpull.ttrpc import CallRecord, Code, TtrpcServer

DIGEST = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Pulled:
    manifest_digest: str


class StubPuller:
    """Pulls "ok/..." images in ``delay`` seconds; "missing/..." fail as every candidate failed."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.pulls: list[tuple[str, Path | None]] = []
        self.removed: list[Path] = []
        self.resources = {"kbs:///default/key/one": b"\x00secret\xff"}
        self.warmed_up = 0

    async def warm_up(self) -> None:
        self.warmed_up += 1

    async def pull(self, image: str, *, bundle: Path | None = None) -> Pulled:
        self.pulls.append((image, bundle))
        await asyncio.sleep(self.delay)
        if image.startswith("missing/"):
            attempts = [Attempt(image, "https", "registry", NotFoundError(f"manifest unknown: {image}"))]
            raise AllCandidatesFailed(image, attempts)
        return Pulled(DIGEST)

    async def remove_bundle(self, bundle: Path) -> None:
        self.removed.append(bundle)

    async def get_resource(self, uri: str) -> bytes:
        if uri not in self.resources:
            raise NotFoundError(f"offline-fs-kbc: resource not found for {uri}")
        return self.resources[uri]


@dataclass
class Service:
    socket: Path
    puller: StubPuller
    records: list[CallRecord]


async def start_service(directory: Path, measurer: RuntimeMeasurer | None, puller: StubPuller | None = None
                        ) -> tuple[TtrpcServer, Service]:
    service = Service(directory / "cdh.sock", puller or StubPuller(), [])
    server = TtrpcServer(ConfidentialDataHub(service.puller, measurer).services(), on_call=service.records.append)
    await server.start_unix(service.socket)
    return server, service


@pytest.fixture
async def cdh(shm_path: Path) -> AsyncIterator[Service]:
    server, service = await start_service(shm_path, None)
    try:
        yield service
    finally:
        await server.shutdown(1)


async def test_pull_and_resource_calls_as_kata_agent_makes_them(cdh: Service, ttrpc_peer: Path) -> None:
    cdh.puller.delay = 0.3
    bundles = [f"/run/kata-containers/c{i}" for i in range(4)]
    results = await call_async(ttrpc_peer, cdh.socket, [
        *(pull_call("ok/app:v1", bundle) for bundle in bundles),
        resource_call("kbs:///default/key/one"),
    ])
    assert [r["code"] for r in results] == [0] * 5
    assert {r["digest"] for r in results[:4]} == {DIGEST}
    assert bytes.fromhex(results[4]["resource_hex"]) == b"\x00secret\xff"
    assert sorted(cdh.puller.pulls) == [("ok/app:v1", Path(b)) for b in bundles]
    assert cdh.puller.removed == []
    # One connection, all at once: the resource call did not wait for the pulls.
    assert results[4]["elapsed_s"] < 0.3
    pulls = [r for r in cdh.records if r.context.method == "PullImage"]
    assert {r.context.timeout_nano for r in pulls} == {KATA_PULL_TIMEOUT_NS}
    assert {r.context.stream_id for r in cdh.records} == {1, 3, 5, 7, 9}


async def test_pull_failure_is_one_internal_line_naming_the_category(cdh: Service, ttrpc_peer: Path) -> None:
    [result] = await call_async(ttrpc_peer, cdh.socket, [pull_call("missing/app:v1", "/run/kata-containers/x")])
    assert result["code"] == Code.INTERNAL
    assert result["message"] == (
        "[CDH] [ERROR]: Image Pull error: not-found: failed to pull missing/app:v1 from every candidate: "
        "missing/app:v1 (https, registry): [not-found] manifest unknown: missing/app:v1"
    )
    assert "\n" not in result["message"] and "Traceback" not in result["message"]


@pytest.mark.parametrize(("bundle", "why"), [("", "bundle_path is empty"), ("run/x", "is not an absolute path")])
async def test_a_bundle_path_kata_agent_never_sends_is_refused(cdh: Service, ttrpc_peer: Path, bundle: str,
                                                              why: str) -> None:
    [result] = await call_async(ttrpc_peer, cdh.socket, [pull_call("ok/app:v1", bundle)])
    assert result["code"] == Code.INTERNAL
    assert result["message"].startswith("[CDH] [ERROR]: Image Pull error: usage: ") and why in result["message"]
    assert cdh.puller.pulls == []


async def test_get_resource_serves_kbs_uris_only(cdh: Service, ttrpc_peer: Path) -> None:
    missing, local = await call_async(ttrpc_peer, cdh.socket, [
        resource_call("kbs:///default/key/absent"), resource_call("/etc/shadow")])
    assert (missing["code"], missing["message"]) == (
        Code.INTERNAL, "[CDH] [ERROR]: Get Resource failed: not-found: offline-fs-kbc: resource not found for "
        "kbs:///default/key/absent")
    assert (local["code"], local["message"]) == (
        Code.INTERNAL, "[CDH] [ERROR]: Get Resource failed: usage: resource URI '/etc/shadow' is not a kbs:// URI")


async def test_a_resource_too_big_for_one_frame_is_refused(cdh: Service, ttrpc_peer: Path) -> None:
    cdh.puller.resources["kbs:///default/big/one"] = b"\0" * (4 << 20)
    big, small = await call_async(ttrpc_peer, cdh.socket, [
        resource_call("kbs:///default/big/one"), resource_call("kbs:///default/key/one")])
    assert big["code"] == Code.INVALID_ARGUMENT
    assert big["message"].startswith("response message length 41943") and big["message"].endswith(
        "exceed maximum message size of 4194304")
    assert small["code"] == 0  # the connection is fine


async def test_unknown_and_unsupported_calls_answer_as_the_real_cdh(cdh: Service, ttrpc_peer: Path) -> None:
    wrap = proto.message_class("keyprovider.KeyProviderKeyWrapProtocolInput")(
        KeyProviderKeyWrapProtocolInput=b"{}").SerializeToString()
    results = await call_async(ttrpc_peer, cdh.socket, [
        raw_call("api.NoSuchService", "PullImage"),
        raw_call("api.ImagePullService", "PushImage"),
        raw_call("keyprovider.KeyProviderService", "WrapKey", wrap),
        raw_call("keyprovider.KeyProviderService", "UnWrapKey", wrap),
        raw_call("api.SealedSecretService", "UnsealSecret", b"\x0a\x03abc"),
        raw_call("api.SecureMountService", "SecureMount", b"\x0a\x05block\x12\x06\x0a\x01k\x12\x01v"),
    ])
    assert [(r["code"], r["message"]) for r in results] == [
        (Code.INVALID_ARGUMENT, "api.NoSuchService service does not exist"),
        (Code.UNIMPLEMENTED, "PushImage method"),
        (Code.NOT_FOUND, "/keyprovider.KeyProviderService/WrapKey is not supported"),
        (Code.NOT_FOUND, "/keyprovider.KeyProviderService/UnWrapKey is not supported"),
        (Code.NOT_FOUND, "/api.SealedSecretService/UnsealSecret is not supported"),
        (Code.NOT_FOUND, "/api.SecureMountService/SecureMount is not supported"),
    ]


async def test_deadline_cancels_the_pull_and_the_service_serves_on(cdh: Service, ttrpc_peer: Path) -> None:
    cdh.puller.delay = 30
    [late] = await call_async(ttrpc_peer, cdh.socket, [pull_call("ok/app:v1", "/run/k/a", timeout_ns=300_000_000)])
    assert (late["code"], late["message"]) == (Code.DEADLINE_EXCEEDED, "timeout")
    assert 0.3 <= late["elapsed_s"] < 5
    cdh.puller.delay = 0
    [ok] = await call_async(ttrpc_peer, cdh.socket, [pull_call("ok/app:v1", "/run/k/b")])
    assert ok["code"] == 0


async def test_a_client_that_disconnects_mid_call(cdh: Service, ttrpc_peer: Path) -> None:
    cdh.puller.delay = 30
    [cut] = await call_async(ttrpc_peer, cdh.socket, [pull_call("ok/app:v1", "/run/k/a")], close_after=0.3)
    assert cut["transport"] and cut["elapsed_s"] < 5
    async with asyncio.timeout(10):
        while not any(r.code == Code.CANCELLED for r in cdh.records):
            await asyncio.sleep(0.02)
    cdh.puller.delay = 0
    [ok] = await call_async(ttrpc_peer, cdh.socket, [pull_call("ok/app:v1", "/run/k/b")])
    assert ok["code"] == 0


# --- the Attestation Agent ---------------------------------------------------------------------------


async def pull_with_aa(directory: Path, peer: Path, aa_socket: Path, images: list[str], *,
                       puller: StubPuller | None = None, timeout_ns: int = KATA_PULL_TIMEOUT_NS) -> list[dict]:
    server, service = await start_service(directory, RuntimeMeasurer(f"unix://{aa_socket}"), puller)
    try:
        return await call_async(peer, service.socket, [pull_call(i, f"/run/k/{n}", timeout_ns=timeout_ns)
                                                       for n, i in enumerate(images)])
    finally:
        await server.shutdown(1)


async def test_each_pull_is_measured_with_upstreams_exact_event(shm_path: Path, ttrpc_peer: Path) -> None:
    with start_aa(ttrpc_peer, shm_path / "aa", answer="ok") as aa:
        results = await pull_with_aa(shm_path, ttrpc_peer, aa.socket, ["ok/app:v1", "ok/other@" + DIGEST])
        events = aa.events()
    assert [r["code"] for r in results] == [0, 0]
    assert sorted(bytes.fromhex(e["raw_hex"]) for e in events) == sorted(
        [aa_event_bytes("ok/app:v1", DIGEST), aa_event_bytes("ok/other@" + DIGEST, DIGEST)])
    assert not any(e["register_index_set"] for e in events)
    assert all(9 < e["deadline_s"] <= 10 for e in events)  # timeout_nano = 10 s


def test_the_event_content_is_not_json_escaped() -> None:
    event = measurement_event('odd"name\\x', DIGEST)
    assert event.Content == '{"image":"odd"name\\x", "digest":"' + DIGEST + '"}'
    assert not event.HasField("RegisterIndex")


@pytest.mark.parametrize("answer", ["not-enabled", "not-supported"])
async def test_an_aa_that_does_not_record_is_a_warning(shm_path: Path, ttrpc_peer: Path, answer: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with start_aa(ttrpc_peer, shm_path / "aa", answer=answer) as aa, caplog.at_level(logging.WARNING):
        [result] = await pull_with_aa(shm_path, ttrpc_peer, aa.socket, ["ok/app:v1"])
        assert len(aa.events()) == 1
    assert result["code"] == 0 and result["digest"] == DIGEST
    assert f"the Attestation Agent answered {answer.upper().replace('-', '_')}" in caplog.text


async def test_an_aa_error_fails_the_pull_and_removes_its_bundle(shm_path: Path, ttrpc_peer: Path) -> None:
    puller = StubPuller()
    with start_aa(ttrpc_peer, shm_path / "aa", answer="error") as aa:
        [result] = await pull_with_aa(shm_path, ttrpc_peer, aa.socket, ["ok/app:v1"], puller=puller)
    assert (result["code"], result["message"]) == (
        Code.INTERNAL, "[CDH] [ERROR]: Attestation Agent client error: failed to extend runtime measurement: "
        "INTERNAL: [ERROR:attestation-agent] AA extend runtime measurement failed")
    assert puller.removed == [Path("/run/k/0")]


async def test_a_deadline_during_the_measurement_removes_the_bundle(shm_path: Path, ttrpc_peer: Path) -> None:
    puller = StubPuller()
    with start_aa(ttrpc_peer, shm_path / "aa", delay=30) as aa:
        [result] = await pull_with_aa(shm_path, ttrpc_peer, aa.socket, ["ok/app:v1"], puller=puller,
                                      timeout_ns=500_000_000)
    assert (result["code"], result["message"]) == (Code.DEADLINE_EXCEEDED, "timeout")
    assert puller.removed == [Path("/run/k/0")]


async def test_no_aa_socket_means_no_measurement_for_the_life_of_the_service(shm_path: Path, ttrpc_peer: Path) -> None:
    aa_socket = shm_path / "aa" / "aa.sock"
    server, service = await start_service(shm_path, RuntimeMeasurer(f"unix://{aa_socket}"))
    try:
        [first] = await call_async(ttrpc_peer, service.socket, [pull_call("ok/app:v1", "/run/k/a")])
        with start_aa(ttrpc_peer, shm_path / "aa") as aa:  # the AA appears later: still skipped
            [second] = await call_async(ttrpc_peer, service.socket, [pull_call("ok/app:v1", "/run/k/b")])
            events = aa.events()
    finally:
        await server.shutdown(1)
    assert (first["code"], second["code"], events) == (0, 0, [])


async def test_a_restarted_aa_is_reconnected(shm_path: Path, ttrpc_peer: Path) -> None:
    aa_dir = shm_path / "aa"
    server, service = await start_service(shm_path, RuntimeMeasurer(f"unix://{aa_dir}/aa.sock"))
    try:
        with start_aa(ttrpc_peer, aa_dir):
            [one] = await call_async(ttrpc_peer, service.socket, [pull_call("ok/app:v1", "/run/k/a")])
        await asyncio.sleep(0.2)  # the service sees the connection close
        (aa_dir / "aa-events.jsonl").unlink()
        with start_aa(ttrpc_peer, aa_dir) as second:
            [two] = await call_async(ttrpc_peer, service.socket, [pull_call("ok/app:v2", "/run/k/b")])
            events = second.events()
    finally:
        await server.shutdown(1)
    assert (one["code"], two["code"]) == (0, 0), two
    assert [bytes.fromhex(e["raw_hex"]) for e in events] == [aa_event_bytes("ok/app:v2", DIGEST)]


async def test_an_aa_socket_nobody_listens_on_fails_the_pull(shm_path: Path, ttrpc_peer: Path) -> None:
    with start_aa(ttrpc_peer, shm_path / "aa") as aa:
        socket = aa.socket
    socket.touch(exist_ok=True)  # the file is there, the AA is not
    [result] = await pull_with_aa(shm_path, ttrpc_peer, socket, ["ok/app:v1"])
    assert result["code"] == Code.INTERNAL
    assert result["message"].startswith(
        "[CDH] [ERROR]: Attestation Agent client error: failed to connect to the Attestation Agent: cannot connect")


def test_stub_errors_are_guestpull_errors() -> None:
    # The handler maps GuestpullError only; the stub must raise what the real puller raises.
    assert issubclass(AllCandidatesFailed, GuestpullError) and issubclass(NotFoundError, GuestpullError)


# --- start-up: [[credentials]] ---------------------------------------------------------------------

CREDENTIAL_PATH = "/run/confidential-containers/cdh/kbs/auth.json"


async def test_credentials_are_written_private_and_whole(shm_path: Path) -> None:
    puller = StubPuller()
    target = shm_path / CREDENTIAL_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")
    await write_kbs_credentials([KbsCredential(resource_uri="kbs:///default/key/one", path=CREDENTIAL_PATH)],
                                puller, root=shm_path)
    assert target.read_bytes() == b"\x00secret\xff"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["auth.json"]


async def test_credentials_from_anything_but_kbs_are_refused(shm_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a kbs:// URI"):
        await write_kbs_credentials([KbsCredential(resource_uri="/etc/shadow", path=CREDENTIAL_PATH)],
                                    StubPuller(), root=shm_path)
    assert not (shm_path / "run").exists()


async def test_serve_does_not_start_when_a_credential_cannot_be_fetched(shm_path: Path) -> None:
    socket = shm_path / "cdh.sock"
    cdh = CdhConfig(socket=f"unix://{socket}", kbc=KbcConfig(name="offline_fs_kbc"),
                    credentials=[KbsCredential(resource_uri="kbs:///default/key/absent", path=CREDENTIAL_PATH)])

    @contextlib.asynccontextmanager
    async def stub_factory(config: CdhConfig, work_dir: Path | None) -> AsyncIterator[StubPuller]:
        yield StubPuller()

    with pytest.raises(NotFoundError, match="kbs:///default/key/absent"):
        await serve(cdh, ServeOptions(), puller_factory=stub_factory, stop=asyncio.Event())
    assert not socket.exists()


async def test_serve_warms_the_puller_up_before_it_listens(shm_path: Path) -> None:
    socket = shm_path / "cdh.sock"
    cdh = CdhConfig(socket=f"unix://{socket}", kbc=KbcConfig(name="offline_fs_kbc"))
    stub, listening_at_warm_up = StubPuller(), []

    async def warm_up() -> None:
        listening_at_warm_up.append(socket.exists())

    stub.warm_up = warm_up  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def stub_factory(config: CdhConfig, work_dir: Path | None) -> AsyncIterator[StubPuller]:
        yield stub

    stop = asyncio.Event()
    server = asyncio.create_task(serve(cdh, ServeOptions(), puller_factory=stub_factory, stop=stop))
    for _ in range(200):  # bounded: 10 s
        if socket.exists():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await server
    assert listening_at_warm_up == [False]
