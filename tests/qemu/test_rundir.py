"""Stale run directories and control sockets: what the next start removes, and what it never touches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vuser.qemu import rundir


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _rundir(base: Path, name: str, owner: str | None) -> Path:
    d = base / f"{rundir.PREFIX}{name}"
    d.mkdir()
    (d / "0-sample.sock").write_text("")
    if owner is not None:
        (d / rundir.OWNER).write_text(owner)
    return d


def test_create_stamps_this_process_as_owner(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = rundir.create()
    pid, start = (d / rundir.OWNER).read_text().split()
    assert int(pid) == os.getpid() and rundir.owner_alive(int(pid), start)
    assert rundir.sweep([tmp_path]) == [] and d.is_dir()  # a live run keeps its directory


def test_sweep_removes_a_dead_owners_directory_only(tmp_path):
    me = f"{os.getpid()} {rundir.process_start(os.getpid())}"
    live = _rundir(tmp_path, "live", me)
    dead = _rundir(tmp_path, "dead", f"{_dead_pid()} 12345")
    reused = _rundir(tmp_path, "reused", f"{os.getpid()} 1")  # our pid, another start time
    unstamped = _rundir(tmp_path, "unstamped", None)  # being created, or an older vuser's
    garbled = _rundir(tmp_path, "garbled", "not a pid")
    other = tmp_path / "not-vuser-run-x"
    other.mkdir()
    (other / rundir.OWNER).write_text(f"{_dead_pid()} 1")
    removed = rundir.sweep([tmp_path])
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert live.is_dir() and unstamped.is_dir() and garbled.is_dir() and other.is_dir()


def test_sweep_removes_a_dead_runs_control_socket_nobody_listens_on(tmp_path):
    stale = tmp_path / f"vuser-{_dead_pid()}.ctl"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # bound, never listened: what a SIGKILLed server leaves
    mine = tmp_path / f"vuser-{os.getpid()}.ctl"  # a live pid: kept even with nobody listening
    m = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    m.bind(str(mine))
    m.close()
    listening = tmp_path / f"vuser-{_dead_pid()}.ctl"  # a dead pid, yet someone listens
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(listening))
    lst.listen(1)
    plain = tmp_path / f"vuser-{_dead_pid()}.ctl.txt"
    plain.write_text("")
    try:
        assert rundir.sweep([tmp_path]) == [stale]
        assert mine.exists() and listening.exists() and plain.exists()
    finally:
        lst.close()


def test_sweep_of_a_missing_directory_is_nothing(tmp_path):
    assert rundir.sweep([tmp_path / "absent"]) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="prerequisite missing: /proc")
def test_a_zombie_owner_counts_as_gone(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = rundir.process_start(p.pid)
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # until it has exited, not reaped yet
    try:
        d = _rundir(tmp_path, "zombie", f"{p.pid} {start}")
        assert rundir.sweep([tmp_path]) == [d]
    finally:
        p.wait()
