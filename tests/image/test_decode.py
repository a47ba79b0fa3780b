"""Layer decoding: every gzip member, every zstd frame, plain tar; diff_id checked."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

from guestpull import oci
from guestpull.errors import DigestError, UnpackError, UnsupportedError
from guestpull.image.decode import LayerReader, compression_of, decoded_chunks, uncompressed_size_hint
from guestpull.image.rootfs import ensure_layer
from guestpull.image.store import Store
from guestpull_testkit.images import File, LayerSpec

from .conftest import layer_of

DATA = os.urandom(300_000) + b"\0" * 700_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def decode_all(blob: bytes, media_type: str, diff_id: str | None) -> bytes:
    return b"".join(decoded_chunks(io.BytesIO(blob), media_type, diff_id))


def test_gzip_reads_every_member() -> None:
    blob = gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:]) + gzip.compress(b"tail")
    assert decode_all(blob, oci.OCI_LAYER_GZIP, sha(DATA + b"tail")) == DATA + b"tail"


def test_docker_gzip_type() -> None:
    assert decode_all(gzip.compress(DATA), oci.DOCKER_LAYER_GZIP, sha(DATA)) == DATA


def test_zstd_reads_every_frame() -> None:
    c = zstandard.ZstdCompressor()
    blob = c.compress(DATA[:5000]) + c.compress(DATA[5000:])
    assert decode_all(blob, oci.OCI_LAYER_ZSTD, sha(DATA)) == DATA


def test_uncompressed_passes_through() -> None:
    assert decode_all(DATA, oci.OCI_LAYER_TAR, sha(DATA)) == DATA


def test_sha512_diff_id() -> None:
    diff_id = "sha512:" + hashlib.sha512(DATA).hexdigest()
    assert decode_all(gzip.compress(DATA), oci.OCI_LAYER_ND_GZIP, diff_id) == DATA


def test_chunks_are_bounded() -> None:
    blob = gzip.compress(b"\0" * (8 << 20))  # compresses to a few KiB: a small bomb
    reader = LayerReader(io.BytesIO(blob), oci.OCI_LAYER_GZIP, None)
    assert len(reader.read(1 << 20)) <= 1 << 20
    assert reader.verify() == sha(b"\0" * (8 << 20))


def test_diff_id_mismatch() -> None:
    with pytest.raises(DigestError, match="does not match its diff_id"):
        decode_all(gzip.compress(DATA), oci.OCI_LAYER_GZIP, sha(b"other"))


def test_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedError, match="application/x-rar"):
        compression_of("application/x-rar")
    with pytest.raises(UnsupportedError, match="foreign"):
        LayerReader(io.BytesIO(b""), oci.DOCKER_FOREIGN_LAYER_GZIP, None)


def test_encrypted_media_type_is_named() -> None:
    with pytest.raises(UnsupportedError, match="encrypted"):
        compression_of(oci.OCI_LAYER_GZIP_ENCRYPTED)


def test_corrupt_gzip_is_an_unpack_error() -> None:
    blob = bytearray(gzip.compress(DATA))
    blob[100:200] = b"\xff" * 100
    with pytest.raises((UnpackError, DigestError)):
        decode_all(bytes(blob), oci.OCI_LAYER_GZIP, sha(DATA))


def test_truncated_gzip_is_an_unpack_error() -> None:
    blob = gzip.compress(DATA)[:-20]
    with pytest.raises(UnpackError, match="corrupt"):
        decode_all(blob, oci.OCI_LAYER_GZIP, sha(DATA))


@pytest.mark.skipif(os.geteuid() != 0, reason="layer store unpack chowns (root)")
@pytest.mark.parametrize("compression", ["gzip", "gzip-multimember", "zstd", "none"])
def test_layer_with_wrong_diff_id_is_removed(store: Store, compression: str) -> None:
    built = LayerSpec([File(f"f{i}", b"x" * i) for i in range(50)], compression=compression).build()  # type: ignore[arg-type]
    store.content.put(built.digest, built.blob)
    wrong = layer_of(built, sha(b"not this layer"))
    with pytest.raises(DigestError):
        ensure_layer(store, wrong)
    assert store.layers.get(wrong.diff_id) is None
    assert list(store.layers.root.iterdir()) == []
    # and the right diff_id unpacks fine
    right = layer_of(built)
    path = ensure_layer(store, right)
    assert (path / "f49").read_bytes() == b"x" * 49


def test_stopping_early_ends_the_decompression_thread() -> None:
    blob = gzip.compress(bytes(range(256)) * 40_000)  # ~10 MiB: more than the prefetch window
    before = threading.active_count()
    reader = LayerReader(io.BytesIO(blob), oci.OCI_LAYER_GZIP, None)
    assert reader.read(1000)  # the thread is now ahead and blocked on a full window
    assert threading.active_count() == before + 1
    reader.close()
    assert threading.active_count() == before


def test_prefetched_chunks_hash_to_the_same_diff_id() -> None:
    tar = bytes(range(256)) * 30_000
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    with LayerReader(io.BytesIO(gzip.compress(tar)), oci.OCI_LAYER_GZIP, diff_id) as reader:
        got = b"".join(iter(lambda: reader.read(7777), b""))
        assert reader.verify() == diff_id
    assert got == tar


@pytest.mark.parametrize(("media_type", "encode", "expected"), [
    (oci.OCI_LAYER_GZIP, lambda d: gzip.compress(d, 1), 300_000),
    (oci.OCI_LAYER_ZSTD, lambda d: zstandard.ZstdCompressor().compress(d), 300_000),
    # a streamed zstd frame records no content size: the blob's own size stands in
    (oci.OCI_LAYER_ZSTD, lambda d: zstandard.ZstdCompressor(write_content_size=False).compress(d), None),
    (oci.OCI_LAYER_TAR, lambda d: d, 300_000),
])
def test_uncompressed_size_hint(shm_path: Path, media_type: str, encode: Any, expected: int | None) -> None:
    blob = shm_path / "blob"
    blob.write_bytes(encode(b"abc" * 100_000))
    hint = uncompressed_size_hint(str(blob), media_type)
    assert hint == (expected if expected is not None else blob.stat().st_size)
