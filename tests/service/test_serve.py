"""``guestpull serve`` as a process, driven by the Go ttrpc client as kata-agent drives it,
pulling from real registries (HTTPS and HTTP) or, for faults and request counts, the FAKE one;
the Go stand-in AA records the measurements.
"""

from __future__ import annotations

import base64
import json
import random
import socket as socketlib
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import blob_gets, image_ref, push_spec
from support.serve import ServeProcess, serve_cdh_toml, start_serve
from support.ttrpcpeer import (
    FakeAttestationAgent,
    aa_event_bytes,
    call,
    pull_call,
    raw_call,
    resource_call,
    start_aa,
)

from guestpull.image.bundle import umount_bundle
from guestpull.service.server import socket_answers
from guestpull.ttrpc import MESSAGE_LENGTH_MAX, Code
from guestpull_testkit import wait_for
from guestpull_testkit.fakeregistry import Fault, FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec


def spec(seed: int, *, layers: int = 2, size: int = 256 << 10) -> ImageSpec:
    rng = random.Random(seed)
    return ImageSpec([
        LayerSpec([File(f"layer{i}/data", rng.randbytes(size)), File(f"layer{i}/name", f"image {seed}\n".encode())])
        for i in range(layers)
    ], config={"Cmd": ["/bin/true"]})


class Bundles:
    """kata-agent's bundle directories (created empty before the call), unmounted at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []

    def new(self, name: str) -> Path:
        path = self.root / "run-kata-containers" / name
        path.mkdir(parents=True)
        self.made.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.made:
            umount_bundle(path)


@pytest.fixture
def bundles(shm_path: Path) -> Iterator[Bundles]:
    made = Bundles(shm_path)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def aa(ttrpc_peer: Path, shm_path: Path) -> Iterator[FakeAttestationAgent]:
    with start_aa(ttrpc_peer, shm_path / "aa", answer="ok") as agent:
        yield agent


def serve(shm_path: Path, registry: object, aa_socket: Path, **kwargs: object) -> ServeProcess:
    socket = shm_path / "cdh" / "cdh.sock"
    return start_serve(shm_path / "serve", serve_cdh_toml(registry, socket, aa_socket), socket,
                       work_dir=shm_path / "work", **kwargs)  # type: ignore[arg-type]


def assert_empty_bundle(bundle: Path) -> None:
    assert bundle.is_dir() and list(bundle.iterdir()) == [], list(bundle.rglob("*"))


# --- real registries -----------------------------------------------------------------------------


def test_pull_from_https_registry_measured_logged_and_stopped(
    https_registry, repo_name: str, shm_path: Path, ttrpc_peer: Path, aa: FakeAttestationAgent, bundles: Bundles
) -> None:
    pushed = push_spec(shm_path / "layout", https_registry, repo_name, spec(1))
    image = image_ref(https_registry, repo_name)
    resources = shm_path / "offline-fs.json"
    resources.write_text(json.dumps({"default/key/one": base64.b64encode(b"key-bytes").decode()}))
    bundle = bundles.new("c1")
    with serve(shm_path, https_registry, aa.socket, env={"OFFLINE_FS_KBC_EXTRA_FILE_PATH": str(resources)}) as svc:
        assert stat.S_IMODE(svc.socket.stat().st_mode) == 0o600
        pulled, resource = call(ttrpc_peer, svc.socket, [pull_call(image, bundle),
                                                          resource_call("kbs:///default/key/one")])
        assert (pulled["code"], pulled["digest"]) == (0, pushed.digest), pulled
        assert bytes.fromhex(resource["resource_hex"]) == b"key-bytes"
        assert (bundle / "rootfs" / "layer1" / "name").read_bytes() == b"image 1\n"
        assert (bundle / "config.json").is_file()
        assert svc.terminate() == 0
    assert not svc.socket.exists()
    assert [bytes.fromhex(e["raw_hex"]) for e in aa.events()] == [aa_event_bytes(image, pushed.digest)]
    [pull_line] = [r for r in svc.requests() if r["method"] == "/api.ImagePullService/PullImage"]
    assert pull_line["image"] == image and pull_line["digest"] == pushed.digest
    assert pull_line["outcome"] == "OK" and pull_line["duration_s"] >= 0
    assert "key-bytes" not in svc.log.read_text() and base64.b64encode(b"key-bytes").decode() not in svc.log.read_text()


def test_pull_from_http_registry_and_a_missing_image(
    http_registry, repo_name: str, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    pushed = push_spec(shm_path / "layout", http_registry, repo_name, spec(2))
    good, missing = bundles.new("good"), bundles.new("missing")
    with serve(shm_path, http_registry, shm_path / "no-aa.sock") as svc:
        ok, absent = call(ttrpc_peer, svc.socket, [
            pull_call(image_ref(http_registry, repo_name), good),
            pull_call(image_ref(http_registry, repo_name, "no-such-tag"), missing),
        ])
    assert (ok["code"], ok["digest"]) == (0, pushed.digest)
    assert (good / "rootfs" / "layer0" / "name").read_bytes() == b"image 2\n"
    assert absent["code"] == Code.INTERNAL
    assert absent["message"].startswith("[CDH] [ERROR]: Image Pull error: not-found: ")
    assert "no-such-tag" in absent["message"] and "\n" not in absent["message"]
    assert_empty_bundle(missing)


@pytest.mark.parametrize("failure", ["aa-error", "deadline-in-aa"])
def test_a_call_that_fails_after_its_pull_leaves_no_bundle(
    http_registry, repo_name: str, shm_path: Path, ttrpc_peer: Path, bundles: Bundles, failure: str
) -> None:
    push_spec(shm_path / "layout", http_registry, repo_name, spec(10))
    bundle = bundles.new("c1")
    answer, delay, timeout_ns = ("error", 0.0, 1_200_000_000_000) if failure == "aa-error" else ("ok", 60.0, 8_000_000_000)
    with start_aa(ttrpc_peer, shm_path / "aa", answer=answer, delay=delay) as aa, \
            serve(shm_path, http_registry, aa.socket) as svc:
        [result] = call(ttrpc_peer, svc.socket, [pull_call(image_ref(http_registry, repo_name), bundle,
                                                           timeout_ns=timeout_ns)])
        assert len(aa.events()) == 1  # the pull itself succeeded
    expected = Code.INTERNAL if failure == "aa-error" else Code.DEADLINE_EXCEEDED
    assert result["code"] == expected, result
    assert_empty_bundle(bundle)  # unmounted and removed before the answer


# --- the FAKE registry: request counts and faults ------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry().in_thread() as registry:
        yield registry


def test_eight_concurrent_calls_of_two_images_download_each_blob_once(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    images = {"app/one": spec(3).build(), "app/two": spec(4).build()}
    digests = {repo: fake.add_image(repo, "v1", built) for repo, built in images.items()}
    paths = [bundles.new(f"c{i}") for i in range(8)]
    repos = ["app/one", "app/two"] * 4
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc:
        results = call(ttrpc_peer, svc.socket, [pull_call(f"{fake.host}/{repo}:v1", path)
                                                 for repo, path in zip(repos, paths, strict=True)])
    assert [r["code"] for r in results] == [0] * 8, results
    assert [r["digest"] for r in results] == [digests[repo] for repo in repos]
    for repo, path in zip(repos, paths, strict=True):
        assert (path / "rootfs" / "layer1" / "name").read_bytes() == f"image {3 if repo == 'app/one' else 4}\n".encode()
    gets = blob_gets(fake)
    expected = {layer.digest for built in images.values() for layer in built.layers}
    assert expected <= set(gets) and all(gets[d] == 1 for d in expected), gets


def slow_second_layer(fake: FakeRegistry, repo: str, seed: int, seconds: float) -> str:
    built = spec(seed).build()
    fake.add_image(repo, "v1", built)
    fake.inject(f"/blobs/{built.layers[1].digest}", Fault("slow", seconds=seconds))
    return f"{fake.host}/{repo}:v1"


def assert_serves_on(fake: FakeRegistry, svc: ServeProcess, peer: Path, bundle: Path) -> None:
    """A quick pull still works on a new connection."""
    digest = fake.add_image("app/fast", "v1", spec(99).build())
    [ok] = call(peer, svc.socket, [pull_call(f"{fake.host}/app/fast:v1", bundle)])
    assert (ok["code"], ok.get("digest")) == (0, digest), ok


def test_a_deadline_shorter_than_the_pull_leaves_no_bundle_and_the_service_serves_on(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    slow = slow_second_layer(fake, "app/slow", 5, seconds=8)
    late = bundles.new("late")
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc:
        [timed_out] = call(ttrpc_peer, svc.socket, [pull_call(slow, late, timeout_ns=2_000_000_000)])
        assert (timed_out["code"], timed_out["message"]) == (Code.DEADLINE_EXCEEDED, "timeout")
        assert 2 <= timed_out["elapsed_s"] < 8
        assert_empty_bundle(late)  # removed before the answer went out
        assert_serves_on(fake, svc, ttrpc_peer, bundles.new("after"))
    [line] = [r for r in svc.requests() if r.get("image") == slow]
    assert line["outcome"] == "DEADLINE_EXCEEDED"


def test_sigterm_lets_a_running_pull_finish_then_exits_0(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    slow = slow_second_layer(fake, "app/slow", 7, seconds=3)
    bundle = bundles.new("c1")
    calls = shm_path / "calls.json"
    calls.write_text(json.dumps([pull_call(slow, bundle)]))
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc, open(calls, "rb") as stdin:
        client = subprocess.Popen([str(ttrpc_peer), "client", "-socket", str(svc.socket)], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda: len(fake.requests_to("/blobs/")) >= 2, timeout=30)
            assert svc.terminate() == 0
            stdout, stderr = client.communicate(timeout=60)
        finally:
            client.kill()
    [result] = json.loads(stdout)
    assert result["code"] == 0, (result, stderr)
    assert (bundle / "rootfs" / "layer1" / "name").read_bytes() == b"image 7\n"
    assert not svc.socket.exists()


def test_a_client_that_disconnects_mid_pull(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    slow = slow_second_layer(fake, "app/slow", 8, seconds=8)
    cut = bundles.new("cut")
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc:
        [gone] = call(ttrpc_peer, svc.socket, [pull_call(slow, cut)], close_after=1.5)
        assert gone["transport"]
        assert wait_for(lambda: any(r.get("outcome") == "CANCELLED" for r in svc.requests()), timeout=20)
        assert_empty_bundle(cut)
        assert_serves_on(fake, svc, ttrpc_peer, bundles.new("after"))


def test_a_frame_over_4_mib_is_answered_and_the_service_serves_on(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path
) -> None:
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc:
        with socketlib.socket(socketlib.AF_UNIX) as raw:
            raw.connect(str(svc.socket))
            raw.settimeout(30)
            raw.sendall(struct.pack(">IIBB", MESSAGE_LENGTH_MAX + 1, 1, 1, 0) + b"\0" * (MESSAGE_LENGTH_MAX + 1))
            answer = b""
            while len(answer) < 10 or len(answer) < 10 + struct.unpack(">I", answer[:4])[0]:
                chunk = raw.recv(4096)
                assert chunk, "connection closed without an answer"
                answer += chunk
        message = b"message length 4194305 exceed maximum message size of 4194304"
        assert answer == struct.pack(">IIBB", 2 + 2 + len(message) + 2, 1, 2, 0) + bytes(
            [0x0A, 2 + 2 + len(message), 0x08, Code.INVALID_ARGUMENT, 0x12, len(message)]) + message
        [unknown] = call(ttrpc_peer, svc.socket, [raw_call("api.Nothing", "Here")])
        assert (unknown["code"], unknown["message"]) == (Code.INVALID_ARGUMENT, "api.Nothing service does not exist")


# --- start-up ------------------------------------------------------------------------------------------


def test_refuses_a_socket_another_server_answers_on(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path
) -> None:
    with start_aa(ttrpc_peer, shm_path / "other") as other:
        config = shm_path / "cdh.toml"
        config.write_text(serve_cdh_toml(fake, other.socket, shm_path / "no-aa.sock"))
        done = subprocess.run([*_serve_argv(config, shm_path)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 17, done.stderr
        assert f"another server is listening on {other.socket}" in done.stderr
        assert socket_answers(other.socket)


def test_removes_a_stale_socket_and_refuses_a_file_that_is_not_one(fake: FakeRegistry, shm_path: Path) -> None:
    socket = shm_path / "cdh" / "cdh.sock"
    socket.parent.mkdir()
    with socketlib.socket(socketlib.AF_UNIX) as stale:
        stale.bind(str(socket))  # bound, never listening: what a killed server leaves
    with serve(shm_path, fake, shm_path / "no-aa.sock") as svc:
        assert socket_answers(svc.socket)
        assert svc.terminate() == 0
    socket.write_text("not a socket")
    config = shm_path / "serve" / "config.toml"
    done = subprocess.run(_serve_argv(config, shm_path), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 17 and f"{socket} exists and is not a socket" in done.stderr
    assert socket.read_text() == "not a socket"


def _serve_argv(config: Path, shm_path: Path) -> list[str]:
    from support.cli import GUESTPULL

    return [*GUESTPULL, "serve", "--config", str(config), "--work-dir", str(shm_path / "work")]


def test_the_signature_policy_holds_for_service_pulls(
    fake: FakeRegistry, shm_path: Path, ttrpc_peer: Path, bundles: Bundles
) -> None:
    """kata-agent's PullImage goes through the same policy as ``guestpull pull``: a rejected
    image is a policy error and leaves the bundle empty; another scope still pulls."""
    for repo, seed in (("team/app", 21), ("other/app", 22)):
        fake.add_image(repo, "v1", spec(seed).build())
    policy = json.dumps({"default": [{"type": "insecureAcceptAnything"}],
                         "transports": {"docker": {f"{fake.host}/team": [{"type": "reject"}]}}})
    socket = shm_path / "cdh" / "cdh.sock"
    rejected, accepted = bundles.new("rejected"), bundles.new("accepted")
    with start_serve(shm_path / "serve", serve_cdh_toml(fake, socket, shm_path / "no-aa.sock",
                                                     image={"image_security_policy": policy}), socket,
                     work_dir=shm_path / "work") as svc:
        refused, ok = call(ttrpc_peer, svc.socket, [pull_call(f"{fake.host}/team/app:v1", rejected),
                                                     pull_call(f"{fake.host}/other/app:v1", accepted)])
    assert refused["code"] == Code.INTERNAL
    assert refused["message"].startswith("[CDH] [ERROR]: Image Pull error: policy: "), refused
    assert f"scope '{fake.host}/team'" in refused["message"]
    assert_empty_bundle(rejected)
    assert ok["code"] == 0, ok
    assert (accepted / "rootfs" / "layer0" / "name").read_bytes() == b"image 22\n"
