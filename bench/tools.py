"""One runner per tool: guestpull, skopeo+umoci, containerd's ctr.

Every runner pulls one image (or several at once) into a fresh work directory and returns an
:class:`Attempt`: a measured :class:`~bench.measure.Sample` and the rootfs directories to
verify.  ``release`` then unmounts what the tool mounted, so the work directory can be removed.
guestpull runs as an external process (``python -m guestpull pull ... --bundle``) exactly as a
user would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import (
    ChainResult,
    Sample,
    daemon_cpu_seconds,
    daemon_peak_rss_kib,
    reset_peak_rss,
    run_chain,
    run_concurrently,
    run_process,
)
from bench.images import TAG, GeneratedImage
from bench.report import Status
from guestpull_testkit import HarnessError, ManagedProcess, require_binary, wait_for
from guestpull_testkit.config import write_cdh

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Registry:
    """Where the benchmark images are: ``host`` (127.0.0.1:PORT) and its CA file."""

    host: str
    ca_path: Path

    def ref(self, image: GeneratedImage) -> str:
        return f"{self.host}/{image.plan.name}:{TAG}"


@dataclass
class Attempt:
    status: Status
    sample: Sample | None = None
    rootfs: list[Path] = field(default_factory=list)
    error: str = ""


class Tool:
    """A puller under test.  ``peer`` is False for guestpull's own rows."""

    name = "tool"
    peer = True

    def setup(self, images: Sequence[GeneratedImage], base: Path) -> None:
        """Once before the first run of a workload (``base`` outlives the runs)."""

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        raise NotImplementedError

    def release(self, work: Path) -> None:
        """After verification: undo mounts and stop daemons so ``work`` can be removed."""
        unmount_under(work)

    def profile(self, images: Sequence[GeneratedImage], work: Path) -> dict[str, Any] | None:
        """One extra, untimed pull that says where the time goes (guestpull only)."""
        return None

    def close(self) -> None:
        """After the workload's last run."""


# --- guestpull -------------------------------------------------------------------------------


def guestpull_argv(ref: str, *, config: Path, store: Path, bundle: Path, mode: str) -> list[str]:
    return [
        sys.executable, "-m", "guestpull", "pull", ref,
        "--config", str(config), "--work-dir", str(store),
        "--bundle", str(bundle), "--rootfs-mode", mode, "--json",
    ]


def write_cdh_config(path: Path, ca_path: Path) -> Path:
    """A cdh.toml trusting the benchmark registry's CA (the test kit's builder)."""
    return write_cdh(path, roots=[Path(ca_path).read_bytes()])


class GuestpullTool(Tool):
    """``guestpull pull --bundle``: cold (fresh store each run) or warm (layers already stored)."""

    peer = False

    def __init__(self, registry: Registry, *, mode: str = "copy", warm: bool = False,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.registry = registry
        self.mode = mode
        self.warm = warm
        self.timeout = timeout
        self.name = f"guestpull {'warm ' if warm else ''}({mode})"
        self._config: Path | None = None
        self._warm_store: Path | None = None
        self._mounted: tuple[Path, list[Path]] | None = None

    def setup(self, images: Sequence[GeneratedImage], base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self._config = write_cdh_config(base / "cdh.toml", self.registry.ca_path)
        if self.warm:
            self._warm_store = base / "warm-store"
            prime = base / "warm-prime"
            attempt = self._run(images, prime, self._warm_store)
            self.release(prime)
            shutil.rmtree(prime, ignore_errors=True)
            if attempt.status != "ok":
                raise HarnessError(f"could not prime the warm store: {attempt.error}")

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        return self._run(images, work, self._warm_store or work / "store")

    def _run(self, images: Sequence[GeneratedImage], work: Path, store: Path) -> Attempt:
        assert self._config is not None, "setup() first"
        work.mkdir(parents=True, exist_ok=True)
        bundles = [work / f"bundle{i}" for i in range(len(images))]
        commands = [
            [guestpull_argv(self.registry.ref(image), config=self._config, store=store,
                            bundle=bundle, mode=self.mode)]
            for image, bundle in zip(images, bundles, strict=True)
        ]
        self._mounted = (store, bundles) if self.mode == "overlay" else None
        sample, failed = _run_commands(commands, self.timeout)
        if failed is not None:
            step = failed.failed_step
            assert step is not None
            status: Status = "unsupported" if "unsupported" in _error_categories(step.stdout) else "failed"
            return Attempt(status, error=step.describe())
        return Attempt("ok", sample, [bundle / "rootfs" for bundle in bundles])

    def profile(self, images: Sequence[GeneratedImage], work: Path) -> dict[str, Any] | None:
        """:mod:`bench.phases` on the first image, as :meth:`pull` would pull it."""
        assert self._config is not None, "setup() first"
        if len(images) != 1:
            return None  # several pulls at once: no one timeline to show
        work.mkdir(parents=True, exist_ok=True)
        store, bundle = self._warm_store or work / "store", work / "bundle0"
        self._mounted = (store, [bundle]) if self.mode == "overlay" else None
        result = run_process(
            [sys.executable, "-m", "bench.phases", self.registry.ref(images[0]),
             "--config", str(self._config), "--work-dir", str(store), "--bundle", str(bundle),
             "--rootfs-mode", self.mode],
            timeout=self.timeout, cwd=Path(__file__).resolve().parent.parent,
        )
        if not result.ok:
            return {"error": result.describe()}
        try:
            profile: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"unreadable profile output: {result.stdout[-300:]!r}"}
        return profile

    def release(self, work: Path) -> None:
        """``guestpull umount`` each overlay bundle (so the store knows), then anything left."""
        mounted, self._mounted = self._mounted, None
        if mounted is not None:
            store, bundles = mounted
            for bundle in bundles:
                if is_mountpoint(bundle / "rootfs"):
                    run_process([sys.executable, "-m", "guestpull", "umount", str(bundle),
                                 "--work-dir", str(store)], timeout=60)
        super().release(work)


class GuestpullStartupTool(Tool):
    """A guestpull command that pulls nothing (``--version``, ``pull --help``): start-up alone."""

    peer = False

    def __init__(self, name: str, args: Sequence[str], *, timeout: float = 60.0) -> None:
        self.name = name
        self.args = tuple(args)
        self.timeout = timeout

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        result = run_process([sys.executable, "-m", "guestpull", *self.args], timeout=self.timeout)
        if not result.ok:
            return Attempt("failed", error=result.describe())
        return Attempt("ok", Sample(result.wall_s, result.cpu_s, result.max_rss_kib,
                                    result.tree_rss_kib))


def _error_categories(stdout: str) -> set[str]:
    """Every ``category`` in guestpull's ``--json`` error output (attempts included)."""
    try:
        document = json.loads(stdout)
    except ValueError:
        return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("category"), str):
                found.add(node["category"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


def _run_commands(
    chains: Sequence[Sequence[Sequence[str]]], timeout: float, env: dict[str, str] | None = None
) -> tuple[Sample, ChainResult | None]:
    """Run one chain, or several at once; the sample and the first chain that failed."""
    if len(chains) == 1:
        chain = run_chain(chains[0], timeout=timeout, env=env)
        return chain.sample(), (None if chain.ok else chain)
    result = run_concurrently(chains, timeout=timeout, env=env)
    failed = next((chain for chain in result.chains if not chain.ok), None)
    return result.sample(), failed


# --- skopeo + umoci --------------------------------------------------------------------------


class SkopeoUmociTool(Tool):
    """The containers/image way: ``skopeo copy docker://… oci:DIR`` then ``umoci raw unpack``."""

    name = "skopeo+umoci"

    def __init__(self, registry: Registry, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.registry = registry
        self.timeout = timeout
        self.skopeo = require_binary("skopeo")
        self.umoci = require_binary("umoci")
        self._env: dict[str, str] | None = None

    def setup(self, images: Sequence[GeneratedImage], base: Path) -> None:
        self._env = skopeo_env(base / "skopeo", self.registry.ca_path)

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        assert self._env is not None, "setup() first"
        work.mkdir(parents=True, exist_ok=True)
        certs = self._env["BENCH_CERT_DIR"]
        chains = []
        for i, image in enumerate(images):
            layout = f"{work / f'oci{i}'}:{TAG}"
            chains.append([
                [self.skopeo, "copy", "--quiet", "--insecure-policy", "--retry-times", "0",
                 "--src-cert-dir", certs, "--src-no-creds",
                 f"docker://{self.registry.ref(image)}", f"oci:{layout}"],
                [self.umoci, "raw", "unpack", "--image", layout, str(work / f"rootfs{i}")],
            ])
        sample, failed = _run_commands(chains, self.timeout, self._env)
        if failed is not None:
            step = failed.failed_step
            assert step is not None
            unsupported = Path(step.argv[0]).name == "umoci" and "zstd" in step.stderr.lower()
            return Attempt("unsupported" if unsupported else "failed", error=step.describe())
        return Attempt("ok", sample, [work / f"rootfs{i}" for i in range(len(images))])


def skopeo_env(directory: Path, ca_path: Path) -> dict[str, str]:
    """No registries.conf mirrors, no stored credentials, no proxy; the CA in a cert dir."""
    certs = directory / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_path, certs / "ca.crt")
    (directory / "registries.conf").write_text("")
    (directory / "auth.json").write_text('{"auths": {}}')
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        CONTAINERS_REGISTRIES_CONF=str(directory / "registries.conf"),
        REGISTRY_AUTH_FILE=str(directory / "auth.json"),
        BENCH_CERT_DIR=str(certs),
    )
    return env


# --- containerd ------------------------------------------------------------------------------

_CTR_NAMESPACE = "bench"
_SNAPSHOTTER = "overlayfs"
_DAEMON_START_TIMEOUT = 30.0


def containerd_config(root: Path, socket: Path) -> str:
    """A containerd 1.6 config: its own root, state and socket; CRI off (it wants CNI)."""
    return (
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n\n'
        f'[grpc]\n  address = "{socket}"\n\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n\n'
        '[debug]\n  address = ""\n\n'
        '[metrics]\n  address = ""\n\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{root / "opt"}"\n'
    )


def write_hosts_dir(directory: Path, registry: Registry) -> Path:
    """A containerd hosts directory: HTTPS with our CA.  Without it ctr 1.6 speaks plain HTTP
    to 127.0.0.1 (its localhost rule), which an HTTPS registry answers with 400."""
    host_dir = directory / registry.host
    host_dir.mkdir(parents=True, exist_ok=True)
    url = f"https://{registry.host}"
    (host_dir / "hosts.toml").write_text(
        f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{registry.ca_path}"\n'
    )
    return directory


class ContainerdDaemon:
    """containerd started for one run, with root and state under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # A unix socket path must stay under 108 bytes: keep it short, outside the work dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="gpb-ctr-"))
        self.socket = self._socket_dir / "c.sock"
        config = root / "config.toml"
        config.write_text(containerd_config(root, self.socket))
        self.ctr = require_binary("ctr")
        self.process = ManagedProcess(
            [require_binary("containerd"), "--config", str(config)], log_path=root / "containerd.log"
        )
        if not wait_for(self._ready, timeout=_DAEMON_START_TIMEOUT, interval=0.1):
            self.stop()
            raise HarnessError(f"containerd did not start; log {root / 'containerd.log'}:\n"
                               f"{self.process.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def ctr_argv(self, *args: str) -> list[str]:
        return [self.ctr, "--address", str(self.socket), "--namespace", _CTR_NAMESPACE, *args]

    def _ready(self) -> bool:
        if not self.process.running():
            return True  # stop waiting; the caller sees it exited
        if not self.socket.exists():
            return False
        probe = subprocess.run(self.ctr_argv("version"), capture_output=True, timeout=10, check=False)
        return probe.returncode == 0

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


class CtrTool(Tool):
    """``ctr image pull`` (fetch + unpack into the overlayfs snapshotter), fresh daemon per run.

    The sample counts the ctr clients and the daemon: CPU is clients + daemon delta; peak RSS
    is the largest client plus the daemon's VmHWM (they run together).
    """

    name = "ctr (containerd)"

    def __init__(self, registry: Registry, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.registry = registry
        self.timeout = timeout
        self._daemon: ContainerdDaemon | None = None
        self._refs: list[str] = []

    def pull(self, images: Sequence[GeneratedImage], work: Path) -> Attempt:
        daemon = self._daemon = ContainerdDaemon(work / "containerd")
        if not daemon.process.running():
            return Attempt("failed", error=f"containerd exited: {daemon.process.log_tail(10)}")
        self._refs = [self.registry.ref(image) for image in images]
        hosts_dir = write_hosts_dir(work / "certs.d", self.registry)
        chains = [
            [daemon.ctr_argv("images", "pull", "--hosts-dir", str(hosts_dir),
                             "--snapshotter", _SNAPSHOTTER, ref)]
            for ref in self._refs
        ]
        cpu_before = daemon_cpu_seconds(daemon.pid)
        reset_peak_rss(daemon.pid)
        clients, failed = _run_commands(chains, self.timeout)
        daemon_cpu = daemon_cpu_seconds(daemon.pid) - cpu_before
        daemon_rss = daemon_peak_rss_kib(daemon.pid)
        if failed is not None:
            step = failed.failed_step
            assert step is not None
            return Attempt("failed", error=step.describe())
        # containerd's own peak (VmHWM) stands in for its part of the tree.
        sample = Sample(clients.wall_s, clients.cpu_s + daemon_cpu, clients.peak_rss_kib + daemon_rss,
                        clients.tree_rss_kib + daemon_rss)
        mounts = self._mount_rootfs(daemon, work)
        if isinstance(mounts, str):
            return Attempt("failed", sample, error=mounts)
        return Attempt("ok", sample, mounts)

    def _mount_rootfs(self, daemon: ContainerdDaemon, work: Path) -> list[Path] | str:
        """Mount each pulled image read-only (not timed) so its rootfs can be verified."""
        targets = []
        for i, ref in enumerate(self._refs):
            target = work / f"mnt{i}"
            target.mkdir()
            result = run_process(
                daemon.ctr_argv("images", "mount", "--snapshotter", _SNAPSHOTTER, ref, str(target)),
                timeout=120,
            )
            if not result.ok:
                return f"ctr images mount: {result.describe()}"
            targets.append(target)
        return targets

    def release(self, work: Path) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            for i in range(len(self._refs)):
                target = work / f"mnt{i}"
                if is_mountpoint(target):
                    run_process(daemon.ctr_argv("images", "unmount", "--rm", str(target)), timeout=60)
            daemon.stop()
        unmount_under(work)


# --- mounts ----------------------------------------------------------------------------------


def mountpoints() -> Iterator[Path]:
    """Mount points of this mount namespace (octal escapes in /proc/self/mountinfo decoded)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        yield Path(raw.encode().decode("unicode_escape"))


def is_mountpoint(path: Path) -> bool:
    path = Path(path).absolute()
    return any(point == path for point in mountpoints())


def unmount_under(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory``, deepest first."""
    directory = Path(directory).absolute()
    inside = [p for p in mountpoints() if p == directory or directory in p.parents]
    for point in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60, check=False)
