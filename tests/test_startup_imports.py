"""Start-up stays cheap: the CLI imports only what the command runs (issue 15).

Not timed: each check runs a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
