"""The service's own pieces: JSON log lines, log levels, claiming the socket path."""

from __future__ import annotations

import json
import logging
import socket as socketlib
from pathlib import Path

import pytest

from guestpull.errors import ConfigError, ExistsError
from guestpull.service.aa import RuntimeMeasurer
from guestpull.service.server import JsonLogFormatter, _level, claim_socket_path, log_call
from guestpull.ttrpc import CallContext, CallRecord, Code


def test_a_request_is_one_json_line_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    context = CallContext("api.ImagePullService", "PullImage", 1, 1_200_000_000_000, {})
    context.log_fields.update(image="r/app:v1", bundle="/run/kata-containers/c1")
    with caplog.at_level(logging.INFO, logger="guestpull.service.requests"):
        log_call(CallRecord(context, Code.INTERNAL, "[CDH] [ERROR]: Image Pull error: x", 1.23456))
    line = JsonLogFormatter().format(caplog.records[-1])
    assert "\n" not in line
    assert json.loads(line) | {"time": "t"} == {
        "time": "t", "level": "warning", "logger": "guestpull.service.requests", "message": "request",
        "method": "/api.ImagePullService/PullImage", "image": "r/app:v1", "bundle": "/run/kata-containers/c1",
        "duration_s": 1.235, "outcome": "INTERNAL", "error": "[CDH] [ERROR]: Image Pull error: x",
    }


@pytest.mark.parametrize(("name", "level"), [("info", logging.INFO), ("WARN", logging.WARNING),
                                             ("trace", logging.DEBUG), ("off", logging.CRITICAL + 10)])
def test_log_levels_are_the_cdh_ones(name: str, level: int) -> None:
    assert _level(name) == level


def test_an_unknown_log_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        _level("loud")


def test_claiming_the_socket_path(shm_path: Path) -> None:
    fresh = shm_path / "new" / "dir" / "cdh.sock"
    claim_socket_path(fresh)
    assert fresh.parent.is_dir() and not fresh.exists()
    stale = shm_path / "stale.sock"
    with socketlib.socket(socketlib.AF_UNIX) as sock:
        sock.bind(str(stale))
    claim_socket_path(stale)
    assert not stale.exists()
    live = shm_path / "live.sock"
    with socketlib.socket(socketlib.AF_UNIX) as sock:
        sock.bind(str(live))
        sock.listen()
        with pytest.raises(ExistsError, match="another server is listening"):
            claim_socket_path(live)
    assert live.exists()


def test_an_aa_socket_that_is_not_unix_stops_the_start() -> None:
    with pytest.raises(ConfigError, match="unsupported ttrpc socket address 'vsock://3:1'"):
        RuntimeMeasurer("vsock://3:1")
