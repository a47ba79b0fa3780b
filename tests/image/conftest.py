"""Fixtures for the image tests: a store on tmpfs and a way to put built images in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guestpull.image.store import ImageRecord, Store, open_store
from guestpull.oci import Descriptor, Layer
from guestpull.testing.images import BuiltImage, BuiltLayer, ImageSpec


@pytest.fixture
def store(shm_path: Path) -> Iterator[Store]:
    yield open_store(shm_path / "work")


def layer_of(built: BuiltLayer, diff_id: str | None = None) -> Layer:
    """``built`` as an image layer (``diff_id`` to give it a wrong one)."""
    return Layer(Descriptor(built.media_type, built.digest, built.size), diff_id or built.diff_id)


def add_image(store: Store, spec: ImageSpec | BuiltImage, reference: str = "example/img:1") -> ImageRecord:
    """Store every blob of a built image and record it, as pull.py would."""
    built = spec.build() if isinstance(spec, ImageSpec) else spec
    for digest, data in built.blobs().items():
        store.content.put(digest, data)
    layers = [layer_of(l) for l in built.layers]
    return store.record_image(reference, built.digest, built.config_digest, built.manifest, layers)
