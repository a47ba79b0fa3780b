"""OCI / Docker image data: media types, descriptors, manifests, indexes, configs, platforms.

Parsing is strict about what guestpull relies on (digests, sizes, media types, diff_ids) and
lenient about the rest (unknown keys are ignored).  Every error names the document and the
field, e.g. ``image manifest: layers[2].digest: expected a string``.
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from guestpull.errors import ConfigError, DigestError, Location, PlatformError, UnsupportedError, clip, shown
from guestpull.strictjson import load_json

# --- media types -----------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_LAYER_TAR_ENCRYPTED = "application/vnd.oci.image.layer.v1.tar+encrypted"
OCI_LAYER_GZIP_ENCRYPTED = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
OCI_LAYER_ND_TAR_ENCRYPTED = "application/vnd.oci.image.layer.nondistributable.v1.tar+encrypted"
OCI_LAYER_ND_GZIP_ENCRYPTED = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted"
)
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

#: The manifest media types sent in ``Accept`` (same set and order as upstream).
MANIFEST_ACCEPT = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})

# --- limits (docs/threat-model.md) -------------------------------------------------------------

#: Manifests and indexes: containerd's ``MaxManifestSize`` is 4 * 1048 * 1048 bytes and
#: containers/image's ``MaxManifestBodySize`` 4 MiB; the registry API itself caps pushes at 4 MiB.
MAX_MANIFEST_SIZE = 4 << 20
#: Image configs: containers/image (podman, CRI-O) caps them at 4 MiB (``MaxConfigBodySize``);
#: we allow twice that.  The config is read whole and parsed, so it must be bounded.
MAX_CONFIG_SIZE = 8 << 20
#: No blob of a real image comes near 1 TiB; a larger size is a lie, refused before any space
#: check or download (2^62 would otherwise read as "no space").
MAX_BLOB_SIZE = 1 << 40

GZIP_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, OCI_LAYER_ND_GZIP, DOCKER_LAYER_GZIP})
ZSTD_LAYER_TYPES = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_ND_ZSTD})
TAR_LAYER_TYPES = frozenset({OCI_LAYER_TAR, OCI_LAYER_ND_TAR, DOCKER_LAYER_TAR})
ENCRYPTED_LAYER_TYPES = frozenset(
    {
        OCI_LAYER_TAR_ENCRYPTED,
        OCI_LAYER_GZIP_ENCRYPTED,
        OCI_LAYER_ND_TAR_ENCRYPTED,
        OCI_LAYER_ND_GZIP_ENCRYPTED,
    }
)

# --- digests ---------------------------------------------------------------------------------

_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


def split_digest(digest: str) -> tuple[str, str]:
    """``"sha256:ab…"`` → ``("sha256", "ab…")``; DigestError unless well formed.

    Only sha256/384/512 with lowercase hex of the right length are accepted, which also makes
    a digest safe to use as a file name.
    """
    algorithm, sep, hexpart = digest.partition(":")
    expected = _DIGEST_HEX_LEN.get(algorithm)
    if not sep or expected is None:
        raise DigestError(f"unsupported or malformed digest {shown(digest)} (want sha256/384/512:<hex>)")
    if len(hexpart) != expected or not _HEX.match(hexpart):
        raise DigestError(f"malformed digest {shown(digest)}: want {expected} lowercase hex characters")
    return algorithm, hexpart


# --- platform --------------------------------------------------------------------------------

_MACHINE_TO_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "i686": ("386", ""),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def normalized(self) -> Platform:
        """The containerd normal form: amd64 has no variant (v1 == none), arm64 defaults to v8,
        arm defaults to v7."""
        arch, variant = self.architecture.lower(), self.variant.lower()
        if arch == "amd64" and variant == "v1":
            variant = ""
        elif arch == "arm64" and variant in ("", "8"):
            variant = "v8"
        elif arch == "arm" and variant in ("", "7"):
            variant = "v7"
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        a, b = self.normalized(), other.normalized()
        return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8`` → Platform; ConfigError for anything else."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"invalid platform {text!r}: want os/architecture[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def default_platform() -> Platform:
    """The platform of the running machine (Linux, mapped as Go names architectures)."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


# --- small JSON helpers ----------------------------------------------------------------------


def _fail(doc: str, where: str, message: str) -> ConfigError:
    return ConfigError(message, location=Location(file=doc, field=where or None))


def _load_json(data: bytes, doc: str) -> dict[str, Any]:
    value = load_json(data, doc, error=ConfigError)
    if not isinstance(value, dict):
        raise _fail(doc, "", "expected a JSON object at the top level")
    return value


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], doc: str, where: str,
         *, required: bool = False, default: Any = None) -> Any:
    path = f"{where}.{key}" if where else key
    if key not in obj or obj[key] is None:
        if required:
            raise _fail(doc, path, "required field is missing")
        return default
    value = obj[key]
    # bool is an int subclass; a size of true is not a size.
    if isinstance(value, bool) and kind is int:
        raise _fail(doc, path, "expected an integer")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(doc, path, f"expected {name}, got {type(value).__name__}")
    return value


def _str_list(obj: dict[str, Any], key: str, doc: str, where: str) -> list[str] | None:
    value = _get(obj, key, list, doc, where)
    if value is None:
        return None
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(doc, f"{where}.{key}[{i}]" if where else f"{key}[{i}]", "expected a string")
    return list(value)


def _str_map(obj: dict[str, Any], key: str, doc: str, where: str) -> dict[str, str]:
    value = _get(obj, key, dict, doc, where, default={})
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise _fail(doc, f"{where}.{key}.{k}" if where else f"{key}.{k}", "expected a string")
        out[k] = v
    return out


# --- descriptors, manifests, index -----------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, obj: Any, doc: str, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise _fail(doc, where, "expected an object (a descriptor)")
        digest = _get(obj, "digest", str, doc, where, required=True)
        try:
            split_digest(digest)
        except DigestError as exc:
            raise _fail(doc, f"{where}.digest", exc.message) from exc
        size = _get(obj, "size", int, doc, where, required=True)
        if size < 0:
            raise _fail(doc, f"{where}.size", f"size must not be negative, got {size}")
        if size > MAX_BLOB_SIZE:
            raise UnsupportedError(
                f"size {clip(size)} is larger than any blob guestpull accepts (1 TiB)",
                location=Location(file=doc, field=f"{where}.size"),
            )
        plat = obj.get("platform")
        platform = None
        if plat is not None:
            if not isinstance(plat, dict):
                raise _fail(doc, f"{where}.platform", "expected an object")
            platform = Platform(
                os=_get(plat, "os", str, doc, f"{where}.platform", default=""),
                architecture=_get(plat, "architecture", str, doc, f"{where}.platform", default=""),
                variant=_get(plat, "variant", str, doc, f"{where}.platform", default=""),
                os_version=_get(plat, "os.version", str, doc, f"{where}.platform", default=""),
                os_features=tuple(_str_list(plat, "os.features", doc, f"{where}.platform") or ()),
            )
        return cls(
            media_type=_get(obj, "mediaType", str, doc, where, default=""),
            digest=digest,
            size=size,
            urls=tuple(_str_list(obj, "urls", doc, where) or ()),
            annotations=_str_map(obj, "annotations", doc, where),
            platform=platform,
        )


@dataclass(frozen=True)
class Layer:
    """One layer of an image: its blob (the manifest's descriptor) and what that blob must
    decompress to (the config's ``diff_id`` at the same position)."""

    descriptor: Descriptor
    diff_id: str

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def size(self) -> int:
        return self.descriptor.size

    def to_json(self) -> dict[str, object]:
        """The image store's record of a layer (meta.db ``images.layers``)."""
        return {"digest": self.digest, "mediaType": self.media_type, "size": self.size,
                "diffID": self.diff_id}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Layer:
        """Read back what :meth:`to_json` wrote (the store's own record, trusted)."""
        descriptor = Descriptor(str(obj["mediaType"]), str(obj["digest"]),
                                int(obj["size"]))  # type: ignore[call-overload]
        return cls(descriptor, str(obj["diffID"]))


def _check_schema(obj: dict[str, Any], doc: str, allowed: frozenset[str]) -> str:
    version = obj.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise UnsupportedError(
            f"unsupported schemaVersion {clip(repr(version))} (only 2 is supported; Docker schema1 is not)",
            location=Location(file=doc, field="schemaVersion"),
        )
    media_type = _get(obj, "mediaType", str, doc, "", default="")
    if media_type and media_type not in allowed:
        raise UnsupportedError(
            f"unsupported media type {shown(media_type)}",
            location=Location(file=doc, field="mediaType"),
        )
    return media_type


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, data: bytes, doc: str = "image manifest") -> ImageManifest:
        return cls._from_obj(*_parse_as(data, doc, IMAGE_MANIFEST_TYPES, "an image manifest"), doc)

    @classmethod
    def _from_obj(cls, obj: dict[str, Any], media_type: str, doc: str) -> ImageManifest:
        config = Descriptor.from_json(obj.get("config"), doc, "config")
        if config.size > MAX_CONFIG_SIZE:
            # Refused before the download: the config is read whole into memory.
            raise UnsupportedError(
                f"the image config is {config.size} bytes; configs are limited to {MAX_CONFIG_SIZE >> 20} MiB",
                location=Location(file=doc, field="config.size"),
            )
        layers = _get(obj, "layers", list, doc, "", required=True)
        return cls(
            media_type=media_type,
            config=config,
            layers=tuple(Descriptor.from_json(d, doc, f"layers[{i}]") for i, d in enumerate(layers)),
            annotations=_str_map(obj, "annotations", doc, ""),
        )


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, data: bytes, doc: str = "image index") -> ImageIndex:
        return cls._from_obj(*_parse_as(data, doc, INDEX_TYPES, "an image index"), doc)

    @classmethod
    def _from_obj(cls, obj: dict[str, Any], media_type: str, doc: str) -> ImageIndex:
        entries = _get(obj, "manifests", list, doc, "", required=True)
        return cls(
            media_type=media_type,
            manifests=tuple(
                Descriptor.from_json(d, doc, f"manifests[{i}]") for i, d in enumerate(entries)
            ),
            annotations=_str_map(obj, "annotations", doc, ""),
        )


def parse_manifest_document(
    data: bytes, content_type: str = "", doc: str = "manifest", *, expected_media_type: str = ""
) -> ImageManifest | ImageIndex:
    """An image manifest or an index; the one place that tells them apart (see document_media_type)."""
    obj = _load_json(data, doc)
    media_type = document_media_type(obj, content_type, doc, expected_media_type)
    if media_type in INDEX_TYPES:
        return ImageIndex._from_obj(obj, media_type, doc)
    return ImageManifest._from_obj(obj, media_type, doc)


def document_media_type(
    obj: dict[str, Any], content_type: str, doc: str, expected_media_type: str = ""
) -> str:
    """The media type of a manifest document, refusing every ambiguity an attacker could use.

    The body's ``mediaType``, the ``Content-Type`` and the descriptor that pointed here
    (``expected_media_type``, e.g. an index entry's) must agree wherever they are given, and
    the document's shape must match: an image manifest has no ``manifests``, an index no
    ``layers`` or ``config`` (containerd's fix for CVE-2021-41190).  Without any declared
    type the shape decides.  Docker schema 1 is refused with a hint.
    """
    body = _get(obj, "mediaType", str, doc, "", default="")
    header = content_type.split(";", 1)[0].strip().lower()
    version = obj.get("schemaVersion")
    if version == 1 or body in SCHEMA1_TYPES or header in SCHEMA1_TYPES:
        raise UnsupportedError(
            f"{doc} is a Docker schema 1 manifest (schemaVersion 1), which is deprecated and unsupported",
            hint="push the image again with a current client (it converts to schema 2 / OCI)",
        )
    _check_schema(obj, doc, IMAGE_MANIFEST_TYPES | INDEX_TYPES)
    is_index_shaped = "manifests" in obj
    if is_index_shaped and ("layers" in obj or "config" in obj):
        raise _ambiguous(doc, "it has both 'manifests' (an index) and 'layers'/'config' (a manifest)")
    known = IMAGE_MANIFEST_TYPES | INDEX_TYPES
    declared = [(what, value) for what, value in (
        ("its mediaType", body),
        ("the Content-Type", header if header in known else ""),
        ("the descriptor that points at it", expected_media_type if expected_media_type in known else ""),
    ) if value]
    if len({value for _, value in declared}) > 1:
        listing = ", ".join(f"{what} says {shown(value)}" for what, value in declared)
        raise _ambiguous(doc, listing)
    if declared:
        media_type = declared[0][1]
    else:
        media_type = OCI_INDEX if is_index_shaped else OCI_MANIFEST
    if (media_type in INDEX_TYPES) != is_index_shaped:
        shape = "has 'manifests'" if is_index_shaped else "has no 'manifests'"
        raise _ambiguous(doc, f"it is declared {media_type!r} but {shape}")
    return media_type


def _ambiguous(doc: str, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"ambiguous document: {why}; refusing what other readers may see differently",
        location=Location(file=doc),
    )


def _parse_as(data: bytes, doc: str, kinds: frozenset[str], noun: str) -> tuple[dict[str, Any], str]:
    obj = _load_json(data, doc)
    media_type = document_media_type(obj, "", doc)
    if media_type not in kinds:
        raise UnsupportedError(f"expected {noun}, got {media_type!r}", location=Location(file=doc))
    return obj, media_type


def select_platform(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The first index entry for ``wanted`` (os, architecture and variant, normalised).

    Entries that are not image manifests (e.g. attestations) or have no platform are skipped.
    PlatformError lists what the index offers when nothing matches.
    """
    offered: list[str] = []
    for entry in index.manifests:
        if entry.platform is None:
            continue
        offered.append(str(entry.platform))
        if entry.media_type and entry.media_type not in IMAGE_MANIFEST_TYPES:
            continue
        if entry.platform.matches(wanted):
            return entry
    listing = ", ".join(offered) if offered else "no platforms"
    raise PlatformError(f"no image for platform {wanted.normalized()} in the index (it offers: {listing})")


# --- image config ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerConfig:
    user: str = ""
    env: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    stop_signal: str = ""


@dataclass(frozen=True)
class ConfigFile:
    """The image config blob (go-containerregistry's ``ConfigFile``); the cdh.toml ``[image]``
    settings are :class:`guestpull.config.ImageConfig`."""

    os: str
    architecture: str
    diff_ids: tuple[str, ...]
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] | None = None
    author: str = ""
    created: str = ""
    config: ContainerConfig | None = None

    @classmethod
    def parse(cls, data: bytes, doc: str = "image config") -> ConfigFile:
        if len(data) > MAX_CONFIG_SIZE:
            raise UnsupportedError(
                f"{doc} is {len(data)} bytes; image configs are limited to {MAX_CONFIG_SIZE >> 20} MiB"
            )
        obj = _load_json(data, doc)
        rootfs = _get(obj, "rootfs", dict, doc, "", required=True)
        rootfs_type = _get(rootfs, "type", str, doc, "rootfs", default="")
        if rootfs_type != "layers":
            raise _fail(doc, "rootfs.type", f"expected 'layers', got {rootfs_type!r}")
        diff_ids = _str_list(rootfs, "diff_ids", doc, "rootfs") or []
        for i, d in enumerate(diff_ids):
            try:
                split_digest(d)
            except DigestError as exc:
                raise _fail(doc, f"rootfs.diff_ids[{i}]", exc.message) from exc
        features = _str_list(obj, "os.features", doc, "")
        return cls(
            os=_get(obj, "os", str, doc, "", required=True),
            architecture=_get(obj, "architecture", str, doc, "", required=True),
            diff_ids=tuple(diff_ids),
            variant=_get(obj, "variant", str, doc, "", default=""),
            os_version=_get(obj, "os.version", str, doc, "", default=""),
            os_features=tuple(features) if features is not None else None,
            author=_get(obj, "author", str, doc, "", default=""),
            created=_get(obj, "created", str, doc, "", default=""),
            config=_container_config(obj, doc),
        )


def _container_config(obj: dict[str, Any], doc: str) -> ContainerConfig | None:
    cfg = _get(obj, "config", dict, doc, "")
    if cfg is None:
        return None

    def opt_tuple(key: str) -> tuple[str, ...] | None:
        value = _str_list(cfg, key, doc, "config")
        return tuple(value) if value is not None else None

    return ContainerConfig(
        user=_get(cfg, "User", str, doc, "config", default=""),
        env=opt_tuple("Env"),
        entrypoint=opt_tuple("Entrypoint"),
        cmd=opt_tuple("Cmd"),
        working_dir=_get(cfg, "WorkingDir", str, doc, "config", default=""),
        volumes=tuple(_get(cfg, "Volumes", dict, doc, "config", default={})),
        exposed_ports=tuple(_get(cfg, "ExposedPorts", dict, doc, "config", default={})),
        labels=_str_map(cfg, "Labels", doc, "config"),
        stop_signal=_get(cfg, "StopSignal", str, doc, "config", default=""),
    )
