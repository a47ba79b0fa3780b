"""The README's first command runs this demo: it must keep working end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.registry
@pytest.mark.slow
def test_demo_pulls_over_https_and_http() -> None:
    done = subprocess.run([sys.executable, "-m", "guestpull_testkit.demo"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "both pulls verified the pushed manifest" in done.stdout
    assert done.stdout.rstrip().endswith("demo done.")
    summary = done.stdout.split("Summary", 1)[1]
    assert summary.count("pulled 127.0.0.1:") == 2 and ": True" in summary
