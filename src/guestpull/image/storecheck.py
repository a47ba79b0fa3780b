"""``guestpull store check``: verify an image store on disk and, asked to, repair it.

What a crash, a full disk, a hostile layer or a hand in the work dir can leave, and what
``repair`` does about each (nothing that is consistent is touched; nothing a live pull holds
by its flock is removed):

=====================  ==================================================  ====================
kind                   what                                                repair
=====================  ==================================================  ====================
``metadata``           meta.db unreadable or failing ``integrity_check``   moved aside, new one
``blob-corrupt``       a blob whose bytes do not hash to its name          removed
``blob-unexpected``    a name in content/ that is no blob (bad digest,     removed
                       a directory or symlink where a file belongs)
``temporary``          an ingest file, ``layers/tmp.*`` or ``flat/tmp.*``  removed
                       (a half-built rootfs cache) nobody holds
``layer-incomplete``   a layer row never marked complete                   row and dir removed
``layer-missing``      a complete layer row whose directory is gone        row removed
``layer-orphan``       a directory in layers/ that no row names            removed
``image-broken``       an image record whose blobs are gone or unreadable  record removed
``flat-unexpected``    a name in flat/ that is no rootfs cache (not a      removed
                       chain name, or not a directory)
``flat-broken``        a rootfs cache without its rootfs/ or warnings      removed
=====================  ==================================================  ====================

An unpacked layer's files are not re-verified (that would mean re-hashing a tar of them), nor
is a flat rootfs cache's; a cache no image uses is for ``guestpull prune``, not a problem.  A
removed record, layer or cache is fetched, unpacked or built again by a later pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from guestpull.errors import GuestpullError, NotFoundError, StoreError
from guestpull.image.flat import FLAT_ROOTFS, FLAT_WARNINGS
from guestpull.image.fsops import remove_path
from guestpull.oci import split_digest
from guestpull.image.store import Store, is_unlocked, list_dir


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    detail: str
    repaired: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "repaired": self.repaired}


@dataclass
class CheckReport:
    work_dir: Path
    blobs: int = 0
    layers: int = 0
    images: int = 0
    flats: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def to_dict(self) -> dict[str, object]:
        return {"work_dir": str(self.work_dir), "blobs": self.blobs, "layers": self.layers,
                "images": self.images, "flats": self.flats,
                "problems": [p.to_dict() for p in self.problems]}


def check_store(work_dir: Path, *, repair: bool = False) -> CheckReport:
    """Check (and with ``repair``, fix) the store at ``work_dir``; see the module docstring."""
    if not (work_dir / "meta.db").is_file():
        raise NotFoundError(f"no image store at {work_dir} (no meta.db)", hint="pass --work-dir")
    checker = _Checker(Store(work_dir), repair)
    checker.run()
    return checker.report


class _Checker:
    def __init__(self, store: Store, repair: bool) -> None:
        self.store = store
        self.repair = repair
        self.report = CheckReport(store.work_dir)
        self.bad_blobs: set[str] = set()  # digests found corrupt or unreadable

    def found(self, kind: str, path: Path | str, detail: str, fix: object = None) -> None:
        """Record a problem; ``fix`` (a callable) runs when repairing."""
        repaired = False
        if self.repair and callable(fix):
            try:
                fix()
                repaired = True
            except (OSError, GuestpullError) as exc:
                detail += f" (repair failed: {exc})"
        self.report.problems.append(Problem(kind, str(path), detail, repaired))

    def run(self) -> None:
        if not self._metadata_usable():
            return
        with self.store.lock("prune"):  # no prune or other repair runs meanwhile
            self._blobs()
            self._temporaries()
            self._layers()
            self._images()
            self._flats()

    # --- meta.db -------------------------------------------------------------------------

    def _metadata_usable(self) -> bool:
        """True if meta.db is sound, or was broken and has just been replaced."""
        db = self.store.db_path
        try:
            with self.store._db() as conn:
                verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
                conn.execute("SELECT id, diff_id, complete FROM layers LIMIT 1").fetchall()
                conn.execute("SELECT reference, layers FROM images LIMIT 1").fetchall()
            if verdict == "ok":
                return True
            detail = f"integrity check: {verdict}"
        except (StoreError, sqlite3.Error) as exc:
            detail = str(exc.__cause__ or exc)
        self.found("metadata", db, detail, self._replace_metadata)
        # With a fresh meta.db every layer directory is an orphan, which the rest repairs.
        return self.report.problems[-1].repaired

    def _replace_metadata(self) -> None:
        aside = self.store.db_path.with_name(f"meta.db.broken-{int(time.time())}")
        os.rename(self.store.db_path, aside)
        for suffix in ("-wal", "-shm"):
            remove_path(self.store.db_path.with_name("meta.db" + suffix))
        self.store._init()

    # --- content -------------------------------------------------------------------------

    def _blobs(self) -> None:
        root = self.store.content.root
        for algo_dir in list_dir(root):
            if not _is_real_dir(algo_dir):
                self.found("blob-unexpected", algo_dir, "not a digest algorithm directory",
                           lambda p=algo_dir: remove_path(p))
                continue
            for blob in list_dir(algo_dir):
                self._blob(algo_dir.name, blob)

    def _blob(self, algorithm: str, blob: Path) -> None:
        digest = f"{algorithm}:{blob.name}"
        try:
            split_digest(digest)
        except GuestpullError:
            self.found("blob-unexpected", blob, "name is not a digest", lambda: remove_path(blob))
            return
        try:
            regular = stat.S_ISREG(os.lstat(blob).st_mode)
            actual = _hash_file(blob, algorithm) if regular else ""
        except OSError as exc:
            self.bad_blobs.add(digest)
            self.found("blob-unexpected", blob, f"unreadable: {exc.strerror}",
                       lambda: remove_path(blob))
            return
        if not regular:
            self.found("blob-unexpected", blob, "not a regular file", lambda: remove_path(blob))
            return
        self.report.blobs += 1
        if actual != blob.name:
            self.bad_blobs.add(digest)
            self.found("blob-corrupt", blob, f"content hashes to {algorithm}:{actual}",
                       lambda: remove_path(blob))

    # --- layers --------------------------------------------------------------------------

    def _temporaries(self) -> None:
        candidates = list_dir(self.store.content.ingest_dir)
        candidates += [p for p in list_dir(self.store.layers.root) + list_dir(self.store.flats.root)
                       if p.name.startswith("tmp.")]
        for path in candidates:
            if is_unlocked(path):
                self.found("temporary", path, "left by a pull that did not finish",
                           lambda p=path: remove_path(p))

    def _layers(self) -> None:
        layers = self.store.layers
        with self.store._db() as db:
            rows = db.execute("SELECT id, diff_id, complete FROM layers").fetchall()
        for layer_id, diff_id, complete in rows:
            path = layers.root / str(layer_id)
            if not complete:
                self.found("layer-incomplete", path, f"layer {diff_id} was never finished",
                           lambda d=diff_id: layers.remove(d))
            elif not _is_real_dir(path):
                self.found("layer-missing", path, f"layer {diff_id} has no directory",
                           lambda d=diff_id: layers.remove(d))
            else:
                self.report.layers += 1
        known = {str(row[0]) for row in rows}
        for path in list_dir(layers.root):
            if path.name.startswith("tmp.") or path.name in known:
                continue
            self.found("layer-orphan", path, "no layer row names this directory",
                       lambda p=path: remove_path(p))

    # --- images --------------------------------------------------------------------------

    def _images(self) -> None:
        with self.store._db() as db:
            rows = db.execute(
                "SELECT reference, manifest_digest, config_digest, layers FROM images"
            ).fetchall()
        for reference, manifest_digest, config_digest, layers_json in rows:
            missing = self._missing_blobs(manifest_digest, config_digest, layers_json)
            if missing:
                self.found("image-broken", f"image {reference}", missing,
                           lambda r=reference: self.store.remove_image(r))
            else:
                self.report.images += 1

    def _missing_blobs(self, manifest: str, config: str, layers_json: str) -> str:
        try:
            digests = [manifest, config] + [str(obj["digest"]) for obj in json.loads(layers_json)]
            absent = [d for d in digests if d in self.bad_blobs or not self.store.content.has(d)]
        except (ValueError, TypeError, KeyError, GuestpullError) as exc:
            return f"unreadable record ({exc})"
        return f"blobs missing or corrupt: {', '.join(absent)}" if absent else ""


    # --- flat rootfs caches ------------------------------------------------------------

    def _flats(self) -> None:
        complete = set(self.store.flats.keys())
        for path in list_dir(self.store.flats.root):
            if path.name.startswith("tmp."):
                continue  # a temporary (above)
            if path.name not in complete or not _is_real_dir(path):
                self.found("flat-unexpected", path, "not a flat rootfs cache",
                           lambda p=path: remove_path(p))
            elif not _is_real_dir(path / FLAT_ROOTFS) or not (path / FLAT_WARNINGS).is_file():
                self.found("flat-broken", path, f"no {FLAT_ROOTFS}/ or no {FLAT_WARNINGS}",
                           lambda k=path.name: self.store.flats.remove(k))
            else:
                self.report.flats += 1


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
