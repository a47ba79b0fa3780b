"""Resource URIs: a bare path, ``file://``, or ``kbs[+plugin]://`` served by a KBC.

* :mod:`.uri` — the URI grammar (coco-behaviour.md §8.4, §9.1);
* :mod:`.offline_fs` — the ``offline_fs_kbc`` (§9.3);
* :mod:`.resolver` — :class:`ResourceResolver`, one async ``get(uri)`` over files and the KBC
  that ``[kbc] name`` chooses (``cc_kbc`` lives in :mod:`guestpull.kbs`).
"""

from guestpull.resources.offline_fs import (
    OFFLINE_FS_EXTRA_ENV,
    OFFLINE_FS_KBC,
    OFFLINE_FS_KEYS_FILE,
    OFFLINE_FS_RESOURCES_FILE,
    OfflineFsKbc,
    default_offline_fs_files,
    load_offline_fs,
)
from guestpull.resources.resolver import (
    CC_KBC,
    KBC_NAMES,
    Kbc,
    ResourceResolver,
    SyncResourceGetter,
    run_sync,
)
from guestpull.resources.uri import (
    KbsResourceUri,
    check_kbs_url,
    check_resource_uri,
    is_kbs_uri,
    parse_kbs_uri,
)

__all__ = [
    "CC_KBC",
    "KBC_NAMES",
    "OFFLINE_FS_EXTRA_ENV",
    "OFFLINE_FS_KBC",
    "OFFLINE_FS_KEYS_FILE",
    "OFFLINE_FS_RESOURCES_FILE",
    "Kbc",
    "KbsResourceUri",
    "OfflineFsKbc",
    "ResourceResolver",
    "SyncResourceGetter",
    "check_kbs_url",
    "check_resource_uri",
    "default_offline_fs_files",
    "is_kbs_uri",
    "load_offline_fs",
    "parse_kbs_uri",
    "run_sync",
]
