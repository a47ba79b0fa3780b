"""``guestpull images | rm | prune | umount``, and the bundle checks of ``pull --bundle``.

The images come from the fake registry (it records every request, so "refused before any
network access" can be shown); the commands run in process through click's CliRunner.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import config_args, invoke, pull_args
from support.storecheck import blob_paths, layer_rows, store_problems

from guestpull.errors import EXIT_CODES, Category
from guestpull.image.bundle import umount_bundle
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import BuiltImage, Dir, File, ImageSpec, LayerSpec

SHARED = LayerSpec([Dir("usr"), File("usr/shared.txt", b"shared by a and b\n" * 100)])


def layer(name: str) -> LayerSpec:
    return LayerSpec([File(f"{name}.txt", f"only in {name}\n".encode() * 200)], compression="zstd")


@dataclass
class Images:
    fake: FakeRegistry
    a: BuiltImage  # SHARED + a, tagged latest
    b: BuiltImage  # SHARED + b, tagged v1
    c: BuiltImage  # c alone, tagged v1

    def ref(self, name: str, tag: str = "v1") -> str:
        return f"{self.fake.host}/team/{name}:{tag}"


@pytest.fixture
def images() -> Iterator[Images]:
    fake = FakeRegistry()
    built = Images(
        fake,
        ImageSpec([SHARED, layer("a")]).build(),
        ImageSpec([SHARED, layer("b")], config={"Cmd": ["/b"]}).build(),
        ImageSpec([layer("c")]).build(),
    )
    fake.add_image("team/a", "latest", built.a)
    fake.add_image("team/b", "v1", built.b)
    fake.add_image("team/c", "v1", built.c)
    with fake.in_thread():
        yield built


def pull(shm: Path, fake: FakeRegistry, image: str, bundle: Path | None = None, *extra: str):
    result = invoke(*pull_args(image, config_args(shm, fake), shm / "work", bundle, *extra))
    assert result.exit_code == 0, result
    return result


def listed(work: Path) -> list[dict[str, object]]:
    result = invoke("images", "--work-dir", str(work), "--json")
    assert result.exit_code == 0, result
    return result.json["images"]


def own_blobs(image: BuiltImage) -> set[str]:
    return set(image.blobs())


# --- images ----------------------------------------------------------------------------------


def test_images_plain_and_json(images: Images, shm_path: Path) -> None:
    work = shm_path / "work"
    pull(shm_path, images.fake, images.ref("b"))
    pull(shm_path, images.fake, images.ref("a", "latest"))
    rows = {i["reference"]: i for i in listed(work)}
    assert set(rows) == {images.ref("a", "latest"), images.ref("b")}
    for name, built in (("a", images.a), ("b", images.b)):
        row = rows[images.ref(name, "latest" if name == "a" else "v1")]
        assert row["manifest_digest"] == built.digest
        assert row["config_digest"] == built.config_digest
        assert row["layers"] == 2
        assert row["size"] == sum(x.size for x in built.layers)
        assert isinstance(row["pulled"], str) and row["pulled"][:2] == "20"

    plain = invoke("images", "--work-dir", str(work))
    assert plain.exit_code == 0, plain
    lines = plain.stdout.strip().splitlines()
    assert len(lines) == 2
    b_line = next(line for line in lines if line.startswith(images.ref("b")))
    assert images.b.digest in b_line and "2 layers" in b_line
    assert f"{sum(x.size for x in images.b.layers)} bytes" in b_line


def test_images_without_a_store_is_not_found(shm_path: Path) -> None:
    result = invoke("images", "--work-dir", str(shm_path / "missing"))
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND], result
    assert str(shm_path / "missing") in result.stderr


# --- rm --------------------------------------------------------------------------------------


def test_rm_by_exact_and_by_normalised_name(images: Images, shm_path: Path) -> None:
    work = shm_path / "work"
    pull(shm_path, images.fake, f"{images.fake.host}/team/a:latest")
    pull(shm_path, images.fake, images.ref("b"))

    # "team/a" without a tag is "team/a:latest".
    done = invoke("rm", f"{images.fake.host}/team/a", "--work-dir", str(work))
    assert done.exit_code == 0, done
    assert [i["reference"] for i in listed(work)] == [images.ref("b")]

    done = invoke("rm", images.ref("b"), "--work-dir", str(work), "--json")
    assert done.exit_code == 0, done
    assert done.json == {"ok": True, "removed": images.ref("b")}
    assert listed(work) == []
    # rm forgets; the blobs stay until prune.
    assert own_blobs(images.b) <= set(blob_paths(work))


def test_rm_unknown_image_is_not_found(images: Images, shm_path: Path) -> None:
    work = shm_path / "work"
    pull(shm_path, images.fake, images.ref("b"))
    unknown = images.ref("nothing-here")
    done = invoke("rm", unknown, "--work-dir", str(work))
    assert done.exit_code == EXIT_CODES[Category.NOT_FOUND], done
    assert unknown in done.stderr and "not-found" in done.stderr
    as_json = invoke("rm", unknown, "--work-dir", str(work), "--json")
    assert as_json.exit_code == EXIT_CODES[Category.NOT_FOUND], as_json
    assert as_json.json["error"]["category"] == "not-found"
    assert [i["reference"] for i in listed(work)] == [images.ref("b")]


# --- prune and umount ------------------------------------------------------------------------


def rehashes(path: Path, digest: str) -> bool:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="the overlay rootfs mode needs root")
def test_prune_keeps_what_images_and_mounted_bundles_use(images: Images, shm_path: Path) -> None:
    work, bundle_c = shm_path / "work", shm_path / "bundle-c"
    pull(shm_path, images.fake, images.ref("a", "latest"))
    pull(shm_path, images.fake, images.ref("b"))
    try:
        pull(shm_path, images.fake, images.ref("c"), bundle_c, "--rootfs-mode", "overlay")
        assert os.path.ismount(bundle_c / "rootfs")
        c_layer_dirs = {row[0] for row in layer_rows(work)}
        assert len(c_layer_dirs) == 1
        for name in (images.ref("a", "latest"), images.ref("c")):
            assert invoke("rm", name, "--work-dir", str(work)).exit_code == 0

        before = set(blob_paths(work))
        pruned = invoke("prune", "--work-dir", str(work), "--json")
        assert pruned.exit_code == 0, pruned
        stored = blob_paths(work)
        removed = before - set(stored)
        only_a = own_blobs(images.a) - own_blobs(images.b)
        assert len(only_a) == 3  # manifest, config, the a layer (the shared layer stays)
        assert only_a <= removed
        for digest in own_blobs(images.b):  # the remaining image keeps every blob, intact
            assert digest in stored and rehashes(stored[digest], digest)
        sizes = images.a.blobs() | images.c.blobs()
        assert pruned.json["blobs_removed"] == len(removed)
        assert pruned.json["bytes_freed"] == sum(len(sizes[d]) for d in removed)
        assert pruned.json["layers_removed"] == 0
        # The mounted overlay keeps its unpacked layer and still reads right.
        assert {row[0] for row in layer_rows(work)} == c_layer_dirs
        assert (bundle_c / "rootfs" / "c.txt").read_bytes() == b"only in c\n" * 200
        assert store_problems(work) == []

        unmounted = invoke("umount", str(bundle_c), "--work-dir", str(work), "--json")
        assert unmounted.exit_code == 0, unmounted
        assert unmounted.json == {"ok": True, "unmounted": True}
        assert not os.path.ismount(bundle_c / "rootfs")
    finally:
        if os.path.ismount(bundle_c / "rootfs"):
            umount_bundle(bundle_c)

    again = invoke("prune", "--work-dir", str(work))
    assert again.exit_code == 0, again
    assert again.stdout.startswith("removed 0 blobs and 1 layers"), again
    assert layer_rows(work) == []
    assert set(blob_paths(work)) == own_blobs(images.b)
    assert [i["reference"] for i in listed(work)] == [images.ref("b")]


def test_umount_when_nothing_is_mounted(images: Images, shm_path: Path) -> None:
    bundle = shm_path / "bundle"
    pull(shm_path, images.fake, images.ref("b"), bundle, "--rootfs-mode", "copy")
    done = invoke("umount", str(bundle))
    assert done.exit_code == 0, done
    assert done.stdout.strip() == f"nothing mounted at {bundle / 'rootfs'}"
    assert (bundle / "rootfs" / "b.txt").exists()  # a copy rootfs is left as it is


# --- pull --bundle checks --------------------------------------------------------------------


@pytest.mark.parametrize("occupant", ["config.json", "rootfs/leftover"])
def test_existing_bundle_refused_before_any_request_then_forced(
    images: Images, shm_path: Path, occupant: str
) -> None:
    bundle = shm_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / occupant).write_text("old\n")
    refused = invoke(*pull_args(images.ref("b"), config_args(shm_path, images.fake),
                                shm_path / "work", bundle))
    assert refused.exit_code == EXIT_CODES[Category.EXISTS], refused
    assert refused.json["error"]["category"] == "exists"
    assert str(bundle) in refused.json["error"]["message"]
    assert images.fake.requests == []  # refused before any network access
    assert (bundle / occupant).read_text() == "old\n"

    forced = invoke(*pull_args(images.ref("b"), config_args(shm_path, images.fake),
                               shm_path / "work", bundle, "--force", "--rootfs-mode", "copy"))
    assert forced.exit_code == 0, forced
    assert not (bundle / "rootfs" / "leftover").exists()
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/b"]
    assert (bundle / "rootfs" / "b.txt").read_bytes() == b"only in b\n" * 200


def test_image_for_another_os_is_refused(shm_path: Path) -> None:
    fake = FakeRegistry()
    image = ImageSpec([layer("w")], os="windows").build()
    fake.add_image("team/win", "v1", image)
    bundle = shm_path / "bundle"
    with fake.in_thread():
        result = invoke(*pull_args(f"{fake.host}/team/win:v1", config_args(shm_path, fake),
                                   shm_path / "work", bundle, "--rootfs-mode", "copy"))
    assert result.exit_code == EXIT_CODES[Category.UNSUPPORTED], result
    error = result.json["error"]
    assert error["category"] == "unsupported"
    assert "windows" in json.dumps(error) and "linux" in json.dumps(error)
    assert not (bundle / "config.json").exists()
    assert not (bundle / "rootfs").exists() or not any((bundle / "rootfs").iterdir())
    assert store_problems(shm_path / "work") == []
