"""Run ``guestpull`` against a registry: config files, in-process and subprocess runs, pushes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from click.testing import CliRunner

from guestpull.cli import main
from guestpull_testkit import TEST_PASSWORD, TEST_USER, wait_for
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import ImageSpec, LayoutDigests, push, write_layout

from support.config import cdh_toml, write_initdata

#: The command line of the real CLI, run by this interpreter (the project's venv).
GUESTPULL: tuple[str, ...] = (sys.executable, "-m", "guestpull")


class Registry(Protocol):
    """What the config helpers need of a RegistryProcess (or a FakeRegistry)."""

    @property
    def host(self) -> str: ...


# --- configuration ---------------------------------------------------------------------------


def cdh_for(registry: Registry, **options: Any) -> str:
    """The cdh.toml for a RegistryProcess (HTTPS with its CA, or HTTP) or a FakeRegistry (HTTP),
    with more :func:`support.config.cdh_toml` ``options``."""
    tls = getattr(registry, "tls", None)
    if tls is not None:
        return cdh_toml(roots=[tls.ca_cert_pem], **options)
    return cdh_toml(insecure=[registry.host], **options)


def write_auth_json(path: Path, host: str, password: str = TEST_PASSWORD) -> Path:
    """An auth.json with the test user's Basic credentials for ``host``."""
    token = base64.b64encode(f"{TEST_USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def config_args(directory: Path, registry: Registry, *, initdata: bool = False) -> list[str]:
    """Write the registry's config into ``directory``; the pull options that name it."""
    directory.mkdir(parents=True, exist_ok=True)
    cdh = cdh_for(registry)
    if initdata:
        return ["--initdata", str(write_initdata(directory / "initdata.toml", cdh))]
    path = directory / "cdh.toml"
    path.write_text(cdh)
    return ["--config", str(path)]


def image_ref(registry: Registry, repo: str, tag: str = "v1") -> str:
    return f"{registry.host}/{repo}:{tag}"


# --- running the CLI -------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def __str__(self) -> str:  # what an assertion message shows
        return f"exit {self.exit_code}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def invoke(*args: str) -> CliResult:
    """``guestpull ARGS`` in this process (click's CliRunner): fast, no interpreter start."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # An uncaught exception is a product bug; show it the way a user would see it.
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return CliResult(result.exit_code, result.stdout, stderr)


def child_env() -> dict[str, str]:
    # No proxy from the environment: every test talks to 127.0.0.1 directly.
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def run(*args: str, timeout: float = 120.0) -> CliResult:
    """``guestpull ARGS`` as a real subprocess, waited for (bounded)."""
    done = subprocess.run(
        [*GUESTPULL, *args], capture_output=True, text=True, timeout=timeout, env=child_env(),
        stdin=subprocess.DEVNULL, check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``guestpull ARGS`` as a subprocess left running (to kill it, or to run several at once).

    Its stdout goes to ``log``, its stderr to ``log`` + ``.err``.  The caller waits for it
    or kills it.
    It leads its own process group, so :func:`kill_group` also reaches what it started.
    """
    with open(log, "wb") as out, open(f"{log}.err", "wb") as err:
        return subprocess.Popen(
            [*GUESTPULL, *args], stdout=out, stderr=err, env=child_env(), stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> int:
    """SIGKILL a :func:`spawn`-ed pull and every process it started (a ``mount``, say);
    wait until none is left.  The pull's exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    status = proc.wait(timeout=timeout)

    def group_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    if not wait_for(group_gone, timeout=timeout):
        raise AssertionError(f"processes of group {proc.pid} still alive {timeout}s after SIGKILL")
    return status


def pull_args(image: str, config: list[str], work: Path, bundle: Path | None, *extra: str) -> list[str]:
    args = ["pull", image, *config, "--work-dir", str(work), "--json"]
    if bundle is not None:
        args += ["--bundle", str(bundle)]
    return args + list(extra)


# --- images and registries -------------------------------------------------------------------


def push_spec(layout: Path, registry: Any, repo: str, spec: ImageSpec, tag: str = "v1") -> LayoutDigests:
    """Write ``spec`` as an OCI layout and copy it to a real registry with skopeo."""
    digests = write_layout(layout, spec, tag)
    push(layout, tag, f"{registry.host}/{repo}:{tag}", tls_ca=registry.ca_path,
         tls_verify=registry.tls is not None, creds=registry.credentials)
    return digests


def blob_gets(fake: FakeRegistry) -> Counter[str]:
    """How many times each blob digest was fetched (GET) from the fake registry."""
    return Counter(
        r.path.rsplit("/", 1)[-1] for r in fake.requests if r.method == "GET" and "/blobs/" in r.path
    )
