"""Start-up stays cheap: the CLI imports only what the command runs (issue 15).

Not timed: each check runs a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Never needed to start a pull (each belongs to a feature that is configured, or to tests).
FEATURE_MODULES = ("pysequoia", "jwcrypto", "google.protobuf", "yaml", "tomlkit", "guestpull_testkit")
#: Not needed to print help: the pull machinery itself.
PULL_MACHINERY = ("aiohttp", "pydantic", "guestpull.pull", "guestpull.config", "asyncio")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules]


def test_pull_help_imports_neither_features_nor_pull_machinery() -> None:
    code = (
        "from click.testing import CliRunner\n"
        "from guestpull.cli import main\n"
        "result = CliRunner().invoke(main, ['pull', '--help'])\n"
        "assert result.exit_code == 0 and 'IMAGE' in result.output, result.output"
    )
    loaded = _modules_after(code)
    assert _loaded(loaded, FEATURE_MODULES + PULL_MACHINERY) == []


def test_version_imports_only_click() -> None:
    loaded = _modules_after("import guestpull.cli")
    assert _loaded(loaded, FEATURE_MODULES + PULL_MACHINERY) == []


@pytest.mark.parametrize("module", ["guestpull.cli.pull", "guestpull.pull"])
def test_pull_path_does_not_import_feature_stacks(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    assert _loaded(loaded, FEATURE_MODULES) == []


def test_a_whole_pull_without_policy_loads_no_feature_stack(shm_path: Path) -> None:
    # A real pull (fake registry, copy bundle, offline_fs_kbc, no policy) in a fresh process.
    code = f"""
import asyncio
from guestpull.config import parse_cdh_config
from guestpull.pull import pull_image
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec

async def main():
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", ImageSpec([LayerSpec([File("a", b"a")])]).build())
        cdh = ('[kbc]\\nname = "offline_fs_kbc"\\n[image]\\n[[image.registry_config.registry]]\\n'
               f'location = "{{fake.host}}"\\ninsecure = true\\n')
        config = parse_cdh_config(cdh, "cdh.toml").image_config()
        result = await pull_image(f"{{fake.host}}/team/app:v1", config, work_dir={str(shm_path / "s")!r},
                                  bundle={str(shm_path / "b")!r}, rootfs_mode="copy")
        assert result.policy is None

asyncio.run(main())
"""
    loaded = _modules_after(code)
    assert "guestpull.pull" in loaded and (shm_path / "b" / "rootfs" / "a").is_file()
    # the test kit is loaded here on purpose (it serves the image); nothing else may be
    assert _loaded(loaded, tuple(m for m in FEATURE_MODULES if m != "guestpull_testkit")) == []
    assert "guestpull.signature" not in loaded
