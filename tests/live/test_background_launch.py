"""launch_in_background: start returns once QEMU runs, stop ends and cleans
up like a finished launch; start-up errors are raised by start."""

from __future__ import annotations

import os
import time

import pytest

from vuser.errors import UserError
from vuser.qemu.launcher import WORKDIR_MARK, launch_in_background


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_then_stop_leaves_nothing(qemu_bin):
    bg = launch_in_background(None, devices=["sample"], qemu=qemu_bin, timeout=60)
    info = bg.info
    assert bg.running and info.workdir.is_dir()
    assert _alive(info.qemu_pid) and _alive(info.server_pid)
    result = bg.stop()
    assert result.stopped and not result.timed_out and not result.server_died
    assert not info.workdir.exists()
    assert not _alive(info.qemu_pid) and not _alive(info.server_pid)
    assert bg.stop() is result  # idempotent


def test_workdir_mark_becomes_the_run_directory(qemu_bin):
    bg = launch_in_background(None, devices=[], qemu=qemu_bin, timeout=60,
                              qemu_extra=["-chardev",
                                          f"socket,id=c0,path={WORKDIR_MARK}/x.sock,server=on,wait=off"])
    try:
        deadline = time.monotonic() + 10
        while not (bg.info.workdir / "x.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (bg.info.workdir / "x.sock").exists()
    finally:
        bg.stop()


def test_a_guest_that_ends_by_itself_is_reported_by_stop(qemu_bin, tmp_path):
    from vuser.qemu import miniguest
    from vuser.qemu.launcher import Image

    img = Image(miniguest.write(tmp_path / "m.bin", "bye", 3))
    bg = launch_in_background(img, devices=[], qemu=qemu_bin, timeout=60)
    deadline = time.monotonic() + 30
    while bg.running and time.monotonic() < deadline:
        time.sleep(0.05)
    r = bg.stop()
    assert not r.stopped and r.exit_status == 3 and "bye" in r.console


def test_startup_errors_are_raised_by_start(qemu_bin):
    with pytest.raises(UserError, match="bad device"):
        launch_in_background(None, devices=["x@y"], qemu=qemu_bin)
    with pytest.raises(UserError, match="exited with"):
        launch_in_background(None, devices=["no-such-device-type"], qemu=qemu_bin)
    assert not _my_run_dirs()


def _my_run_dirs() -> list[str]:
    """Run directories this process owns (``vuser.qemu.rundir``)."""
    import tempfile

    out = []
    for base in {tempfile.gettempdir(), "/tmp"}:
        for d in os.listdir(base):
            owner = os.path.join(base, d, "owner")
            if d.startswith("vuser-run-") and os.path.exists(owner):
                if open(owner).read().split()[0] == str(os.getpid()):
                    out.append(os.path.join(base, d))
    return out
