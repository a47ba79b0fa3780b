"""config.json generation, User resolution, rootfs modes, existing bundles."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from guestpull.errors import ConfigError, ExistsError, UnsupportedError
from guestpull.image import create_bundle, umount_bundle
from guestpull.image.rootfs import is_mountpoint
from guestpull.image.store import Store
from guestpull_testkit.images import Dir, File, ImageSpec, LayerSpec, Symlink

from .conftest import add_image

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\nappgrp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\nstaff:x:50:\n"
ETC = LayerSpec([Dir("etc"), File("etc/passwd", PASSWD), File("etc/group", GROUP)])


def bundle_config(store: Store, tmp: Path, config: dict[str, Any], *, layers: list[LayerSpec] | None = None,
                  **image: Any) -> dict[str, Any]:
    spec = ImageSpec(layers=layers if layers is not None else [ETC], config=config, **image)
    result = create_bundle(store, add_image(store, spec), tmp / "bundle", mode="copy")
    return json.loads(result.config.read_text())


def test_process_from_entrypoint_cmd_env_workdir(store: Store, shm_path: Path) -> None:
    spec = bundle_config(store, shm_path, {
        "Entrypoint": ["/bin/app", "--serve"], "Cmd": ["--port", "80"],
        "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv",
    })
    assert spec["process"]["args"] == ["/bin/app", "--serve", "--port", "80"]
    assert spec["process"]["env"] == ["PATH=/bin", "A=1"]
    assert spec["process"]["cwd"] == "/srv"
    assert spec["hostname"] == "image-rs"
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


def test_defaults_when_config_is_empty(store: Store, shm_path: Path) -> None:
    spec = bundle_config(store, shm_path, {})
    assert spec["process"]["args"] == ["sh"]
    assert spec["process"]["env"][1] == "TERM=xterm"
    assert spec["process"]["cwd"] == "/"


@pytest.mark.parametrize("user, expected", [
    ("app", {"uid": 1000, "gid": 1001, "additionalGids": [10, 29]}),
    ("1000", {"uid": 1000, "gid": 1001, "additionalGids": [10, 29]}),
    ("4242", {"uid": 4242, "gid": 0}),
    ("app:staff", {"uid": 1000, "gid": 50, "additionalGids": [10, 29]}),
    ("4242:77", {"uid": 4242, "gid": 77}),
    ("root", {"uid": 0, "gid": 0}),
])
def test_user_resolution(store: Store, shm_path: Path, user: str, expected: dict[str, Any]) -> None:
    assert bundle_config(store, shm_path, {"User": user})["process"]["user"] == expected


@pytest.mark.parametrize("user", ["nobody-here", "app:nogroup"])
def test_unknown_user_or_group(store: Store, shm_path: Path, user: str) -> None:
    with pytest.raises(ConfigError, match="config.User"):
        bundle_config(store, shm_path, {"User": user})
    assert not (shm_path / "bundle" / "rootfs").exists()  # nothing half-made


def test_passwd_is_read_inside_the_rootfs(store: Store, shm_path: Path) -> None:
    # /etc/passwd as an absolute symlink: the container sees rootfs/real/passwd, not the host's.
    layer = LayerSpec([Dir("etc"), Dir("real"),
                       File("real/passwd", b"svc:x:321:654::/:/bin/sh\n"),
                       Symlink("etc/passwd", "/real/passwd")])
    spec = bundle_config(store, shm_path, {"User": "svc"}, layers=[layer])
    assert spec["process"]["user"] == {"uid": 321, "gid": 654}


def test_volumes_labels_and_annotations(store: Store, shm_path: Path) -> None:
    spec = bundle_config(store, shm_path, {
        "Volumes": {"/data": {}}, "Labels": {"a": "1", "org.opencontainers.image.os": "label-wins"},
        "StopSignal": "SIGTERM", "ExposedPorts": {"80/tcp": {}},
    }, variant="v2")
    assert spec["mounts"][0] == {"destination": "/data", "type": "tmpfs",
                                 "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}
    assert spec["mounts"][1]["destination"] == "/proc"
    ann = spec["annotations"]
    assert ann["a"] == "1"
    assert ann["org.opencontainers.image.os"] == "label-wins"
    assert ann["org.opencontainers.image.architecture"] == "amd64"
    assert ann["org.opencontainers.image.variant"] == "v2"
    assert ann["org.opencontainers.image.stopSignal"] == "SIGTERM"
    assert ann["org.opencontainers.image.exposedPorts"] == "80/tcp"
    assert ann["org.opencontainers.image.created"] == "2020-09-13T12:26:40Z"


def test_non_linux_image_is_refused(store: Store, shm_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="windows"):
        bundle_config(store, shm_path, {}, os="windows")
    assert not (shm_path / "bundle" / "config.json").exists()


def test_existing_bundle_needs_force(store: Store, shm_path: Path) -> None:
    record = add_image(store, ImageSpec(layers=[ETC], config={"Cmd": ["one"]}))
    first = create_bundle(store, record, shm_path / "b", mode="copy")
    (first.rootfs / "scribble").write_text("x")
    with pytest.raises(ExistsError):
        create_bundle(store, record, shm_path / "b", mode="copy")
    assert (first.rootfs / "scribble").exists()
    again = create_bundle(store, record, shm_path / "b", mode="copy", force=True)
    assert not (again.rootfs / "scribble").exists()
    assert (again.rootfs / "etc" / "passwd").read_bytes() == PASSWD


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="overlay needs root")
def test_auto_uses_overlay_and_umount_undoes_it(store: Store, shm_path: Path) -> None:
    record = add_image(store, ImageSpec(layers=[ETC, LayerSpec([File("top", b"t")])]))
    bundle = shm_path / "b"
    result = create_bundle(store, record, bundle)
    try:
        assert result.mode_used == "overlay"
        assert is_mountpoint(result.rootfs)
        assert (result.rootfs / "top").read_bytes() == b"t"
        (result.rootfs / "written").write_text("upper")  # writes go to the upper dir
        # the shared layer directories stay clean
        assert all(not (p / "written").exists() for p in store.layers.root.iterdir())
        # a second image sharing the ETC layer reuses its directory
        before = sorted(p.name for p in store.layers.root.iterdir())
        other = add_image(store, ImageSpec(layers=[ETC], config={"Cmd": ["x"]}), "other:1")
        second = create_bundle(store, other, shm_path / "b2")
        try:
            assert second.mode_used == "overlay"
            assert sorted(p.name for p in store.layers.root.iterdir()) == before
        finally:
            umount_bundle(shm_path / "b2", store)
    finally:
        assert umount_bundle(bundle, store)
    assert not is_mountpoint(result.rootfs)
    assert not (bundle / ".guestpull-overlay").exists()


def test_auto_falls_back_to_copy_when_unprivileged(store: Store, shm_path: Path) -> None:
    record = add_image(store, ImageSpec(layers=[LayerSpec([File("f", b"1")])]))
    result = create_bundle(store, record, shm_path / "b", privileged=False)
    assert result.mode_used == "copy"
    assert (result.rootfs / "f").read_bytes() == b"1"
    with pytest.raises(UnsupportedError, match="overlay"):
        create_bundle(store, record, shm_path / "b2", mode="overlay", privileged=False)
