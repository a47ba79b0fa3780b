"""A real ttrpc peer from another implementation: containerd/ttrpc (Go), built from Debian's
packages in the test set-up (golang-go, golang-github-containerd-ttrpc-dev,
golang-google-protobuf-dev; scripts/setup.sh installs them).

``ttrpcpeer client`` makes calls as kata-agent does (one connection, all calls at once, the
1200 s timeout_nano); ``ttrpcpeer aa`` stands in for the Attestation Agent and records each
ExtendRuntimeMeasurement.  The source is ttrpcpeer/main.go next to this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestpull.testing import HarnessError, ManagedProcess, wait_for

SOURCE = Path(__file__).parent / "ttrpcpeer" / "main.go"
DEBIAN_GOPATH = "/usr/share/gocode"

#: kata-agent's defaults: agent.image_pull_timeout and agent.cdh_api_timeout.
KATA_PULL_TIMEOUT_NS = 1_200_000_000_000
KATA_CDH_API_TIMEOUT_NS = 50_000_000_000


def build_peer(out_dir: Path) -> Path:
    """Build ttrpcpeer into ``out_dir`` (GOPATH mode: Debian's Go packages, no module download);
    an existing binary built from the same source is reused."""
    go = shutil.which("go")
    if go is None:
        raise HarnessError("'go' is not installed", hint="bash scripts/setup.sh (apt-get install golang-go)")
    source = SOURCE.read_bytes()
    binary = out_dir / f"ttrpcpeer-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    gopath = out_dir / "gopath"
    package = gopath / "src" / "ttrpcpeer"
    package.mkdir(parents=True, exist_ok=True)
    (package / "main.go").write_bytes(source)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:{DEBIAN_GOPATH}", "GOFLAGS": "",
           **({} if os.environ.get("HOME") or os.environ.get("GOCACHE") else {"GOCACHE": str(out_dir / "gocache")})}
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=package, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise HarnessError(f"building ttrpcpeer failed:\n{done.stderr}",
                           hint="bash scripts/setup.sh installs the Go packages it needs")
    return binary


def pull_call(image: str, bundle: Path | str, *, timeout_ns: int = KATA_PULL_TIMEOUT_NS,
              delay_ms: int = 0) -> dict[str, Any]:
    return {"kind": "pull", "image": image, "bundle": str(bundle), "timeout_ns": timeout_ns, "delay_ms": delay_ms}


def resource_call(uri: str, *, timeout_ns: int = KATA_CDH_API_TIMEOUT_NS) -> dict[str, Any]:
    return {"kind": "resource", "uri": uri, "timeout_ns": timeout_ns}


def raw_call(service: str, method: str, payload: bytes = b"", *, timeout_ns: int = 0) -> dict[str, Any]:
    return {"kind": "raw", "service": service, "method": method, "payload_hex": payload.hex(),
            "timeout_ns": timeout_ns}


def aa_event_bytes(image: str, digest: str) -> bytes:
    """The ExtendRuntimeMeasurementRequest the CDH sends, written out by hand (not with
    guestpull's protobuf code): Domain, Operation, Content, and no field 4 (RegisterIndex)."""

    def field(number: int, text: str) -> bytes:
        data = text.encode()
        assert len(data) < 1 << 14
        length = bytes([len(data)]) if len(data) < 128 else bytes([len(data) & 0x7F | 0x80, len(data) >> 7])
        return bytes([number << 3 | 2]) + length + data

    content = '{"image":"' + image + '", "digest":"' + digest + '"}'
    return field(1, "github.com/confidential-containers") + field(2, "PullImage") + field(3, content)


def _client_argv(peer: Path, socket: Path, close_after: float | None) -> list[str]:
    argv = [str(peer), "client", "-socket", str(socket)]
    if close_after is not None:
        argv += ["-close-after", f"{int(close_after * 1000)}ms"]
    return argv


def _results(stdout: bytes, stderr: bytes, returncode: int | None) -> list[dict[str, Any]]:
    if returncode != 0:
        raise AssertionError(f"ttrpcpeer client exited {returncode}: {stderr.decode(errors='replace')}")
    results: list[dict[str, Any]] = json.loads(stdout)
    return results


def call(peer: Path, socket: Path, calls: list[dict[str, Any]], *, close_after: float | None = None,
         timeout: float = 180.0) -> list[dict[str, Any]]:
    """Run the calls on one connection (a subprocess, waited for); one result per call:
    ``code``, ``message``, ``digest`` / ``resource_hex`` / ``payload_hex``, ``elapsed_s``."""
    done = subprocess.run(_client_argv(peer, socket, close_after), input=json.dumps(calls).encode(),
                          capture_output=True, timeout=timeout, check=False)
    return _results(done.stdout, done.stderr, done.returncode)


async def call_async(peer: Path, socket: Path, calls: list[dict[str, Any]], *,
                     close_after: float | None = None, timeout: float = 180.0) -> list[dict[str, Any]]:
    """:func:`call` without blocking the event loop (for a server running in this process)."""
    proc = await asyncio.create_subprocess_exec(
        *_client_argv(peer, socket, close_after), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(json.dumps(calls).encode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _results(stdout, stderr, proc.returncode)


@dataclass
class FakeAttestationAgent:
    """``ttrpcpeer aa`` on ``socket``; ``events()`` are the requests it received."""

    process: ManagedProcess
    socket: Path
    record: Path

    def events(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> FakeAttestationAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_aa(peer: Path, directory: Path, *, answer: str = "ok", delay: float = 0.0) -> FakeAttestationAgent:
    """Start the stand-in AA (answer: ok | not-supported | not-enabled | error, after ``delay`` s)."""
    directory.mkdir(parents=True, exist_ok=True)
    socket, record = directory / "aa.sock", directory / "aa-events.jsonl"
    process = ManagedProcess([str(peer), "aa", "-socket", str(socket), "-record", str(record), "-answer", answer,
                              "-delay", f"{int(delay * 1000)}ms"], log_path=directory / "aa.log")
    if not wait_for(lambda: socket.exists() or not process.running(), timeout=10) or not process.running():
        process.stop()
        raise HarnessError(f"the stand-in AA did not start: {process.log_tail()}")
    return FakeAttestationAgent(process, socket, record)
