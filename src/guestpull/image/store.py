"""The image store under ``work_dir``: content by digest, unpacked layers by diff_id, metadata.

Layout::

    work_dir/
      content/<algorithm>/<hex>   verified blobs (manifests, configs, layers), read-only
      ingest/                     blobs being written (temporary names, flock-held)
      layers/<n>                  unpacked layers; <n> is a small integer so that overlay
                                  lowerdir lists stay short; layers/tmp.* are in progress
      flat/<chain>                flattened copy-mode rootfs per layer chain (ChainID hex,
                                  ``-rootless`` when built unprivileged); flat/tmp.* in progress
      locks/<key>                 flock files (threads and processes)
      meta.db                     SQLite: images, layers (complete or not), bundles

Rules: a blob becomes visible only by ``rename`` after its digest and size matched; a layer
becomes visible only when its SQLite row is marked complete after a verified unpack; a flat
rootfs cache only by ``rename`` once every layer of its chain is applied and verified.  A
killed pull leaves temporaries that :meth:`Store.recover` (run by :func:`open_store`) removes;
temporaries still locked by a live process are left alone.

Whatever a crash or a hostile layer leaves, recovery never makes the store unusable: trees of
any depth are removed without recursion (:func:`~guestpull.image.fsops.remove_path`), what
cannot be removed is logged and skipped, a layer row whose directory vanished is replaced on
the next pull, and a damaged meta.db is a :class:`~guestpull.errors.StoreError` that names
``guestpull store check --repair`` (:mod:`guestpull.image.storecheck`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from guestpull.config import DEFAULT_WORK_DIR
from guestpull.errors import DigestError, NoSpaceError, NotFoundError, StoreError, from_os_error
from guestpull.image.flat import chain_id
from guestpull.image.fsops import remove_path
from guestpull.oci import Layer, split_digest

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    diff_id TEXT UNIQUE NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    reference TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    manifest BLOB NOT NULL,
    layers TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    path TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    diff_ids TEXT NOT NULL
);
"""

_IMAGE_SELECT = "SELECT reference, manifest_digest, config_digest, layers, created FROM images"


@dataclass(frozen=True)
class ImageRecord:
    reference: str
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    created: float


@dataclass(frozen=True)
class PruneResult:
    blobs_removed: int
    layers_removed: int
    bytes_freed: int  # by the blobs (layer dirs and caches are not measured)
    flats_removed: int = 0


def _lock_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:120]
    if safe != key:
        safe += "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return safe


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# --- content ---------------------------------------------------------------------------------


class BlobWriter:
    """Ingest one blob; :meth:`commit` checks digest and size before it becomes visible.

    Use as a context manager: leaving without ``commit()`` aborts and removes the temp file.
    """

    def __init__(self, content: ContentStore, digest: str, size: int | None) -> None:
        algorithm, hexpart = split_digest(digest)
        self.digest = digest
        self.size = size
        self._content = content
        fd, tmp = tempfile.mkstemp(prefix=f"{hexpart[:16]}.", dir=content.ingest_dir)
        # Held until commit/abort so recover() in another process leaves it alone.
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._tmp = Path(tmp)
        # Unbuffered: the download hands over chunks of up to 1 MiB (a buffer would only copy
        # them once more), and a layer unpacking while its blob arrives reads the file as it
        # grows (see decode.ArrivingBlob).
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.new(algorithm)
        self._written = 0
        self._closed = False

    @property
    def written(self) -> int:
        return self._written

    @property
    def ingest_path(self) -> Path:
        """Where the bytes land until commit: readable while they arrive (unverified!)."""
        return self._tmp

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("blob writer is closed")
        if self.size is not None and self._written + len(data) > self.size:
            self.abort()
            raise DigestError(
                f"blob {self.digest}: more data than the declared size {self.size} bytes"
            )
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError as exc:
            self._fail(exc)
        self._hash.update(data)
        self._written += len(data)

    def commit(self) -> Path:
        """Make the blob visible; DigestError (and nothing stored) if digest or size differ."""
        if self._closed:
            raise ValueError("blob writer is closed")
        actual = f"{self._hash.name}:{self._hash.hexdigest()}"
        if self.size is not None and self._written != self.size:
            self.abort()
            raise DigestError(
                f"blob {self.digest}: size mismatch: expected {self.size} bytes, got {self._written}"
            )
        if actual != self.digest:
            self.abort()
            raise DigestError(f"blob digest mismatch: expected {self.digest}, got {actual}")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc)
        final = self._content.path(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._tmp, 0o444)
        os.rename(self._tmp, final)
        self._closed = True
        self._file.close()
        return final

    def _fail(self, exc: OSError) -> NoReturn:
        """Abort; a full disk becomes a NoSpaceError naming where the blob was going."""
        self.abort()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"no space left in {self._content.root} while storing blob {self.digest}",
                hint="free space in the work dir, prune the store, or give the guest more memory",
            ) from exc
        raise exc

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        with contextlib.suppress(OSError):  # flushing what is left of a discarded blob
            self._file.close()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class ContentStore:
    """Blobs addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root / "content"
        self.ingest_dir = root / "ingest"

    def path(self, digest: str) -> Path:
        algorithm, hexpart = split_digest(digest)
        return self.root / algorithm / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, digest: str, size: int | None) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the content store") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def put(self, digest: str, data: bytes) -> Path:
        """Store small bytes (manifest, config) through the same verified path."""
        if self.has(digest):
            return self.path(digest)
        with self.writer(digest, len(data)) as w:
            w.write(data)
            return w.commit()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> Iterator[str]:
        """Names of the stored blobs (debris that is not a file is skipped; see store check)."""
        for algo_dir in list_dir(self.root):
            for blob in list_dir(algo_dir):
                if blob.is_file() and not blob.is_symlink():
                    yield f"{algo_dir.name}:{blob.name}"


# --- layers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def building_dir(root: Path) -> Iterator[Path]:
    """A fresh ``root/tmp.*`` directory (0755) to fill and rename into place.

    Its flock is held until the block ends, so :meth:`Store.recover` in another process
    leaves it alone; it is removed if the block raises (after a rename there is nothing left).
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp.", dir=root))
    dir_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        os.chmod(tmp, 0o755)
        yield tmp
    except BaseException:
        _discard(tmp)
        raise
    finally:
        os.close(dir_fd)


class LayerStore:
    """Unpacked layer directories keyed by diff_id, shared by every image."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.root = store.work_dir / "layers"

    def get(self, diff_id: str) -> Path | None:
        """The directory of a complete layer, or None."""
        split_digest(diff_id)
        with self._store._db() as db:
            row = db.execute(
                "SELECT id FROM layers WHERE diff_id = ? AND complete = 1", (diff_id,)
            ).fetchone()
        if row is None:
            return None
        path = self.root / str(row[0])
        return path if path.is_dir() else None

    def has(self, diff_id: str) -> bool:
        return self.get(diff_id) is not None

    def ensure(self, diff_id: str, fill: Callable[[Path], object]) -> Path:
        """The layer's directory, calling ``fill(tmpdir)`` to create it if it is missing.

        Concurrent callers for one diff_id (threads or processes) serialise on a file lock:
        one fills, the others wait and reuse.  ``fill`` must raise if the content is wrong
        (diff_id); then nothing is kept.
        """
        split_digest(diff_id)
        with self._store.lock(f"layer-{diff_id}"):
            existing = self.get(diff_id)
            if existing is not None:
                return existing
            self._drop_stale(diff_id)
            layer_id: int | None = None
            try:
                with building_dir(self.root) as tmp:
                    fill(tmp)
                    with self._store._db() as db:
                        cur = db.execute(
                            "INSERT INTO layers (diff_id, complete, created) VALUES (?, 0, ?)",
                            (diff_id, time.time()),
                        )
                        layer_id = int(cur.lastrowid or 0)
                    final = self.root / str(layer_id)
                    _discard(final)  # an orphan with our fresh id can only be debris
                    os.rename(tmp, final)
                    with self._store._db() as db:
                        db.execute("UPDATE layers SET complete = 1 WHERE id = ?", (layer_id,))
                return final
            except BaseException:
                if layer_id is not None:
                    _discard(self.root / str(layer_id))
                    with self._store._db() as db:
                        db.execute("DELETE FROM layers WHERE id = ?", (layer_id,))
                raise

    def _drop_stale(self, diff_id: str) -> None:
        """Forget a row that :meth:`get` did not accept (unfinished, or its dir is gone).

        Called under the layer's lock, so no live ``ensure`` owns it; without this a row whose
        directory went missing would make every later INSERT of the diff_id fail.
        """
        with self._store._db() as db:
            row = db.execute("SELECT id FROM layers WHERE diff_id = ?", (diff_id,)).fetchone()
            if row is not None:
                _discard(self.root / str(row[0]))
                db.execute("DELETE FROM layers WHERE id = ?", (row[0],))

    def remove(self, diff_id: str) -> bool:
        with self._store.lock(f"layer-{diff_id}"):
            with self._store._db() as db:
                row = db.execute("SELECT id FROM layers WHERE diff_id = ?", (diff_id,)).fetchone()
                if row is None:
                    return False
                db.execute("DELETE FROM layers WHERE id = ?", (row[0],))
            _discard(self.root / str(row[0]))
            return True

    def diff_ids(self) -> list[str]:
        with self._store._db() as db:
            return [r[0] for r in db.execute("SELECT diff_id FROM layers WHERE complete = 1")]


# --- flattened rootfs caches -------------------------------------------------------------------

#: A cache's name: the hex of its layer chain's ChainID, plus a suffix when built without
#: privileges (every file then belongs to the builder, and there are no device nodes).
_FLAT_NAME = re.compile(r"[0-9a-f]{64}(-rootless)?")
_FLAT_ATTEMPTS = 3


def flat_key(diff_ids: Sequence[str], privileged: bool) -> str:
    """The cache name of the copy-mode rootfs of layers ``diff_ids`` (bottom first)."""
    hexpart = split_digest(chain_id(diff_ids))[1]
    return hexpart if privileged else f"{hexpart}-rootless"


class FlatStore:
    """Flattened copy-mode rootfs caches, ``flat/<key>`` (see :mod:`guestpull.image.flat`).

    A cache is built in ``flat/tmp.*`` and renamed into place only when every layer is applied
    and its diff_id verified: the directory is the record (no row).  It is never handed out:
    bundles get a copy.  Building and removing hold the key's lock exclusively, copying out
    holds it shared, so a prune never removes a cache while a bundle is being copied from it.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.root = store.work_dir / "flat"

    def path(self, key: str) -> Path:
        if not _FLAT_NAME.fullmatch(key):
            raise ValueError(f"not a flat rootfs cache name: {key!r}")
        return self.root / key

    def has(self, key: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.path(key)).st_mode)
        except FileNotFoundError:
            return False

    def keys(self) -> list[str]:
        """The complete caches (debris with other names is for ``store check``)."""
        return [p.name for p in list_dir(self.root) if _FLAT_NAME.fullmatch(p.name)]

    def ensure(self, key: str, fill: Callable[[Path], object]) -> Path:
        """The cache ``key``, calling ``fill(tmpdir)`` to build it if it is missing.

        Concurrent callers (threads or processes) serialise on the key's lock: one builds, the
        others wait and reuse it.  ``fill`` must raise if the content is wrong; then nothing
        is kept.
        """
        final = self.path(key)
        with self._store.lock(f"flat-{key}"):
            if not self.has(key):
                _discard(final)  # not a directory: debris
                with building_dir(self.root) as tmp:
                    fill(tmp)
                    os.rename(tmp, final)
        return final

    @contextlib.contextmanager
    def reading(self, key: str, fill: Callable[[Path], object]) -> Iterator[Path]:
        """The cache ``key`` (built with ``fill`` if missing), kept while the block runs."""
        for _ in range(_FLAT_ATTEMPTS):
            with self._store.lock(f"flat-{key}", shared=True):
                if self.has(key):
                    yield self.path(key)
                    return
            # Gone (pruned) or never built: build it, then take the shared lock again.
            self.ensure(key, fill)
        raise StoreError(f"flat rootfs cache {self.path(key)} keeps disappearing (concurrent prunes?)")

    def remove(self, key: str) -> bool:
        with self._store.lock(f"flat-{key}"):
            if not self.has(key):
                return False
            _discard(self.path(key))
            return True


# --- the store -------------------------------------------------------------------------------


class Store:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.content = ContentStore(work_dir)
        self.layers = LayerStore(self)
        self.flats = FlatStore(self)
        self.locks_dir = work_dir / "locks"
        self.db_path = work_dir / "meta.db"

    # --- plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection in one transaction (committed on success)."""
        with self._db_errors():
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    @contextlib.contextmanager
    def _db_errors(self) -> Iterator[None]:
        """A damaged or unreadable meta.db is a typed error that says how to repair it."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"image store metadata {self.db_path} is unusable: {exc}",
                hint=f"run `guestpull store check --repair --work-dir {self.work_dir}`",
            ) from exc

    def _init(self) -> None:
        for sub in ("content", "ingest", "layers", "flat", "locks"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        with self._db_errors():
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            finally:
                conn.close()

    @contextlib.contextmanager
    def lock(self, key: str, *, shared: bool = False) -> Iterator[None]:
        """An exclusive (or shared) lock on ``key``, across threads and processes (flock).

        Do not fork while holding one: the child would share the lock's open file.
        """
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks_dir / _lock_name(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- images --------------------------------------------------------------------------

    def record_image(
        self,
        reference: str,
        manifest_digest: str,
        config_digest: str,
        manifest: bytes,
        layers: Sequence[Layer],
    ) -> ImageRecord:
        """Remember a pulled image (replacing an older record for the same reference)."""
        split_digest(manifest_digest)
        if not self.content.has(config_digest):
            raise NotFoundError(f"image config {config_digest} is not in the content store")
        record = ImageRecord(reference, manifest_digest, config_digest, tuple(layers), time.time())
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                (reference, manifest_digest, config_digest, manifest,
                 json.dumps([layer.to_json() for layer in layers]), record.created),
            )
        return record

    def image(self, reference: str) -> ImageRecord | None:
        with self._db() as db:
            row = db.execute(
                _IMAGE_SELECT + " WHERE reference = ?", (reference,)
            ).fetchone()
        return _image_from_row(row) if row else None

    def image_by_config(self, config_digest: str) -> ImageRecord | None:
        """An image with this config digest (the image ID), whatever its reference."""
        with self._db() as db:
            row = db.execute(
                _IMAGE_SELECT + " WHERE config_digest = ? ORDER BY created DESC", (config_digest,)
            ).fetchone()
        return _image_from_row(row) if row else None

    def manifest_bytes(self, reference: str) -> bytes | None:
        with self._db() as db:
            row = db.execute("SELECT manifest FROM images WHERE reference = ?", (reference,)).fetchone()
        return bytes(row[0]) if row else None

    def images(self) -> list[ImageRecord]:
        with self._db() as db:
            rows = db.execute(
                _IMAGE_SELECT + " ORDER BY reference"
            ).fetchall()
        return [_image_from_row(r) for r in rows]

    def remove_image(self, reference: str) -> bool:
        """Forget an image; its blobs and layers go at the next :meth:`prune`."""
        with self._db() as db:
            return db.execute("DELETE FROM images WHERE reference = ?", (reference,)).rowcount > 0

    # --- bundles (so prune keeps layers under a mounted overlay) ------------------------

    def record_bundle(self, path: Path, reference: str, diff_ids: Sequence[str]) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO bundles VALUES (?, ?, ?)",
                       (str(path), reference, json.dumps(list(diff_ids))))

    def forget_bundle(self, path: Path) -> None:
        with self._db() as db:
            db.execute("DELETE FROM bundles WHERE path = ?", (str(path),))

    # --- maintenance ---------------------------------------------------------------------

    def prune(self) -> PruneResult:
        """Remove blobs, layers and flat rootfs caches that no recorded image (or mounted
        bundle) references."""
        with self.lock("prune"):
            with self._db() as db:
                images = [_image_from_row(r) for r in db.execute(_IMAGE_SELECT)]
                bundle_diff_ids = {d for (j,) in db.execute("SELECT diff_ids FROM bundles")
                                   for d in json.loads(j)}
            blobs = {i.config_digest for i in images} | {i.manifest_digest for i in images}
            blobs |= {layer.digest for i in images for layer in i.layers}
            diff_ids = {layer.diff_id for i in images for layer in i.layers} | bundle_diff_ids
            freed = removed_blobs = removed_layers = 0
            for digest in list(self.content.digests()):
                if digest not in blobs:
                    with contextlib.suppress(FileNotFoundError):
                        freed += self.content.path(digest).stat().st_size
                    self.content.delete(digest)
                    removed_blobs += 1
            for diff_id in self.layers.diff_ids():
                if diff_id not in diff_ids and self.layers.remove(diff_id):
                    removed_layers += 1
            flats = {flat_key([layer.diff_id for layer in i.layers], privileged)
                     for i in images if i.layers for privileged in (True, False)}
            removed_flats = sum(1 for key in self.flats.keys()
                                if key not in flats and self.flats.remove(key))
            return PruneResult(removed_blobs, removed_layers, freed, removed_flats)

    def recover(self) -> list[str]:
        """Remove what killed pulls left: ingest temps, unfinished layer dirs and rows, and
        half-built flat rootfs caches.

        Anything a live process still holds (its flock) is left alone.  Never raises for
        debris it cannot remove (a later pull does not need it gone): it logs it and returns
        the list; ``guestpull store check`` reports it too.  A damaged meta.db is a
        :class:`StoreError`.
        """
        left: list[str] = []
        for tmp in list_dir(self.content.ingest_dir):
            _remove_if_unlocked(tmp, left)
        for entry in list_dir(self.layers.root) + list_dir(self.flats.root):
            if entry.name.startswith("tmp."):
                _remove_if_unlocked(entry, left)
        self._recover_rows(left)
        for message in left:
            log.warning("store recovery: %s", message)
        return left

    def _recover_rows(self, left: list[str]) -> None:
        with self._db() as db:
            rows = db.execute("SELECT id, diff_id, complete FROM layers").fetchall()
        known = {str(r[0]) for r in rows}
        for layer_id, diff_id, complete in rows:
            if complete:
                continue
            lock_fd = os.open(self.locks_dir / _lock_name(f"layer-{diff_id}"),
                              os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if _try_flock(lock_fd):
                    _discard(self.layers.root / str(layer_id), left)
                    with self._db() as db:
                        db.execute("DELETE FROM layers WHERE id = ? AND complete = 0", (layer_id,))
            finally:
                os.close(lock_fd)
        for entry in list_dir(self.layers.root):
            if entry.name.isdigit() and entry.name not in known and not self._layer_row(entry.name):
                # Re-checked: a live ensure() inserts its row before renaming into place.
                _discard(entry, left)

    def _layer_row(self, layer_id: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM layers WHERE id = ?", (int(layer_id),)).fetchone() is not None

    def check_space(self, needed_bytes: int) -> None:
        """NoSpaceError naming the work dir and the numbers if ``needed_bytes`` do not fit."""
        st = os.statvfs(self.work_dir)
        available = st.f_bavail * st.f_frsize
        if needed_bytes > available:
            raise NoSpaceError(
                f"no space in {self.work_dir}: the pull needs {needed_bytes} bytes "
                f"({_human(needed_bytes)}) but only {available} bytes ({_human(available)}) "
                "are free",
                hint="free space in the work dir, prune the store, or give the guest more memory",
            )


def _image_from_row(row: Sequence[object]) -> ImageRecord:
    reference, manifest_digest, config_digest, layers_json, created = row
    layers = tuple(Layer.from_json(obj) for obj in json.loads(str(layers_json)))
    return ImageRecord(str(reference), str(manifest_digest), str(config_digest), layers,
                       float(created))  # type: ignore[arg-type]


def _remove_if_unlocked(path: Path, left: list[str] | None = None) -> None:
    """Remove a temporary unless a live process holds its flock."""
    if is_unlocked(path):
        _discard(path, left)


def is_unlocked(path: Path) -> bool:
    """True unless a live process holds the flock of the temporary at ``path``.

    A symlink or unreadable debris is nobody's live temporary: True.  (Our own check's lock
    is released at once; what matters is that no one else held it.)
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return True
    try:
        return _try_flock(fd)
    finally:
        os.close(fd)


def _discard(path: Path, left: list[str] | None = None) -> None:
    """Remove ``path`` (any depth, symlinks not followed); failures are noted, not raised."""
    try:
        remove_path(path)
    except OSError as exc:
        message = f"cannot remove {path}: {exc.strerror or exc}"
        if left is None:
            log.warning("%s", message)
        else:
            left.append(message)


def list_dir(path: Path) -> list[Path]:
    """The entries of directory ``path``; none if it is missing or not a directory."""
    try:
        return sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def open_store(work_dir: str | os.PathLike[str] = DEFAULT_WORK_DIR) -> Store:
    """Open (creating if needed) the store at ``work_dir`` and repair what a killed pull left."""
    store = Store(Path(work_dir))
    try:
        store._init()
        store.recover()
    except OSError as err:
        raise from_os_error(err, "open the image store", work_dir) from None
    return store
