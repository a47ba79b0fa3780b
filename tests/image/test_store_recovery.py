"""A store a crash or a hostile layer left in any state is recovered or reported, and never
crashes every later pull (issue 9); ``guestpull store check [--repair]`` finds and fixes it."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.storecheck import store_problems

from guestpull.cli import main
from guestpull.errors import EXIT_CODES, Category, StoreError
from guestpull.image import store as store_module
from guestpull.image.rootfs import ensure_layer
from guestpull.image.store import Store, open_store
from guestpull.image.storecheck import check_store
from guestpull.oci import Layer
from guestpull.testing.images import File, ImageSpec, LayerSpec

from .conftest import add_image
from .test_fsops_remove import deep_tree


def stored_image(store: Store) -> Layer:
    record = add_image(store, ImageSpec([LayerSpec([File("a", b"a")])]))
    return record.layers[0]


def test_recover_removes_a_leftover_deeper_than_the_recursion_limit(shm_path: Path) -> None:
    store = open_store(shm_path / "work")
    deep_tree(store.layers.root / "tmp.crashed", 3000)
    open_store(shm_path / "work")  # recover() raised RecursionError here, on every pull
    assert list(store.layers.root.iterdir()) == []


def test_recover_reports_what_it_cannot_remove_and_goes_on(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(shm_path / "work")
    (store.layers.root / "tmp.stuck").mkdir()

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module, "remove_path", refuse)
    left = store.recover()
    assert left == [f"cannot remove {store.layers.root / 'tmp.stuck'}: Permission denied"]
    monkeypatch.undo()
    layer = stored_image(store)
    assert ensure_layer(store, layer).is_dir()  # the debris does not stop a pull


def test_a_complete_layer_whose_directory_vanished_is_unpacked_again(store: Store) -> None:
    layer = stored_image(store)
    path = ensure_layer(store, layer)
    os.rename(path, path.with_name("elsewhere"))
    again = ensure_layer(store, layer)  # was: UNIQUE constraint failed, on every pull
    assert (again / "a").read_bytes() == b"a"


def test_an_orphan_directory_with_the_next_id_does_not_block_the_rename(store: Store) -> None:
    layer = stored_image(store)
    with store._db() as db:
        db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'layers', 0 WHERE NOT EXISTS "
                   "(SELECT 1 FROM sqlite_sequence WHERE name = 'layers')")
        next_id = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'layers'").fetchone()[0] + 1
    (store.layers.root / str(next_id) / "junk").mkdir(parents=True)
    assert (ensure_layer(store, layer) / "a").read_bytes() == b"a"


def test_a_damaged_meta_db_is_a_typed_error_naming_the_repair(shm_path: Path) -> None:
    work = shm_path / "work"
    open_store(work)
    (work / "meta.db").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (work / f"meta.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="store check --repair") as caught:
        open_store(work)
    assert caught.value.category == Category.UNPACK


# --- store check -----------------------------------------------------------------------


def damage(store: Store) -> dict[str, Path]:
    """One of each problem ``store check`` knows; returns the paths by kind."""
    layer = stored_image(store)
    ensure_layer(store, layer)
    bad_blob = store.content.path(layer.digest)
    os.chmod(bad_blob, 0o644)
    bad_blob.write_bytes(b"tampered")
    (store.content.root / "sha256" / "not-a-digest").write_bytes(b"x")
    tmp = store.layers.root / "tmp.dead"
    tmp.mkdir()
    orphan = store.layers.root / "4242"
    orphan.mkdir()
    with store._db() as db:
        cur = db.execute("INSERT INTO layers (diff_id, complete, created) VALUES (?, 0, 0)",
                         ("sha256:" + "1" * 64,))
        half = store.layers.root / str(cur.lastrowid)
        cur = db.execute("INSERT INTO layers (diff_id, complete, created) VALUES (?, 1, 0)",
                         ("sha256:" + "2" * 64,))
        missing = store.layers.root / str(cur.lastrowid)
    half.mkdir()
    return {"blob-corrupt": bad_blob, "blob-unexpected": store.content.root / "sha256" / "not-a-digest",
            "temporary": tmp, "layer-orphan": orphan, "layer-incomplete": half,
            "layer-missing": missing}


def test_check_finds_each_problem_and_repair_fixes_it(shm_path: Path) -> None:
    store = open_store(shm_path / "work")
    paths = damage(store)
    report = check_store(store.work_dir)
    found = {p.kind: p.path for p in report.problems}
    assert found.pop("image-broken") == "image example/img:1"  # its layer blob is corrupt
    assert found == {kind: str(path) for kind, path in paths.items()}
    assert not any(p.repaired for p in report.problems)
    assert paths["temporary"].exists()  # a check alone changes nothing

    repaired = check_store(store.work_dir, repair=True)
    assert repaired.problems and not repaired.unrepaired
    assert check_store(store.work_dir).problems == []
    assert store_problems(store.work_dir) == []
    assert store.images() == []  # its layer blob was corrupt: the record goes, a pull re-fetches


def test_cli_store_check_json_and_exit_codes(shm_path: Path) -> None:
    store = open_store(shm_path / "work")
    damage(store)
    work = ["--work-dir", str(store.work_dir)]
    found = CliRunner().invoke(main, ["store", "check", "--json", *work])
    assert found.exit_code == EXIT_CODES[Category.UNPACK], found.output
    doc = json.loads(found.output)
    assert doc["ok"] is False and {p["kind"] for p in doc["problems"]} >= {"blob-corrupt", "temporary"}
    fixed = CliRunner().invoke(main, ["store", "check", "--repair", *work])
    assert fixed.exit_code == 0, fixed.output
    assert "repaired: blob-corrupt" in fixed.output
    clean = CliRunner().invoke(main, ["store", "check", "--json", *work])
    assert clean.exit_code == 0 and json.loads(clean.output)["problems"] == []


def test_cli_store_check_repairs_a_damaged_meta_db(shm_path: Path) -> None:
    store = open_store(shm_path / "work")
    layer = stored_image(store)
    ensure_layer(store, layer)
    store.db_path.write_bytes(b"garbage" * 1000)
    work = ["--work-dir", str(store.work_dir)]
    broken = CliRunner().invoke(main, ["images", *work])
    assert broken.exit_code == EXIT_CODES[Category.UNPACK] and "store check --repair" in broken.output
    fixed = CliRunner().invoke(main, ["store", "check", "--repair", "--json", *work])
    assert fixed.exit_code == 0, fixed.output
    kinds = [p["kind"] for p in json.loads(fixed.output)["problems"]]
    assert kinds[0] == "metadata" and "layer-orphan" in kinds
    assert CliRunner().invoke(main, ["images", *work]).exit_code == 0
    assert list(store.work_dir.glob("meta.db.broken-*"))  # kept aside, not destroyed
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cli_store_check_without_a_store_is_not_found(shm_path: Path) -> None:
    result = CliRunner().invoke(main, ["store", "check", "--work-dir", str(shm_path / "none")])
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND]


def test_prune_skips_debris_in_content(store: Store) -> None:
    stored_image(store)
    (store.content.root / "not-an-algorithm").write_bytes(b"x")
    (store.content.root / "sha256" / "a-directory").mkdir()
    store.remove_image("example/img:1")
    result = store.prune()  # iterdir() on the file raised NotADirectoryError
    assert result.blobs_removed == 3
    assert check_store(store.work_dir, repair=True).unrepaired == []
    assert check_store(store.work_dir).problems == []
