"""The ``guestpull`` command: thin wrappers over the library, one module per command group."""

from __future__ import annotations

import click

from guestpull import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="guestpull")
def main() -> None:
    """Pull container images inside a confidential guest, as Init-Data configures it."""


def _register() -> None:
    # Each command group lives in its own module and registers itself on ``main``.
    from guestpull.cli import initdata  # noqa: F401
    from guestpull.cli import pull  # noqa: F401
    from guestpull.cli import store  # noqa: F401


_register()
