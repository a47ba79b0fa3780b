"""Manifest / index / config parsing and platform selection."""

from __future__ import annotations

import json

import pytest

from guestpull import oci
from guestpull.errors import ConfigError, PlatformError, UnsupportedError
from guestpull.oci import ConfigFile, ImageIndex, ImageManifest, Platform, select_platform
from guestpull.testing.images import File, ImageSpec, LayerSpec, build_index

D = "sha256:" + "a" * 64


def index_of(*platforms: dict[str, str]) -> ImageIndex:
    return ImageIndex.parse(json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_INDEX,
        "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + f"{i:x}" * 64,
                       "size": 10, "platform": p} for i, p in enumerate(platforms, 1)],
    }).encode())


def test_manifest_from_builder_round_trips() -> None:
    built = ImageSpec(layers=[LayerSpec([File("a", b"1")], compression="zstd")]).build()
    m = oci.parse_manifest_document(built.manifest)
    assert isinstance(m, ImageManifest)
    assert m.config.digest == built.config_digest
    assert [l.digest for l in m.layers] == [built.layers[0].digest]
    assert m.layers[0].media_type == oci.OCI_LAYER_ZSTD
    cfg = ConfigFile.parse(built.config)
    assert cfg.diff_ids == (built.layers[0].diff_id,)
    assert cfg.os == "linux"


def test_index_is_recognised_by_shape() -> None:
    built = ImageSpec(layers=[]).build()
    doc = oci.parse_manifest_document(build_index([built]))
    assert isinstance(doc, ImageIndex) and doc.manifests[0].platform == Platform("linux", "amd64")


def test_errors_name_the_field() -> None:
    bad = {"schemaVersion": 2, "config": {"digest": D, "size": 1},
           "layers": [{"digest": D, "size": 1}, {"digest": "sha256:xyz", "size": 1}]}
    with pytest.raises(ConfigError) as caught:
        ImageManifest.parse(json.dumps(bad).encode())
    assert "layers[1].digest" in str(caught.value)
    bad["layers"] = [{"digest": D, "size": "big"}]
    with pytest.raises(ConfigError, match=r"layers\[0\]\.size"):
        ImageManifest.parse(json.dumps(bad).encode())
    with pytest.raises(ConfigError, match="not valid JSON"):
        ImageManifest.parse(b"{nope")


def test_schema1_and_unknown_media_type_are_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="schemaVersion"):
        ImageManifest.parse(b'{"schemaVersion": 1}')
    with pytest.raises(UnsupportedError, match="mediaType|media type"):
        ImageManifest.parse(json.dumps({"schemaVersion": 2, "mediaType": "text/plain",
                                        "config": {}, "layers": []}).encode())


def test_config_requires_layers_rootfs() -> None:
    with pytest.raises(ConfigError, match="rootfs"):
        ConfigFile.parse(b'{"os": "linux", "architecture": "amd64"}')


@pytest.mark.parametrize("wanted, expected_index", [
    (Platform("linux", "amd64"), 1),
    (Platform("linux", "arm64"), 3),          # arm64 means v8: matches the entry without variant
    (Platform("linux", "arm64", "v8"), 3),
    (Platform("linux", "arm", "v6"), 4),
    (Platform("linux", "arm"), 5),            # arm defaults to v7
])
def test_select_platform_matches_variant(wanted: Platform, expected_index: int) -> None:
    idx = index_of(
        {"os": "linux", "architecture": "amd64"},
        {"os": "windows", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64"},
        {"os": "linux", "architecture": "arm", "variant": "v6"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
    )
    assert select_platform(idx, wanted) is idx.manifests[expected_index - 1]


def test_select_platform_variant_must_match() -> None:
    idx = index_of({"os": "linux", "architecture": "arm", "variant": "v6"},
                   {"os": "linux", "architecture": "s390x"})
    with pytest.raises(PlatformError) as caught:
        select_platform(idx, Platform("linux", "arm", "v7"))
    assert "linux/arm/v6" in str(caught.value) and "linux/s390x" in str(caught.value)


def test_default_platform_is_linux() -> None:
    p = oci.default_platform()
    assert p.os == "linux" and p.architecture
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(ConfigError):
        Platform.parse("linux")


# --- issue 9: unambiguous documents and bounded sizes ----------------------------------------

_MANIFEST = {"schemaVersion": 2, "config": {"mediaType": oci.OCI_CONFIG, "digest": D, "size": 2},
             "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D, "size": 3}]}
_INDEX = {"schemaVersion": 2, "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": D, "size": 4}]}


def _doc(base: dict, **changes: object) -> bytes:
    return json.dumps({**base, **changes}).encode()


@pytest.mark.parametrize(
    ("data", "content_type", "expected", "kind"),
    [
        (_doc(_MANIFEST), "", "", oci.OCI_MANIFEST),  # no type anywhere: the shape decides
        (_doc(_INDEX), "", "", oci.OCI_INDEX),
        (_doc(_MANIFEST), oci.DOCKER_MANIFEST, "", oci.DOCKER_MANIFEST),  # the header fills in
        (_doc(_MANIFEST, mediaType=oci.OCI_MANIFEST), "application/json", "", oci.OCI_MANIFEST),
        (_doc(_MANIFEST, mediaType=oci.OCI_MANIFEST), oci.OCI_MANIFEST + "; charset=utf-8",
         oci.OCI_MANIFEST, oci.OCI_MANIFEST),
        (_doc(_INDEX), "", oci.DOCKER_MANIFEST_LIST, oci.DOCKER_MANIFEST_LIST),
    ],
)
def test_media_type_agrees_everywhere(data: bytes, content_type: str, expected: str, kind: str) -> None:
    doc = oci.parse_manifest_document(data, content_type, expected_media_type=expected)
    assert doc.media_type == kind


@pytest.mark.parametrize(
    ("data", "content_type", "expected", "text"),
    [
        # CVE-2021-41190: both shapes, no mediaType, the header says index.
        (_doc(_MANIFEST, manifests=_INDEX["manifests"]), oci.OCI_INDEX, "", "both 'manifests'"),
        (_doc(_MANIFEST, manifests=[]), "", "", "both 'manifests'"),
        (_doc(_INDEX, config=_MANIFEST["config"], mediaType=oci.OCI_INDEX), "", "", "both"),
        (_doc(_MANIFEST, mediaType=oci.OCI_MANIFEST), oci.OCI_INDEX, "", "Content-Type says"),
        (_doc(_MANIFEST, mediaType=oci.OCI_MANIFEST), oci.DOCKER_MANIFEST, "", "Content-Type says"),
        (_doc(_MANIFEST), "", oci.DOCKER_MANIFEST_LIST, "declared .* but has no 'manifests'"),
        (_doc(_MANIFEST), oci.OCI_MANIFEST, oci.DOCKER_MANIFEST, "descriptor that points at it"),
        (_doc(_MANIFEST, mediaType=oci.OCI_MANIFEST), "", oci.DOCKER_MANIFEST, "descriptor"),
        (_doc(_MANIFEST, mediaType=oci.OCI_INDEX), "", "", "declared .* but has no 'manifests'"),
        (_doc(_INDEX), oci.OCI_MANIFEST, "", "declared .* but has 'manifests'"),
    ],
)
def test_ambiguous_documents_are_refused(data: bytes, content_type: str, expected: str, text: str) -> None:
    with pytest.raises(UnsupportedError, match=text):
        oci.parse_manifest_document(data, content_type, "m", expected_media_type=expected)


def test_manifest_and_index_parsers_refuse_each_other() -> None:
    with pytest.raises(UnsupportedError, match="expected an image manifest"):
        ImageManifest.parse(_doc(_INDEX))
    with pytest.raises(UnsupportedError, match="expected an image index"):
        ImageIndex.parse(_doc(_MANIFEST))


def test_absurd_sizes_are_refused_at_parse_time() -> None:
    huge_layer = dict(_MANIFEST, layers=[{"digest": D, "size": 2**62}])
    with pytest.raises(UnsupportedError, match="larger than any blob") as caught:
        ImageManifest.parse(json.dumps(huge_layer).encode())
    assert caught.value.location.field == "layers[0].size"
    huge_config = dict(_MANIFEST, config={"digest": D, "size": oci.MAX_CONFIG_SIZE + 1})
    with pytest.raises(UnsupportedError, match="configs are limited to 8 MiB"):
        ImageManifest.parse(json.dumps(huge_config).encode())
    with pytest.raises(UnsupportedError, match="limited to 8 MiB"):
        ConfigFile.parse(b" " * (oci.MAX_CONFIG_SIZE + 1))


def test_echoed_strings_are_clipped() -> None:
    with pytest.raises(UnsupportedError) as caught:
        ImageManifest.parse(_doc(_MANIFEST, mediaType="x" * 65536))
    assert 200 < len(str(caught.value)) < 500
    assert "…" in str(caught.value)  # marked as cut
