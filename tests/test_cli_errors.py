"""The CLI's error boundary: every command, given a path it cannot use, ends in one typed line.

Each command (and each ``initdata`` subcommand) is run with every path option pointing at a
missing path, a read-only file system, ``/proc`` and a file where a directory is expected.
Each run must end with an exit code of errors.EXIT_CODES (never ``internal``: a path problem
is the user's, and is mapped where it happens), one error line, and no traceback.  The table
below must name every command the CLI lists, so a new command cannot skip the walk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from support.cli import CliResult, cdh_toml, invoke, run
from guestpull.cli import main
from guestpull.errors import EXIT_CODES, Category
from guestpull_testkit.fakeregistry import FakeRegistry
from guestpull_testkit.images import File, ImageSpec, LayerSpec


#: (command, argv with ``{P}`` for the unusable path; ``{W}`` a usable store, ``{C}`` a usable
#: cdh.toml, ``{REF}`` an image the fake registry serves).  A store or bundle directory that is
#: missing is created, so those cases skip the "missing" kind (CREATED).
CREATED = "created"
CASES: list[tuple[str, list[str]]] = [
    ("pull", ["pull", "{REF}", "--config", "{C}", "--work-dir", "{P}", CREATED]),
    ("pull", ["pull", "{REF}", "--config", "{C}", "--work-dir", "{W}", "--bundle", "{P}",
              "--rootfs-mode", "copy", CREATED]),
    ("pull", ["pull", "{REF}", "--config", "{P}", "--work-dir", "{W}"]),
    ("pull", ["pull", "{REF}", "--initdata", "{P}", "--work-dir", "{W}"]),
    ("probe", ["probe", "--config", "{P}"]),
    ("probe", ["probe", "--initdata", "{P}"]),
    ("images", ["images", "--work-dir", "{P}"]),
    ("rm", ["rm", "{REF}", "--work-dir", "{P}"]),
    ("prune", ["prune", "--work-dir", "{P}"]),
    ("umount", ["umount", "{P}"]),
    ("umount", ["umount", "{W}", "--work-dir", "{P}"]),
    # serve runs until stopped: its cases run as a process with a timeout (see run_case).
    ("serve", ["serve", "--work-dir", "{P}", "--socket", "unix://{SOCK}", CREATED]),
    ("serve", ["serve", "--work-dir", "{W}", "--socket", "unix://{P}", CREATED]),
    ("serve", ["serve", "--config", "{P}", "--work-dir", "{W}", "--socket", "unix://{SOCK}"]),
    ("serve", ["serve", "--initdata", "{P}", "--work-dir", "{W}", "--socket", "unix://{SOCK}"]),
    ("store check", ["store", "check", "--work-dir", "{P}"]),
    ("store check", ["store", "check", "--repair", "--work-dir", "{P}"]),
    ("initdata digest", ["initdata", "digest", "{P}"]),
    ("initdata annotation", ["initdata", "annotation", "{P}"]),
    ("initdata decode", ["initdata", "decode", "{INITDATA_B64}", "-o", "{P}"]),
    ("initdata build", ["initdata", "build", "-o", "{P}"]),
    ("initdata build", ["initdata", "build", "--registry-ca", "{P}"]),
    ("initdata build", ["initdata", "build", "--registry-config", "{P}"]),
    ("initdata build", ["initdata", "build", "--agent-policy", "{P}"]),
    ("initdata check", ["initdata", "check", "{P}"]),
    ("initdata show", ["initdata", "show", "{P}"]),
    ("kbs get", ["kbs", "get", "kbs:///default/key/k", "--config", "{P}"]),
    ("kbs get", ["kbs", "get", "kbs:///default/key/k", "--initdata", "{P}"]),
    ("kbs get", ["kbs", "get", "kbs:///default/key/k", "--config", "{C}", "-o", "{P}"]),
]

KINDS = ["missing", "read-only", "proc", "file-as-dir"]


def cli_commands() -> dict[str, click.Command]:
    """Every command ``guestpull --help`` lists, groups (``initdata``) by their subcommands."""
    ctx = click.Context(main)
    commands: dict[str, click.Command] = {}
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            commands.update({f"{name} {sub}": command.commands[sub] for sub in command.list_commands(ctx)})
        else:
            commands[name] = command
    return commands


def test_every_command_is_walked() -> None:
    assert set(cli_commands()) == {name for name, _ in CASES}
    assert {"pull", "images", "initdata build"} <= set(cli_commands())  # the listing is not empty


def test_every_command_is_inside_the_boundary() -> None:
    unguarded = [name for name, command in cli_commands().items()
                 if not getattr(command.callback, "handles_errors", False)]
    assert unguarded == []


@pytest.fixture(scope="module")
def places() -> Iterator[dict[str, str]]:
    """The unusable paths, and the usable things the other arguments need."""
    if os.geteuid() != 0:
        pytest.skip("a read-only tmpfs mount needs root")
    base = Path(tempfile.mkdtemp(prefix="guestpull-cli-errors-", dir="/dev/shm"))
    (base / "afile").write_text("not a directory\n")
    readonly = base / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    fake = FakeRegistry()
    fake.add_image("team/app", "v1", ImageSpec([LayerSpec([File("a.txt", b"a")])]).build())
    cdh = base / "cdh.toml"
    try:
        with fake.in_thread():
            cdh.write_text(cdh_toml(insecure=[fake.host]))
            (base / "store").mkdir()
            yield {
                "missing": str(base / "missing" / "deeper" / "x"),
                "read-only": str(readonly / "x"),
                "proc": "/proc/guestpull-no-such/x",
                "file-as-dir": str(base / "afile" / "x"),
                "{W}": str(base / "store"),
                "{SOCK}": str(base / "cdh.sock"),
                "{C}": str(cdh),
                "{REF}": f"{fake.host}/team/app:v1",
                # A valid annotation value (gzip+base64 of a minimal document).
                "{INITDATA_B64}": _annotation_value(),
            }
    finally:
        subprocess.run(["umount", str(readonly)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _annotation_value() -> str:
    import base64
    import gzip

    doc = b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'
    return base64.b64encode(gzip.compress(doc)).decode()


def _argv(template: list[str], places: dict[str, str], kind: str) -> list[str]:
    out = []
    for arg in (a for a in template if a != CREATED):
        for key, value in places.items():
            if key.startswith("{"):
                arg = arg.replace(key, value)
        out.append(arg.replace("{P}", places[kind]))
    return out


def assert_typed_failure(result: CliResult, *, allow_internal: bool = False) -> None:
    """A failure the user can read: a known exit code, one error line, no traceback."""
    assert result.exit_code != 0, result
    assert result.exit_code in EXIT_CODES.values(), result
    if not allow_internal:
        assert result.exit_code != EXIT_CODES[Category.INTERNAL], result
    assert "Traceback" not in result.stderr + result.stdout, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("guestpull: error [", "Error: "))]
    assert len(errors) == 1, result
    if errors[0].startswith("Error: "):  # click's own usage error: exit 2
        assert result.exit_code == EXIT_CODES[Category.USAGE], result
    else:  # ours: that one line is all
        assert lines == errors, result
        category = errors[0].removeprefix("guestpull: error [").split("]", 1)[0]
        assert EXIT_CODES[Category(category)] == result.exit_code, result


def run_case(argv: list[str]) -> CliResult:
    """In process, except ``serve``: a server that wrongly started must not hang the suite."""
    return run(*argv, timeout=60) if argv[0] == "serve" else invoke(*argv)


WALK = [
    pytest.param(template, kind, id=f"{'-'.join(template[:2])}-{i}-{kind}")
    for i, (_, template) in enumerate(CASES)
    for kind in KINDS
    if not (kind == "missing" and CREATED in template)
]


@pytest.mark.parametrize(("template", "kind"), WALK)
def test_unusable_path_is_a_typed_error(places: dict[str, str], template: list[str], kind: str) -> None:
    result = run_case(_argv(template, places, kind))
    assert_typed_failure(result)
    # The message names the path the user gave (or click's option name for it).
    assert places[kind] in result.stderr or "Invalid value" in result.stderr, result


def test_json_form_of_a_path_error(places: dict[str, str]) -> None:
    result = invoke("pull", places["{REF}"], "--config", places["{C}"], "--work-dir",
                    places["proc"], "--json")
    assert result.exit_code == EXIT_CODES[Category.NOT_FOUND], result
    error = result.json["error"]
    assert error["category"] == "not-found"
    assert error["location"]["file"] == places["proc"]


# --- the two tracebacks, as a user runs them (a real process) -----------------------


def test_pull_work_dir_in_proc(places: dict[str, str]) -> None:
    result = run("pull", places["{REF}"], "--config", places["{C}"], "--work-dir", "/proc/x")
    assert_typed_failure(result)
    assert result.stderr.strip() == (
        "guestpull: error [not-found]: /proc/x: cannot open the image store: No such file or directory"
    )


def test_initdata_build_output_in_proc() -> None:
    result = run("initdata", "build", "-o", "/proc/x/y")
    assert_typed_failure(result)
    assert result.stderr.startswith("guestpull: error [not-found]: /proc/x/y: cannot write the output file")


# --- anything unexpected ---------------------------------------------------------------------


@pytest.fixture
def broken_store(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make opening a store fail the way a bug would."""
    import guestpull.cli.store as store_cli

    def boom(work_dir: Path) -> None:
        raise RuntimeError("no such column\nsecond line")

    monkeypatch.setattr(store_cli, "_open", boom)
    return lambda: None


def test_unexpected_exception_is_one_internal_line(broken_store: Callable[[], None], shm_path: Path) -> None:
    result = invoke("images", "--work-dir", str(shm_path))
    assert_typed_failure(result, allow_internal=True)
    assert result.exit_code == 70
    assert result.stderr.splitlines() == [(
        "guestpull: error [internal]: unexpected RuntimeError: no such column second line"
        " (hint: rerun with guestpull --debug for the traceback)"
    )]


def test_debug_shows_the_traceback(broken_store: Callable[[], None], shm_path: Path) -> None:
    result = invoke("--debug", "images", "--work-dir", str(shm_path))
    assert result.exit_code == 70, result
    assert result.stderr.startswith("Traceback (most recent call last):"), result
    assert "RuntimeError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("guestpull: error [internal]: unexpected RuntimeError")


def test_unexpected_exception_in_json(broken_store: Callable[[], None], shm_path: Path) -> None:
    result = invoke("images", "--work-dir", str(shm_path), "--json")
    assert result.exit_code == 70, result
    assert result.json["error"]["category"] == "internal"
    assert "Traceback" not in result.stderr
