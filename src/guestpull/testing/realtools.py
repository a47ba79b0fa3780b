"""Images built by the tools people use: buildah, podman, skopeo, umoci and GNU tar.

:class:`Containers` runs buildah and podman on a private store (``vfs`` driver, its own
``--root``/``--runroot`` and config files), so nothing touches the machine's images and no
registry but the one named is contacted.  The GNU tar and umoci helpers write layers and OCI
layouts; :func:`reference_rootfs` unpacks one with ``umoci raw unpack`` (the reference a pulled
rootfs is compared with) and :func:`gnu_tar_extract` is the fallback where umoci cannot read
a layer.  Everything needs root (buildah/podman, mknod, chown).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from guestpull.testing import HarnessError, require_binary

#: The mtime of every file the helpers write (reproducible layers).
MTIME = 1_600_000_000
BUSYBOX = Path("/bin/busybox")
#: A policy that accepts any image: these stores only ever hold images the tests build.
_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def run_tool(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120.0,
             what: str | None = None) -> str:
    """Run a tool; its stdout, or HarnessError with its stderr."""
    try:
        done = subprocess.run(list(argv), env=env, capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{what or argv[0]} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise HarnessError(f"{what or argv[0]} failed ({done.returncode}): {' '.join(map(str, argv))}\n"
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")


class Containers:
    """buildah and podman with a store of their own under ``base`` (vfs driver)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        for sub in ("storage", "run", "tmp"):
            (base / sub).mkdir(exist_ok=True)
        (base / "policy.json").write_text(json.dumps(_POLICY))
        (base / "registries.conf").write_text("")
        (base / "auth.json").write_text('{"auths": {}}')
        self.env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.env.update(
            TMPDIR=str(base / "tmp"),
            BUILDAH_ISOLATION="chroot",
            CONTAINERS_REGISTRIES_CONF=str(base / "registries.conf"),
            REGISTRY_AUTH_FILE=str(base / "auth.json"),
            # Our own containers.conf/storage.conf: the machine's must not change the result.
            CONTAINERS_CONF=str(self._write("containers.conf", "")),
            CONTAINERS_STORAGE_CONF=str(self._write("storage.conf", (
                f'[storage]\ndriver = "vfs"\ngraphroot = "{base / "storage"}"\n'
                f'runroot = "{base / "run"}"\n'))),
        )
        self._store_flags = ["--root", str(base / "storage"), "--runroot", str(base / "run"),
                             "--storage-driver", "vfs"]

    def _write(self, name: str, text: str) -> Path:
        path = self.base / name
        path.write_text(text)
        return path

    def buildah(self, *args: str) -> str:
        return run_tool([require_binary("buildah"), *self._store_flags, *args], env=self.env,
                        what=f"buildah {args[0]}").strip()

    def podman(self, *args: str) -> str:
        return run_tool([require_binary("podman"), *self._store_flags, "--events-backend", "none",
                         "--cgroup-manager", "cgroupfs", *args], env=self.env,
                        what=f"podman {args[0]}").strip()

    def policy_flag(self) -> list[str]:
        return ["--signature-policy", str(self.base / "policy.json")]

    def build(self, name: str, layers: Sequence[Path], config: Sequence[str] = (),
              fmt: str = "oci", base: str = "scratch") -> str:
        """``buildah from BASE``, one ``buildah copy`` + ``commit`` per directory in ``layers``
        (each commit is a layer), ``buildah config CONFIG`` before the last; the image ID."""
        image = base
        for i, layer in enumerate(layers):
            container = self.buildah("from", *self.policy_flag(), "--pull-never", image)
            try:
                self.buildah("copy", "--quiet", container, f"{layer}/.", "/")
                if i == len(layers) - 1 and config:
                    self.buildah("config", *config, container)
                image = f"localhost/{name}-step{i}" if i < len(layers) - 1 else f"localhost/{name}"
                self.buildah("commit", "--quiet", "--format", fmt, "--timestamp", "1600000000",
                             *self.policy_flag(), container, image)
            finally:
                self.buildah("rm", container)
        return image

    def push(self, image: str, dest: str, *args: str) -> None:
        """``buildah push [ARGS] IMAGE DEST`` (``docker://`` to a plain-HTTP test registry)."""
        tls = ["--tls-verify=false"] if dest.startswith("docker://") else []
        self.buildah("push", "--quiet", *tls, *self.policy_flag(), *args, image, dest)


# --- trees ---------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def settle_mtimes(root: Path) -> None:
    """Fixed mtimes everywhere (links too), so layers do not depend on when they were built."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME + 7), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def busybox_tree(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A minimal system: the static busybox and a few applet links, users ``root`` and
    ``app`` (1000:1000, also in ``wheel``), ``/home/app``, and ``extra`` files."""
    write_file(root / "bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in ("sh", "id", "env", "pwd", "cat", "ls"):
        os.symlink("busybox", root / "bin" / applet)
    write_file(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    write_file(root / "etc/group", b"root:x:0:\nwheel:x:10:app\napp:x:1000:\n")
    (root / "home/app").mkdir(parents=True)
    os.chown(root / "home/app", 1000, 1000)
    for name, data in (extra or {}).items():
        write_file(root / name, data)
    settle_mtimes(root)
    return root


# --- GNU tar ---------------------------------------------------------------------------------


def gnu_tar(src: Path, out: Path, *args: str, members: Sequence[str] = (".",)) -> bytes:
    """``tar -c ARGS -C SRC MEMBERS`` with numeric owners; the archive's bytes.  No members:
    an empty archive (end-of-archive blocks only)."""
    names = list(members) if members else ["-T", "/dev/null"]
    run_tool([require_binary("tar"), "-c", "-f", str(out), "--numeric-owner", *args, "-C", str(src),
              *names], what="tar -c")
    return out.read_bytes()


def gnu_tar_extract(tars: Sequence[Path], rootfs: Path) -> None:
    """Extract layer tars in order as GNU tar does (owners, modes, xattrs); for layers umoci
    cannot read and that need no whiteout handling."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for tar in tars:
        run_tool([require_binary("tar"), "-x", "-f", str(tar), "-C", str(rootfs), "--same-owner",
                  "--numeric-owner", "--same-permissions", "--xattrs", "--xattrs-include=*",
                  "--no-overwrite-dir"], what="tar -x")


# --- umoci -----------------------------------------------------------------------------------


def umoci(*args: str) -> str:
    return run_tool([require_binary("umoci"), *args], what=f"umoci {args[0]}")


def umoci_new(layout: Path, tag: str) -> str:
    """An empty image ``LAYOUT:TAG`` (the layout created if needed); its umoci name."""
    if not (layout / "index.json").exists():
        umoci("init", "--layout", str(layout))
    image = f"{layout}:{tag}"
    umoci("new", "--image", image)
    return image


def reference_rootfs(layout: Path, tag: str, rootfs: Path) -> Path:
    """``umoci raw unpack`` of ``LAYOUT:TAG`` into ``rootfs``: the tree a pull must give."""
    umoci("raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs))
    return rootfs


def registry_to_layout(ref: str, layout: Path, tag: str, *extra: str) -> None:
    """``skopeo copy docker://REF oci:LAYOUT:TAG`` from a plain-HTTP test registry (this
    machine's platform from a list); EXTRA e.g. recompresses for umoci 0.4 (no zstd)."""
    run_tool([require_binary("skopeo"), "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false",
              "--src-no-creds", "--retry-times", "0", *extra, f"docker://{ref}", f"oci:{layout}:{tag}"],
             what="skopeo copy")
