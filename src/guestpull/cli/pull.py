"""``guestpull pull IMAGE``: resolve, fetch and verify an image into the store, then a bundle."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from guestpull.cli.common import emit_json, handles_errors, imports_without_gc, json_option

if TYPE_CHECKING:
    from guestpull.pull import PullEvent, PullResult


class TerminalProgress:
    """Per-layer download bars and the bundle step, drawn on stderr (terminals only)."""

    def __init__(self) -> None:
        # rich only when drawing on a terminal: a guest pulling non-interactively skips it.
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.console = Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=self.console, transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> TerminalProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def __call__(self, event: PullEvent) -> None:
        detail = event.detail
        if event.kind == "candidate":
            self.console.print(f"trying {event.reference} ({detail['scheme']}, {detail['kind']})")
        elif event.kind == "attempt-failed":
            self.console.print(f"  [red]failed[/red]: [{detail['error']['category']}] {detail['error']['message']}",
                               markup=True, highlight=False)
        elif event.kind in ("layer-start", "layer-cached"):
            done = detail["size"] if event.kind == "layer-cached" else 0
            label = _short(detail["digest"]) + (" (stored)" if event.kind == "layer-cached" else "")
            self.tasks[detail["digest"]] = self.bars.add_task(label, total=detail["size"], completed=done)
        elif event.kind == "layer-progress" and detail["digest"] in self.tasks:
            self.bars.update(self.tasks[detail["digest"]], completed=detail["bytes"])
        elif event.kind == "policy":
            self.console.print(f"signature policy: accepted (scope {detail['scope']!r})", highlight=False)
        elif event.kind == "bundle-start":
            self.console.print(f"unpacking into {detail['bundle']}")


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


@click.command("pull")
@click.argument("image")
@click.option("--initdata", type=click.Path(dir_okay=False, path_type=Path), help="Init-Data TOML (its cdh.toml [image]).")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="A cdh.toml.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Store directory (default: [image] work_dir).")
@click.option("--platform", help="os/architecture[/variant], e.g. linux/arm64/v8 (default: this machine).")
@click.option("--bundle", type=click.Path(file_okay=False, path_type=Path),
              help="Also write an OCI bundle here: rootfs/ and config.json.")
@click.option("--rootfs-mode", type=click.Choice(["auto", "overlay", "copy"]), default="auto", show_default=True,
              help="overlay mounts the stored layers (needs root); copy flattens them into a directory.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@json_option
@handles_errors
def pull_command(
    image: str,
    initdata: Path | None,
    config: Path | None,
    work_dir: Path | None,
    platform: str | None,
    bundle: Path | None,
    rootfs_mode: str,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Pull IMAGE into the content store and print its manifest digest.

    With --bundle, also unpack it into an OCI bundle (rootfs + config.json).
    """
    # The pull machinery (HTTP client, config models, the store) only when a pull runs:
    # ``guestpull pull --help`` stays a click-only start-up (issue 15).  The system CA bundle
    # loads in a thread meanwhile (OpenSSL releases the GIL): ~20 ms off an HTTPS pull.
    from guestpull.tls import preload_system_roots

    preload_system_roots()
    with imports_without_gc():
        import asyncio

        from guestpull.image.fsops import raise_open_file_limit
        from guestpull.pull import Puller, load_cdh

    cdh = load_cdh(initdata, config)

    raise_open_file_limit()  # unpacking keeps a directory fd per directory it writes into

    async def pull_once(events: Callable[[PullEvent], None] | None) -> PullResult:
        async with Puller(cdh, work_dir=work_dir) as puller:
            return await puller.pull(image, bundle=bundle, rootfs_mode=rootfs_mode,  # type: ignore[arg-type]
                                     force=force, platform=platform, events=events)

    if quiet or as_json or not sys.stderr.isatty():
        result = asyncio.run(pull_once(None))
    else:
        with TerminalProgress() as progress:
            result = asyncio.run(pull_once(progress))
    if as_json:
        emit_json({"ok": True, "result": result.to_dict()})
        return
    click.echo(result.manifest_digest)
    if result.bundle and not quiet:
        for warning in result.bundle.warnings:
            click.echo(f"guestpull: warning: {warning}", err=True)
        click.echo(f"bundle {result.bundle.rootfs.parent} (rootfs mode: {result.bundle.mode_used})", err=True)
