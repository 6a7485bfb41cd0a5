"""A launch's private run directory, stamped with its owner, and the sweep of stale ones.

A launcher killed with SIGKILL cannot remove its run directory (``vuser-run-*``,
with the device and QMP sockets) nor the control socket ``vuser run`` names
after its pid (``vuser-<pid>.ctl``). The next start removes them, but only
what no live process owns:

- a run directory holds ``owner``: the pid and the start time of the process
  that made it (``/proc/<pid>/stat`` field 22, see proc(5)), so a reused pid
  does not keep a dead run's directory. A directory without a readable
  ``owner`` (being created, or from an older vuser) is left alone;
- a control socket is removed when its pid is gone and nobody listens on it;
- only entries of the current user are touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path

PREFIX = "vuser-run-"
OWNER = "owner"
MAX_LEN = 80  # leaves room for "/<n>-<type>.sock" within a UNIX socket path (108 bytes)
CONTROL_RE = re.compile(r"vuser-(\d+)\.ctl")


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (proc(5) stat field 22), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 is the 20th after comm


def owner_alive(pid: int, start: str) -> bool:
    """Whether the process that stamped ``pid start`` still runs (and is not a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if text[text.rfind(")") + 2:][:1] == "Z":
        return False
    return process_start(pid) == start


def create() -> Path:
    """A new run directory owned by this process (in the temp directory, or /tmp
    when that path is too long for the sockets in it)."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    if len(str(path)) > MAX_LEN:
        os.rmdir(path)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    (path / OWNER).write_text(f"{os.getpid()} {process_start(os.getpid())}\n")
    return path


def _owner(path: Path) -> tuple[int, str] | None:
    try:
        pid, start = (path / OWNER).read_text().split()
        return int(pid), start
    except (OSError, ValueError):
        return None


def _nobody_listens(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _pid_gone(pid: int) -> bool:
    """No process ``pid``, or a zombie (another user's live process is not gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = process_start(pid)
    return start is None or not owner_alive(pid, start)


def sweep(dirs: list[Path] | None = None) -> list[Path]:
    """Remove the stale run directories and control sockets in ``dirs`` (default:
    the temp directory and /tmp); return what was removed."""
    bases = dirs if dirs is not None else list(dict.fromkeys([Path(tempfile.gettempdir()),
                                                              Path("/tmp")]))
    uid = os.getuid()
    removed: list[Path] = []
    for base in bases:
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for path in entries:
            try:
                st = path.lstat()
            except OSError:
                continue
            if st.st_uid != uid:
                continue
            if path.name.startswith(PREFIX) and stat.S_ISDIR(st.st_mode):
                owner = _owner(path)
                if owner is not None and not owner_alive(*owner):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            elif (m := CONTROL_RE.fullmatch(path.name)) and stat.S_ISSOCK(st.st_mode):
                if _pid_gone(int(m.group(1))) and _nobody_listens(path):
                    try:
                        path.unlink()
                        removed.append(path)
                    except OSError:
                        pass
    return removed
