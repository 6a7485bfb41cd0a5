"""Helpers for the QEMU tests (a plain module: ``tests/qemu`` is no package, so that it
cannot shadow the ``qemu`` namespace package of ``qemu.qmp``)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def run_vuser(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m vuser ARGS`` with the given environment additions."""
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def read_until(fd: int, pattern: bytes, timeout: float, buf: bytearray) -> bool:
    """Read ``fd`` into ``buf`` until ``pattern`` shows up (True) or ``timeout`` or EOF."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern in buf:
            return True
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return pattern in buf
            if not data:
                return pattern in buf
            buf += data
    return pattern in buf


def exit_shell(fd: int, pid: int, buf: bytearray, timeout: float = 60) -> None:
    """Leave a ``vuser run --shell`` guest on the pty ``fd`` and reap ``pid``; the run
    must end with status 0 (/init powers off through isa-debug-exit 0). Closes ``fd``
    and kills ``pid`` whatever happens."""
    try:
        os.write(fd, b"exit\r")
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline and status is None:
            read_until(fd, b"\0never", 0.5, buf)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
        assert status == 0, buf[-2000:].decode(errors="replace")
    finally:
        kill_shell(fd, pid)


def kill_shell(fd: int, pid: int) -> None:
    """Stop a ``vuser run --shell`` child at once and close its pty."""
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    os.close(fd)
