"""Resource URIs: paths, file://, kbs:// via offline_fs (coco-behaviour.md §8.4, §9)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from guestpull.errors import ConfigError, NotFoundError
from guestpull.resources import (
    OFFLINE_FS_EXTRA_ENV,
    ResourceResolver,
    check_resource_uri,
    default_offline_fs_files,
    parse_kbs_uri,
)


def write_kbc_file(path: Path, entries: dict[str, bytes]) -> Path:
    path.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in entries.items()}))
    return path


def test_bare_path_and_file_uri(tmp_path: Path) -> None:
    target = tmp_path / "dir with space" / "policy.json"
    target.parent.mkdir()
    target.write_bytes(b"{}\n")
    resolver = ResourceResolver(offline_fs_files=[]).sync()
    assert resolver.get(str(target)) == b"{}\n"
    assert resolver.get(target.as_uri()) == b"{}\n"  # percent-encoded space
    assert resolver.get(f"file://{tmp_path}/dir with space/policy.json") == b"{}\n"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        ResourceResolver(offline_fs_files=[]).sync().get(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="directory"):
        ResourceResolver(offline_fs_files=[]).sync().get(str(tmp_path))


@pytest.mark.parametrize(
    ("uri", "plugin", "host", "path", "query"),
    [
        ("kbs:///default/key/1", "resource", "", "default/key/1", ""),
        ("kbs://kbs.local:8080/a/b/c?x=1&y=2", "resource", "kbs.local:8080", "a/b/c", "x=1&y=2"),
        ("kbs+pkcs11:///repo/type/tag", "pkcs11", "", "repo/type/tag", ""),
        ("kbs:///one", "resource", "", "one", ""),
        ("kbs:///a/b/c/d/e", "resource", "", "a/b/c/d/e", ""),
    ],
)
def test_parse_kbs_uri(uri: str, plugin: str, host: str, path: str, query: str) -> None:
    parsed = parse_kbs_uri(uri)
    assert (parsed.plugin, parsed.host, parsed.path, parsed.query) == (plugin, host, path, query)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("kbs+:///a/b/c", "plugin name"),
        ("kbs://", "no resource path"),
        ("kbs:///", "no resource path"),
        ("http:///a/b/c", "not supported"),
        ("https://example.com/x", "not supported"),
        ("", "empty"),
    ],
)
def test_bad_uris(uri: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        check_resource_uri(uri)
    with pytest.raises(ConfigError, match=fragment):
        ResourceResolver(offline_fs_files=[]).sync().get(uri)


def test_offline_fs_lookup_later_file_wins(tmp_path: Path) -> None:
    keys = write_kbc_file(tmp_path / "keys.json", {"default/key/1": b"one", "dup/x/y": b"old"})
    res = write_kbc_file(tmp_path / "res.json", {"default/policy/p": b"{}", "dup/x/y": b"new"})
    resolver = ResourceResolver([keys, tmp_path / "missing.json", res]).sync()
    assert resolver.get("kbs:///default/key/1") == b"one"
    assert resolver.get("kbs+other://ignored.host/default/policy/p?q=1") == b"{}"
    assert resolver.get("kbs:///dup/x/y") == b"new"


def test_offline_fs_not_found(tmp_path: Path) -> None:
    keys = write_kbc_file(tmp_path / "keys.json", {"a/b/c": b"x"})
    with pytest.raises(NotFoundError, match="resource not found a/b/d"):
        ResourceResolver([keys]).sync().get("kbs:///a/b/d")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"a/b/c": 1}', "base64 string"),
        ('{"a/b/c": "***secret***"}', "not valid standard base64"),
    ],
)
def test_offline_fs_bad_files(tmp_path: Path, content: str, fragment: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=fragment) as info:
        ResourceResolver([bad]).sync().get("kbs:///a/b/c")
    assert str(bad) in str(info.value)
    assert "secret" not in str(info.value)


def test_cc_kbc_without_settings_is_a_config_error(tmp_path: Path) -> None:
    keys = write_kbc_file(tmp_path / "keys.json", {"a/b/c": b"x"})
    with pytest.raises(ConfigError, match="cc_kbc needs"):
        ResourceResolver([keys], kbc="cc_kbc").sync().get("kbs:///a/b/c")
    # files are still served under cc_kbc
    target = tmp_path / "f"
    target.write_bytes(b"y")
    assert ResourceResolver([keys], kbc="cc_kbc").sync().get(str(target)) == b"y"


def test_default_files_and_env() -> None:
    files = default_offline_fs_files({OFFLINE_FS_EXTRA_ENV: "/a.json, /b.json,"})
    assert files == [
        Path("/etc/aa-offline_fs_kbc-keys.json"),
        Path("/etc/aa-offline_fs_kbc-resources.json"),
        Path("/a.json"),
        Path("/b.json"),
    ]
    assert default_offline_fs_files({}) == files[:2]


def test_env_extra_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = write_kbc_file(tmp_path / "extra.json", {"r/t/x": b"from-env"})
    monkeypatch.setenv(OFFLINE_FS_EXTRA_ENV, str(extra))
    assert ResourceResolver().sync().get("kbs:///r/t/x") == b"from-env"


async def test_sync_adapter_works_inside_a_running_loop(tmp_path: Path) -> None:
    # Configuration loading may call the sync get() from a coroutine: it must not deadlock.
    keys = write_kbc_file(tmp_path / "keys.json", {"a/b/c": b"x"})
    assert ResourceResolver([keys]).sync().get("kbs:///a/b/c") == b"x"
    assert await ResourceResolver([keys]).get("kbs:///a/b/c") == b"x"
