"""Deterministic OCI images built in Python: layers, configs, manifests, indexes, layouts.

Describe a layer as a list of entries (``File``, ``Dir``, ``Symlink``, ``Whiteout``... or a raw
``tarfile.TarInfo`` for hostile tars), an image as layers plus config, and write an OCI image
layout.  The same specs always give the same bytes, so the same digests.  ``push`` copies a
layout to a registry with skopeo without touching a byte (``--preserve-digests``).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

from guestpull.testing import HarnessError, require_binary

DEFAULT_MTIME = 1_600_000_000  # 2020-09-13T12:26:40Z, fixed so layers are reproducible
CREATED = "2020-09-13T12:26:40Z"

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

Compression = Literal["gzip", "zstd", "none", "gzip-multimember"]

_LAYER_MEDIA_TYPES: dict[str, str] = {
    "gzip": MEDIA_TYPE_LAYER_GZIP,
    "gzip-multimember": MEDIA_TYPE_LAYER_GZIP,
    "zstd": MEDIA_TYPE_LAYER_ZSTD,
    "none": MEDIA_TYPE_LAYER,
}

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


# --- entries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    """Base of the entry kinds: builds the TarInfo they share (owner, mode, time, xattrs)."""

    def _tarinfo(self, name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int,
                 xattrs: Mapping[str, bytes]) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = mtime
        if xattrs:
            # Binary xattr values survive via surrogateescape (tarfile then marks the PAX
            # header hdrcharset=BINARY).
            info.pax_headers = {
                f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                for key, value in xattrs.items()
            }
        return info


@dataclass(frozen=True)
class File(_Meta):
    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        info = self._tarinfo(self.path, tarfile.REGTYPE, self.mode, self.uid, self.gid,
                             self.mtime, self.xattrs)
        info.size = len(self.data)
        return info, self.data


@dataclass(frozen=True)
class Dir(_Meta):
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        return self._tarinfo(self.path, tarfile.DIRTYPE, self.mode, self.uid, self.gid,
                             self.mtime, self.xattrs), None


@dataclass(frozen=True)
class Symlink(_Meta):
    path: str
    target: str
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        info = self._tarinfo(self.path, tarfile.SYMTYPE, 0o777, self.uid, self.gid,
                             self.mtime, {})
        info.linkname = self.target
        return info, None


@dataclass(frozen=True)
class Hardlink(_Meta):
    """A hard link to ``target``, a path earlier in the same layer (or a lower one)."""

    path: str
    target: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        info = self._tarinfo(self.path, tarfile.LNKTYPE, self.mode, self.uid, self.gid,
                             self.mtime, {})
        info.linkname = self.target
        return info, None


@dataclass(frozen=True)
class Fifo(_Meta):
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        return self._tarinfo(self.path, tarfile.FIFOTYPE, self.mode, self.uid, self.gid,
                             self.mtime, {}), None


@dataclass(frozen=True)
class CharDevice(_Meta):
    path: str
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME

    _kind = tarfile.CHRTYPE

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        info = self._tarinfo(self.path, self._kind, self.mode, self.uid, self.gid,
                             self.mtime, {})
        info.devmajor, info.devminor = self.major, self.minor
        return info, None


@dataclass(frozen=True)
class BlockDevice(CharDevice):
    _kind = tarfile.BLKTYPE


@dataclass(frozen=True)
class Whiteout(_Meta):
    """Deletes ``path`` from lower layers: written as ``DIR/.wh.NAME``."""

    path: str
    mtime: int = DEFAULT_MTIME

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        parent, _, name = self.path.rstrip("/").rpartition("/")
        wh_path = f"{parent}/.wh.{name}" if parent else f".wh.{name}"
        return File(wh_path, mtime=self.mtime).tar_member()


@dataclass(frozen=True)
class Opaque(_Meta):
    """Hides everything lower layers put in ``dir``: written as ``DIR/.wh..wh..opq``."""

    dir: str
    mtime: int = DEFAULT_MTIME

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        return File(f"{self.dir.rstrip('/')}/.wh..wh..opq", mtime=self.mtime).tar_member()


@dataclass(frozen=True)
class RawTarInfo:
    """Any TarInfo, written as is, for hostile tars: absolute paths, ``..``, links out of the
    root, odd types.  ``data`` must hold ``tarinfo.size`` bytes (tarfile refuses less)."""

    tarinfo: tarfile.TarInfo
    data: bytes | None = None

    def tar_member(self) -> tuple[tarfile.TarInfo, bytes | None]:
        return self.tarinfo, self.data


Entry = File | Dir | Symlink | Hardlink | Fifo | CharDevice | BlockDevice | Whiteout | Opaque | RawTarInfo


# --- layers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltLayer:
    """A layer's uncompressed tar, its blob (as stored in a registry) and their digests."""

    tar: bytes
    blob: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def size(self) -> int:
        return len(self.blob)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class LayerSpec:
    entries: Sequence[Entry]
    compression: Compression = "gzip"

    def tar_bytes(self) -> bytes:
        """The uncompressed PAX tar, members in the given order."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in self.entries:
                info, data = entry.tar_member()
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()

    def build(self) -> BuiltLayer:
        tar = self.tar_bytes()
        return BuiltLayer(tar=tar, blob=compress(tar, self.compression),
                          media_type=_LAYER_MEDIA_TYPES[self.compression])


@dataclass(frozen=True)
class TarLayerSpec(LayerSpec):
    """A layer whose tar is given whole (written by GNU tar, or by hand)."""

    tar: bytes = b""

    def tar_bytes(self) -> bytes:
        return self.tar


def compress(data: bytes, compression: Compression) -> bytes:
    """Deterministic compression: gzip header mtime 0 and no name; zstd level 3."""
    if compression == "none":
        return data
    if compression == "gzip":
        return _gzip(data)
    if compression == "gzip-multimember":
        # Two members, as pigz -i or appended gzip streams produce; a decoder that stops at the
        # first member's end yields a truncated tar.
        half = len(data) // 2
        return _gzip(data[:half]) + _gzip(data[half:])
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """Layers plus config.  ``config`` holds the OCI ``config`` object's fields (Entrypoint,
    Cmd, Env, WorkingDir, User, Volumes, Labels, ExposedPorts, StopSignal)."""

    layers: Sequence[LayerSpec]
    config: Mapping[str, Any] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def platform(self) -> dict[str, str]:
        platform = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            platform["variant"] = self.variant
        return platform

    def build(self) -> BuiltImage:
        return self.assemble([layer.build() for layer in self.layers])

    def assemble(self, layers: Sequence[BuiltLayer]) -> BuiltImage:
        """The image of these built layers (hostile tests pass layers ``LayerSpec`` cannot
        write, or whose ``tar`` differs from what the blob holds: a wrong diff_id)."""
        layers = list(layers)
        config: dict[str, Any] = {
            "created": CREATED,
            **self.platform,
            "config": dict(self.config),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [
                {"created": CREATED, "created_by": f"guestpull.testing layer {i}"}
                for i in range(len(layers))
            ],
        }
        config_bytes = canonical_json(config)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": sha256_digest(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [layer.descriptor() for layer in layers],
        }
        if self.annotations:
            manifest["annotations"] = dict(self.annotations)
        return BuiltImage(
            manifest=canonical_json(manifest), config=config_bytes, layers=layers,
            platform=self.platform,
        )


@dataclass(frozen=True)
class BuiltImage:
    """An image's bytes: what a registry would serve for it."""

    manifest: bytes
    config: bytes
    layers: list[BuiltLayer]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    def descriptor(self, *, with_platform: bool = False) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": MEDIA_TYPE_MANIFEST, "digest": self.digest, "size": len(self.manifest),
        }
        if with_platform:
            desc["platform"] = self.platform
        return desc

    def blobs(self) -> dict[str, bytes]:
        """Every blob by digest: manifest, config and layers."""
        out = {self.digest: self.manifest, self.config_digest: self.config}
        out.update({layer.digest: layer.blob for layer in self.layers})
        return out

    def digests(self) -> ManifestDigests:
        return ManifestDigests(
            digest=self.digest,
            size=len(self.manifest),
            config_digest=self.config_digest,
            layer_digests=[layer.digest for layer in self.layers],
            diff_ids=[layer.diff_id for layer in self.layers],
            platform=dict(self.platform),
        )


def build_index(images: Sequence[BuiltImage]) -> bytes:
    """An OCI image index listing ``images`` with their platforms."""
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [image.descriptor(with_platform=True) for image in images],
    })


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --- layouts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestDigests:
    digest: str
    size: int
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    platform: dict[str, str]


@dataclass(frozen=True)
class LayoutDigests:
    """What ``write_layout`` wrote: ``digest`` is what ``tag`` points at (a manifest, or the
    index when ``index=True``)."""

    tag: str
    digest: str
    media_type: str
    size: int
    manifests: list[ManifestDigests]

    @property
    def is_index(self) -> bool:
        return self.media_type == MEDIA_TYPE_INDEX

    @property
    def index_digest(self) -> str | None:
        return self.digest if self.is_index else None

    def _single(self) -> ManifestDigests:
        if len(self.manifests) != 1:
            raise ValueError("this layout tag is an index of several images: use .manifests")
        return self.manifests[0]

    @property
    def manifest_digest(self) -> str:
        return self._single().digest

    @property
    def config_digest(self) -> str:
        return self._single().config_digest

    @property
    def layer_digests(self) -> list[str]:
        return self._single().layer_digests

    @property
    def diff_ids(self) -> list[str]:
        return self._single().diff_ids


def write_layout(
    directory: Path,
    images: Sequence[ImageSpec] | ImageSpec,
    tag: str = "latest",
    index: bool = False,
) -> LayoutDigests:
    """Write (or add ``tag`` to) an OCI image layout in ``directory``.

    One image: ``tag`` names its manifest.  Several images need ``index=True``: their manifests
    go into an image index and ``tag`` names the index.  ``index=True`` with one image also
    writes an index.  An existing ``tag`` in ``index.json`` is replaced; other tags stay.
    """
    specs = [images] if isinstance(images, ImageSpec) else list(images)
    if not specs:
        raise ValueError("write_layout needs at least one image")
    if len(specs) > 1 and not index:
        raise ValueError("several images need index=True (a multi-platform image index)")
    directory = Path(directory)
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(directory / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))

    built = [spec.build() for spec in specs]
    for image in built:
        for digest, data in image.blobs().items():
            _write_blob(blobs_dir, digest, data)
    if index:
        top = build_index(built)
        _write_blob(blobs_dir, sha256_digest(top), top)
        media_type = MEDIA_TYPE_INDEX
    else:
        top = built[0].manifest
        media_type = MEDIA_TYPE_MANIFEST
    descriptor = {
        "mediaType": media_type,
        "digest": sha256_digest(top),
        "size": len(top),
        "annotations": {REF_NAME_ANNOTATION: tag},
    }
    _update_index_json(directory / "index.json", tag, descriptor)
    return LayoutDigests(
        tag=tag, digest=sha256_digest(top), media_type=media_type, size=len(top),
        manifests=[image.digests() for image in built],
    )


def _update_index_json(path: Path, tag: str, descriptor: dict[str, Any]) -> None:
    manifests: list[dict[str, Any]] = []
    if path.exists():
        manifests = [
            m for m in json.loads(path.read_bytes()).get("manifests", [])
            if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
        ]
    manifests.append(descriptor)
    manifests.sort(key=lambda m: m["annotations"].get(REF_NAME_ANNOTATION, ""))
    _write_if_changed(path, canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
    ))


def _write_blob(blobs_dir: Path, digest: str, data: bytes) -> None:
    _write_if_changed(blobs_dir / digest.removeprefix("sha256:"), data)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


# --- pushing with skopeo ---------------------------------------------------------------------


def push(
    layout_dir: Path,
    tag: str,
    dest_ref: str,
    *,
    tls_ca: Path | None = None,
    tls_verify: bool = True,
    creds: tuple[str, str] | None = None,
    all_platforms: bool = False,
    client_cert: tuple[Path, Path] | None = None,
    timeout: float = 120.0,
    signing: Signing | None = None,
) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://DEST_REF`` keeping every byte and digest.

    ``dest_ref`` is ``HOST/REPO:TAG`` (``docker://`` is added if missing).  ``tls_ca`` is a
    CA file (or a directory of ``*.crt``); ``tls_verify=False`` is for plain-HTTP registries.
    ``all_platforms`` copies every image of an index (``--multi-arch all``).
    ``signing`` also writes a simple (GPG) signature to the lookaside its registries.d names.
    """
    extra = ["--preserve-digests"] + (["--multi-arch", "all"] if all_platforms else [])
    skopeo_copy(f"oci:{Path(layout_dir)}:{tag}", dest_ref, *extra, tls_ca=tls_ca,
                tls_verify=tls_verify, creds=creds, client_cert=client_cert, timeout=timeout,
                signing=signing)


def skopeo_copy(
    source: str,
    dest_ref: str,
    *extra: str,
    tls_ca: Path | None = None,
    tls_verify: bool = True,
    creds: tuple[str, str] | None = None,
    client_cert: tuple[Path, Path] | None = None,
    timeout: float = 120.0,
    signing: Signing | None = None,
) -> None:
    """``skopeo copy [EXTRA] SOURCE docker://DEST_REF`` (SOURCE in any skopeo transport, e.g.
    ``oci:DIR:TAG`` or ``docker-archive:FILE``); EXTRA such as ``--format v2s2`` converts.
    ``signing`` also writes a simple (GPG) signature to the lookaside its registries.d names."""
    skopeo = require_binary("skopeo")
    with tempfile.TemporaryDirectory(prefix="guestpull-skopeo-") as tmp:
        tmp_dir = Path(tmp)
        argv = [skopeo, "copy", "--quiet", "--insecure-policy", "--retry-times", "0", *extra]
        if tls_ca is not None or client_cert is not None:
            argv += ["--dest-cert-dir", str(_cert_dir(tmp_dir / "certs", tls_ca, client_cert))]
        if not tls_verify:
            argv.append("--dest-tls-verify=false")
        ref = _docker_ref(dest_ref)
        if creds is None:
            argv.append("--dest-no-creds")
        env = _skopeo_env(tmp_dir, ref, creds)
        if signing is not None:
            argv += signing.arguments()
            env["GNUPGHOME"] = str(signing.gnupg_home)
        argv += [source, ref]
        _run_skopeo(argv, env, timeout, "copy")


@dataclass(frozen=True)
class Signing:
    """``skopeo copy --sign-by FINGERPRINT`` with the key in ``gnupg_home``; the signature goes
    where ``registries_d`` says (its ``sigstore``/``lookaside``); ``identity`` overrides the
    signed reference (``--sign-identity``)."""

    fingerprint: str
    gnupg_home: Path
    registries_d: Path
    identity: str | None = None

    def arguments(self) -> list[str]:
        argv = ["--sign-by", self.fingerprint, "--registries.d", str(self.registries_d)]
        return argv + (["--sign-identity", self.identity] if self.identity else [])


def _cert_dir(path: Path, ca: Path | None, client_cert: tuple[Path, Path] | None) -> Path:
    # containers/image reads *.crt as CAs and a *.cert/*.key pair as the client certificate.
    path.mkdir()
    if ca is not None:
        ca = Path(ca)
        sources = sorted(ca.glob("*.crt")) + sorted(ca.glob("*.pem")) if ca.is_dir() else [ca]
        for i, source in enumerate(sources):
            shutil.copyfile(source, path / f"ca{i}.crt")
    if client_cert is not None:
        shutil.copyfile(client_cert[0], path / "client.cert")
        shutil.copyfile(client_cert[1], path / "client.key")
    return path


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _skopeo_env(tmp_dir: Path, ref: str, creds: tuple[str, str] | None) -> dict[str, str]:
    """An environment with only our credentials, no registries.conf mirrors and no proxy.

    Credentials go in a private auth.json rather than on the command line, where ``ps`` and
    error messages would show them.
    """
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    auth_file = tmp_dir / "auth.json"
    auths: dict[str, Any] = {}
    if creds is not None:
        host = ref.removeprefix("docker://").split("/", 1)[0]
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        auths[host] = {"auth": token}
    auth_file.touch(mode=0o600)
    auth_file.write_text(json.dumps({"auths": auths}))
    registries_conf = tmp_dir / "registries.conf"
    registries_conf.write_text("")
    env.update(
        REGISTRY_AUTH_FILE=str(auth_file),
        CONTAINERS_REGISTRIES_CONF=str(registries_conf),
        TMPDIR=str(tmp_dir),
    )
    return env


def _run_skopeo(argv: list[str], env: dict[str, str], timeout: float, what: str) -> bytes:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"skopeo {what} timed out after {timeout:.0f}s") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise HarnessError(f"skopeo {what} failed ({result.returncode}): {' '.join(argv)}\n{stderr}")
    return result.stdout


def skopeo_inspect_raw(
    ref: str,
    *,
    tls_ca: Path | None = None,
    tls_verify: bool = True,
    creds: tuple[str, str] | None = None,
    timeout: float = 60.0,
) -> bytes:
    """The raw manifest (or index) bytes skopeo reads for ``ref`` (``HOST/REPO:TAG``)."""
    skopeo = require_binary("skopeo")
    with tempfile.TemporaryDirectory(prefix="guestpull-skopeo-") as tmp:
        tmp_dir = Path(tmp)
        ref = _docker_ref(ref)
        argv = [skopeo, "inspect", "--raw", "--retry-times", "0"]
        if tls_ca is not None:
            argv += ["--cert-dir", str(_cert_dir(tmp_dir / "certs", tls_ca, None))]
        if not tls_verify:
            argv.append("--tls-verify=false")
        if creds is None:
            argv.append("--no-creds")
        argv.append(ref)
        return _run_skopeo(argv, _skopeo_env(tmp_dir, ref, creds), timeout, "inspect")
