"""Where one guestpull pull spends its time: the benchmark's profile of each guestpull row.

``python -m bench.phases REF --config C --work-dir S --bundle B --rootfs-mode M`` pulls as
``guestpull pull`` does (the same imports, ``load_cdh``, one :class:`~guestpull.pull.Puller`,
``asyncio.run``), stamps the library's progress events, and prints one JSON object: the
phases below in seconds since the process started, and the CPU of this process and of its
children (the unpack workers).  The benchmark runs it once per guestpull row after the timed
runs (it is not one of them) and turns it into the report's "where the time goes" table and
each goal's "limit" column (:func:`verdict`).

Phases (wall, in order; download and unpack overlap, so they are windows, not a sum):

* ``start-up``: interpreter start and imports, until the pull machinery is loaded;
* ``config``: reading cdh.toml into the settings;
* ``resolve``: from the pull call to the last manifest (token, TLS, manifest, index);
* ``download``: from the first layer download to the last blob stored (unpacking overlaps);
* ``unpack tail``: from the last blob stored to the bundle's rootfs done (unpack that did not
  overlap the downloads, overlay mount or copy finish, config.json);
* ``exit``: from the bundle done to the end of the process's work.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

PHASES = ("start-up", "config", "resolve", "download", "unpack tail", "exit")


def _process_age() -> float:
    """Seconds since this process started (/proc: clock-tick resolution, 10 ms)."""
    with open("/proc/self/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat, after "pid (comm)"
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.phases")
    parser.add_argument("image")
    parser.add_argument("--config", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rootfs-mode", default="auto")
    args = parser.parse_args(argv)

    begin = time.perf_counter() - _process_age()  # perf_counter value at process start
    marks: dict[str, float] = {}

    def mark(name: str, *, last: bool = False) -> None:
        if last or name not in marks:
            marks[name] = time.perf_counter() - begin

    # What `guestpull pull` imports once it runs a pull, as it imports them (guestpull.cli.pull).
    from pathlib import Path

    from guestpull.cli.common import imports_without_gc
    from guestpull.tls import preload_system_roots

    preload_system_roots()
    with imports_without_gc():
        import asyncio

        from guestpull.image.fsops import raise_open_file_limit
        from guestpull.pull import PullEvent, Puller, load_cdh

    mark("imported")
    cdh = load_cdh(None, Path(args.config))
    raise_open_file_limit()
    mark("configured")

    def on_event(event: PullEvent) -> None:
        if event.kind == "manifest":
            mark("resolved", last=True)
        elif event.kind in ("layer-done", "layer-cached"):
            mark("blobs-stored", last=True)
        elif event.kind == "bundle-done":
            mark("bundle-done")

    async def pull() -> None:
        async with Puller(cdh, work_dir=Path(args.work_dir)) as puller:
            await puller.pull(args.image, bundle=args.bundle, rootfs_mode=args.rootfs_mode,
                              events=on_event)
            mark("pulled")

    asyncio.run(pull())
    mark("end")
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "phases": phases(marks),
        "total": marks["end"],
        "cpu_self": me.ru_utime + me.ru_stime,
        "cpu_children": children.ru_utime + children.ru_stime,
    }))
    return 0


def phases(marks: Mapping[str, float]) -> dict[str, float]:
    """Phase durations from the marks (a phase whose events did not happen takes 0 s)."""
    resolved = marks.get("resolved", marks["configured"])
    stored = marks.get("blobs-stored", resolved)
    done = marks.get("bundle-done", stored)
    bounds = [0.0, marks["imported"], marks["configured"], resolved,
              max(stored, resolved), max(done, stored), marks["end"]]
    return {name: max(0.0, bounds[i + 1] - bounds[i]) for i, name in enumerate(PHASES)}


def verdict(profile: Mapping[str, Any]) -> str:
    """One line naming what bounds this pull, from its phases and CPU."""
    parts: dict[str, float] = profile["phases"]
    total = float(profile["total"]) or 1.0
    name, longest = max(parts.items(), key=lambda item: item[1])
    share = longest / total
    cpu = float(profile["cpu_self"]) + float(profile["cpu_children"])
    why = {
        "start-up": "interpreter start and imports",
        "config": "reading the configuration",
        "resolve": "token, TLS and manifest round trips",
        "download": "downloading, hashing and storing blobs (unpacking overlaps)",
        "unpack tail": "unpacking the last layers after the downloads end",
        "exit": "shutting down (workers, loop)",
    }[name]
    return (f"{name} {longest:.2f} s of {total:.2f} s ({share:.0%}): {why}; "
            f"CPU {cpu:.2f} s ({cpu / total:.1f} cores busy on average)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
