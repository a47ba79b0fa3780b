"""Opaque markers cost linear work however a layer repeats or nests them (a hostile layer
could otherwise make the copy-mode applier list the same directories again and again)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from guestpull.image.unpack import apply_layer
from guestpull_testkit.images import Dir, Entry, File, LayerSpec, Opaque


def apply(root: Path, entries: list[Entry]) -> None:
    apply_layer(io.BytesIO(LayerSpec(entries, compression="none").tar_bytes()), root, mode="copy")


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts os.listdir calls (how the applier reads a directory it purges)."""
    calls: list[int] = []
    real = os.listdir

    def counting(path: int | str = ".") -> list[str]:
        calls.append(1)
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    return calls


def test_a_repeated_opaque_marker_lists_the_directory_once(shm_path: Path, listings: list[int]) -> None:
    apply(shm_path, [Dir("d")] + [File(f"d/low{i}", b"l") for i in range(50)])
    apply(shm_path, [Dir("d")] + [File(f"d/up{i}", b"u") for i in range(50)] + [Opaque("d")] * 200)
    assert sorted(os.listdir(shm_path / "d")) == sorted(f"up{i}" for i in range(50))
    assert len(listings) == 2  # our own call above and one purge, not 200


def test_nested_opaque_markers_list_each_directory_once(shm_path: Path, listings: list[int]) -> None:
    levels = [("/".join(f"n{j}" for j in range(i + 1))) for i in range(60)]
    apply(shm_path, [Dir(p) for p in levels] + [File(p + "/low", b"l") for p in levels])
    apply(shm_path, [Dir(p) for p in levels] + [Opaque(p) for p in levels]
          + [File(levels[-1] + "/up", b"u")])
    assert len(listings) == 60  # each level once, not 60 * 61 / 2
    deepest = shm_path / levels[-1]
    assert os.listdir(deepest) == ["up"]
    assert not any((shm_path / p / "low").exists() for p in levels)
