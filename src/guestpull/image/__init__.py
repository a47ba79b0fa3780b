"""The image side: the content/layer store, layer decode, safe unpack, bundle.

The OCI data model (descriptors, manifests, index, config, platform) sits below this package,
in :mod:`guestpull.oci`, which ``distribution`` uses too.  Modules (each owns one idea):

* :mod:`.store` — content by digest, layers by diff_id, metadata in SQLite, file locks
* :mod:`.decode` — gzip / zstd / tar decoding with diff_id verification
* :mod:`.fsops` — the path resolver (dir fds, openat2) every write goes through
* :mod:`.tarstream` — the streaming tar parser (ustar, PAX, GNU long names)
* :mod:`.unpack` — the one layer applier (overlay and copy whiteout modes)
* :mod:`.rootfs` — verified blob unpack, layer store fill, overlay mount, copy flattening
* :mod:`.worker` — unpack worker processes (the other cores)
* :mod:`.flat` — the flattened copy-mode rootfs cache and its copier (re-pulls)
* :mod:`.bundle` — ``rootfs`` + ``config.json``
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562): an unpack worker imports guestpull.image.worker and should not
# pay for the bundle and store modules it never touches.
_EXPORTS: dict[str, str] = {
    "BundleResult": "bundle",
    "create_bundle": "bundle",
    "umount_bundle": "bundle",
    "ImageRecord": "store",
    "Store": "store",
    "open_store": "store",
    "LayerStats": "unpack",
    "apply_layer": "unpack",
}

__all__ = [
    "BundleResult",
    "ImageRecord",
    "LayerStats",
    "Store",
    "apply_layer",
    "create_bundle",
    "open_store",
    "umount_bundle",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
