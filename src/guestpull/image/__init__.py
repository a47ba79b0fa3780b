"""The image side: OCI data models, the content/layer store, layer decode, safe unpack, bundle.

Modules (each owns one idea):

* :mod:`.oci` — media types, descriptors, manifests, index, config, platform selection
* :mod:`.store` — content by digest, layers by diff_id, metadata in SQLite, file locks
* :mod:`.decode` — gzip / zstd / tar decoding with diff_id verification
* :mod:`.fsops` — the path resolver (dir fds, openat2) every write goes through
* :mod:`.tarstream` — the streaming tar parser (ustar, PAX, GNU long names)
* :mod:`.unpack` — the one layer applier (overlay and copy whiteout modes)
* :mod:`.rootfs` — verified blob unpack, layer store fill, overlay mount, copy flattening
* :mod:`.worker` — unpack worker processes (the other cores)
* :mod:`.bundle` — ``rootfs`` + ``config.json``
"""

from guestpull.image.bundle import BundleResult, create_bundle, umount_bundle
from guestpull.image.oci import (
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    default_platform,
    parse_manifest_document,
    select_platform,
)
from guestpull.image.store import ImageRecord, LayerRef, Store, open_store
from guestpull.image.unpack import LayerStats, apply_layer

__all__ = [
    "BundleResult",
    "Descriptor",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "ImageRecord",
    "LayerRef",
    "LayerStats",
    "Platform",
    "Store",
    "apply_layer",
    "create_bundle",
    "default_platform",
    "open_store",
    "parse_manifest_document",
    "select_platform",
    "umount_bundle",
]
