"""The terminal progress says which scope of the signature policy accepted the image."""

from __future__ import annotations

from guestpull.cli.pull import TerminalProgress
from guestpull.pull import PullEvent


def test_policy_event_is_shown() -> None:
    progress = TerminalProgress()
    with progress.console.capture() as captured:
        progress(PullEvent("policy", "reg.local/app:v1", {"scope": "reg.local/app", "accepted": True}))
    assert "signature policy: accepted (scope 'reg.local/app')" in captured.get()
