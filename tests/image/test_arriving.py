"""Unpacking a layer while its blob is still being downloaded (decode.ArrivingBlob)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from guestpull.errors import UnpackError
from guestpull.image.decode import Arriving, ArrivingBlob, open_blob
from guestpull.image.unpack import unpack_file
from guestpull_testkit.images import Dir, File, LayerSpec

from .treewalk import describe_tree

DATA = os.urandom(200_000)


def _write_slowly(path: Path, data: bytes, *, pieces: int = 8, pause: float = 0.01,
                  abandon_after: int | None = None) -> threading.Thread:
    """Append ``data`` to ``path`` in pieces, as a download does; optionally unlink midway."""
    step = -(-len(data) // pieces)

    def run() -> None:
        with open(path, "ab") as f:
            for n, offset in enumerate(range(0, len(data), step)):
                if abandon_after is not None and n == abandon_after:
                    os.unlink(path)
                    return
                time.sleep(pause)
                f.write(data[offset:offset + step])
                f.flush()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _arriving(directory: Path, data: bytes) -> Arriving:
    return Arriving(len(data), str(directory / "stored"))


def _read_all(reader: ArrivingBlob) -> bytes:
    chunks = []
    while chunk := reader.read(7_000):
        chunks.append(chunk)
    return b"".join(chunks)


def test_reads_the_file_as_it_grows_and_stops_at_its_size(shm_path: Path) -> None:
    path = shm_path / "ingest"
    path.write_bytes(b"")
    writer = _write_slowly(path, DATA)
    with ArrivingBlob(str(path), _arriving(shm_path, DATA)) as reader:
        assert _read_all(reader) == DATA
        assert reader.read(10) == b""
    writer.join()


def test_an_abandoned_download_stops_the_reader(shm_path: Path) -> None:
    path = shm_path / "ingest"
    path.write_bytes(b"")
    writer = _write_slowly(path, DATA, abandon_after=3)
    start = time.monotonic()
    with ArrivingBlob(str(path), _arriving(shm_path, DATA)) as reader, \
            pytest.raises(UnpackError, match="abandoned"):
        _read_all(reader)
    writer.join()
    assert time.monotonic() - start < 5


def test_a_file_that_stops_growing_is_given_up(shm_path: Path) -> None:
    path = shm_path / "ingest"
    path.write_bytes(DATA[:100])
    with ArrivingBlob(str(path), _arriving(shm_path, DATA), stall_s=0.05) as reader:
        assert reader.read(1000) == DATA[:100]
        with pytest.raises(UnpackError, match="did not grow"):
            reader.read(1000)


def test_a_file_already_gone_and_not_stored_is_an_unpack_error(shm_path: Path) -> None:
    with pytest.raises(UnpackError, match="no longer being written, nor stored"):
        ArrivingBlob(str(shm_path / "gone"), _arriving(shm_path, DATA))


def test_a_download_committed_before_the_reader_opened_it_is_read_from_the_store(shm_path: Path) -> None:
    (shm_path / "stored").write_bytes(DATA)
    with ArrivingBlob(str(shm_path / "renamed-away"), _arriving(shm_path, DATA)) as reader:
        assert _read_all(reader) == DATA


def test_open_blob_without_arriving_is_the_stored_file(shm_path: Path) -> None:
    path = shm_path / "blob"
    path.write_bytes(DATA)
    with open_blob(str(path)) as raw:
        assert raw.read() == DATA


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layer_unpacked_while_it_arrives_equals_the_stored_one(shm_path: Path, compression: str) -> None:
    layer = LayerSpec([Dir("d"), File("d/random", DATA), File("d/text", b"line\n" * 50_000)],
                      compression=compression).build()  # type: ignore[arg-type]
    stored = shm_path / "stored.blob"
    stored.write_bytes(layer.blob)
    arriving = shm_path / "arriving.blob"
    arriving.write_bytes(b"")
    writer = _write_slowly(arriving, layer.blob, pieces=16, pause=0.005)
    on_its_way = Arriving(len(layer.blob), str(stored))
    for name, blob, how in (("a", arriving, on_its_way), ("s", stored, None)):
        (shm_path / name).mkdir()
        unpack_file(str(blob), layer.media_type, layer.diff_id, str(shm_path / name),
                    mode="copy", privileged=False, arriving=how)
    writer.join()
    assert describe_tree(shm_path / "a") == describe_tree(shm_path / "s")
    assert (shm_path / "a" / "d" / "random").read_bytes() == DATA
