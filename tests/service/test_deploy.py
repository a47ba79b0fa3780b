"""What a guest image installs: the systemd unit (contrib/guestpull.service) and the
confidential-data-hub stand-in that kata-agent launches (contrib/confidential-data-hub)."""

from __future__ import annotations

import shutil
import socket as socketlib
import subprocess
import sys
from pathlib import Path

from support.cli import GUESTPULL
from support.config import cdh_toml, write_initdata
from support.serve import start_serve
from support.ttrpcpeer import call, raw_call

from guestpull.ttrpc import Code

CONTRIB = Path(__file__).parents[2] / "contrib"
GUESTPULL_BIN = Path(sys.executable).parent / "guestpull"


def minimal_cdh(socket: Path, work: Path) -> str:
    return cdh_toml(socket=f"unix://{socket}", image={"work_dir": str(work)})


def test_the_unit_file_verifies(shm_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian systemd) is needed to check the unit"
    unit = shm_path / "guestpull.service"
    # verify checks that ExecStart's program exists: point it at this checkout's.
    unit.write_text((CONTRIB / "guestpull.service").read_text().replace("/usr/local/bin/guestpull", str(GUESTPULL_BIN)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "guestpull.service" not in done.stderr, done.stderr


def test_the_unit_starts_what_the_cli_accepts() -> None:
    [exec_start] = [line for line in (CONTRIB / "guestpull.service").read_text().splitlines()
                    if line.startswith("ExecStart=")]
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[:2] == ["/usr/local/bin/guestpull", "serve"]
    done = subprocess.run([str(GUESTPULL_BIN), *argv[1:], "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_kata_agents_cdh_command_line_starts_guestpull_serve(shm_path: Path, ttrpc_peer: Path) -> None:
    socket = shm_path / "cdh.sock"
    notify = shm_path / "notify.sock"
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(30)
        with start_serve(shm_path / "serve", minimal_cdh(socket, shm_path / "work"), socket,
                         command=["sh", str(CONTRIB / "confidential-data-hub"), "-c"],
                         env={"GUESTPULL": str(GUESTPULL_BIN), "NOTIFY_SOCKET": str(notify)}) as svc:
            assert listener.recv(64) == b"READY=1"
            [answer] = call(ttrpc_peer, socket, [raw_call("api.Nothing", "Here")])
            assert (answer["code"], answer["message"]) == (Code.INVALID_ARGUMENT, "api.Nothing service does not exist")
            assert svc.terminate() == 0
            assert listener.recv(64) == b"STOPPING=1"
    assert not socket.exists()


def test_the_cdh_stand_in_refuses_arguments_it_does_not_know() -> None:
    done = subprocess.run(["sh", str(CONTRIB / "confidential-data-hub"), "--frobnicate"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2 and "unsupported arguments: --frobnicate" in done.stderr



def test_serve_reads_the_cdh_toml_of_an_init_data(shm_path: Path, ttrpc_peer: Path) -> None:
    socket = shm_path / "from-initdata.sock"
    initdata = write_initdata(shm_path / "initdata.toml", minimal_cdh(socket, shm_path / "work"))
    with start_serve(shm_path / "serve", initdata.read_text(), socket,
                     command=[*GUESTPULL, "serve", "--initdata"]) as svc:
        [answer] = call(ttrpc_peer, socket, [raw_call("api.ImagePullService", "Nope")])
        assert (answer["code"], answer["message"]) == (Code.UNIMPLEMENTED, "Nope method")
        assert svc.terminate() == 0


def test_serve_takes_one_configuration(shm_path: Path) -> None:
    config = shm_path / "cdh.toml"
    config.write_text(minimal_cdh(shm_path / "x.sock", shm_path / "work"))
    done = subprocess.run([*GUESTPULL, "serve", "--config", str(config), "--initdata", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "give --initdata or --config, not both" in done.stderr
