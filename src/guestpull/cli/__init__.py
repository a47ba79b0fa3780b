"""The ``guestpull`` command: thin wrappers over the library, one module per command group.

Command modules are imported only when their command runs: ``guestpull pull`` on a guest
should not pay for the Init-Data linter's imports, nor the other way round.
"""

from __future__ import annotations

import importlib

import click

from guestpull import __version__

#: command name → "module:attribute" of its click command.
COMMANDS: dict[str, str] = {
    "initdata": "guestpull.cli.initdata:initdata_group",
    "kbs": "guestpull.cli.kbs:kbs_group",
    "probe": "guestpull.cli.probe:probe_command",
    "pull": "guestpull.cli.pull:pull_command",
    "serve": "guestpull.cli.serve:serve_command",
    "images": "guestpull.cli.store:images_command",
    "rm": "guestpull.cli.store:rm_command",
    "prune": "guestpull.cli.store:prune_command",
    "umount": "guestpull.cli.store:umount_command",
    "store": "guestpull.cli.store:store_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="guestpull")
@click.option("--debug", is_flag=True, help="On an unexpected error, also print its traceback.")
def main(debug: bool) -> None:
    """Pull container images inside a confidential guest, as Init-Data configures it."""
