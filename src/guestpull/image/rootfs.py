"""Turning stored layers into a rootfs: unpack a blob (verified), overlay mount, or copy.

* :func:`unpack_blob` — decode a stored layer blob, apply it onto a directory, verify the
  diff_id (the one place where decode, unpack and verification meet).
* :func:`ensure_layer` — the layer's overlay-format directory in the store, unpacked once
  even under concurrent pulls.
* :func:`mount_overlay` / :func:`unmount` — overlayfs with layer dirs as lowerdirs.  The
  lowerdir list uses the store's short layer names relative to ``layers/`` (``12:7:3``) by
  running ``mount`` from there, so even a few hundred layers fit the one-page option limit.
* :func:`start_copy_rootfs` + :func:`unpack_blob` with ``mode="copy"`` per layer, in order —
  re-apply every layer tar into a plain directory, with whiteouts as deletions: exactly
  umoci's flattening, and it needs no privileges.  A re-pull flattens into the store's
  cache instead and copies that (:mod:`guestpull.image.flat`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from guestpull.errors import NotFoundError, UnpackError, UnsupportedError
from guestpull.image.decode import Arriving
from guestpull.image.fsops import remove_path
from guestpull.image.store import Store
from guestpull.image.unpack import LayerStats, Mode, unpack_file
from guestpull.oci import Layer

#: The kernel copies mount options into one page; the terminating NUL needs a byte.
MOUNT_OPTIONS_LIMIT = 4095
_MOUNT_TIMEOUT = 60


#: Runs ``fn(*args, **kwargs)`` somewhere (this thread, or a worker process) and returns
#: its result; see :class:`guestpull.image.worker.UnpackWorkers`.
UnpackRunner = Callable[..., LayerStats]


def unpack_blob(
    store: Store, layer: Layer, dest: Path, *, mode: Mode, privileged: bool | None = None,
    runner: UnpackRunner | None = None, arriving_from: str | None = None,
) -> LayerStats:
    """Apply the stored blob of ``layer`` onto ``dest`` and verify its diff_id.

    DigestError on a diff_id mismatch, UnpackError for bad content; ``dest`` may then hold a
    partial layer, which the caller discards.  ``runner`` chooses where the work happens.
    ``arriving_from``: the ingest file the blob is still downloading into; the result counts
    only once the store has committed that very file (the caller waits for it: pull.py).
    """
    stored = str(store.content.path(layer.digest))
    arriving = None
    if arriving_from is not None:
        arriving = Arriving(layer.size, stored)
    elif not store.content.has(layer.digest):
        raise NotFoundError(f"layer blob {layer.digest} is not in the content store")
    args = (arriving_from or stored, layer.media_type, layer.diff_id, str(dest))
    if runner is None:
        return unpack_file(*args, mode=mode, privileged=privileged, arriving=arriving)
    return runner(unpack_file, *args, mode=mode, privileged=privileged, arriving=arriving)


def ensure_layer(store: Store, layer: Layer, runner: UnpackRunner | None = None) -> Path:
    """The overlay-format directory for ``layer`` (unpacking its blob once if needed)."""
    return store.layers.ensure(
        layer.diff_id,
        lambda tmp: unpack_blob(store, layer, tmp, mode="overlay", privileged=True, runner=runner),
    )


def overlay_supported() -> bool:
    """True when this process could mount overlayfs (root, and the kernel has it)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


def unique_top_most(layers: Sequence[Layer]) -> list[Layer]:
    """Layers bottom to top with repeats reduced to their top-most occurrence.

    overlayfs refuses one directory twice; keeping the *top-most* copy gives the same result
    as applying every occurrence in order (upstream keeps the first, which can differ).
    """
    seen: set[str] = set()
    out: list[Layer] = []
    for layer in reversed(layers):
        if layer.diff_id not in seen:
            seen.add(layer.diff_id)
            out.append(layer)
    out.reverse()
    return out


def overlay_options(layer_dirs_top_first: Sequence[Path], layers_root: Path, upper: Path,
                    work: Path) -> str:
    names = []
    for path in layer_dirs_top_first:
        if path.parent != layers_root:
            raise UnpackError(f"layer directory {path} is not in the store's layers/ directory")
        names.append(path.name)
    for p in (upper, work):
        if any(c in str(p) for c in ",:\\"):
            raise UnsupportedError(f"overlay path {p} contains ',', ':' or '\\'")
    options = f"lowerdir={':'.join(names)},upperdir={upper},workdir={work}"
    if len(options) > MOUNT_OPTIONS_LIMIT:
        raise UnsupportedError(
            f"overlay mount options are {len(options)} bytes, over the {MOUNT_OPTIONS_LIMIT}-byte "
            f"limit ({len(names)} layers); use the copy rootfs mode"
        )
    return options


def mount_overlay(layer_dirs_bottom_first: Sequence[Path], layers_root: Path, target: Path,
                  state_dir: Path) -> None:
    """Mount ``target`` as overlayfs over the layer dirs; upper/work live in ``state_dir``."""
    upper, work = state_dir / "upper", state_dir / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    options = overlay_options(list(reversed(layer_dirs_bottom_first)), layers_root,
                              upper.resolve(), work.resolve())
    # cwd=layers_root makes the short relative lowerdir names resolve (the kernel resolves
    # them against the mounting process's cwd), without chdir-ing this process.
    _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target.resolve())],
         cwd=layers_root, what=f"mount overlay on {target}")


def unmount(target: Path) -> None:
    _run(["umount", str(target)], cwd=None, what=f"unmount {target}")


def is_mountpoint(path: Path) -> bool:
    if not os.path.exists(path):  # nothing there is mounted on: skip reading the mount table
        return False
    try:
        wanted = str(path.resolve())
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == wanted:
                    return True
    except OSError:
        return False
    return False


def _unescape_mountinfo(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _run(argv: list[str], *, cwd: Path | None, what: str) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=_MOUNT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnpackError(f"cannot {what}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise UnpackError(f"cannot {what}: {detail or f'exit status {done.returncode}'}")


def start_copy_rootfs(rootfs: Path) -> None:
    """Create the (empty) directory a copy-mode rootfs is flattened into."""
    rootfs.mkdir(parents=True, exist_ok=True)
    if any(rootfs.iterdir()):
        raise UnpackError(f"rootfs directory {rootfs} is not empty")
    os.chmod(rootfs, 0o755)


def remove_tree(path: Path) -> None:
    """Remove ``path`` whatever it is (a tree of any depth; symlinks are not followed)."""
    remove_path(path)
