"""Pulling from a FakeRegistry into a bundle and reading back the rootfs (test helpers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guestpull.config import ImageConfig, parse_cdh_config
from guestpull.image.bundle import umount_bundle
from guestpull.pull import pull_image
from guestpull_testkit.fakeregistry import FakeRegistry

from image.treewalk import describe_tree
from support.config import cdh_toml


def fake_config(fake: FakeRegistry) -> ImageConfig:
    """The ``[image]`` settings for pulling from ``fake`` over plain HTTP."""
    return parse_cdh_config(cdh_toml(insecure=[fake.host]), "cdh.toml").image_config()


async def pull_tree(reference: str, config: ImageConfig, work_dir: Path, bundle: Path,
                    mode: str) -> dict[str, Any]:
    """Pull ``reference`` into ``bundle`` with rootfs ``mode``; its rootfs described, unmounted."""
    result = await pull_image(reference, config, work_dir=work_dir, bundle=bundle,
                              rootfs_mode=mode)  # type: ignore[arg-type]
    assert result.bundle is not None and result.bundle.mode_used == mode
    tree = describe_tree(bundle / "rootfs")
    umount_bundle(bundle)
    return tree
