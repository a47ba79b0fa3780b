"""Bundles run: busybox images built by buildah, pulled into copy and overlay bundles, started
with ``runc run`` on our config.json; the process sees the image's user, directory and env.

One image names its user (``app``: uid, gid and the supplementary group come from the
image's /etc/passwd and /etc/group), the other gives ``uid:gid`` and a WorkingDir the rootfs
does not have (the runtime creates it).  Entrypoint + Cmd make the command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import config_args, invoke, pull_args
from guestpull.testing.realtools import Containers, busybox_tree
from guestpull.testing.registry import RegistryProcess

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc and buildah need root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("buildah", "runc")) or not Path("/bin/busybox").exists(),
                       reason="needs buildah, runc and busybox-static (scripts/setup.sh)"),
]

SCRIPT = "id; pwd; env"


@dataclass(frozen=True)
class RunImage:
    config: tuple[str, ...]  # buildah config arguments
    expected_id: str
    expected_pwd: str
    expected_env: frozenset[str]


IMAGES = {
    "user-by-name": RunImage(
        ("--user", "app", "--entrypoint", '["/bin/sh", "-c"]', "--cmd", f'["{SCRIPT}"]',
         "--env", "PATH=/bin", "--env", "GREETING=hello world", "--workingdir", "/home/app"),
        expected_id="uid=1000(app) gid=1000(app) groups=10(wheel)",
        expected_pwd="/home/app",
        # HOME: runc sets it from the image's /etc/passwd ("/" for a uid not listed there).
        expected_env=frozenset({"PATH=/bin", "GREETING=hello world", "PWD=/home/app", "SHLVL=1",
                                "HOME=/home/app"}),
    ),
    "user-by-uid-gid": RunImage(
        ("--user", "4242:10", "--entrypoint", '["/bin/busybox", "sh"]', "--cmd", f'["-c", "{SCRIPT}"]',
         "--env", "PATH=/bin:/usr/bin", "--env", "MODE=numeric", "--workingdir", "/not/in/the/rootfs"),
        expected_id="uid=4242 gid=10(wheel)",  # a uid not in /etc/passwd: no supplementary groups
        expected_pwd="/not/in/the/rootfs",
        expected_env=frozenset({"PATH=/bin:/usr/bin", "MODE=numeric", "PWD=/not/in/the/rootfs", "SHLVL=1",
                                "HOME=/"}),
    ),
}


@pytest.fixture(scope="module")
def run_images(http_registry: RegistryProcess, containers: Containers, session_shm: Path) -> dict[str, str]:
    """Each image built with buildah from scratch and pushed; name → reference."""
    refs = {}
    for name, image in IMAGES.items():
        tree = busybox_tree(session_shm / "run-images" / name)
        # The uid:gid image's WorkingDir is missing from its rootfs; the other's is there.
        assert (tree / image.expected_pwd.lstrip("/")).is_dir() == (name == "user-by-name")
        built = containers.build(f"run-{name}", [tree], image.config)
        refs[name] = f"{http_registry.host}/run/{name}:v1"
        containers.push(built, f"docker://{refs[name]}")
    return refs


def runc_run(bundle: Path, state: Path) -> str:
    """``runc run`` the bundle to completion; its stdout.  The container is deleted whatever
    happens (a timeout would otherwise leave it running)."""
    container = f"guestpull-{uuid.uuid4().hex[:12]}"
    try:
        done = subprocess.run(
            ["runc", "--root", str(state), "run", "--bundle", str(bundle), container],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", container],
                       capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, f"runc run failed ({done.returncode}): {done.stderr}"
    return done.stdout


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_bundle_runs_in_both_modes(
    http_registry: RegistryProcess, run_images: dict[str, str], shm_path: Path, name: str
) -> None:
    image = IMAGES[name]
    outputs = {}
    for mode in ("copy", "overlay"):
        bundle = shm_path / f"bundle-{mode}"
        config = config_args(shm_path / "config", http_registry)
        pulled = invoke(*pull_args(run_images[name], config, shm_path / "work", bundle, "--rootfs-mode", mode))
        assert pulled.exit_code == 0, pulled
        assert pulled.json["result"]["rootfs_mode"] == mode
        try:
            outputs[mode] = runc_run(bundle, shm_path / "runc-state")
        finally:
            if mode == "overlay":
                assert invoke("umount", str(bundle)).exit_code == 0
    for mode, output in outputs.items():
        lines = output.splitlines()
        assert lines[0] == image.expected_id, (mode, output)
        assert lines[1] == image.expected_pwd, (mode, output)
        assert set(lines[2:]) == image.expected_env, (mode, output)
    assert outputs["copy"] == outputs["overlay"]
