"""The pod annotation that carries an Init-Data document: base64 of its gzip, both ways.

Decoding is bounded (:data:`MAX_DOCUMENT_SIZE`) and strict: a value whose meaning would depend
on which gzip reader the host uses is refused.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib

from guestpull.errors import ConfigError, Location

ANNOTATION_KEY = "io.katacontainers.config.hypervisor.cc_init_data"

# A decoded annotation larger than this is refused: nobody writes 16 MiB of config, and an
# unbounded gunzip of a pasted value is a memory bomb.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024


def encode_annotation(raw: bytes) -> str:
    """base64(gzip(raw)) for the pod annotation; gzip mtime 0 so the value is reproducible."""
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def decode_annotation(value: str) -> bytes:
    """The document bytes inside an annotation value (not yet parsed: call InitData.parse).

    Also accepts the pasted forms ``key=value`` and ``key: "value"``.
    """
    encoded = _annotation_value(value)
    if not encoded:
        raise ConfigError("the annotation value is empty", location=Location(field=ANNOTATION_KEY))
    try:
        compressed = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConfigError(
            f"the annotation value is not valid base64 (standard alphabet): {err}",
            location=Location(field=ANNOTATION_KEY),
        ) from None
    raw = _gunzip(compressed)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"the decompressed annotation is not UTF-8 text (offset {err.start})",
            location=Location(field=ANNOTATION_KEY),
        ) from None
    return raw


def _annotation_value(value: str) -> str:
    text = value.strip()
    for separator in ("=", ":"):
        head, found, tail = text.partition(separator)
        if found and head.strip().strip("\"'") == ANNOTATION_KEY:
            text = tail.strip()
            break
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return "".join(text.split())


def _gunzip(compressed: bytes) -> bytes:
    where = Location(field=ANNOTATION_KEY)
    decoder = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer required
    try:
        raw = decoder.decompress(compressed, MAX_DOCUMENT_SIZE + 1)
    except zlib.error as err:
        raise ConfigError(f"the annotation value is not gzip data: {err}", location=where) from None
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise ConfigError(
            f"the decompressed annotation is larger than {MAX_DOCUMENT_SIZE} bytes", location=where
        )
    if not decoder.eof:
        raise ConfigError("the annotation value is truncated gzip data", location=where)
    if decoder.unused_data:
        # Go's reader would read a second member, Rust's GzDecoder would ignore it: refuse
        # anything whose meaning depends on the reader.
        raise ConfigError("the annotation value has data after the gzip stream", location=where)
    return raw


def annotation_yaml(value: str) -> str:
    """A pod metadata snippet carrying the annotation."""
    return f'metadata:\n  annotations:\n    {ANNOTATION_KEY}: "{value}"\n'
