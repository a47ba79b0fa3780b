"""Warm copy-mode pulls through the public CLI: the rootfs from the flat cache equals umoci's,
and ``prune`` / ``store check`` know the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.cli import config_args, invoke, pull_args
from support.config import cdh_toml
from test_pull_workers import _count_workers

from guestpull import pull
from guestpull.config import parse_cdh_config
from guestpull.pull import pull_image
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import ImageSpec, write_layout

from .test_flat_bundle import BASE, TOP
from .test_umoci_equality import IMAGE_LAYERS, umoci_spec, umoci_unpack
from .treewalk import describe_tree, diff_trees

REPO = "team/corpus"


def _pull(shm: Path, fake: FakeRegistry, bundle: Path) -> dict[str, object]:
    ref = f"{fake.host}/{REPO}:v1"
    result = invoke(*pull_args(ref, config_args(shm, fake), shm / "work", bundle,
                               "--rootfs-mode", "copy"))
    assert result.exit_code == 0, result
    assert result.json["result"]["rootfs_mode"] == "copy"
    return result.json


def _flats(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "flat").iterdir())


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="umoci comparison needs root (chown, mknod)")
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_warm_copy_pulls_equal_umoci_and_prune_frees_the_cache(shm_path: Path) -> None:
    spec = ImageSpec(layers=IMAGE_LAYERS)
    write_layout(shm_path / "layout", umoci_spec(spec), tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    expected = describe_tree(shm_path / "umoci")
    assert expected["usr/bin/su"]["mode"] == "0o4755"  # the corpus is the real one

    fake = FakeRegistry()
    fake.add_image(REPO, "v1", spec.build())
    work = shm_path / "work"
    with fake.in_thread():
        _pull(shm_path, fake, shm_path / "cold")  # first pull: straight into the bundle
        assert _flats(work) == []
        _pull(shm_path, fake, shm_path / "repull")  # builds the cache, then copies it
        assert len(_flats(work)) == 1
        cache = work / "flat" / _flats(work)[0]
        inode = os.stat(cache).st_ino
        _pull(shm_path, fake, shm_path / "warm")  # only copies
        assert os.stat(cache).st_ino == inode
    for name in ("cold", "repull", "warm"):
        assert diff_trees(expected, describe_tree(shm_path / name / "rootfs")) == [], name

    checked = invoke("store", "check", "--work-dir", str(work), "--json")
    assert checked.exit_code == 0, checked
    assert checked.json["flats"] == 1 and checked.json["problems"] == []
    kept = invoke("prune", "--work-dir", str(work), "--json")
    assert kept.exit_code == 0 and kept.json["flats_removed"] == 0, kept
    assert invoke("rm", f"{fake.host}/{REPO}:v1", "--work-dir", str(work)).exit_code == 0
    pruned = invoke("prune", "--work-dir", str(work))
    assert pruned.exit_code == 0, pruned
    assert ", 1 flat rootfs caches;" in pruned.stdout, pruned
    assert _flats(work) == []


async def test_a_warm_copy_pull_starts_no_unpack_worker(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _count_workers(monkeypatch)
    monkeypatch.setattr(pull, "UNPACK_WORKERS_EAGER_BYTES", 0)  # workers for any work at all
    async with FakeRegistry() as fake:
        fake.add_image(REPO, "v1", ImageSpec(layers=[BASE, TOP]).build())
        config = parse_cdh_config(cdh_toml(insecure=[fake.host]), "cdh.toml").image_config()
        for name in ("cold", "repull", "warm"):
            result = await pull_image(f"{fake.host}/{REPO}:v1", config, work_dir=shm_path / "work",
                                      bundle=shm_path / name, rootfs_mode="copy")
            assert result.bundle is not None and result.bundle.mode_used == "copy"
            assert (shm_path / name / "rootfs" / "bin" / "tool").read_bytes() == b"tool v2\n"
    assert started == [1, 1]  # the cold pull and the cache build; the warm pull only copies
