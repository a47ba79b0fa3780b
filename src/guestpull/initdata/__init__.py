"""Init-Data: the document the guest is started with (its aa.toml, cdh.toml and agent policy).

One module per job, re-exported here so callers write ``from guestpull.initdata import X``:

- :mod:`~guestpull.initdata.document`: parse and validate, keeping the exact bytes
  (:class:`InitData`, :func:`load`);
- :mod:`~guestpull.initdata.digest`: the digest fitted to a platform's TEE field or PCR 8;
- :mod:`~guestpull.initdata.annotation`: the pod annotation codec (gzip + base64);
- :mod:`~guestpull.initdata.build`: a document from ``initdata build`` options;
- :mod:`~guestpull.initdata.render`: the TOML writer the builder uses.
"""

from guestpull.initdata.annotation import (
    ANNOTATION_KEY,
    MAX_DOCUMENT_SIZE,
    annotation_yaml,
    decode_annotation,
    encode_annotation,
)
from guestpull.initdata.build import (
    DEFAULT_ALGORITHM,
    DEFAULT_POLICY_RESOURCE,
    BuildOptions,
    SourceText,
    build,
    check_host_port,
)
from guestpull.initdata.digest import PLATFORM_DIGEST_SIZES, PLATFORMS, expected_pcr8, fit_digest
from guestpull.initdata.document import (
    AA_KEY,
    ALGORITHMS,
    CDH_KEY,
    KNOWN_DATA_KEYS,
    POLICY_KEY,
    TOML_DATA_KEYS,
    VERSION,
    InitData,
    data_field,
    load,
)
from guestpull.initdata.render import dump_toml, render_document

__all__ = [
    "AA_KEY",
    "ALGORITHMS",
    "ANNOTATION_KEY",
    "CDH_KEY",
    "DEFAULT_ALGORITHM",
    "DEFAULT_POLICY_RESOURCE",
    "KNOWN_DATA_KEYS",
    "MAX_DOCUMENT_SIZE",
    "PLATFORMS",
    "PLATFORM_DIGEST_SIZES",
    "POLICY_KEY",
    "TOML_DATA_KEYS",
    "VERSION",
    "BuildOptions",
    "InitData",
    "SourceText",
    "annotation_yaml",
    "build",
    "check_host_port",
    "data_field",
    "decode_annotation",
    "dump_toml",
    "encode_annotation",
    "expected_pcr8",
    "fit_digest",
    "load",
    "render_document",
]
