"""What every command shares: turning any error into one line (or JSON) and an exit code."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from guestpull.errors import GuestpullError, InternalError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


_imports_frozen = False


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import a command's machinery with the cyclic GC paused, then freeze what was imported.

    Importing the pull modules (and pydantic, when a config needs it) leaves ~10^5 long-lived objects that every
    full collection during the pull would walk again (~50 ms of CPU on a warm overlay pull,
    issue 15).  ``gc.freeze`` moves them out of the collector's sight for good; once per
    process, so that a process running many commands (the tests) does not also freeze the
    garbage of the ones before.
    """
    global _imports_frozen
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not _imports_frozen:
            _imports_frozen = True
            gc.freeze()
        if was_enabled:
            gc.enable()


def debug_enabled() -> bool:
    """Whether the global ``guestpull --debug`` flag was given."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def handles_errors(func: F) -> F:
    """Run a command; every error ends as one message on stderr (or JSON) and its exit code.

    A GuestpullError keeps its category.  Anything else is a bug: it becomes ``internal``
    (exit 70) with one line naming the exception, and the traceback only under ``--debug``.
    click's own usage errors pass through (click prints them, exit 2).
    The command must take ``as_json`` as a keyword argument (from :data:`json_option`) for the
    JSON form; commands without it always print the message.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GuestpullError as err:
            _fail(err, as_json=bool(kwargs.get("as_json")))
        except Exception as exc:  # noqa: BLE001  # the boundary: nothing leaves as a traceback
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            message = f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"
            _fail(InternalError(message, hint="rerun with guestpull --debug for the traceback"),
                  as_json=bool(kwargs.get("as_json")))

    wrapper.handles_errors = True  # type: ignore[attr-defined]  # tests check every command has it
    return wrapper  # type: ignore[return-value]


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _fail(err: GuestpullError, *, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": False, "error": err.to_dict()})
    else:
        click.echo(f"guestpull: error [{err.category}]: {_one_line(str(err))}", err=True)
    sys.exit(err.exit_code)
