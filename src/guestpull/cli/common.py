"""What every command shares: turning a GuestpullError into a message, JSON and exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from guestpull.errors import GuestpullError

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def handles_errors(func: F) -> F:
    """Run a command; a GuestpullError becomes one message on stderr (or JSON) and its exit code.

    The command must take ``as_json`` as a keyword argument (from :data:`json_option`) for the
    JSON form; commands without it always print the message.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GuestpullError as err:
            if kwargs.get("as_json"):
                emit_json({"ok": False, "error": err.to_dict()})
            else:
                click.echo(f"guestpull: error [{err.category}]: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]
