"""The benchmark's image generator: deterministic, valid layouts, the promised content mix."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, home of bench/

from bench.images import (  # noqa: E402
    ImagePlan,
    LayerPlan,
    generate,
    layout_dir,
    read_layer_tars,
)

SMALL = ImagePlan(
    "t/small",
    (LayerPlan("mixed", seed=1, size=256 * 1024), LayerPlan("small-files", seed=2, files=60)),
)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_same_plan_gives_same_digests_and_bytes(shm_path: Path, compression: str) -> None:
    plan = ImagePlan(SMALL.name, SMALL.layers, compression)  # type: ignore[arg-type]
    first = generate(plan, shm_path / "a")
    second = generate(plan, shm_path / "b")
    assert first.manifest_digest == second.manifest_digest
    assert first.layer_digests == second.layer_digests
    for digest in first.layer_digests:
        name = digest.removeprefix("sha256:")
        assert (first.layout / "blobs/sha256" / name).read_bytes() == \
            (second.layout / "blobs/sha256" / name).read_bytes()


def test_other_seed_or_compression_gives_other_image(shm_path: Path) -> None:
    base = generate(SMALL, shm_path)
    reseeded = ImagePlan(SMALL.name, (LayerPlan("mixed", seed=99, size=256 * 1024), SMALL.layers[1]))
    zstd = ImagePlan(SMALL.name, SMALL.layers, "zstd")
    assert generate(reseeded, shm_path).layer_digests[0] != base.layer_digests[0]
    assert generate(reseeded, shm_path).layer_digests[1] == base.layer_digests[1]
    assert generate(zstd, shm_path).manifest_digest != base.manifest_digest
    assert len({layout_dir(shm_path, p) for p in (SMALL, reseeded, zstd)}) == 3


def test_cached_layout_is_reused_not_rebuilt(shm_path: Path) -> None:
    first = generate(SMALL, shm_path)
    blob = first.layout / "blobs/sha256" / first.layer_digests[0].removeprefix("sha256:")
    stamp = blob.stat().st_mtime_ns
    again = generate(SMALL, shm_path)
    assert again == first
    assert blob.stat().st_mtime_ns == stamp


def test_interrupted_build_is_redone(shm_path: Path) -> None:
    directory = layout_dir(shm_path, SMALL)
    directory.mkdir(parents=True)
    (directory / "junk").write_text("half a build, no READY marker")
    image = generate(SMALL, shm_path)
    assert not (image.layout / "junk").exists()
    assert (image.layout / "READY").is_file()


def test_layout_digests_and_expected_list_match_the_tars(shm_path: Path) -> None:
    image = generate(SMALL, shm_path)
    blobs = image.layout / "blobs/sha256"
    index = json.loads((image.layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest
    manifest = json.loads((blobs / image.manifest_digest.removeprefix("sha256:")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    tars = list(read_layer_tars(image))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    for layer in manifest["layers"]:
        data = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert len(data) == layer["size"]
    members: dict[str, tuple[str, int, str | None]] = {}
    for tar_bytes in tars:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            for info in tar:
                data = tar.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
                members[info.name] = (
                    "file" if info.isfile() else "dir",
                    info.size if info.isfile() else 0,
                    hashlib.sha256(data).hexdigest() if data is not None else None,
                )
    expected = {p: (e.kind, e.size, e.sha256) for p, e in image.expected().items()}
    assert expected == members


def test_mixed_layer_is_half_random_half_text(shm_path: Path) -> None:
    plan = ImagePlan("t/mixed", (LayerPlan("mixed", seed=5, size=2 * 1024 * 1024),))
    image = generate(plan, shm_path)
    files = {p: e for p, e in image.expected().items() if e.kind == "file"}
    random_bytes = sum(e.size for p, e in files.items() if p.endswith(".bin"))
    text_bytes = sum(e.size for p, e in files.items() if p.endswith(".txt"))
    assert random_bytes == text_bytes
    assert random_bytes + text_bytes == pytest.approx(2 * 1024 * 1024, rel=0.01)
    blob_size = (image.layout / "blobs/sha256" / image.layer_digests[0].removeprefix("sha256:")).stat().st_size
    # random half stays, text half shrinks: between 50% and 85% of the input
    assert 0.5 < blob_size / (random_bytes + text_bytes) < 0.85


def test_small_files_layer_sizes_and_depths(shm_path: Path) -> None:
    plan = ImagePlan("t/many", (LayerPlan("small-files", seed=7, files=400),))
    entries = generate(plan, shm_path).expected()
    files = {p: e for p, e in entries.items() if e.kind == "file"}
    assert len(files) == 400
    assert all(100 <= e.size <= 4096 for e in files.values())
    depths = [p.count("/") for p in files]
    assert max(depths) >= 8 and min(depths) <= 3
    for path in files:  # every parent directory is listed, so the rootfs check can be exact
        parent = path.rsplit("/", 1)[0]
        assert entries[parent].kind == "dir"
