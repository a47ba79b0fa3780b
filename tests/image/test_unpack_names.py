"""Entry names as containerd and umoci read them (issue 13), and the dir→file whiteout.

* A leading ``/`` is relative to the rootfs: ``umoci insert … /`` writes an entry ``/``,
  ``tar -P`` writes ``/bin/…`` names and absolute hard-link targets.
* Names are cleaned lexically (Go's ``filepath.Clean``): ``a/../b`` is ``b``; only a ``..``
  that climbs above the root is refused.
* A layer that makes ``dir`` a file and then whites out ``dir/inner`` (umoci repack does):
  the whiteout hides nothing (nothing can be below a file) and is a no-op, as in umoci.

Each case is compared with ``umoci raw unpack`` of the same layout, in both rootfs modes; the
dir→file case also as real ``umoci repack`` output pushed to a registry and pulled.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.cli import config_args, image_ref, invoke, pull_args

from guestpull.errors import UnpackError
from guestpull.image import create_bundle, umount_bundle
from guestpull.image.fsops import remove_path
from guestpull.image.store import Store
from guestpull.image.unpack import apply_layer
from guestpull.testing.images import (
    Dir,
    File,
    ImageSpec,
    LayerSpec,
    RawTarInfo,
    TarLayerSpec,
    Whiteout,
    push,
    write_layout,
)

from .conftest import add_image
from .test_umoci_equality import umoci_unpack
from .treewalk import describe_tree, diff_trees


def raw(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None,
        linkname: str = "", mode: int = 0o644) -> RawTarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, 1_600_000_000
    info.size = len(data) if data is not None else 0
    return RawTarInfo(info, data)


def gnu_tar_absolute(shm_path: Path) -> bytes:
    """``tar -P`` of a small tree: absolute names and an absolute hard-link target."""
    src = shm_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(src / "bin" / "tool", 0o755)
    os.link(src / "bin" / "tool", src / "bin" / "tool-link")
    (src / "etc").mkdir()
    (src / "etc" / "conf").write_text("x=1\n")
    os.symlink("/etc/conf", src / "etc" / "abs-link")
    done = subprocess.run(["tar", "-P", "--format=gnu", "-cf", "-", str(src)],
                          capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        names = archive.getnames()
    assert all(name.startswith("/") for name in names), names  # really absolute
    return done.stdout


def cases(shm_path: Path) -> dict[str, list[LayerSpec]]:
    return {
        "root-entry-slash": [LayerSpec([
            raw("/", tarfile.DIRTYPE, mode=0o755), raw("/etc/", tarfile.DIRTYPE, mode=0o755),
            raw("/etc/hostname", data=b"h\n"), raw("./", tarfile.DIRTYPE, mode=0o755),
        ])],
        "tar-P": [TarLayerSpec([], "gzip", tar=gnu_tar_absolute(shm_path))],
        "dotdot-inside": [LayerSpec([
            Dir("a"), raw("a/../b", data=b"b"), raw("a/./c/../d", data=b"d"),
            raw("x/y/../../z", data=b"z"),
        ])],
        "dir-then-file-then-whiteout": [
            LayerSpec([Dir("dir"), File("dir/inner", b"i"), File("dir/other", b"o")]),
            LayerSpec([File("dir", b"now a file"), Whiteout("dir/inner")]),
        ],
    }


CASES = ["root-entry-slash", "tar-P", "dotdot-inside", "dir-then-file-then-whiteout"]


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="umoci comparison needs root (chown, mknod)")
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.parametrize("mode", ["copy", "overlay"])
@pytest.mark.parametrize("case", CASES)
def test_names_match_umoci(shm_path: Path, store: Store, case: str, mode: str) -> None:
    spec = ImageSpec(layers=cases(shm_path)[case])
    write_layout(shm_path / "layout", spec, tag="t")
    umoci_unpack(shm_path / "layout", "t", shm_path / "umoci")
    expected = describe_tree(shm_path / "umoci")
    assert expected, "umoci unpacked nothing: the comparison would be vacuous"
    result = create_bundle(store, add_image(store, spec), shm_path / "bundle", mode=mode)  # type: ignore[arg-type]
    try:
        assert diff_trees(expected, describe_tree(result.rootfs)) == []
    finally:
        umount_bundle(shm_path / "bundle", store)


def test_cleaned_names_land_where_containerd_puts_them(shm_path: Path) -> None:
    root = shm_path / "root"
    root.mkdir()
    tar = TarLayerSpec([], "none", tar=gnu_tar_absolute(shm_path)).tar_bytes()
    apply_layer(io.BytesIO(tar), root, mode="copy")
    inside = root / str(shm_path / "src").lstrip("/")
    assert (inside / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.stat(inside / "bin" / "tool-link").st_ino == os.stat(inside / "bin" / "tool").st_ino
    assert os.readlink(inside / "etc" / "abs-link") == "/etc/conf"  # link targets stay verbatim


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/../x", "./../x", "a/b/../../../x"])
def test_only_dotdot_above_the_root_is_refused(shm_path: Path, name: str) -> None:
    tar = LayerSpec([raw(name, data=b"x")], "none").tar_bytes()
    with pytest.raises(UnpackError, match="climbs above the root"):
        apply_layer(io.BytesIO(tar), shm_path, mode="copy")
    assert list(shm_path.iterdir()) == []


def test_whiteout_below_a_file_is_a_no_op_in_copy_mode(shm_path: Path) -> None:
    lower = LayerSpec([Dir("dir"), File("dir/inner", b"i")], "none").tar_bytes()
    upper = LayerSpec([File("dir", b"file"), Whiteout("dir/inner"), Whiteout("dir/x/y")],
                      "none").tar_bytes()
    apply_layer(io.BytesIO(lower), shm_path, mode="copy")
    stats = apply_layer(io.BytesIO(upper), shm_path, mode="copy")
    assert (shm_path / "dir").read_bytes() == b"file"
    assert stats.whiteouts == 2


def umoci(*args: str) -> None:
    done = subprocess.run(["umoci", *args], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="umoci repack needs root here")
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_real_umoci_repack_of_a_dir_made_a_file_pulls_as_umoci_unpacks_it(
    shm_path: Path, http_registry, repo_name: str, mode: str
) -> None:
    layout, bundle = shm_path / "img", shm_path / "work-bundle"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--image", f"{layout}:t", str(bundle))
    (bundle / "rootfs" / "dir").mkdir()
    (bundle / "rootfs" / "dir" / "inner").write_bytes(b"i")
    umoci("repack", "--image", f"{layout}:t", str(bundle))
    remove_path(bundle)
    umoci("unpack", "--image", f"{layout}:t", str(bundle))
    remove_path(bundle / "rootfs" / "dir")
    (bundle / "rootfs" / "dir").write_bytes(b"now a file")
    umoci("repack", "--image", f"{layout}:t", str(bundle))
    # What umoci wrote: ``dir`` a file, then ``dir/.wh.inner`` below it.
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
    top_names = []
    for blob in blobs:
        try:
            with tarfile.open(blob, "r:gz") as layer:
                top_names = layer.getnames()
        except tarfile.TarError:
            continue
        if "dir/.wh.inner" in top_names:
            break
    assert top_names[-2:] == ["dir", "dir/.wh.inner"], top_names

    umoci_unpack(layout, "t", shm_path / "umoci")
    expected = describe_tree(shm_path / "umoci")
    assert stat.S_ISREG(expected["dir"]["type"]), expected
    push(layout, "t", image_ref(http_registry, repo_name), tls_verify=False)
    ours = shm_path / "bundle"
    config = config_args(shm_path / "cfg", http_registry)
    result = invoke(*pull_args(image_ref(http_registry, repo_name), config, shm_path / "work",
                               ours, "--rootfs-mode", mode))
    try:
        assert result.exit_code == 0, result
        assert diff_trees(expected, describe_tree(ours / "rootfs")) == []
    finally:
        umount_bundle(ours)
