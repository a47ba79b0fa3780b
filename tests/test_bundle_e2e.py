"""``guestpull pull --bundle`` end to end, through real registries where it matters.

- the rootfs equals ``umoci raw unpack`` of the same image, pushed to the real HTTP and HTTPS
  registries, in the copy and the overlay rootfs modes;
- config.json carries the image config (Entrypoint, Cmd, Env, WorkingDir, User, Volumes,
  Labels);
- a work dir too small for the image is a no-space error naming the work dir and the numbers,
  with nothing half-written;
- a warm re-pull into a new bundle downloads no blob.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from image.test_umoci_equality import IMAGE_LAYERS, REPEATED_LAYERS, umoci_spec, umoci_unpack
from image.treewalk import describe_tree, diff_trees
from support.cli import blob_gets, config_args, image_ref, invoke, pull_args, push_spec
from support.storecheck import blob_paths, store_problems, temporaries

from guestpull.errors import EXIT_CODES, Category
from guestpull.image.bundle import umount_bundle
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import Dir, File, ImageSpec, LayerSpec, write_layout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, mount)")


@contextlib.contextmanager
def unmounted_after(bundle: Path) -> Iterator[None]:
    """Whatever the test does, leave no overlay mounted under ``bundle``."""
    try:
        yield
    finally:
        if os.path.ismount(bundle / "rootfs"):
            umount_bundle(bundle)


# --- 1: equality with umoci through the real registries --------------------------------------


@needs_root
@pytest.mark.privileged
@pytest.mark.registry  # the registry fixture is requested by name, so conftest cannot see it
@pytest.mark.parametrize("layers", [IMAGE_LAYERS, REPEATED_LAYERS], ids=["plain", "repeated-layer"])
@pytest.mark.parametrize("mode", ["copy", "overlay"])
@pytest.mark.parametrize("registry_kind", ["http", "https"])
def test_rootfs_through_registry_equals_umoci(
    request: pytest.FixtureRequest, registry_kind: str, mode: str, layers: list[LayerSpec],
    repo_name: str, shm_path: Path,
) -> None:
    registry = request.getfixturevalue(f"{registry_kind}_registry")
    spec = ImageSpec(layers=layers)
    compressions = {layer.compression for layer in spec.layers}
    assert {"gzip", "zstd", "none", "gzip-multimember"} <= compressions  # the corpus is complete
    pushed = push_spec(shm_path / "layout", registry, repo_name, spec)
    write_layout(shm_path / "umoci-layout", umoci_spec(spec), tag="t")
    umoci_unpack(shm_path / "umoci-layout", "t", shm_path / "umoci")
    expected = describe_tree(shm_path / "umoci")

    work, bundle = shm_path / "work", shm_path / "bundle"
    with unmounted_after(bundle):
        result = invoke(*pull_args(
            image_ref(registry, repo_name), config_args(shm_path, registry, initdata=True),
            work, bundle, "--rootfs-mode", mode,
        ))
        assert result.exit_code == 0, result
        out = result.json["result"]
        assert out["manifest_digest"] == pushed.manifest_digest
        assert out["scheme"] == registry_kind
        assert out["rootfs_mode"] == mode
        assert os.path.ismount(bundle / "rootfs") == (mode == "overlay")
        assert diff_trees(expected, describe_tree(bundle / "rootfs")) == []
        assert (bundle / "config.json").is_file()
        if mode == "overlay":
            done = invoke("umount", str(bundle), "--work-dir", str(work))
            assert done.exit_code == 0, done
            assert not os.path.ismount(bundle / "rootfs")
    assert store_problems(work) == []


# --- 5: config.json --------------------------------------------------------------------------

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002:App:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1002:\nstaff:x:50:app\naudio:x:29:app,other\nwheel:x:10:other\n"
BASE_CONFIG = {
    "Entrypoint": ["/bin/server", "--verbose"],
    "Cmd": ["--port", "8080"],
    "Env": ["PATH=/usr/bin:/bin", "GREETING=hello world", "EMPTY="],
    "WorkingDir": "/srv/app",
    "Volumes": {"/data": {}, "/var/cache/app": {}},
    "Labels": {"org.example.team": "payments", "version": "1.2.3"},
}


def user_image(user: str) -> ImageSpec:
    return ImageSpec(
        [LayerSpec([Dir("etc"), File("etc/passwd", PASSWD), File("etc/group", GROUP),
                    Dir("srv"), Dir("srv/app"), File("srv/app/run", b"#!/bin/sh\n", mode=0o755)])],
        config={**BASE_CONFIG, "User": user},
    )


@pytest.mark.parametrize(
    ("user", "process_user"),
    [
        ("app", {"uid": 1001, "gid": 1002, "additionalGids": [29, 50]}),
        ("4321", {"uid": 4321, "gid": 0}),
        ("app:staff", {"uid": 1001, "gid": 50, "additionalGids": [29]}),
        ("1001:2000", {"uid": 1001, "gid": 2000, "additionalGids": [29, 50]}),
    ],
    ids=["name", "numeric", "name-group", "uid-gid"],
)
def test_config_json_through_pull(
    https_registry, repo_name: str, shm_path: Path, user: str, process_user: dict[str, object]
) -> None:
    push_spec(shm_path / "layout", https_registry, repo_name, user_image(user))
    bundle = shm_path / "bundle"
    result = invoke(*pull_args(
        image_ref(https_registry, repo_name), config_args(shm_path, https_registry),
        shm_path / "work", bundle, "--rootfs-mode", "copy",
    ))
    assert result.exit_code == 0, result
    spec = json.loads((bundle / "config.json").read_text())
    process = spec["process"]
    assert process["args"] == ["/bin/server", "--verbose", "--port", "8080"]
    assert process["env"] == ["PATH=/usr/bin:/bin", "GREETING=hello world", "EMPTY="]
    assert process["cwd"] == "/srv/app"
    assert process["user"] == process_user
    tmpfs_volumes = {m["destination"] for m in spec["mounts"] if m["type"] == "tmpfs"}
    assert {"/data", "/var/cache/app"} <= tmpfs_volumes
    annotations = spec["annotations"]
    assert annotations["org.example.team"] == "payments"
    assert annotations["version"] == "1.2.3"
    assert annotations["org.opencontainers.image.os"] == "linux"
    assert annotations["org.opencontainers.image.architecture"] == "amd64"
    assert spec["root"]["path"] == "rootfs"
    assert (bundle / "rootfs" / "srv" / "app" / "run").read_bytes() == b"#!/bin/sh\n"


# --- 4: no space in the work dir -------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        for mount in sorted((p for p in path.rglob("rootfs") if os.path.ismount(p)), reverse=True):
            subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    with registry.in_thread():
        yield registry


def assert_no_space_error(result, work: Path) -> dict[str, object]:
    assert result.exit_code == EXIT_CODES[Category.NO_SPACE], result
    error = result.json["error"]
    assert error["category"] == "no-space", error
    text = json.dumps(error)
    assert str(work) in text, error  # names the work dir
    return error


@needs_root
@pytest.mark.privileged
def test_layers_larger_than_the_work_dir(fake: FakeRegistry, shm_path: Path) -> None:
    big = random.Random(4).randbytes(2 * 1024 * 1024)
    image = ImageSpec([LayerSpec([File("big", big)], compression="none"),
                       LayerSpec([File("small", b"s")])]).build()
    fake.add_image("team/big", "v1", image)
    with tiny_tmpfs(shm_path / "tiny") as work:
        result = invoke(*pull_args(f"{fake.host}/team/big:v1", config_args(shm_path, fake),
                                   work, shm_path / "bundle"))
        error = assert_no_space_error(result, work)
        needed = sum(layer.size for layer in image.layers)
        # The numbers: what the pull needs and what is free.
        assert f"needs {needed} bytes" in error["message"], error
        assert re.search(r"only \d+ bytes .* free", error["message"]), error
        assert temporaries(work) == []
        assert all(layer.digest not in blob_paths(work) for layer in image.layers)
        assert store_problems(work) == []
        images = invoke("images", "--work-dir", str(work), "--json")
        assert images.exit_code == 0, images
        assert images.json["images"] == []
    assert not (shm_path / "bundle" / "config.json").exists()
    assert fake.requests_to(image.layers[0].digest) == []  # refused before downloading


@needs_root
@pytest.mark.privileged
def test_unpacked_layer_larger_than_the_work_dir(fake: FakeRegistry, shm_path: Path) -> None:
    # 3 MiB of zeros compress to a few KiB: the download fits, the unpacked overlay layer
    # (written under the work dir) does not.
    image = ImageSpec([LayerSpec([File("zeros", bytes(3 * 1024 * 1024))])]).build()
    assert image.layers[0].size < 64 * 1024
    fake.add_image("team/zeros", "v1", image)
    bundle = shm_path / "bundle"
    with tiny_tmpfs(shm_path / "tiny") as work, unmounted_after(bundle):
        result = invoke(*pull_args(f"{fake.host}/team/zeros:v1", config_args(shm_path, fake),
                                   work, bundle, "--rootfs-mode", "overlay"))
        assert_no_space_error(result, work)
        assert store_problems(work) == []
        assert [p.name for p in (work / "layers").iterdir()] == []  # no partial layer kept
        assert not os.path.ismount(bundle / "rootfs")
    assert not (bundle / "config.json").exists()


# --- 7: warm re-pull -------------------------------------------------------------------------


def test_warm_repull_downloads_no_blob(fake: FakeRegistry, shm_path: Path) -> None:
    image = ImageSpec([LayerSpec([File(f"f{i}", bytes([i]) * 50_000)], compression=c)
                       for i, c in enumerate(["gzip", "zstd", "none"])]).build()
    fake.add_image("team/warm", "v1", image)
    config, work = config_args(shm_path, fake), shm_path / "work"
    first = invoke(*pull_args(f"{fake.host}/team/warm:v1", config, work, shm_path / "b1",
                              "--rootfs-mode", "copy"))
    assert first.exit_code == 0, first
    assert blob_gets(fake) == {d: 1 for d in [image.config_digest, *(x.digest for x in image.layers)]}
    before = len(fake.requests)

    second = invoke(*pull_args(f"{fake.host}/team/warm:v1", config, work, shm_path / "b2",
                               "--rootfs-mode", "copy"))
    assert second.exit_code == 0, second
    assert second.json["result"]["manifest_digest"] == image.digest
    assert [r for r in fake.requests[before:] if "/blobs/" in r.path] == []
    assert describe_tree(shm_path / "b1" / "rootfs") == describe_tree(shm_path / "b2" / "rootfs")
    assert (shm_path / "b2" / "config.json").read_bytes() == (shm_path / "b1" / "config.json").read_bytes()
