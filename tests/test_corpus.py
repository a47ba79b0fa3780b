"""Images built by real tools pull, in copy and overlay mode, into the rootfs umoci unpacks.

The corpus is built here, by the tools people use, and pushed to a real registry:

* GNU tar layers (``./`` names, ``-P`` absolute names, sparse files in every format GNU tar
  writes, long names in GNU and PAX form, hard links (to a symlink too), fifos, devices,
  setuid/setgid/sticky, uids past 2^31, xattrs including ``security.capability``, NFC and
  NFD spellings of one name, empty layers);
* umoci (``insert`` at ``/``, ``repack`` after deletions: whiteouts; a directory replaced
  by a file);
* buildah (``from scratch`` + ``copy`` + ``commit``; OCI and docker formats; gzip, zstd and
  zstd:chunked layers);
* podman and skopeo (uncompressed layers from ``podman save --uncompressed``, a
  docker-archive, an OCI image converted to v2s2, a manifest list).

Each case also proves it is what it claims: the paths its reference must have, and what the
registry's manifest or the layer tars must contain (a media type, a PAX key, a GNU long
name), so a tool that quietly wrote something else cannot make a case pass vacuously.

Each is pulled with ``guestpull pull --bundle`` and its rootfs compared with ``umoci raw
unpack`` of the same image (GNU tar extraction where umoci cannot read a layer) on paths,
types, modes, owners, sizes, content hashes, link targets, hard-link groups, xattrs and file
mtimes.  Images are built once per module, when a test first asks for them.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from image.treewalk import describe_tree, diff_trees
from support.cli import config_args, invoke, pull_args
from guestpull.testing.images import Compression, ImageSpec, TarLayerSpec, push, skopeo_copy, skopeo_inspect_raw, write_layout
from guestpull.testing.realtools import (
    MTIME,
    Containers,
    busybox_tree,
    gnu_tar,
    gnu_tar_extract,
    reference_rootfs,
    registry_to_layout,
    settle_mtimes,
    umoci,
    umoci_new,
    write_file,
)
from guestpull.testing.registry import RegistryProcess

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah, mknod, chown and overlay need root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("buildah", "podman", "skopeo", "umoci", "tar")),
        reason="the corpus needs buildah, podman, skopeo, umoci and GNU tar (scripts/setup.sh)",
    ),
]

#: A name of 362 characters: a GNU ``@LongLink`` or a PAX ``path`` record in the archive.
LONG_NAME = f"{'d' * 120}/{'e' * 90}/{'f' * 150}"
#: security.capability for cap_net_raw+ep (struct vfs_cap_data, revision 2).
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


# --- trees to archive ------------------------------------------------------------------------


def feature_tree(root: Path) -> Path:
    """Every entry type and attribute GNU tar can carry."""
    write_file(root / "dir/file", b"hello\n")
    write_file(root / "usr/bin/su", b"su", 0o4755)
    write_file(root / "usr/bin/wall", b"wall")
    os.chown(root / "usr/bin/wall", 0, 5)
    (root / "usr/bin/wall").chmod(0o2755)  # after chown, which clears setgid
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    (root / "shared").mkdir()
    os.chown(root / "shared", 1000, 1000)
    (root / "shared").chmod(0o2775)
    write_file(root / LONG_NAME, b"long\n")
    os.symlink("t" * 160, root / "long-target")  # a dangling symlink with a long target
    os.symlink("dir/file", root / "sym")
    os.link(root / "sym", root / "hardlink-to-sym", follow_symlinks=False)
    os.link(root / "dir/file", root / "dir/hardlink")
    os.link(root / LONG_NAME, root / "hardlink-to-long")
    os.mkfifo(root / "fifo", 0o640)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "dev/loop9", 0o660 | 0o060000, os.makedev(7, 9))
    write_file(root / "bigid", b"big", 0o640)
    os.chown(root / "bigid", 3_000_000_000, 4_000_000_001)
    write_file(root / "caps", b"#!ping\n", 0o755)
    os.setxattr(root / "caps", "security.capability", CAP_NET_RAW_EP)
    os.setxattr(root / "dir/file", "user.bin", b"\x00\xff\x01")
    os.setxattr(root / "dir", "user.dir", b"1")
    write_file(root / "names/caf\u00e9", b"nfc\n")  # NFC: one code point
    write_file(root / "names/cafe\u0301", b"nfd\n")  # NFD: e + combining accent, another file
    write_file(root / "empty", b"")
    settle_mtimes(root)
    return root


def sparse_file(path: Path, size: int = 3 * 1024 * 1024) -> Path:
    """A file with holes: data at the start, in the middle and at the end."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in ((0, b"head"), (size // 2, b"middle"), (size - 4, b"tail")):
            f.seek(offset)
            f.write(data)
    os.utime(path, (MTIME, MTIME))
    return path


# --- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """How to build one image, and what proves it has what it claims (no vacuous case)."""

    build: Callable[[Corpus, str], Path]  # pushes REPO:v1, returns the reference rootfs
    must_have: Sequence[str] | Mapping[str, Mapping[str, Any]]  # paths (and facts) the reference has
    manifest_has: tuple[str, ...] = ()  # in the registry's manifest (or index), as pushed
    tar_has: tuple[bytes, ...] = ()  # in the layer tars (GNU tar cases)


@dataclass
class Corpus:
    """Builds each case once, on first use, into ``base``; pushes to ``registry``."""

    base: Path
    registry: RegistryProcess
    tools: Containers
    built: dict[str, Path] = field(default_factory=dict)
    tars: dict[str, bytes] = field(default_factory=dict)  # name → its layer tars, concatenated

    def ref(self, repo: str) -> str:
        return f"{self.registry.host}/corpus/{repo}:v1"

    def reference(self, name: str) -> Path:
        if name not in self.built:
            self.built[name] = CASES[name].build(self, name)
        return self.built[name]

    def dir(self, *parts: str) -> Path:
        path = self.base.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # pushing and reference trees

    def push_tars(self, name: str, tars: list[tuple[bytes, Compression]]) -> Path:
        """An image of these (tar, compression) layers, pushed; the layout written."""
        layout = self.base / name / "layout"
        spec = ImageSpec(layers=[TarLayerSpec([], compression, tar=tar) for tar, compression in tars])
        self.tars[name] = b"".join(tar for tar, _ in tars)
        write_layout(layout, spec, tag="v1")
        self.push_layout(layout, "v1", name)
        return layout

    def push_layout(self, layout: Path, tag: str, name: str) -> None:
        push(layout, tag, self.ref(name), tls_verify=False)

    def umoci_reference(self, layout: Path, tag: str, name: str) -> Path:
        return reference_rootfs(layout, tag, self.base / name / "reference")

    def registry_reference(self, name: str, *recompress: str) -> Path:
        """What the registry holds for NAME, copied back with skopeo and unpacked by umoci."""
        layout = self.base / name / "reference-layout"
        registry_to_layout(self.ref(name), layout, "v1", *recompress)
        return self.umoci_reference(layout, "v1", name)

    def tar_of(self, src: Path, name: str, *args: str, members: tuple[str, ...] = (".",)) -> bytes:
        return gnu_tar(src, self.base / f"{name}.tar", *args, members=members)


PAX = ("--format=posix", "--xattrs", "--xattrs-include=*")
UNZSTD = ("--dest-compress", "--dest-compress-format", "gzip")  # umoci 0.4 predates zstd


def build_gnutar_pax(c: Corpus, name: str) -> Path:
    tree = feature_tree(c.dir(name, "src"))
    layout = c.push_tars(name, [(c.tar_of(tree, name, *PAX), "gzip")])
    return c.umoci_reference(layout, "v1", name)


def build_gnutar_gnu(c: Corpus, name: str) -> Path:
    tree = feature_tree(c.dir(name, "src"))
    c.push_tars(name, [(c.tar_of(tree, name, "--format=gnu", members=tuple(sorted(os.listdir(tree)))), "zstd")])
    return c.registry_reference(name, *UNZSTD)


def build_gnutar_absolute(c: Corpus, name: str) -> Path:
    """``tar -P``: every name (and hard-link target) starts with ``/``."""
    tree = feature_tree(c.dir(name, "src"))
    prefix = str(tree).lstrip("/")
    tar = c.tar_of(Path("/"), name, "-P", *PAX, f"--transform=s,^/*{prefix},,", members=(str(tree),))
    layout = c.push_tars(name, [(tar, "gzip")])
    return c.umoci_reference(layout, "v1", name)


def build_sparse_pax(c: Corpus, name: str) -> Path:
    tars: list[tuple[bytes, Compression]] = []
    for version in ("0.0", "0.1", "1.0"):
        src = c.dir(name, f"src{version}")
        sparse_file(src / f"sparse-{version}")
        tars.append((c.tar_of(src, f"{name}-{version}", "--format=posix", "--sparse",
                              f"--sparse-version={version}", members=(f"sparse-{version}",)), "gzip"))
    layout = c.push_tars(name, tars)
    return c.umoci_reference(layout, "v1", name)


def build_sparse_gnu(c: Corpus, name: str) -> Path:
    """Old GNU sparse (``S`` entries): umoci cannot read them, GNU tar is the reference."""
    src = c.dir(name, "src")
    sparse_file(src / "sparse-gnu")
    write_file(src / "after", b"after the sparse entry\n")
    tar = c.tar_of(src, name, "--format=gnu", "--sparse", members=("sparse-gnu", "after"))
    c.push_tars(name, [(tar, "gzip")])
    reference = c.base / name / "reference"
    gnu_tar_extract([c.base / f"{name}.tar"], reference)
    return reference


def build_empty_layers(c: Corpus, name: str) -> Path:
    empty_dir = c.dir(name, "empty")
    empty = c.tar_of(empty_dir, f"{name}-empty", "--format=gnu", members=())  # 10240 zero bytes
    src = c.dir(name, "src")
    write_file(src / "only", b"the one file\n")
    settle_mtimes(src)
    c.push_tars(name, [(empty, "gzip"), (c.tar_of(src, name, *PAX), "none"), (empty, "zstd")])
    return c.registry_reference(name, *UNZSTD)


def build_umoci_insert(c: Corpus, name: str) -> Path:
    """``umoci insert ROOTFS /``: the first entry is named ``/``."""
    layout = c.base / name / "layout"
    image = umoci_new(layout, "v1")
    umoci("insert", "--image", image, str(busybox_tree(c.dir(name, "root"))), "/")
    write_file(c.dir(name, "motd") / "motd", b"inserted\n")
    umoci("insert", "--image", image, str(c.base / name / "motd" / "motd"), "/etc/motd")
    c.push_layout(layout, "v1", name)
    return c.umoci_reference(layout, "v1", name)


def build_umoci_insert_dir(c: Corpus, name: str) -> Path:
    """``umoci insert DIR /data``: umoci 0.4 ends such a layer right after the last file's data
    (no padding, no end-of-archive blocks); Go's archive/tar (umoci, containerd) reads it."""
    layout = c.base / name / "layout"
    image = umoci_new(layout, "v1")
    umoci("insert", "--image", image, str(busybox_tree(c.dir(name, "root"))), "/data")
    write_file(c.dir(name, "motd") / "motd", b"inserted\n")  # 9 bytes: the layer ends mid-block
    umoci("insert", "--image", image, str(c.base / name / "motd" / "motd"), "/etc/motd")
    c.push_layout(layout, "v1", name)
    return c.umoci_reference(layout, "v1", name)


def _umoci_repack(c: Corpus, name: str, change: Callable[[Path], None]) -> Path:
    """A GNU tar base layer, ``umoci unpack``, CHANGE, ``umoci repack``: umoci's diff layer."""
    layout = c.base / name / "layout"
    image = umoci_new(layout, "base")
    src = c.dir(name, "src")
    write_file(src / "data/keep", b"kept\n")
    write_file(src / "data/gone", b"deleted in the next layer\n")
    write_file(src / "data/tree/inner", b"inner\n")
    write_file(src / "data/tree/deeper/x", b"x\n")
    write_file(src / "data/opt/a", b"a\n")
    settle_mtimes(src)
    c.tar_of(src, name, *PAX, members=("data",))
    umoci("raw", "add-layer", "--image", image, str(c.base / f"{name}.tar"))
    bundle = c.base / name / "bundle"
    umoci("unpack", "--image", image, str(bundle))
    change(bundle / "rootfs" / "data")
    umoci("repack", "--image", f"{layout}:v1", str(bundle))
    c.push_layout(layout, "v1", name)
    return c.umoci_reference(layout, "v1", name)


def _delete_some(data: Path) -> None:
    (data / "gone").unlink()
    shutil.rmtree(data / "opt")
    (data / "tree/deeper/x").unlink()
    write_file(data / "tree/new", b"new\n")


def _dir_to_file(data: Path) -> None:
    shutil.rmtree(data / "tree")
    write_file(data / "tree", b"a file where a directory was\n")


def build_umoci_whiteouts(c: Corpus, name: str) -> Path:
    return _umoci_repack(c, name, _delete_some)


def build_umoci_dir_to_file(c: Corpus, name: str) -> Path:
    return _umoci_repack(c, name, _dir_to_file)


def _buildah_image(c: Corpus, name: str, fmt: str = "oci") -> str:
    # The case's name in both layers: no two cases share a layer, so a push cannot reuse a
    # blob another case left in the registry (in another compression).
    lower = busybox_tree(c.dir(name, "lower"), {"etc/motd": b"lower\n", "srv/data": b"d" * 5000,
                                                "etc/image": name.encode()})
    upper = c.dir(name, "upper")
    write_file(upper / "etc/image-upper", name.encode())
    write_file(upper / "etc/motd", b"upper\n", 0o600)
    write_file(upper / "usr/local/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    os.symlink("/usr/local/bin/tool", upper / "tool")
    settle_mtimes(upper)
    return c.tools.build(name, [lower, upper], ["--env", "A=1", "--workingdir", "/srv"], fmt=fmt)


def buildah_case(compression: list[str], fmt: str = "oci", recompress: bool = False) -> Callable[[Corpus, str], Path]:
    def build(c: Corpus, name: str) -> Path:
        image = _buildah_image(c, name, fmt)
        push_format = ["--format", "v2s2"] if fmt == "docker" else ["--format", "oci"]
        c.tools.push(image, f"docker://{c.ref(name)}", *push_format, *compression)
        return c.registry_reference(name, *(UNZSTD if recompress else ()))
    return build


def build_uncompressed(c: Corpus, name: str) -> Path:
    """buildah's image saved by podman as an OCI directory with uncompressed layers, copied to
    the registry as is (a registry push by buildah would compress them)."""
    image = _buildah_image(c, name)
    layout = c.base / name / "oci-dir"
    c.tools.podman("save", "--format", "oci-dir", "--uncompressed", "-o", str(layout), image)
    c.push_layout(layout, f"{image}:latest", name)
    return c.registry_reference(name)


def build_docker_archive(c: Corpus, name: str) -> Path:
    image = _buildah_image(c, name, "docker")
    archive = c.base / name / "image.tar"
    c.tools.podman("save", "--format", "docker-archive", "-o", str(archive), image)
    skopeo_copy(f"docker-archive:{archive}", c.ref(name), tls_verify=False)
    return c.registry_reference(name)


def build_v2s2_conversion(c: Corpus, name: str) -> Path:
    image = _buildah_image(c, name)
    layout = c.base / name / "oci"
    c.tools.push(image, f"oci:{layout}:v1")
    skopeo_copy(f"oci:{layout}:v1", c.ref(name), "--format", "v2s2", tls_verify=False)
    return c.registry_reference(name)


def build_manifest_list(c: Corpus, name: str) -> Path:
    """A docker manifest list of an amd64 and an arm64 image (different content)."""
    amd = _buildah_image(c, name)
    other = busybox_tree(c.dir(name, "arm64"), {"etc/motd": b"the arm64 image\n"})
    arm = c.tools.build(f"{name}-arm64", [other], ["--arch", "arm64"])
    listing = f"localhost/{name}-list"
    c.tools.buildah("manifest", "create", listing)
    c.tools.buildah("manifest", "add", "--arch", "amd64", "--os", "linux", listing, amd)
    c.tools.buildah("manifest", "add", "--arch", "arm64", "--os", "linux", listing, arm)
    c.tools.buildah("manifest", "push", "--quiet", "--all", "--format", "v2s2", "--tls-verify=false",
                    *c.tools.policy_flag(), listing, f"docker://{c.ref(name)}")
    return c.registry_reference(name, "--override-arch", "amd64", "--override-os", "linux")


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
V2S2_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: The two-layer buildah image: the upper layer's motd (mode and size) over the lower's, so
#: the layers were applied in order (and, for the list, the amd64 image was chosen).
BUSYBOX_PATHS: dict[str, dict[str, Any]] = {
    "bin/busybox": {"mode": "0o755"},
    "bin/sh": {"target": "busybox"},
    "etc/passwd": {},
    "etc/motd": {"mode": "0o600", "size": len(b"upper\n")},
    "tool": {"target": "/usr/local/bin/tool"},
    "home/app": {},  # root-owned: buildah copy does not keep owners
}
#: What the GNU tar feature tree must look like once unpacked (a subset of describe_tree's).
FEATURE_FACTS: dict[str, dict[str, Any]] = {
    "usr/bin/su": {"mode": "0o4755"},
    "usr/bin/wall": {"mode": "0o2755", "gid": 5},
    "tmp": {"mode": "0o1777"},
    "shared": {"mode": "0o2775", "uid": 1000},
    "bigid": {"uid": 3_000_000_000, "gid": 4_000_000_001},
    "hardlink-to-sym": {"target": "dir/file", "links": ["hardlink-to-sym", "sym"]},
    "dir/hardlink": {"links": ["dir/file", "dir/hardlink"]},
    "fifo": {"type": stat.S_IFIFO, "mode": "0o640"},
    "dev/loop9": {"type": stat.S_IFBLK, "rdev": (7, 9)},
    "dev/null": {"type": stat.S_IFCHR, "rdev": (1, 3)},
    "long-target": {"target": "t" * 160},
    "hardlink-to-long": {"links": [LONG_NAME, "hardlink-to-long"], "size": 5},
    "names/caf\u00e9": {"size": 4},
    "names/cafe\u0301": {"size": 4},
    "empty": {"size": 0},
}
#: The same with the xattrs only a PAX archive carries.
FEATURE_FACTS_PAX = FEATURE_FACTS | {
    "caps": {"xattrs": {"security.capability": CAP_NET_RAW_EP}},
    "dir/file": {"xattrs": {"user.bin": b"\x00\xff\x01"}},
    "dir": {"xattrs": {"user.dir": b"1"}},
}

#: umoci 0.4 ``insert`` ends its layer right after the last file's data: no padding to the
#: block, no end-of-archive blocks.  Go's archive/tar (umoci, containerd) reads it as the end;
#: GNU tar reports "Unexpected EOF"; guestpull refuses it.  Deciding is the tar layer's call.

CASES: dict[str, Case] = {
    "gnutar-pax": Case(build_gnutar_pax, FEATURE_FACTS_PAX,
                       tar_has=(b"SCHILY.xattr.security.capability", b"./dev/loop9", b"uid=3000000000")),
    "gnutar-gnu-zstd": Case(build_gnutar_gnu, FEATURE_FACTS, manifest_has=(OCI_ZSTD,),
                            tar_has=(b"././@LongLink",)),
    "gnutar-absolute": Case(build_gnutar_absolute, FEATURE_FACTS_PAX, tar_has=(b"/usr/bin/su\0", b"/dir/file\0")),
    "gnutar-sparse-pax": Case(build_sparse_pax, ("sparse-0.0", "sparse-0.1", "sparse-1.0"),
                              tar_has=(b"GNU.sparse.offset=", b"GNU.sparse.map=", b"GNU.sparse.major=1")),
    "gnutar-sparse-gnu": Case(build_sparse_gnu, ("sparse-gnu", "after")),
    "gnutar-empty-layers": Case(build_empty_layers, ("only",), tar_has=(b"\0" * 10240,)),
    "umoci-insert-root": Case(build_umoci_insert, ("bin/busybox", "etc/motd")),
    "umoci-insert-dir": Case(build_umoci_insert_dir, ("data/bin/busybox", "etc/motd")),
    "umoci-repack-whiteouts": Case(build_umoci_whiteouts, ("data/keep", "data/tree/new")),
    "umoci-repack-dir-to-file": Case(build_umoci_dir_to_file, ("data/tree", "data/keep")),
    "buildah-oci-gzip": Case(buildah_case(["--compression-format", "gzip"]), BUSYBOX_PATHS,
                             manifest_has=(OCI_MANIFEST, OCI_GZIP)),
    "buildah-oci-zstd": Case(buildah_case(["--compression-format", "zstd"], recompress=True), BUSYBOX_PATHS,
                             manifest_has=(OCI_MANIFEST, OCI_ZSTD)),
    "buildah-oci-zstd-chunked": Case(buildah_case(["--compression-format", "zstd:chunked"], recompress=True),
                                     BUSYBOX_PATHS,
                                     manifest_has=(OCI_ZSTD, "io.containers.zstd-chunked.manifest-checksum")),
    "podman-oci-uncompressed": Case(build_uncompressed, BUSYBOX_PATHS,
                                     manifest_has=('"application/vnd.oci.image.layer.v1.tar"',)),
    "buildah-docker-gzip": Case(buildah_case([], fmt="docker"), BUSYBOX_PATHS, manifest_has=(V2S2, V2S2_GZIP)),
    "podman-docker-archive": Case(build_docker_archive, BUSYBOX_PATHS, manifest_has=(V2S2, V2S2_GZIP)),
    "skopeo-v2s2-conversion": Case(build_v2s2_conversion, BUSYBOX_PATHS, manifest_has=(V2S2, V2S2_GZIP)),
    "buildah-manifest-list": Case(build_manifest_list, BUSYBOX_PATHS,
                                  manifest_has=("application/vnd.docker.distribution.manifest.list.v2+json",
                                                '"architecture":"arm64"', '"architecture":"amd64"')),
}


@pytest.fixture(scope="module")
def corpus(http_registry: RegistryProcess, containers: Containers, session_shm: Path) -> Iterator[Corpus]:
    base = session_shm / "corpus"
    base.mkdir()
    try:
        yield Corpus(base, http_registry, containers)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _params() -> list[Any]:
    out = []
    for name, case in CASES.items():
        out += [pytest.param(name, mode, id=f"{name}-{mode}") for mode in ("copy", "overlay")]
    return out


def vacuous(tree: dict[str, Any], facts: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The paths missing from ``tree``, and the facts it contradicts."""
    wanted = facts if isinstance(facts, Mapping) else {path: {} for path in facts}
    out = [f"no {path}" for path in wanted if path not in tree]
    out += [f"{path}: {key} is {tree[path].get(key)!r}, not {value!r}"
            for path, attrs in wanted.items() if path in tree
            for key, value in attrs.items() if tree[path].get(key) != value]
    return out


@pytest.mark.parametrize(("name", "mode"), _params())
def test_pulled_rootfs_equals_reference(corpus: Corpus, shm_path: Path, name: str, mode: str) -> None:
    reference = corpus.reference(name)
    expected = describe_tree(reference)
    assert vacuous(expected, CASES[name].must_have) == [], f"the reference of {name} is not what it claims"
    case = CASES[name]
    if case.manifest_has:
        raw = skopeo_inspect_raw(corpus.ref(name), tls_verify=False).decode()
        assert [m for m in case.manifest_has if m not in raw] == [], raw
    assert [t for t in case.tar_has if t not in corpus.tars.get(name, b"")] == []

    bundle = shm_path / "bundle"
    config = config_args(shm_path / "config", corpus.registry)
    result = invoke(*pull_args(corpus.ref(name), config, shm_path / "work", bundle, "--rootfs-mode", mode))
    try:
        assert result.exit_code == 0, result
        assert result.json["result"]["rootfs_mode"] == mode
        assert diff_trees(expected, describe_tree(bundle / "rootfs")) == []
    finally:
        if mode == "overlay":
            invoke("umount", str(bundle))
