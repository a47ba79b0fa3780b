"""The ``guestpull serve`` benchmark tool: a fresh service per run, PullImage calls timed,
the rootfs right, the service stopped and its mounts undone afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.images import TAG, ImagePlan, LayerPlan, generate  # noqa: E402
from bench.servetool import GuestpullServeTool  # noqa: E402
from bench.tools import Registry, mountpoints  # noqa: E402
from bench.verify import verify_rootfs  # noqa: E402
from guestpull.testing.images import push  # noqa: E402

PLANS = [ImagePlan(f"t/serve{i}", (LayerPlan("small-files", seed=10 + i, files=40),)) for i in range(2)]


def test_serve_tool_pulls_every_image_on_one_connection(https_registry, shm_path: Path) -> None:
    images = [generate(plan, shm_path / "cache") for plan in PLANS]
    registry = Registry(https_registry.host, https_registry.ca_path)
    for image in images:
        push(image.layout, TAG, registry.ref(image), tls_ca=registry.ca_path, timeout=300)
    tool = GuestpullServeTool(registry, timeout=120)
    tool.setup(images, shm_path / "setup")
    work = shm_path / "work"
    attempt = tool.pull(images, work)
    try:
        assert attempt.status == "ok", attempt.error
        assert attempt.sample is not None and attempt.sample.wall_s > 0 and attempt.sample.peak_rss_kib > 0
        for rootfs, image in zip(attempt.rootfs, images, strict=True):
            assert verify_rootfs(rootfs, image.expected()).ok
        service = tool._service  # noqa: SLF001 - checking that release stops it
        assert service is not None and service.running()
    finally:
        tool.release(work)
    assert not service.running()
    assert not [p for p in mountpoints() if work in p.parents]


def test_serve_tool_reports_a_registry_it_cannot_reach(shm_path: Path) -> None:
    from guestpull.testing.certs import make_ca_chain

    image = generate(PLANS[0], shm_path / "cache")
    tool = GuestpullServeTool(Registry("127.0.0.1:9", make_ca_chain().write(shm_path / "tls").ca), timeout=60)
    tool.setup([image], shm_path / "setup")
    attempt = tool.pull([image], shm_path / "work")
    tool.release(shm_path / "work")
    assert attempt.status == "failed" and "[CDH] [ERROR]: Image Pull error: " in attempt.error
