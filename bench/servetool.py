"""``guestpull serve`` as a benchmark tool: the service already running, PullImage calls timed.

Each run starts a fresh service (a cold store; not timed) and waits until its socket accepts
calls.  The timed part is what kata-agent waits for: every image's ``PullImage`` sent at once
on one ttrpc connection, until the last answer.  The calls are made from this process with
guestpull's own ttrpc client (kata-agent's client is Rust and costs next to nothing).

- **Wall**: first call sent → last answer received.
- **CPU**: the service's delta over the calls, its live children's (unpack workers) included;
  the ones it reaped count through cutime/cstime.
- **Peak RSS**: the service process's VmHWM, reset before the calls (the largest single
  process, as in the other rows).

The rootfs mode is the service's (``auto``: an overlay mount when run as root).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.images import GeneratedImage
from bench.measure import (
    Sample,
    TreeRssSampler,
    daemon_cpu_seconds,
    daemon_peak_rss_kib,
    reset_peak_rss,
)
from bench.tools import DEFAULT_TIMEOUT, Attempt, Registry, Tool, unmount_under, write_cdh_config
from guestpull import protos as proto
from guestpull.service.server import socket_answers
from guestpull.ttrpc import RpcError, TtrpcClient
from guestpull_testkit import ManagedProcess, wait_for

_START_TIMEOUT = 30.0
#: kata-agent's agent.image_pull_timeout.
KATA_PULL_TIMEOUT = 1200.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` (with the children it reaped) and of its live children."""
    total = daemon_cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: the reaped ones still count
        children = []
    for child in children:
        try:
            total += daemon_cpu_seconds(int(child))
        except OSError:
            pass  # exited between the listing and the read
    return total


async def pull_all(socket: Path, refs: Sequence[str], bundles: Sequence[Path]) -> list[str]:
    """Every PullImage at once on one connection; the manifest digests (RpcError on failure)."""
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        async def one(ref: str, bundle: Path) -> str:
            request = proto.ImagePullRequest(image_url=ref, bundle_path=str(bundle))
            reply = await client.call("api.ImagePullService", "PullImage", request.SerializeToString(),
                                      KATA_PULL_TIMEOUT)
            return str(proto.ImagePullResponse.FromString(reply).manifest_digest)

        return list(await asyncio.gather(*(one(r, b) for r, b in zip(refs, bundles, strict=True))))


class GuestpullServeTool(Tool):
    """PullImage calls to a running ``guestpull serve`` (a fresh service and store per run)."""

    name = "guestpull serve"
    peer = False

    def __init__(self, registry: Registry, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.registry = registry
        self.timeout = timeout
        self._config: Path | None = None
        self._service: ManagedProcess | None = None
        self._socket_dir: Path | None = None

    def setup(self, images: Sequence[GeneratedImage], base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self._config = write_cdh_config(base / "cdh.toml", self.registry.ca_path)

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        work.mkdir(parents=True, exist_ok=True)
        socket = self._start(work)
        if socket is None:
            assert self._service is not None
            return Attempt("failed", error=f"guestpull serve did not start: {self._service.log_tail(10)}")
        bundles = [work / f"bundle{i}" for i in range(len(images))]
        for bundle in bundles:
            bundle.mkdir()  # kata-agent creates the bundle directory before the call
        refs = [self.registry.ref(image) for image in images]
        pid = self._service.pid  # type: ignore[union-attr]
        cpu_before = tree_cpu_seconds(pid)
        reset_peak_rss(pid)
        start = time.perf_counter()
        try:
            with TreeRssSampler(pid) as tree:  # the service and any unpack workers it starts
                asyncio.run(asyncio.wait_for(pull_all(socket, refs, bundles), self.timeout))
        except (RpcError, TimeoutError) as err:
            return Attempt("failed", error=str(err))
        wall = time.perf_counter() - start
        sample = Sample(wall, tree_cpu_seconds(pid) - cpu_before, daemon_peak_rss_kib(pid),
                        tree.peak_kib)
        return Attempt("ok", sample, [bundle / "rootfs" for bundle in bundles])

    def _start(self, work: Path) -> Path | None:
        assert self._config is not None, "setup() first"
        # A unix socket path must stay under 108 bytes: keep it short, outside the work dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="gpb-serve-"))
        socket = self._socket_dir / "cdh.sock"
        self._service = ManagedProcess(
            [sys.executable, "-m", "guestpull", "serve", "--config", str(self._config),
             "--socket", f"unix://{socket}", "--work-dir", str(work / "store")],
            log_path=work / "serve.log",
        )
        service = self._service
        ready = wait_for(lambda: socket_answers(socket) or not service.running(), timeout=_START_TIMEOUT, interval=0.02)
        return socket if ready and service.running() else None

    def release(self, work: Path) -> None:
        """Stop the service (SIGTERM: it removes its socket), then undo its overlay mounts."""
        service, self._service = self._service, None
        if service is not None:
            service.stop(grace=40.0)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        unmount_under(work)
