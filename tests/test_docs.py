"""Every example in README.md and docs/ is exercised, and every link stays inside the repository.

Each fenced block carries a ``<!-- check: KIND ... -->`` marker (docs/CONTRIBUTING-docs.md):
shell blocks run in a scratch directory against real registries, their shown output is
compared, configuration examples go through the parsers and the linter a guest would use.
Pages marked ``<!-- docs-session: after quickstart -->`` run in the state the quick start
leaves: its files, and its registries still running (its ``run cleanup`` blocks run last).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guestpull.authfile import AuthFile
from guestpull.config import (
    AaConfig,
    CdhConfig,
    RegistriesConfig,
    parse_aa_config,
    parse_cdh_config,
    parse_registries_config,
    unknown_keys,
)
from guestpull_testkit.demo import demo_image
from guestpull.image.bundle import umount_bundle
from guestpull.initdata import PLATFORMS, TOML_DATA_KEYS
from guestpull.lint import ERROR, WARNING, lint
from guestpull_testkit import free_port
from guestpull_testkit.images import write_layout
from support.docscheck import (
    KINDS,
    REPO,
    Block,
    Doc,
    doc_files,
    json_matches,
    link_problem,
    links,
    lines_match,
    read_doc,
)

QUICKSTART = REPO / "docs" / "quickstart.md"
AFTER_QUICKSTART = "after quickstart"
BLOCK_TIMEOUT = 60.0
#: Code-like blocks must be checked as what they are, never waved through as ``text``.
_CODE_INFO = {"sh", "bash", "shell", "console", "toml", "json", "yaml", "yml", "python", "py"}
#: The public image the docs push, and the local OCI layout pushed in its place (no network).
PUBLIC_IMAGE = "docker://docker.io/library/busybox:1.36"
_LOOPBACK_PORT = re.compile(r"127\.0\.0\.1:(\d{2,5})\b")
_SHOWN_DIR = "..."
#: GUESTPULL_DOCS_KEEP=1 keeps the scratch directories (and logs) for a look after a failure.
KEEP = os.environ.get("GUESTPULL_DOCS_KEEP") == "1"
_PORTS_LOCK = threading.Lock()


DOCS = [read_doc(path) for path in doc_files()]


def _id(doc: Doc) -> str:
    return str(doc.path.relative_to(REPO))


# --- the convention ------------------------------------------------------------------------


def test_every_fenced_block_is_checked() -> None:
    problems = []
    for doc in DOCS:
        for block in doc.blocks:
            if block.kind is None:
                problems.append(f"{block.where}: block not checked (add <!-- check: KIND --> above it)")
            elif block.kind not in KINDS:
                problems.append(f"{block.where}: unknown check kind {block.kind!r}")
            elif block.kind == "skip" and len(block.args.split()) < 3:
                problems.append(f"{block.where}: a skipped block must say why (and what covers it)")
            elif block.kind == "text" and block.info.lower() in _CODE_INFO:
                problems.append(f"{block.where}: a {block.info} block must be checked as code, not text")
            elif block.kind == "output" and not _follows_run(doc, block):
                problems.append(f"{block.where}: an output block must follow a run block")
    assert not problems, "\n".join(problems)


def _follows_run(doc: Doc, block: Block) -> bool:
    index = doc.blocks.index(block)
    return index > 0 and doc.blocks[index - 1].kind == "run"


def test_links_stay_inside_the_repository_and_resolve() -> None:
    problems = [p for doc in DOCS for link in links(doc.path) if (p := link_problem(link))]
    assert not problems, "\n".join(problems)


def test_readme_stands_on_its_own() -> None:
    readme = (REPO / "README.md").read_text()
    for doc in DOCS:  # users of the repository have no ../shared/
        text = doc.path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, doc.path
    for page in ("quickstart", "local-registries", "initdata", "compatibility", "troubleshooting",
                 "architecture", "benchmarks", "CONTRIBUTING-docs"):
        assert f"docs/{page}.md" in readme, page


def test_every_command_is_documented() -> None:
    from guestpull.cli import COMMANDS

    text = "\n".join(doc.path.read_text() for doc in DOCS)
    missing = sorted(name for name in COMMANDS if f"guestpull {name}" not in text)
    assert not missing, f"no page shows these commands: {missing}"


def lint_codes() -> set[str]:
    """Every finding code ``initdata check`` can report: the literal codes in guestpull.lint and
    in the modules that hand it findings (any ``ERROR|WARNING|INFO, "code"`` in the package)."""
    package = REPO / "src" / "guestpull"
    source = "\n".join(path.read_text() for path in sorted(package.rglob("*.py"))
                       if "testing" not in path.parts)
    code = r"\"([a-z0-9]+(?:-[a-z0-9]+)+)\""  # codes are kebab-case, two words or more
    codes = set(re.findall(r"(?:ERROR|WARNING|INFO),\s*" + code, source))
    codes |= set(re.findall(r"\.add(?:_in)?\(\s*[\w.]+\s*,\s*" + code, source))
    codes |= set(re.findall(r"_error_finding\(\s*" + code, source))
    # Codes made from names: invalid-<embedded file>.
    if 'f"invalid-{key' in source:
        codes |= {f"invalid-{key.replace('.', '-')}" for key in TOML_DATA_KEYS}
    return codes


def platform_codes() -> set[str]:
    """``initdata check --platform P`` reports ``P-algorithm`` (in practice only vtpm's)."""
    return {f"{platform}-algorithm" for platform in PLATFORMS}


def documented_codes() -> set[str]:
    """The codes in the first column of compatibility.md's table of findings."""
    page = (REPO / "docs" / "compatibility.md").read_text()
    table = page.split("## What `initdata check` reports", 1)[1]
    return {code for row in re.findall(r"^\| ([^|]+) \|", table, re.M)
            for code in re.findall(r"`([a-z][a-z-]+)`", row)}


def test_every_lint_code_is_documented() -> None:
    codes = lint_codes()
    assert {"ca-self-signed", "insecure-without-location", "invalid-document"} <= codes
    missing = sorted(codes - documented_codes())
    assert not missing, f"docs/compatibility.md does not explain the finding codes {missing}"


def test_no_documented_code_is_stale() -> None:
    stale = sorted(documented_codes() - lint_codes() - platform_codes())
    assert not stale, f"docs/compatibility.md explains codes guestpull.lint no longer reports: {stale}"


# --- sessions: a scratch directory where a page's shell blocks run ---------------------------


@dataclass
class Session:
    """A page's scratch directory, its port map and what its blocks left running."""

    directory: Path
    layout: Path
    ports: dict[str, str] = field(default_factory=dict)  # port in the docs → port here
    groups: list[int] = field(default_factory=list)  # process groups still alive
    last_output: str | None = None
    cleanup: list[Block] = field(default_factory=list)

    def substitute(self, text: str) -> str:
        """The docs' names → this machine's: loopback ports, the public image → a local layout."""
        text = text.replace(PUBLIC_IMAGE, f"oci:{self.layout}:1.0")

        def port(match: re.Match[str]) -> str:
            doc_port = match.group(1)
            with _PORTS_LOCK:  # pages after the quick start share its port map, in threads
                if doc_port not in self.ports:
                    self.ports[doc_port] = str(free_port())
                return f"127.0.0.1:{self.ports[doc_port]}"

        return _LOOPBACK_PORT.sub(port, text)

    def restore(self, text: str) -> str:
        """This machine's names in output → the docs'."""
        back = {real: doc for doc, real in self.ports.items()}
        text = _LOOPBACK_PORT.sub(lambda m: f"127.0.0.1:{back.get(m.group(1), m.group(1))}", text)
        return text.replace(str(self.directory), _SHOWN_DIR)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["HOME"] = str(self.directory)
        return env

    def run(self, block: Block) -> str | None:
        """Run a shell block; a problem message, or None."""
        log = self.directory.parent / f"{self.directory.name}.block-{block.line}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", self.substitute(block.text)], cwd=self.directory,
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started = time.monotonic()
            try:
                code = process.wait(timeout=BLOCK_TIMEOUT)
                if os.environ.get("GUESTPULL_DOCS_TIMES"):
                    print(f"{block.where}: {time.monotonic() - started:.2f}s")
            except subprocess.TimeoutExpired:
                code = None
        if _group_alive(process.pid):
            self.groups.append(process.pid)  # background jobs (registries): stopped at close
        self.last_output = self.restore(log.read_text(errors="replace"))
        expected = int(block.option("exit", "0") or 0)
        if code != expected:
            return (f"{block.where}: exit {code} (expected {expected}); output:\n{self.last_output}")
        return None

    def write(self, name: str, text: str) -> None:
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.substitute(text))

    def close(self) -> list[str]:
        problems = [p for block in self.cleanup if (p := self.run(block))]
        for rootfs in self.directory.rglob("rootfs"):
            if rootfs.is_mount():
                umount_bundle(rootfs.parent)
        for group in self.groups:
            _stop_group(group)
        return problems


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --- checking one page ---------------------------------------------------------------------


def check_doc(doc: Doc, session_for: Callable[[], Session]) -> list[str]:
    """Exercise every block of ``doc`` in order; the problems found."""
    problems: list[str] = []
    for block in doc.blocks:
        problem = check_block(block, session_for)
        if problem:
            problems.append(problem)
            if block.kind == "run":
                break  # later blocks depend on this one
    return problems


def check_block(block: Block, session_for: Callable[[], Session]) -> str | None:
    kind = block.kind
    if kind in ("text", "skip", None):
        return None
    if kind == "run":
        session = session_for()
        if "cleanup" in block.words:
            session.cleanup.append(block)
            return None
        return session.run(block)
    if kind == "output":
        return _check_output(block, session_for().last_output)
    if kind == "api":
        return _check_api(block)
    problem = _check_content(block)
    name = block.option("file") or (block.words[0] if kind == "file" and block.words else None)
    if problem is None and name:
        session_for().write(name, block.text)
    return problem


def _check_output(block: Block, actual: str | None) -> str | None:
    if actual is None:
        return f"{block.where}: no run block before this output"
    if "json" in block.words:
        try:
            matches = json_matches(json.loads(block.text), json.loads(actual))
        except ValueError as err:
            return f"{block.where}: not JSON ({err}); output was:\n{actual}"
    else:
        matches = lines_match(block.text, actual)
    if not matches:
        return (f"{block.where}: the output shown differs from the real output:\n{actual}"
                f"--- shown in the docs:\n{block.text}")
    return None


def _check_content(block: Block) -> str | None:
    """Configuration examples go through what reads them on a guest (or the host tools)."""
    where = block.where
    try:
        if block.kind == "initdata":
            return _check_initdata(block)
        if block.kind == "cdh-toml":
            _no_unknown_keys(block, tomllib.loads(block.text), CdhConfig)
            parse_cdh_config(block.text, where)
        elif block.kind == "aa-toml":
            _no_unknown_keys(block, tomllib.loads(block.text), AaConfig)
            parse_aa_config(block.text, where)
        elif block.kind == "registries-conf":
            _no_unknown_keys(block, tomllib.loads(block.text), RegistriesConfig)
            parse_registries_config(block.text, where)
        elif block.kind == "auth-json":
            AuthFile.parse(block.text.encode(), where)
            _auth_entries_decode(json.loads(block.text))
        elif block.kind == "json":
            json.loads(block.text)
        elif block.kind == "toml":
            tomllib.loads(block.text)
        elif block.kind == "parse":
            _parse_with(block)
    except Exception as err:  # noqa: BLE001 - any failure is the finding
        return f"{where}: {type(err).__name__}: {err}"
    return None


def _auth_entries_decode(doc: dict) -> None:
    # The parser decodes an entry only when a pull looks it up: check every one here.
    for key, entry in doc.get("auths", {}).items():
        if "auth" in entry:
            user, colon, _ = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            if not (user and colon):
                raise AssertionError(f"auths[{key!r}].auth is not base64 of user:password")


def _no_unknown_keys(block: Block, raw: dict, model: type) -> None:
    unknown = unknown_keys(raw, model)
    if unknown:
        raise AssertionError(f"keys the guest would ignore (misspelt?): {unknown}")


def _check_initdata(block: Block) -> str | None:
    report = lint(block.text.encode(), block.where)
    found = sorted({f.code for f in report.findings if f.severity in (ERROR, WARNING)})
    expected = sorted(filter(None, (block.option("expect") or "").split(",")))
    if found != expected:
        listed = "\n".join(str(f) for f in report.findings)
        return f"{block.where}: expected findings {expected}, the linter found {found}:\n{listed}"
    return None


def _parse_with(block: Block) -> None:
    """``parse MODULE:FUNCTION`` (or ``MODULE:Class.method``) reads the block: called with
    ``(text, where)``, bytes when its first parameter is annotated bytes; any exception is the
    finding."""
    module_name, _, path = block.words[0].partition(":")
    parser: Any = importlib.import_module(module_name)
    for name in path.split("."):  # a function, or a classmethod such as Policy.parse
        parser = getattr(parser, name)
    first = next(iter(inspect.signature(parser).parameters.values()))
    parser(block.text.encode() if "bytes" in str(first.annotation) else block.text, block.where)


_DEF = re.compile(r"^(?P<indent>\s*)(?:async\s+)?(?P<what>def|class)\s+(?P<name>\w+)")


def _check_api(block: Block) -> str | None:
    """A signature block: every class and function (and method) it names exists, in one of
    the modules the marker lists."""
    try:
        modules = [importlib.import_module(name) for name in block.words]
    except ImportError as err:
        return f"{block.where}: {err}"
    missing = []
    owner: object | None = None
    for line in block.text.splitlines():
        found = _DEF.match(line)
        if not found:
            continue
        name = found.group("name")
        if found.group("indent"):
            if owner is None or not hasattr(owner, name):
                missing.append(name)
            continue
        defined = [getattr(m, name) for m in modules if hasattr(m, name)]
        if not defined:
            missing.append(name)
        owner = defined[0] if defined and found.group("what") == "class" else None
    return f"{block.where}: {' / '.join(block.words)} has no {', '.join(missing)}" if missing else None


# --- the tests that run the pages -------------------------------------------------------------


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("docs-layout") / "layout"
    write_layout(layout, demo_image(), tag="1.0")
    return layout


def _scratch(name: str) -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix=f"guestpull-docs-{name}-", dir=base)) / "work"


def _remove(directory: Path) -> None:
    if KEEP:
        print(f"kept {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


def _run_page(doc: Doc, layout: Path, base: Session | None) -> list[str]:
    """Exercise one page in a scratch directory of its own; the problems found."""
    sessions: list[Session] = []

    def session_for() -> Session:
        if not sessions:
            directory = _scratch(doc.path.stem)
            session = Session(directory, layout)
            if base is None:
                directory.mkdir(parents=True)
            else:
                session.ports = base.ports  # the same registries
                # The reader goes on in the quick start's directory, with all it left there.
                shutil.copytree(base.directory, directory, symlinks=True)
            sessions.append(session)
        return sessions[0]

    problems: list[str] = []
    try:
        problems += check_doc(doc, session_for)
    finally:
        for session in sessions:
            problems += session.close()
            _remove(session.directory.parent)
    return problems


_RUNNABLE = [doc for doc in DOCS if any(b.kind not in ("text", "skip") for b in doc.blocks)]


@pytest.fixture(scope="module")
def page_problems(image_layout: Path) -> Iterator[dict[Path, list[str]]]:
    """Every runnable page exercised: the quick start first (its registries keep running), then
    the other pages concurrently, each in its own directory (they wait on processes, mostly)."""
    directory = _scratch("quickstart")
    directory.mkdir(parents=True)
    quickstart = Session(directory, image_layout)
    results: dict[Path, list[str]] = {QUICKSTART: check_doc(read_doc(QUICKSTART), lambda: quickstart)}
    try:
        others = [doc for doc in _RUNNABLE if doc.path != QUICKSTART]
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {}
            for doc in others:
                after = doc.session == AFTER_QUICKSTART
                if after and results[QUICKSTART]:
                    results[doc.path] = ["the quick start failed, so this page cannot run:",
                                         *results[QUICKSTART]]
                    continue
                futures[doc.path] = pool.submit(_run_page, doc, image_layout, quickstart if after else None)
            for path, future in futures.items():
                results[path] = future.result()
        yield results
    finally:
        problems = quickstart.close()
        _remove(directory.parent)
        assert not problems, "\n".join(problems)


@pytest.mark.registry
@pytest.mark.parametrize("doc", _RUNNABLE, ids=_id)
def test_doc_examples(doc: Doc, page_problems: dict[Path, list[str]]) -> None:
    problems = page_problems[doc.path]
    assert not problems, "\n\n".join(problems)
