"""registries.d-style sigstore config: parsing, merging, scope lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestpull.errors import ConfigError
from guestpull.reference import parse_reference
from guestpull.signature.sigstore_config import CONFIG_DIR, SigstoreConfig, load_sigstore_config

DOC = b"""
default-docker:
  sigstore: file:///var/lib/sigstore
docker:
  reg.local:5000:
    sigstore: http://reg.local:8080/sigstore/
  reg.local:5000/team/app:
    lookaside: https://sigs.example.com/app
    sigstore-staging: file:///ignored
  reg.local:5000/team:
    use-sigstore-attachments: true
"""


def lookup(config: SigstoreConfig, image: str) -> str | None:
    found = config.lookaside_for(parse_reference(image))
    return found.url if found else None


def test_most_specific_scope_with_a_url_wins() -> None:
    config = SigstoreConfig.parse(DOC, "s.yaml")
    assert lookup(config, "reg.local:5000/team/app:v1") == "https://sigs.example.com/app"
    # reg.local:5000/team has no URL: the registry entry applies
    assert lookup(config, "reg.local:5000/team/other:v1") == "http://reg.local:8080/sigstore"
    assert lookup(config, "quay.io/x:v1") == "file:///var/lib/sigstore"


def test_no_default_means_no_store() -> None:
    config = SigstoreConfig.parse(b"docker:\n  reg.local:\n    sigstore: file:///s\n", "s.yaml")
    assert lookup(config, "quay.io/x") is None


@pytest.mark.parametrize(("raw", "words"), [
    (b"default-docker:\n  sigstore: a\ndefault-docker:\n  sigstore: b\n", "duplicate key"),
    (b"default-docker:\n  sigstore: ftp://x\n", "file://, http:// or https://"),
    (b"default-docker:\n  sigstore: https://sigs:99999/x\n", "not a usable URL"),
    (b"default-docker:\n  sigstore: \"https://s\\u00efgs.example/x\"\n", "not a usable URL"),
    (b"default-docker:\n  sigstore: \"https://sigs.example/a\\tb\"\n", "not a usable URL"),
    (b"- a\n", "must be a YAML mapping"),
    (b"docker: [1]\n", "docker must be a mapping"),
    (b"default-docker: {sigstore: [\n", "not valid YAML"),
    (b"!!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe loading only
])
def test_invalid(raw: bytes, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        SigstoreConfig.parse(raw, "s.yaml")


def test_merged_with_the_work_dir_files(tmp_path: Path) -> None:
    directory = tmp_path / CONFIG_DIR
    directory.mkdir(parents=True)
    (directory / "10-team.yaml").write_text("docker:\n  reg.local/team:\n    sigstore: file:///team\n")
    (directory / "ignored.yml").write_text("default-docker:\n  sigstore: file:///x\n")
    config = load_sigstore_config((b"default-docker:\n  sigstore: file:///d\n", "inline"), tmp_path)
    assert lookup(config, "reg.local/team/a") == "file:///team"
    assert lookup(config, "reg.local/other/a") == "file:///d"
    (directory / "20-dup.yaml").write_text("default-docker:\n  sigstore: file:///again\n")
    with pytest.raises(ConfigError, match="also defined in inline"):
        load_sigstore_config((b"default-docker:\n  sigstore: file:///d\n", "inline"), tmp_path)
