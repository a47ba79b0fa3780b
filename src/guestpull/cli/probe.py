"""``guestpull probe``: can the guest reach the registries its configuration names?"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from guestpull.cli.common import emit_json, handles_errors, json_option
from guestpull.errors import EXIT_CODES, Category


@click.command("probe")
@click.argument("registries", nargs=-1, metavar="[REGISTRY|IMAGE]...")
@click.option("--initdata", type=click.Path(dir_okay=False, path_type=Path), help="Init-Data TOML (its cdh.toml [image]).")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="A cdh.toml.")
@json_option
@handles_errors
def probe_command(registries: tuple[str, ...], initdata: Path | None, config: Path | None, as_json: bool) -> None:
    """Connect to every registry the configuration names, and to REGISTRY|IMAGE, as a pull would.

    Reports per registry and scheme: TLS verified (and by which root) or the TLS failure,
    plain HTTP where HTTPS was expected or the reverse, whether a login is required and the
    configured credentials work, or that a rule blocks it.  Sends only GET /v2/ (and a token
    request).  Exit 0 when every registry is usable, else the exit code of the first failure.
    """
    from guestpull.probe import probe, report_lines
    from guestpull.pull import Puller, load_cdh

    # The puller's own reading of the configuration (its [image] settings and the resolver
    # for resource URIs, KBC included), so the probe sees exactly what a pull would.  It is
    # never opened: no store, no session.
    puller = Puller(load_cdh(initdata, config))
    report = asyncio.run(probe(puller.image_config, puller.resolver, registries))
    if as_json:
        emit_json(report.to_dict())
    else:
        for line in report_lines(report):
            click.echo(line)
    error = report.first_error
    if not report.ok and error is not None:
        sys.exit(error.exit_code)
    if not report.results:
        click.echo("guestpull: nothing to probe: the configuration names no registry; "
                   "give one (host:port) or an image on the command line", err=True)
        sys.exit(EXIT_CODES[Category.USAGE])
