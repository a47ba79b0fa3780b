"""Issue 15's many-small-files tree shapes: deterministic, the promised sizes and depths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.images import generate, layer_entries, LayerPlan  # noqa: E402
from bench.verify import verify_rootfs  # noqa: E402
from bench.images import extract_layout  # noqa: E402
from bench.workloads import QUICK, many_deep_plan, many_logsize_plan, catalogue  # noqa: E402

SHAPES = [many_logsize_plan, many_deep_plan]


@pytest.mark.parametrize("make_plan", SHAPES)
def test_same_seed_gives_same_digests_and_expected_list(shm_path: Path, make_plan) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(QUICK)
    first, second = generate(plan, shm_path / "a"), generate(plan, shm_path / "b")
    assert first.manifest_digest == second.manifest_digest
    assert first.layer_digests == second.layer_digests
    assert first.expected() == second.expected()


def test_other_seed_gives_other_layer() -> None:
    one = list(layer_entries(LayerPlan("deep-files", seed=1, files=50), 0))
    two = list(layer_entries(LayerPlan("deep-files", seed=2, files=50), 0))
    assert one != two


@pytest.mark.parametrize("make_plan", SHAPES)
def test_unpacked_shape_passes_verification(shm_path: Path, make_plan) -> None:  # type: ignore[no-untyped-def]
    image = generate(make_plan(QUICK), shm_path / "cache")
    rootfs = extract_layout(image, shm_path / "rootfs")
    assert verify_rootfs(rootfs, image.expected()).ok
    victim = next(p for p, e in image.expected().items() if e.kind == "file")
    (rootfs / victim).write_bytes(b"x")
    assert not verify_rootfs(rootfs, image.expected()).ok


def test_logsize_sizes_are_log_uniform_and_half_random() -> None:
    entries = [(p, d) for p, d in layer_entries(LayerPlan("logsize-files", seed=7, files=3000), 0)
               if d is not None]
    sizes = sorted(len(d) for _, d in entries)
    assert len(entries) == 3000
    assert sizes[0] >= 16 and sizes[-1] <= 16 * 1024
    # log-uniform over 2^4..2^14: the median is near 2^9 = 512 B, a quarter below 2^6.5
    assert 350 <= sizes[len(sizes) // 2] <= 750
    assert 0.2 <= sum(s < 90 for s in sizes) / len(sizes) <= 0.3
    assert sum(p.endswith(".bin") for p, _ in entries) == 1500


def test_deep_files_are_small_and_deep() -> None:
    entries = list(layer_entries(LayerPlan("deep-files", seed=9, files=800), 0))
    files = [(p, d) for p, d in entries if d is not None]
    assert len(files) == 800
    assert all(1 <= len(d) <= 1024 for _, d in files)
    depths = [p.count("/") - 2 for p, _ in files]  # under usr/layer0/, minus the file name
    assert min(depths) >= 8 and max(depths) <= 16
    # every directory appears before its files, once
    seen: set[str] = set()
    for path, data in entries:
        assert path.rsplit("/", 1)[0] in seen or path.count("/") == 0 or data is None
        if data is None:
            assert path not in seen
            seen.add(path)


def test_full_sizes_match_issue_15_and_quick_stays_small() -> None:
    full = {w.name: w for w in catalogue(quick=False, rss_scaling=False)}
    quick = {w.name: w for w in catalogue(quick=True, rss_scaling=False)}
    for name, count in (("many-logsize", 20_000), ("many-deep", 100_000)):
        assert sum(layer.files for layer in full[name].images[0].layers) == count
        assert len(full[name].images[0].layers) == 3
        assert sum(layer.files for layer in quick[name].images[0].layers) <= 500
