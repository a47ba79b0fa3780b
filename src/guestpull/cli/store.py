"""``guestpull images | rm | prune | umount | store check``: look after the image store and bundles."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import click

from guestpull.cli.common import emit_json, handles_errors, json_option
from guestpull.config import DEFAULT_WORK_DIR
from guestpull.errors import EXIT_CODES, NotFoundError, StoreError
from guestpull.image.bundle import umount_bundle
from guestpull.image.store import ImageRecord, Store, open_store
from guestpull.image.storecheck import check_store
from guestpull.reference import parse_reference

work_dir_option = click.option(
    "--work-dir", type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORK_DIR, show_default=True, help="The image store directory.",
)


def _open(work_dir: Path) -> Store:
    if not work_dir.is_dir():
        raise NotFoundError(f"no image store at {work_dir}", hint="pass --work-dir")
    return open_store(work_dir)


def _image_dict(image: ImageRecord) -> dict[str, object]:
    return {
        "reference": image.reference,
        "manifest_digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "layers": len(image.layers),
        "size": sum(layer.size for layer in image.layers),
        "pulled": datetime.datetime.fromtimestamp(image.created, datetime.UTC).isoformat(),
    }


@click.command("images")
@work_dir_option
@json_option
@handles_errors
def images_command(work_dir: Path, as_json: bool) -> None:
    """List the images in the store."""
    images = [_image_dict(i) for i in _open(work_dir).images()]
    if as_json:
        emit_json({"ok": True, "images": images})
        return
    for i in images:
        click.echo(f"{i['reference']}\t{i['manifest_digest']}\t{i['layers']} layers\t{i['size']} bytes")


@click.command("rm")
@click.argument("image")
@work_dir_option
@json_option
@handles_errors
def rm_command(image: str, work_dir: Path, as_json: bool) -> None:
    """Forget IMAGE; `guestpull prune` then frees what nothing else uses."""
    store = _open(work_dir)
    names = dict.fromkeys([image, str(parse_reference(image))])
    if not any([store.remove_image(name) for name in names]):
        raise NotFoundError(f"image {image} is not in the store at {work_dir}")
    if as_json:
        emit_json({"ok": True, "removed": image})
    else:
        click.echo(f"removed {image}")


@click.command("prune")
@work_dir_option
@json_option
@handles_errors
def prune_command(work_dir: Path, as_json: bool) -> None:
    """Remove blobs, unpacked layers and flat rootfs caches that no image or mounted bundle uses."""
    result = _open(work_dir).prune()
    if as_json:
        emit_json({"ok": True, "blobs_removed": result.blobs_removed,
                   "layers_removed": result.layers_removed, "flats_removed": result.flats_removed,
                   "bytes_freed": result.bytes_freed})
    else:
        click.echo(f"removed {result.blobs_removed} blobs and {result.layers_removed} layers,"
                   f" {result.flats_removed} flat rootfs caches; {result.bytes_freed} bytes freed")


@click.command("umount")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The store the bundle came from (so prune may free its layers).")
@json_option
@handles_errors
def umount_command(bundle: Path, work_dir: Path | None, as_json: bool) -> None:
    """Undo an overlay rootfs under BUNDLE (a copy rootfs needs nothing)."""
    if not bundle.is_dir():
        raise NotFoundError(f"no bundle directory at {bundle}")
    store = _open(work_dir) if work_dir else None
    mounted = umount_bundle(bundle, store)
    if as_json:
        emit_json({"ok": True, "unmounted": mounted})
    else:
        click.echo(f"unmounted {bundle / 'rootfs'}" if mounted else f"nothing mounted at {bundle / 'rootfs'}")


@click.group("store")
def store_group() -> None:
    """Look after the image store itself."""


@store_group.command("check")
@click.option("--repair", is_flag=True, help="Remove what is broken (a later pull fetches it again).")
@work_dir_option
@json_option
@handles_errors
def check_command(repair: bool, work_dir: Path, as_json: bool) -> None:
    """Verify blobs against their digests, layer rows against their directories, and find
    what interrupted pulls left; exit 14 (unpack) while problems remain."""
    report = check_store(work_dir, repair=repair)
    if as_json:
        emit_json({"ok": not report.unrepaired, **report.to_dict()})
    else:
        for problem in report.problems:
            state = "repaired" if problem.repaired else "found"
            click.echo(f"{state}: {problem.kind}: {problem.path}: {problem.detail}")
        click.echo(f"{report.blobs} blobs, {report.layers} layers, {report.images} images,"
                   f" {report.flats} flat rootfs caches fine;"
                   f" {len(report.problems)} problems, {len(report.unrepaired)} left")
    if report.unrepaired:
        sys.exit(EXIT_CODES[StoreError.category])
