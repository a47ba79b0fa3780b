"""Check an image store as it lies on disk.

Nothing here calls ``open_store``: its recovery step would remove what a killed pull left
behind, which is exactly what these checks must see.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def blob_paths(work: Path) -> dict[str, Path]:
    """Every blob in ``work/content`` by the digest its name claims."""
    content = work / "content"
    if not content.is_dir():
        return {}
    return {
        f"{algo.name}:{blob.name}": blob
        for algo in sorted(content.iterdir())
        for blob in sorted(algo.iterdir())
    }


def blobs_that_do_not_rehash(work: Path) -> list[str]:
    """Digests whose stored bytes do not hash to the digest (should be empty)."""
    bad = []
    for digest, path in blob_paths(work).items():
        algorithm, hexpart = digest.split(":", 1)
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != hexpart:
            bad.append(digest)
    return bad


def temporaries(work: Path) -> list[str]:
    """What a pull writes only for a moment: ingest files, ``layers/tmp.*`` directories."""
    left: list[str] = []
    ingest = work / "ingest"
    if ingest.is_dir():
        left += [f"ingest/{p.name}" for p in ingest.iterdir()]
    layers = work / "layers"
    if layers.is_dir():
        left += [f"layers/{p.name}" for p in layers.iterdir() if p.name.startswith("tmp.")]
    return left


def layer_rows(work: Path) -> list[tuple[int, str, int]]:
    """(id, diff_id, complete) of every unpacked-layer row in meta.db."""
    db = work / "meta.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT id, diff_id, complete FROM layers")]  # type: ignore[misc]
    finally:
        conn.close()


def store_problems(work: Path) -> list[str]:
    """Everything inconsistent in the store at ``work`` (empty when it is consistent)."""
    problems = [f"blob does not re-hash to its name: {d}" for d in blobs_that_do_not_rehash(work)]
    problems += [f"temporary left behind: {t}" for t in temporaries(work)]
    rows = layer_rows(work)
    problems += [f"incomplete layer row {r}" for r in rows if not r[2]]
    layers = work / "layers"
    on_disk = {p.name for p in layers.iterdir()} if layers.is_dir() else set()
    known = {str(r[0]) for r in rows}
    problems += [f"layer row without a directory: {r}" for r in rows if str(r[0]) not in on_disk]
    problems += [f"layer directory without a row: layers/{n}" for n in sorted(on_disk - known)
                 if not n.startswith("tmp.")]
    return problems
