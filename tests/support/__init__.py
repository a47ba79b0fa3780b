"""Helpers shared by the end-to-end tests of ``guestpull pull --bundle`` and the store commands.

- :mod:`support.cli` — config files (cdh.toml / Init-Data) for a registry, running the CLI in
  process (CliRunner) or as a real subprocess (for kills and concurrent pulls), pushing images.
- :mod:`support.storecheck` — checking a work dir *as left on disk* (without ``open_store``,
  whose recovery would hide what a killed pull left behind).
- :mod:`support.fuzz` — random and mutated inputs for the property tests.
- :mod:`support.processes` — the resident memory of a subprocess tree (from /proc).

The tests import them as ``from support.cli import ...``: pytest puts ``tests/`` on
``sys.path`` for the top-level test modules (there is no ``tests/__init__.py``).
"""
