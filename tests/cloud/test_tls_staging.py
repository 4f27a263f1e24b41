"""The native transport's staged TLS copies do not outlive a killed server.

StagedCertificates copies the server's key into a temporary folder for the C++ transport.
A server killed with SIGKILL never runs close(), so the next server to start removes the
folders whose process is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgecut.cloud.native_server import STAGE_PREFIX, StagedCertificates, remove_abandoned_stages

KILLED_SERVER = """
import os, sys, time
from pathlib import Path
from edgecut.cloud.native_server import StagedCertificates
stage = StagedCertificates(Path(sys.argv[1]), mutual=False)
print(stage.directory, flush=True)
time.sleep(60)
"""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_folders_of_dead_processes_go_and_the_rest_stay(tmp_path: Path) -> None:
    dead = tmp_path / f"{STAGE_PREFIX}{_dead_pid()}-abc"
    live = tmp_path / f"{STAGE_PREFIX}{os.getpid()}-abc"
    unnamed = tmp_path / f"{STAGE_PREFIX}abc"       # an older server's name: no pid to check
    for folder in (dead, live, unnamed):
        folder.mkdir()
        (folder / "server.key").write_bytes(b"secret")
    assert remove_abandoned_stages(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and unnamed.exists()


def test_a_killed_servers_key_copy_is_removed_by_the_next_server(
        tmp_path: Path, fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    server_tls = fleet.directory
    child = subprocess.Popen([sys.executable, "-c", KILLED_SERVER, str(server_tls)],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(temp)})
    try:
        staged = Path(child.stdout.readline().strip()).parent
        assert (staged / "current" / "server.key").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert staged.exists()                          # nothing ran at the kill

    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    stage = StagedCertificates(server_tls, mutual=False)
    try:
        assert not staged.exists()
        assert stage.directory.parent.exists()
    finally:
        stage.close()
    assert not stage.directory.parent.exists()
