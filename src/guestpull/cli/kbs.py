"""``guestpull kbs get URI``: fetch one KBS resource the way a pull would, for operators.

It tests a KBS set-up from inside a guest image: the ``[kbc]`` and ``[aa]`` of a cdh.toml (or
an Init-Data's), the attestation agent's token, the KBS's answer and the JWE.  The resource
goes to stdout or, with ``-o``, to a new file of mode 0600; nothing of it, nor of the token,
is ever printed to stderr or in ``--json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from guestpull.cli.common import emit_json, handles_errors, json_option
from guestpull.errors import ConfigError, ExistsError, NotFoundError, UsageError
from guestpull.resources import ResourceResolver, is_kbs_uri, run_sync


@click.group("kbs")
def kbs_group() -> None:
    """Resources from the KBS (the cdh.toml [kbc]), as a pull fetches them."""


@kbs_group.command("get")
@click.argument("uri")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="A cdh.toml.")
@click.option("--initdata", type=click.Path(dir_okay=False, path_type=Path), help="Init-Data TOML (its cdh.toml).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the resource to this new file (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
@json_option
@handles_errors
def get_command(uri: str, config: Path | None, initdata: Path | None, output: Path | None,
                force: bool, as_json: bool) -> None:
    """Fetch URI (kbs:///repo/type/tag) through the configured KBC and write its bytes."""
    from guestpull.pull import load_cdh

    if not is_kbs_uri(uri):
        raise UsageError(f"{uri!r} is not a KBS resource URI: expected kbs:///<repo>/<type>/<tag>")
    if as_json and output is None:
        raise UsageError("--json needs -o FILE: the resource itself never goes into JSON")
    cdh = load_cdh(initdata, config)
    if cdh is None:
        raise UsageError("give --config cdh.toml or --initdata FILE (with a cdh.toml): they name the KBC")
    if output is not None:
        check_output(output, force=force)  # before the secret is fetched
    data = run_sync(ResourceResolver.for_cdh(cdh).get(uri))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_private(output, data, force=force)
    if as_json:
        emit_json({"ok": True, "result": {"uri": uri, "output": str(output), "bytes": len(data)}})
    else:
        click.echo(f"wrote {len(data)} bytes of {uri} to {output} (mode 0600)", err=True)


def check_output(path: Path, *, force: bool) -> None:
    """Refuse an output file that cannot be written, or exists without ``force``."""
    if not force and (path.exists() or path.is_symlink()):
        raise ExistsError(f"{path} exists", hint="pass --force to replace it")
    directory = path.parent
    if not directory.exists():
        raise NotFoundError(f"{path}: no directory {directory}")
    if not directory.is_dir():
        raise ConfigError(f"{path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot write into {directory} (read-only or not permitted)")


def write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte; never follow a symlink.

    The bytes go to a new file in the same directory, renamed over ``path`` once complete, so
    a reader never sees a partial secret and an existing file is replaced only with ``force``.
    """
    check_output(path, force=force)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as err:
        Path(temp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {err.strerror}") from None
