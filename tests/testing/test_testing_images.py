"""guestpull_testkit.images: layers hold what the specs say, layouts are valid and reproducible."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import zstandard

from guestpull_testkit.images import (
    DEFAULT_MTIME,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
    BlockDevice,
    CharDevice,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    LayerSpec,
    Opaque,
    RawTarInfo,
    Symlink,
    Whiteout,
    write_layout,
)


def _members(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        return {m.name: m for m in tar.getmembers()}


def _sample_image(arch: str = "amd64", variant: str | None = None) -> ImageSpec:
    return ImageSpec(
        layers=[
            LayerSpec([Dir("etc"), File("etc/os-release", b"ID=test\n"), Symlink("bin", "usr/bin")]),
            LayerSpec([File("etc/motd", arch.encode()), Whiteout("etc/os-release")], "zstd"),
        ],
        config={"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin"]},
        architecture=arch,
        variant=variant,
    )


def test_entries_become_the_tar_members_they_describe() -> None:
    layer = LayerSpec([
        Dir("etc", mode=0o700, uid=5, gid=6),
        File("etc/secret", b"data", mode=0o4755, uid=1000, gid=1001, mtime=1234,
             xattrs={"user.bin": b"\xff\x00z", "security.capability": b"caps"}),
        Symlink("etc/link", "/abs/target"),
        Hardlink("etc/hard", "etc/secret"),
        Fifo("run/fifo"),
        CharDevice("dev/null", 1, 3),
        BlockDevice("dev/sda", 8, 0),
        Whiteout("usr/gone"),
        Whiteout("top"),
        Opaque("var/lib/"),
    ], "none")
    members = _members(layer.tar_bytes())
    assert list(members) == [
        "etc", "etc/secret", "etc/link", "etc/hard", "run/fifo", "dev/null", "dev/sda",
        "usr/.wh.gone", ".wh.top", "var/lib/.wh..wh..opq",
    ]
    d, f = members["etc"], members["etc/secret"]
    assert d.isdir() and d.mode == 0o700 and (d.uid, d.gid) == (5, 6)
    assert f.isreg() and f.mode == 0o4755 and (f.uid, f.gid) == (1000, 1001) and f.mtime == 1234
    assert f.pax_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == b"\xff\x00z"
    assert f.pax_headers["SCHILY.xattr.security.capability"] == "caps"
    assert members["etc/link"].issym() and members["etc/link"].linkname == "/abs/target"
    assert members["etc/hard"].islnk() and members["etc/hard"].linkname == "etc/secret"
    assert members["run/fifo"].isfifo()
    assert members["dev/null"].ischr() and (members["dev/null"].devmajor, members["dev/null"].devminor) == (1, 3)
    assert members["dev/sda"].isblk() and members["dev/sda"].devmajor == 8
    assert members["usr/.wh.gone"].isreg() and members["usr/.wh.gone"].size == 0
    assert members["dev/sda"].mtime == DEFAULT_MTIME


def test_raw_tarinfo_builds_hostile_members() -> None:
    evil = tarfile.TarInfo("../../etc/passwd")
    evil.size = 4
    abs_link = tarfile.TarInfo("/escape")
    abs_link.type = tarfile.SYMTYPE
    abs_link.linkname = "/"
    layer = LayerSpec([RawTarInfo(evil, b"root"), RawTarInfo(abs_link)], "none")
    with tarfile.open(fileobj=io.BytesIO(layer.tar_bytes()), mode="r:") as tar:
        names = tar.getnames()
        assert tar.extractfile("../../etc/passwd").read() == b"root"  # type: ignore[union-attr]
    assert names == ["../../etc/passwd", "/escape"]


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [("gzip", MEDIA_TYPE_LAYER_GZIP), ("gzip-multimember", MEDIA_TYPE_LAYER_GZIP),
     ("zstd", MEDIA_TYPE_LAYER_ZSTD), ("none", MEDIA_TYPE_LAYER)],
)
def test_compression_round_trips(compression: str, media_type: str) -> None:
    built = LayerSpec([File("a", os.urandom(3000)), File("b", b"x" * 5000)], compression).build()  # type: ignore[arg-type]
    assert built.media_type == media_type
    if compression == "zstd":
        decoded = zstandard.ZstdDecompressor().decompress(built.blob)
    elif compression == "none":
        decoded = built.blob
    else:
        decoded = gzip.decompress(built.blob)
    assert decoded == built.tar
    assert built.diff_id == "sha256:" + hashlib.sha256(built.tar).hexdigest()
    assert built.digest == "sha256:" + hashlib.sha256(built.blob).hexdigest()


def test_multimember_gzip_has_two_members() -> None:
    built = LayerSpec([File("a", b"a" * 20000)], "gzip-multimember").build()
    first = zlib.decompressobj(31)
    head = first.decompress(built.blob)
    assert first.eof and first.unused_data  # a second member follows the first
    assert 0 < len(head) < len(built.tar)


def test_same_specs_give_identical_layouts(shm_path: Path) -> None:
    one = write_layout(shm_path / "one", [_sample_image("amd64"), _sample_image("arm64", "v8")],
                       tag="multi", index=True)
    two = write_layout(shm_path / "two", [_sample_image("amd64"), _sample_image("arm64", "v8")],
                       tag="multi", index=True)
    assert one == two
    files_one = sorted(p.relative_to(shm_path / "one") for p in (shm_path / "one").rglob("*"))
    files_two = sorted(p.relative_to(shm_path / "two") for p in (shm_path / "two").rglob("*"))
    assert files_one == files_two
    for rel in files_one:
        if (shm_path / "one" / rel).is_file():
            assert (shm_path / "one" / rel).read_bytes() == (shm_path / "two" / rel).read_bytes()


def test_different_content_gives_different_digests(shm_path: Path) -> None:
    a = write_layout(shm_path / "a", _sample_image("amd64"))
    b = write_layout(shm_path / "b", _sample_image("arm64"))
    assert a.manifest_digest != b.manifest_digest
    assert a.layer_digests[0] == b.layer_digests[0]  # the shared first layer
    assert a.layer_digests[1] != b.layer_digests[1]


def test_layout_files_match_the_returned_digests(shm_path: Path) -> None:
    result = write_layout(shm_path, _sample_image(), tag="v1")
    blobs = shm_path / "blobs" / "sha256"
    # every blob is named by its own digest
    for blob in blobs.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert json.loads((shm_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((shm_path / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["digest"] == result.digest == result.manifest_digest
    assert desc["mediaType"] == MEDIA_TYPE_MANIFEST
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads((blobs / result.digest.removeprefix("sha256:")).read_bytes())
    assert manifest["config"]["digest"] == result.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == result.layer_digests
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD,
    ]
    config = json.loads((blobs / result.config_digest.removeprefix("sha256:")).read_bytes())
    assert config["rootfs"]["diff_ids"] == result.diff_ids
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")


def test_index_layout_lists_platforms(shm_path: Path) -> None:
    result = write_layout(shm_path, [_sample_image("amd64"), _sample_image("arm64", "v8")],
                          tag="multi", index=True)
    assert result.is_index and result.media_type == MEDIA_TYPE_INDEX
    index = json.loads((shm_path / "blobs" / "sha256" / result.digest.removeprefix("sha256:")).read_bytes())
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert [m["digest"] for m in index["manifests"]] == [m.digest for m in result.manifests]
    with pytest.raises(ValueError, match="several images"):
        result.config_digest  # noqa: B018 - ambiguous for an index


def test_several_tags_share_one_layout(shm_path: Path) -> None:
    first = write_layout(shm_path, _sample_image("amd64"), tag="a")
    second = write_layout(shm_path, _sample_image("arm64"), tag="b")
    again = write_layout(shm_path, _sample_image("s390x"), tag="a")
    index = json.loads((shm_path / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert by_tag == {"a": again.digest, "b": second.digest}
    assert first.digest != again.digest


def test_several_images_without_index_are_refused(shm_path: Path) -> None:
    with pytest.raises(ValueError, match="index=True"):
        write_layout(shm_path, [_sample_image("amd64"), _sample_image("arm64")])


@pytest.mark.registry
def test_umoci_unpacks_the_layout(shm_path: Path) -> None:
    """umoci (the reference unpacker) accepts our layouts: whiteouts, opaque dirs, links,
    devices, multimember gzip.  umoci 0.4.7 has no zstd, so this image avoids it."""
    image = ImageSpec(layers=[
        LayerSpec([Dir("etc"), File("etc/keep", b"k"), File("etc/old", b"o"),
                   Dir("var"), File("var/lower", b"l"), Symlink("etc/link", "keep"),
                   Hardlink("etc/hard", "etc/keep"), Fifo("fifo"), CharDevice("null", 1, 3),
                   File("suid", b"#!", mode=0o4755, uid=12, gid=34)]),
        LayerSpec([Whiteout("etc/old"), Opaque("var"), File("var/upper", b"u")], "gzip-multimember"),
        LayerSpec([File("plain", b"p")], "none"),
    ])
    write_layout(shm_path / "layout", image, tag="t")
    rootfs = shm_path / "rootfs"
    result = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{shm_path / 'layout'}:t", str(rootfs)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (rootfs / "etc" / "keep").read_bytes() == b"k"
    assert not (rootfs / "etc" / "old").exists()
    assert sorted(os.listdir(rootfs / "var")) == ["upper"]
    assert os.readlink(rootfs / "etc" / "link") == "keep"
    assert os.stat(rootfs / "etc" / "hard").st_ino == os.stat(rootfs / "etc" / "keep").st_ino
    suid = os.stat(rootfs / "suid")
    assert (suid.st_mode & 0o7777, suid.st_uid, suid.st_gid) == (0o4755, 12, 34)
    assert int(suid.st_mtime) == DEFAULT_MTIME
    assert (rootfs / "plain").read_bytes() == b"p"
