"""``guestpull pull IMAGE``: resolve, authenticate, fetch and verify an image into the store."""

from __future__ import annotations

from pathlib import Path

import click

from guestpull.cli import main
from guestpull.cli.common import emit_json, handles_errors, json_option
from guestpull.config import ImageConfig, load_cdh_config
from guestpull.errors import UsageError
from guestpull.pull import PullEvent, pull_image_sync


def image_config_from(initdata: Path | None, config: Path | None) -> ImageConfig:
    """The ``[image]`` config from an Init-Data file or a cdh.toml (defaults if neither)."""
    if initdata and config:
        raise UsageError("give --initdata or --config, not both")
    if initdata:
        from guestpull import initdata as initdata_module

        cdh = initdata_module.load(initdata).cdh_config()
        return cdh.image_config() if cdh is not None else ImageConfig()
    if config:
        return load_cdh_config(config).image_config()
    return ImageConfig()


def _progress(event: PullEvent) -> None:
    if event.kind == "candidate":
        click.echo(f"trying {event.reference} ({event.detail['scheme']}, {event.detail['kind']})", err=True)
    elif event.kind == "attempt-failed":
        error = event.detail["error"]
        click.echo(f"  failed: [{error['category']}] {error['message']}", err=True)
    elif event.kind == "layer-done":
        click.echo(f"  layer {event.detail['digest']} ({event.detail['size']} bytes)", err=True)


@main.command("pull")
@click.argument("image")
@click.option("--initdata", type=click.Path(dir_okay=False, path_type=Path), help="Init-Data TOML (its cdh.toml [image]).")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="A cdh.toml.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Store directory (default: [image] work_dir).")
@click.option("--platform", help="os/architecture[/variant], e.g. linux/arm64/v8 (default: this machine).")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@json_option
@handles_errors
def pull_command(
    image: str,
    initdata: Path | None,
    config: Path | None,
    work_dir: Path | None,
    platform: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Pull IMAGE into the content store and print its manifest digest."""
    image_config = image_config_from(initdata, config)
    events = None if (quiet or as_json) else _progress
    result = pull_image_sync(image, image_config, work_dir=work_dir, platform=platform, events=events)
    if as_json:
        emit_json({"ok": True, "result": result.to_dict()})
    else:
        click.echo(result.manifest_digest)
