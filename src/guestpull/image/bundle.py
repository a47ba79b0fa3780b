"""The OCI bundle: ``DIR/rootfs`` and ``DIR/config.json``, as upstream builds it.

``config.json`` follows image-rs ``bundle.rs`` (oci-spec ``Spec::default()`` with hostname
``image-rs``, process from Entrypoint+Cmd / Env / WorkingDir, Volumes as tmpfs mounts,
annotations from Labels and the platform), plus what upstream leaves as a TODO: ``User``
resolved to uid/gid through the rootfs's ``/etc/passwd`` and ``/etc/group``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from guestpull.errors import (
    ConfigError,
    ExistsError,
    GuestpullError,
    Location,
    NoSpaceError,
    UnpackError,
    UnsupportedError,
    from_os_error,
)
from guestpull.image.flat import FLAT_ROOTFS, FLAT_WARNINGS, copy_tree
from guestpull.image.fsops import read_in_root
from guestpull.image.rootfs import (
    ensure_layer,
    is_mountpoint,
    mount_overlay,
    overlay_supported,
    remove_tree,
    UnpackRunner,
    start_copy_rootfs as _start_copy_rootfs,
    unique_top_most,
    unmount,
    unpack_blob,
)
from guestpull.image.store import ImageRecord, Store, flat_key, open_store
from guestpull.oci import ConfigFile, Layer

log = logging.getLogger(__name__)

RootfsMode = Literal["auto", "overlay", "copy"]
BUNDLE_CONFIG = "config.json"
BUNDLE_ROOTFS = "rootfs"
BUNDLE_HOSTNAME = "image-rs"
#: overlay upper/work dirs live next to the rootfs, so removing the bundle removes them.
OVERLAY_STATE = ".guestpull-overlay"
STORE_MARKER = "store"
_MAX_ID = (1 << 32) - 1


@dataclass(frozen=True)
class BundleResult:
    mode_used: Literal["overlay", "copy"]
    rootfs: Path
    config: Path
    warnings: tuple[str, ...] = ()


def create_bundle(
    store: Store,
    image: ImageRecord,
    bundle_dir: str | os.PathLike[str],
    *,
    mode: RootfsMode = "auto",
    force: bool = False,
    privileged: bool | None = None,
) -> BundleResult:
    """Build ``bundle_dir/rootfs`` and ``bundle_dir/config.json`` for a stored image.

    ``auto`` mounts an overlay when it can and flattens a copy otherwise; the result says
    which.  ExistsError if the bundle already has a rootfs or config.json and not ``force``.
    """
    config_doc = f"image config {image.config_digest}"
    builder = BundleBuilder(store, store.content.read(image.config_digest), config_doc,
                            image.layers, bundle_dir, mode=mode, force=force, privileged=privileged)
    try:
        for layer in builder.layers:
            builder.prepare_layer(layer)
        return builder.finish(image.reference)
    except BaseException:
        builder.abort()
        raise


class BundleBuilder:
    """A bundle built one layer at a time, so unpacking can start while later layers arrive.

    ``layers`` are what :meth:`prepare_layer` must be given once each blob is stored: in order
    when :attr:`sequential` (copy mode flattens bottom to top), in any order otherwise
    (overlay mode unpacks each layer into its own directory).  Then :meth:`finish`, or
    :meth:`abort` on any failure.  A copy-mode re-pull goes through the store's flat rootfs
    cache (:meth:`_plan_flat_cache`): ``layers`` is then empty when the cache exists, and
    :meth:`finish` copies it.
    """

    def __init__(
        self,
        store: Store,
        config_bytes: bytes | ConfigFile,
        config_doc: str,
        layers: Sequence[Layer],
        bundle_dir: str | os.PathLike[str],
        *,
        mode: RootfsMode = "auto",
        force: bool = False,
        privileged: bool | None = None,
        runner: UnpackRunner | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.bundle = Path(bundle_dir).absolute()
        self.rootfs = self.bundle / BUNDLE_ROOTFS
        # A caller that has parsed the config already passes it: parsed once per pull.
        self.config = (config_bytes if isinstance(config_bytes, ConfigFile)
                       else ConfigFile.parse(config_bytes, doc=config_doc))
        if self.config.os != "linux":
            raise UnsupportedError(
                f"image OS is {self.config.os!r}; only linux images can run",
                location=Location(file=config_doc, field="os"),
            )
        if tuple(layer.diff_id for layer in layers) != self.config.diff_ids:
            raise ConfigError(
                f"the image has {len(layers)} layers but its config lists "
                f"{len(self.config.diff_ids)} diff_ids, or they differ",
                location=Location(file=config_doc, field="rootfs.diff_ids"),
            )
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.requested_mode = mode
        self.mode_used = _choose_mode(mode, self.privileged, len(layers))
        self.all_layers = tuple(layers)
        self.warnings: list[str] = []
        # Copy mode from the store's flat rootfs cache of this chain (None: apply the blobs
        # onto the rootfs); ``_flat_build``: the cache is missing and this bundle builds it.
        self._flat_key: str | None = None
        self._flat_build = False
        self._flat_ready = False
        if self.mode_used == "copy":
            self._plan_flat_cache()
        try:
            _prepare_bundle_dir(self.bundle, force)
            if self.mode_used == "copy":
                _start_copy_rootfs(self.rootfs)
        except OSError as err:
            raise from_os_error(err, "create the bundle directory", self.bundle) from None

    @property
    def sequential(self) -> bool:
        return self.mode_used == "copy"

    @property
    def layers(self) -> list[Layer]:
        if self._flat_key is not None and not self._flat_build:
            return []  # the cache is there: finish() copies it, no layer needs work
        return list(self.all_layers) if self.sequential else unique_top_most(self.all_layers)

    def _plan_flat_cache(self) -> None:
        """Use the flat rootfs cache when it exists; build it on a re-pull.

        A first pull (some blob not yet stored) applies the blobs straight onto the rootfs, as
        before: an image pulled once never pays for a second copy of its rootfs in memory.
        When every blob was already stored (a re-pull), the layers are applied into the cache
        instead and the rootfs is copied from it; later pulls of the chain only copy.
        """
        if not self.all_layers:
            return
        key = flat_key([layer.diff_id for layer in self.all_layers], self.privileged)
        if self.store.flats.has(key):
            self._flat_key = key
        elif all(self.store.content.has(layer.digest) for layer in self.all_layers):
            self._flat_key, self._flat_build = key, True

    def prepare_layer(self, layer: Layer, arriving_from: str | None = None) -> None:
        """Apply (copy) or unpack (overlay) one layer whose blob is in the content store.

        Copy mode only: ``arriving_from``, the ingest file its blob is still downloading into
        (see :func:`~guestpull.image.rootfs.unpack_blob`); the caller must see that file
        committed before the rootfs counts, and call :meth:`restart_copy` if it was not.
        The flat cache is only used when every blob was stored before the pull, so nothing
        arrives then.
        """
        if self._flat_key is not None:
            # Every blob is stored: the first call (the bottom layer; copy mode goes in order)
            # builds the whole cache, under its lock.
            if not self._flat_ready:
                try:
                    self.store.flats.ensure(self._flat_key, self._fill_flat_cache)
                    self._flat_ready = True
                except NoSpaceError as exc:
                    self._without_flat_cache(exc, drop=False)
                    self._apply(layer)
        elif self.mode_used == "copy":
            self._apply(layer, arriving_from)
        else:
            ensure_layer(self.store, layer, self.runner)

    def _apply(self, layer: Layer, arriving_from: str | None = None) -> None:
        stats = unpack_blob(self.store, layer, self.rootfs, mode="copy",
                            privileged=self.privileged, runner=self.runner,
                            arriving_from=arriving_from)
        self.warnings.extend(stats.warnings)

    def restart_copy(self) -> None:
        """Empty the copy rootfs, to apply its layers again from the stored blobs (a layer was
        applied from a download attempt that was then abandoned)."""
        remove_tree(self.rootfs)
        _start_copy_rootfs(self.rootfs)
        self.warnings.clear()

    def _without_flat_cache(self, exc: NoSpaceError, *, drop: bool) -> None:
        """Memory is short: go on as a first pull does, straight from the blobs (``drop``: and
        free the cache, which this guest cannot afford next to its bundles)."""
        assert self._flat_key is not None
        message = f"no space for the flat rootfs cache ({exc}); applying the layers directly"
        log.warning("%s", message)
        self.warnings.append(message)
        if drop:
            self.store.flats.remove(self._flat_key)
        self._flat_key = None

    def finish(self, reference: str) -> BundleResult:
        """Copy the rootfs from the cache or mount the overlay (if so planned), write config.json."""
        if self._flat_key is not None:
            try:
                self._copy_flat_cache(self._flat_key)
            except NoSpaceError as exc:
                self._without_flat_cache(exc, drop=True)
                remove_tree(self.rootfs)
                _start_copy_rootfs(self.rootfs)
                for layer in self.all_layers:
                    self._apply(layer)
        if self.mode_used == "overlay":
            try:
                _overlay_rootfs(self.store, reference, self.layers, self.bundle)
            except GuestpullError as exc:
                if self.requested_mode != "auto":
                    raise
                self._fall_back_to_copy(exc)
        spec = runtime_spec(self.config, self.rootfs)
        try:
            config_path = _write_json_atomically(self.bundle / BUNDLE_CONFIG, spec)
        except OSError as err:
            raise from_os_error(err, "write the bundle's config.json", self.bundle / BUNDLE_CONFIG) from None
        log.info("bundle %s created with the %s rootfs mode", self.bundle, self.mode_used)
        return BundleResult(self.mode_used, self.rootfs, config_path, tuple(self.warnings))

    def abort(self) -> None:
        _undo_rootfs(self.store, self.bundle)

    def _fill_flat_cache(self, tmp: Path) -> None:
        """Build a cache in ``tmp``: the rootfs (every blob applied and its diff_id checked)
        and the applier's warnings, which each bundle copied from it reports again."""
        warnings: list[str] = []
        rootfs = tmp / FLAT_ROOTFS
        _start_copy_rootfs(rootfs)
        for layer in self.all_layers:
            stats = unpack_blob(self.store, layer, rootfs, mode="copy",
                                privileged=self.privileged, runner=self.runner)
            warnings.extend(stats.warnings)
        _write_json_atomically(tmp / FLAT_WARNINGS, {"warnings": warnings})

    def _copy_flat_cache(self, key: str) -> None:
        # Built in prepare_layer (a re-pull), or there when this bundle began: if a prune
        # removed it since, reading() builds it again in this thread.
        with self.store.flats.reading(key, self._fill_flat_cache) as cache:
            try:
                warnings = json.loads((cache / FLAT_WARNINGS).read_bytes())["warnings"]
                if not (cache / FLAT_ROOTFS).is_dir():
                    raise FileNotFoundError(f"no {FLAT_ROOTFS}/ in it")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UnpackError(
                    f"flat rootfs cache {cache} is unusable: {exc}",
                    hint=f"run `guestpull store check --repair --work-dir {self.store.work_dir}`",
                ) from exc
            copy_tree(cache / FLAT_ROOTFS, self.rootfs, privileged=self.privileged)
        self.warnings.extend(str(w) for w in warnings)

    def _fall_back_to_copy(self, exc: GuestpullError) -> None:
        message = f"overlay rootfs failed ({exc}); falling back to copy"
        log.warning("%s", message)
        self.warnings.append(message)
        _undo_rootfs(self.store, self.bundle)
        self.mode_used = "copy"
        self._flat_key = None
        _start_copy_rootfs(self.rootfs)
        for layer in self.all_layers:
            self._apply(layer)


def remove_bundle(bundle_dir: str | os.PathLike[str], store: Store) -> None:
    """Undo a bundle that was built: unmount an overlay rootfs, remove ``rootfs``, the overlay
    state and ``config.json``; the bundle directory itself stays (its creator owns it)."""
    bundle = Path(bundle_dir).absolute()
    _undo_rootfs(store, bundle)
    remove_tree(bundle / BUNDLE_CONFIG)


def umount_bundle(bundle_dir: str | os.PathLike[str], store: Store | None = None) -> bool:
    """Undo an overlay rootfs (unmount, drop upper/work).  False if nothing was mounted."""
    bundle = Path(bundle_dir).absolute()
    rootfs = bundle / BUNDLE_ROOTFS
    mounted = is_mountpoint(rootfs)
    if mounted:
        unmount(rootfs)
    if store is None:
        store = _store_of(bundle)
    remove_tree(bundle / OVERLAY_STATE)
    if store is not None:
        store.forget_bundle(bundle)
    return mounted


def _store_of(bundle: Path) -> Store | None:
    """The store an overlay bundle was made from, as its marker says (None if unknown)."""
    marker = bundle / OVERLAY_STATE / STORE_MARKER
    try:
        work_dir = Path(marker.read_text().strip())
    except OSError:
        return None
    return open_store(work_dir) if (work_dir / "meta.db").exists() else None


def _choose_mode(mode: RootfsMode, privileged: bool, layer_count: int) -> Literal["overlay", "copy"]:
    if mode == "copy":
        return "copy"
    usable = privileged and overlay_supported()
    if mode == "overlay":
        if not usable:
            raise UnsupportedError(
                "the overlay rootfs mode needs root and overlayfs in the kernel",
                hint="use the copy rootfs mode",
            )
        if layer_count == 0:
            raise UnsupportedError("the overlay rootfs mode needs at least one layer")
        return "overlay"
    if mode != "auto":
        raise ConfigError(f"unknown rootfs mode {mode!r} (want auto, overlay or copy)")
    return "overlay" if usable and layer_count > 0 else "copy"


def check_bundle_target(bundle_dir: str | os.PathLike[str], force: bool) -> bool:
    """Whether the bundle is occupied; ExistsError if it is and ``force`` is not given."""
    bundle = Path(bundle_dir).absolute()
    rootfs, config = bundle / BUNDLE_ROOTFS, bundle / BUNDLE_CONFIG
    occupied = (
        config.exists()
        or is_mountpoint(rootfs)
        or (rootfs.is_dir() and any(rootfs.iterdir()))
        or (rootfs.exists() and not rootfs.is_dir())
    )
    if occupied and not force:
        raise ExistsError(
            f"bundle {bundle} already exists (rootfs or config.json present)",
            hint="pass --force to replace it",
        )
    return occupied


def _prepare_bundle_dir(bundle: Path, force: bool) -> None:
    rootfs, config = bundle / BUNDLE_ROOTFS, bundle / BUNDLE_CONFIG
    if check_bundle_target(bundle, force):
        if is_mountpoint(rootfs):
            unmount(rootfs)
        remove_tree(rootfs)
        remove_tree(config)
        remove_tree(bundle / OVERLAY_STATE)
    bundle.mkdir(parents=True, exist_ok=True)


def _overlay_rootfs(store: Store, reference: str, layers: Sequence[Layer], bundle: Path) -> None:
    dirs = [ensure_layer(store, layer) for layer in layers]
    # Recorded before mounting, so a prune racing with us keeps these layers.
    store.record_bundle(bundle, reference, [layer.diff_id for layer in layers])
    # So `guestpull umount` can release the layers in the right store without being told it.
    (bundle / OVERLAY_STATE).mkdir(parents=True, exist_ok=True)
    (bundle / OVERLAY_STATE / STORE_MARKER).write_text(str(store.work_dir))
    mount_overlay(dirs, store.layers.root, bundle / BUNDLE_ROOTFS, bundle / OVERLAY_STATE)


def _undo_rootfs(store: Store, bundle: Path) -> None:
    rootfs = bundle / BUNDLE_ROOTFS
    try:
        if is_mountpoint(rootfs):
            unmount(rootfs)
        remove_tree(rootfs)
        remove_tree(bundle / OVERLAY_STATE)
        store.forget_bundle(bundle)
    except (OSError, GuestpullError) as exc:  # cleanup must not hide the original error
        log.warning("cleaning up %s failed: %s", rootfs, exc)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# --- config.json -----------------------------------------------------------------------------

_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _default_process() -> dict[str, Any]:
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: list(_DEFAULT_CAPS) for k in
                         ("bounding", "effective", "inheritable", "permitted", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }


def _default_mounts() -> list[dict[str, Any]]:
    def m(dest: str, typ: str, src: str, opts: list[str]) -> dict[str, Any]:
        return {"destination": dest, "type": typ, "source": src, "options": opts}

    return [
        m("/proc", "proc", "proc", []),
        m("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        m("/dev/pts", "devpts", "devpts",
          ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        m("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        m("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        m("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        m("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]


def _default_linux() -> dict[str, Any]:
    return {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"],
    }


def runtime_spec(config: ConfigFile, rootfs: Path) -> dict[str, Any]:
    """The runtime ``config.json`` for an image config (``rootfs`` is read for ``User``)."""
    process = _default_process()
    mounts = _default_mounts()
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}
    c = config.config
    if c is not None:
        if c.working_dir:
            process["cwd"] = c.working_dir
        if c.env is not None:
            process["env"] = list(c.env)
        args = list(c.entrypoint or ()) + list(c.cmd or ())
        if args:
            process["args"] = args
        process["user"] = resolve_user(rootfs, c.user)
        labels = dict(c.labels)
        annotations.update(labels)
        if c.stop_signal and "org.opencontainers.image.stopSignal" not in labels:
            annotations["org.opencontainers.image.stopSignal"] = c.stop_signal
        if c.exposed_ports:
            annotations["org.opencontainers.image.exposedPorts"] = ",".join(c.exposed_ports)
        volumes = [
            {"destination": v, "type": "tmpfs",
             "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}
            for v in c.volumes
        ]
        mounts = volumes + mounts

    def implicit(key: str, value: str | None) -> None:
        if value and f"org.opencontainers.image.{key}" not in labels:
            annotations[f"org.opencontainers.image.{key}"] = value

    implicit("os", config.os)
    implicit("os.version", config.os_version)
    if config.os_features is not None:
        implicit("os.features", json.dumps(list(config.os_features), separators=(",", ":")))
    implicit("architecture", config.architecture)
    implicit("variant", config.variant)
    implicit("author", config.author)
    implicit("created", config.created)
    return {
        "ociVersion": "1.0.2-dev",
        "root": {"path": BUNDLE_ROOTFS, "readonly": True},
        "mounts": mounts,
        "process": process,
        "hostname": BUNDLE_HOSTNAME,
        "annotations": annotations,
        "linux": _default_linux(),
    }


# --- User → uid/gid --------------------------------------------------------------------------


def _parse_colon_file(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def _as_id(text: str) -> int | None:
    if text.isdigit():
        value = int(text)
        return value if value <= _MAX_ID else None
    return None


def resolve_user(rootfs: Path, user: str) -> dict[str, Any]:
    """Image ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``…) → OCI process.user.

    Names are looked up in the rootfs's /etc/passwd and /etc/group (read as the container
    sees them); additionalGids are the groups that list the user as a member.
    """
    user_part, _, group_part = user.partition(":")
    passwd = _parse_colon_file(read_in_root(rootfs, "/etc/passwd"))
    groups = _parse_colon_file(read_in_root(rootfs, "/etc/group"))
    where = Location(file="image config", field="config.User")

    name: str | None = None
    uid, gid = 0, 0
    if user_part:
        entry = next((p for p in passwd if len(p) >= 4 and p[0] == user_part), None)
        numeric = _as_id(user_part)
        if entry is None and numeric is not None:
            entry = next((p for p in passwd if len(p) >= 4 and p[2] == user_part), None)
        if entry is not None:
            name, uid, gid = entry[0], _as_id(entry[2]) or 0, _as_id(entry[3]) or 0
            if numeric is not None:
                uid = numeric
        elif numeric is not None:
            uid = numeric
        else:
            raise ConfigError(f"user {user_part!r} is not in the image's /etc/passwd", location=where)
    else:
        root_entry = next((p for p in passwd if len(p) >= 4 and p[2] == "0"), None)
        name = root_entry[0] if root_entry else None

    if group_part:
        numeric_gid = _as_id(group_part)
        group_entry = next((g for g in groups if len(g) >= 3 and g[0] == group_part), None)
        if numeric_gid is not None:
            gid = numeric_gid
        elif group_entry is not None and _as_id(group_entry[2]) is not None:
            gid = _as_id(group_entry[2]) or 0
        else:
            raise ConfigError(f"group {group_part!r} is not in the image's /etc/group", location=where)

    result: dict[str, Any] = {"uid": uid, "gid": gid}
    if name is not None:
        extra = sorted({
            gid_value for g in groups
            if len(g) >= 4 and name in g[3].split(",")
            and (gid_value := _as_id(g[2])) is not None and gid_value != gid
        })
        if extra:
            result["additionalGids"] = extra
    return result
