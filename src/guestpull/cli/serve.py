"""``guestpull serve``: the CDH-compatible ttrpc service kata-agent calls (docs/service.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from guestpull.cli.common import handles_errors, imports_without_gc


@click.command("serve")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="The cdh.toml.")
@click.option("--initdata", type=click.Path(dir_okay=False, path_type=Path), help="Init-Data TOML (its cdh.toml).")
@click.option("--socket", "socket_address", help="Listen here instead of cdh.toml's socket (unix:///path).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Store directory (default: [image] work_dir).")
@handles_errors
def serve_command(config: Path | None, initdata: Path | None, socket_address: str | None, work_dir: Path | None) -> None:
    """Serve the Confidential Data Hub API (PullImage, GetResource) on its ttrpc socket.

    Without --config or --initdata, the CDH's defaults apply.

    Runs until SIGTERM or SIGINT; running pulls get 30 s to finish.
    """
    # A long-lived process: frozen imports are never walked by the collector again (the
    # pauses would otherwise land inside PullImage calls).
    with imports_without_gc():
        from guestpull.config import CdhConfig, KbcConfig
        from guestpull.image.fsops import raise_open_file_limit
        from guestpull.pull import load_cdh
        from guestpull.resources import OFFLINE_FS_KBC
        from guestpull.service.server import ServeOptions, configure_logging, serve

    # Neither file, or an Init-Data without a cdh.toml: the CDH's defaults (offline_fs KBC).
    cdh = load_cdh(initdata, config) or CdhConfig(kbc=KbcConfig(name=OFFLINE_FS_KBC))
    configure_logging(cdh.log.level)
    raise_open_file_limit()  # unpacking keeps a directory fd per directory it writes into
    asyncio.run(serve(cdh, ServeOptions(socket=socket_address, work_dir=work_dir)))
