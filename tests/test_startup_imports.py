"""Start-up stays cheap: the CLI imports only what the command runs (issue 15).

Not timed: each check runs a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

#: Never needed to start a pull (each belongs to a feature that is configured, or to tests).
FEATURE_MODULES = ("pysequoia", "jwcrypto", "google.protobuf", "yaml", "tomlkit", "guestpull_testkit")
#: Not needed to print help: the pull machinery itself.
PULL_MACHINERY = ("aiohttp", "pydantic", "guestpull.pull", "guestpull.config", "asyncio")


def _json_printed_by(code: str) -> Any:
    """Run ``code`` (``json`` imported) in a fresh interpreter; what its last line printed."""
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])


def _modules_after(code: str) -> set[str]:
    return set(_json_printed_by(code + "\nimport sys\nprint(json.dumps(sorted(sys.modules)))"))


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
    assert _loaded(loaded, FEATURE_MODULES + ("pydantic",)) == []


def test_a_whole_pull_without_policy_loads_no_feature_stack(shm_path: Path) -> None:
    # A real pull (fake registry, copy bundle, offline_fs_kbc, no policy) in a fresh process.
    code = f"""
import asyncio
from guestpull.config import parse_cdh_config
from guestpull.pull import pull_image
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec
import ssl

bundle_loads = []
_load_default_certs = ssl.SSLContext.load_default_certs
def counted(self, *args, **kwargs):
    bundle_loads.append(1)
    return _load_default_certs(self, *args, **kwargs)
ssl.SSLContext.load_default_certs = counted

async def main():
    async with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", ImageSpec([LayerSpec([File("a", b"a")])]).build())
        cdh = ('[kbc]\\nname = "offline_fs_kbc"\\n[image]\\n[[image.registry_config.registry]]\\n'
               f'location = "{{fake.host}}"\\ninsecure = true\\n')
        config = parse_cdh_config(cdh, "cdh.toml").image_config()
        result = await pull_image(f"{{fake.host}}/team/app:v1", config, work_dir={str(shm_path / "s")!r},
                                  bundle={str(shm_path / "b")!r}, rootfs_mode="copy")
        assert result.policy is None
    # a plain-HTTP (insecure) registry: the system CA bundle is never loaded (tls.TrustConfig)
    assert not bundle_loads, bundle_loads

asyncio.run(main())
"""
    loaded = _modules_after(code)
    assert "guestpull.pull" in loaded and (shm_path / "b" / "rootfs" / "a").is_file()
    # the test kit is loaded here on purpose (it serves the image); nothing else may be
    assert _loaded(loaded, tuple(m for m in FEATURE_MODULES if m != "guestpull_testkit")) == []
    assert "guestpull.signature" not in loaded
    # a plainly valid cdh.toml needs no pydantic (configmodel.py): only doubtful input does
    assert "pydantic" not in loaded


def test_pydantic_is_imported_only_to_judge_doubtful_config() -> None:
    code = (
        "import sys\n"
        "from guestpull.config import parse_cdh_config\n"
        "from guestpull.errors import ConfigError\n"
        "parse_cdh_config('[kbc]\\nname = \"offline_fs_kbc\"\\n[image]\\nwork_dir = \"/w\"\\n', 'cdh.toml')\n"
        "before = 'pydantic' in sys.modules\n"
        "try:\n"
        "    parse_cdh_config('[kbc]\\nname = 1\\n', 'cdh.toml')\n"
        "except ConfigError as err:\n"
        "    print(json.dumps([before, 'pydantic' in sys.modules, err.location.field]))\n"
    )
    assert _json_printed_by(code) == [False, True, "kbc.name"]


@pytest.mark.parametrize("module", ["guestpull.pull", "guestpull.kbs.client", "guestpull.cli.serve",
                                    "guestpull.probe"])
def test_the_product_speaks_http_without_aiohttp_or_yarl(module: str) -> None:
    # guestpull.httpclient and guestpull.url are our own (issue 15: aiohttp's import was ~70 ms
    # of a small pull, yarl's with multidict and idna ~9 ms); aiohttp serves the tests'
    # in-process registries only.
    loaded = _modules_after(f"import {module}")
    assert _loaded(loaded, ("aiohttp", "yarl", "multidict", "idna")) == []


def test_a_pull_freezes_its_imports_once_and_leaves_the_gc_enabled(shm_path: Path) -> None:
    # The pull machinery's imports are frozen out of the collector (issue 15: ~50 ms of a
    # warm pull, mostly the full collections during the pull and at exit); only the first
    # command of a process freezes, and the collector runs afterwards as before.
    missing = shm_path / "missing.toml"
    code = (
        "import gc\n"
        "from click.testing import CliRunner\n"
        "from guestpull.cli import main\n"
        f"args = ['pull', 'r.local/a:1', '--config', {str(missing)!r}, '--json']\n"
        "first = CliRunner().invoke(main, args)\n"
        "frozen = gc.get_freeze_count()\n"
        "garbage = [[]]; garbage[0].append(garbage)\n"
        "second = CliRunner().invoke(main, args)\n"
        "print(json.dumps([first.exit_code, second.exit_code, frozen, gc.get_freeze_count(), gc.isenabled()]))\n"
    )
    first, second, frozen, frozen_after, enabled = _json_printed_by(code)
    assert first == second != 0  # the config file is missing: a config error, after the imports
    assert frozen > 10_000 and frozen_after <= frozen and enabled  # (frozen objects can still die by refcount)
