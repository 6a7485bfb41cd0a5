"""The launcher with multiboot mini-guests: exit status, timeouts, server failures, teardown."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from vuser.errors import UserError
from vuser.qemu.launcher import Image, launch

from qemu_helpers import alive, group_members

pytestmark = pytest.mark.timeout(120)


def _capture():
    infos = []
    return infos, infos.append


def _assert_torn_down(info) -> None:
    assert not info.workdir.exists(), "working directory (sockets, QMP) left behind"
    assert not alive(info.qemu_pid), "QEMU left running"
    assert not group_members(info.qemu_pid), "QEMU's process group left running"
    if info.server_pid is not None:
        assert not alive(info.server_pid), "server left running"
        assert not group_members(info.server_pid), "server's process group left running"


@pytest.mark.parametrize("value", [0, 5, 0x7F])
def test_exit_status_is_the_value_written_to_debug_exit(qemu_bin, mini, value):
    infos, on_ready = _capture()
    r = launch(mini("hello\r\n", value), devices=[], timeout=30, qemu=qemu_bin, on_ready=on_ready)
    assert r.error is None
    assert r.exit_status == value
    assert r.qemu_returncode == (value << 1) | 1
    assert r.console == "hello\n"
    assert r.ok == (value == 0)
    _assert_torn_down(infos[0])


def test_console_echo_sees_the_console_as_it_arrives(qemu_bin, mini):
    seen = []
    r = launch(mini("one\r\ntwo\r\n", 0), devices=[], timeout=30, qemu=qemu_bin,
               console_echo=seen.append)
    assert "".join(seen).replace("\r\n", "\n") == r.console == "one\ntwo\n"


def test_hung_guest_is_killed_after_the_timeout(qemu_bin, mini):
    infos, on_ready = _capture()
    r = launch(mini("booted\r\nstuck here\r\n", None), devices=[], timeout=2, qemu=qemu_bin,
               on_ready=on_ready)
    assert r.timed_out
    assert r.exit_status is None
    assert r.error == "guest timed out after 2 s, guest running"
    assert r.console_tail(1) == "stuck here"
    assert 2 <= r.duration_s < 15
    _assert_torn_down(infos[0])


def test_qemu_failure_tears_down_the_server_and_its_children(qemu_bin, mini, stub_server):
    # The stub spawns a child in its process group, then drops every connection:
    # QEMU's vfio-user-pci fails to realize and QEMU exits with an error.
    server = stub_server("""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        while True:
            conn, _ = socks[0].accept()
            conn.close()
    """)
    infos, on_ready = _capture()
    r = launch(mini("never\r\n", 0), devices=["sample"], timeout=30, qemu=qemu_bin,
               server_command=server, on_ready=on_ready)
    assert r.exit_status is None
    if r.qemu_returncode == -signal.SIGABRT:
        # QEMU 11 sometimes aborts on the dropped connection instead (an assertion in
        # its error path); the launcher says so with QEMU's own line.
        assert r.error.startswith("QEMU was killed by signal 6: qemu-system-x86_64: "), r.error
    else:
        assert r.error.startswith("QEMU failed: ")
        assert "vfio-user" in r.error or "vuser0" in r.error
    assert not r.server_died
    assert "ready" in r.server_log
    _assert_torn_down(infos[0])


def test_server_death_is_reported(qemu_bin, mini, stub_server):
    # The stub holds QEMU's connection without answering, then dies.
    server = stub_server("""
        conn, _ = socks[0].accept()
        time.sleep(1)
        print("stub: giving up", flush=True)
        os._exit(3)
    """)
    infos, on_ready = _capture()
    r = launch(mini("never\r\n", 0), devices=["sample"], timeout=30, qemu=qemu_bin,
               server_command=server, on_ready=on_ready)
    assert r.server_died
    assert r.exit_status is None
    assert r.error == ("the vuser server died (exit status 3) while the guest ran "
                       "(QEMU does not reconnect to a restarted server): stub: giving up")
    _assert_torn_down(infos[0])


def test_server_that_dies_just_after_qemu_is_still_the_reported_cause(qemu_bin, mini,
                                                                     stub_server):
    # QEMU 11 aborts when a vfio-user server drops its socket, sometimes before the
    # server has exited: the server's error line must still be the one reported.
    # The stub aborts QEMU (its peer) itself, then exits half a second later.
    server = stub_server("""
        import signal, struct
        conn, _ = socks[0].accept()
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        os.kill(pid, signal.SIGABRT)
        while conn.recv(4096):
            pass
        time.sleep(0.5)
        print("stub: the device refused", flush=True)
        os._exit(3)
    """)
    infos, on_ready = _capture()
    r = launch(mini("never\r\n", 0), devices=["sample"], timeout=30, qemu=qemu_bin,
               server_command=server, on_ready=on_ready)
    assert r.qemu_returncode == -signal.SIGABRT
    assert r.server_died
    assert r.error == ("the vuser server died (exit status 3) while the guest ran "
                       "(QEMU does not reconnect to a restarted server): stub: the device refused")
    _assert_torn_down(infos[0])


def test_server_that_exits_before_ready_is_one_line_error(qemu_bin, mini):
    cmd = [sys.executable, "-c", "import sys; print('boom: no such device type'); sys.exit(3)"]
    with pytest.raises(UserError) as e:
        launch(mini("", 0), devices=["nosuch"], timeout=30, qemu=qemu_bin, server_command=cmd)
    assert str(e.value) == ("the vuser server exited with 3 before its sockets were ready: "
                            "boom: no such device type")


def test_server_that_never_gets_ready_is_stopped(qemu_bin, mini, tmp_path):
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c",
           f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
           "print('thinking', flush=True); time.sleep(300)"]
    with pytest.raises(UserError, match=r"did not create its sockets within 1 s: thinking"):
        launch(mini("", 0), devices=["sample"], timeout=30, qemu=qemu_bin, server_command=cmd,
               ready_timeout=1)
    assert not alive(int(pidfile.read_text()))


def test_bad_input_is_rejected_before_anything_starts(qemu_bin, mini, tmp_path):
    with pytest.raises(UserError, match="bad device 'a@b'"):
        launch(mini("", 0), devices=["a@b"], qemu=qemu_bin)
    with pytest.raises(UserError, match="guest kernel .* does not exist"):
        launch(Image(tmp_path / "nokernel"), devices=[], qemu=qemu_bin)
    with pytest.raises(UserError, match="accelerator must be one of tcg, kvm"):
        launch(mini("", 0), devices=[], qemu=qemu_bin, accel="hvf")


def test_console_input_reaches_the_guest_and_ctrl_bracket_detaches(qemu_bin, mini):
    # The mini-guest cannot read; this checks the plumbing: input is forwarded to
    # QEMU without blocking, and Ctrl-] ends the session at once.
    rfd, wfd = os.pipe()
    infos, on_ready = _capture()

    def typing():
        os.write(wfd, b"ls\r")
        os.write(wfd, b"\x1d")

    t = threading.Timer(0.5, typing)
    t.start()
    try:
        r = launch(mini("shell\r\n", None), devices=[], timeout=30, qemu=qemu_bin,
                   console_input=rfd, on_ready=on_ready)
    finally:
        t.join()
        os.close(rfd)
        os.close(wfd)
    assert r.error == "console session ended by the user (Ctrl-])"
    assert r.duration_s < 15
    _assert_torn_down(infos[0])


def test_real_server_death_while_the_guest_runs(qemu_bin, mini):
    infos, on_ready = _capture()
    running, killed = threading.Event(), threading.Event()

    seen = []

    def echo(text):  # the console arrives in chunks of any size
        seen.append(text)
        if "running" in "".join(seen):
            running.set()

    def killer():
        if running.wait(30):
            while not infos:
                threading.Event().wait(0.01)
            os.kill(infos[0].server_pid, signal.SIGKILL)
            killed.set()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = launch(mini("running\r\n", None), devices=["sample"], timeout=60, qemu=qemu_bin,
               on_ready=on_ready, console_echo=echo)
    t.join(5)
    assert killed.is_set(), f"the guest never ran: {r.error}; console {r.console!r}; server {r.server_log}"
    assert r.server_died and not r.timed_out
    assert r.error.startswith("the vuser server died (killed by SIGKILL) while the guest ran "
                              "(QEMU does not reconnect to a restarted server): ")
    assert r.duration_s < 30
    _assert_torn_down(infos[0])


def test_long_tmpdir_still_gives_short_socket_paths(qemu_bin, mini, stub_server, tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    server = stub_server("""
        time.sleep(300)
    """)
    infos, on_ready = _capture()
    r = launch(mini("", 0), devices=["sample"], timeout=3, qemu=qemu_bin, server_command=server,
               on_ready=on_ready)
    assert all(len(str(s)) < 108 for s in infos[0].sockets)
    assert r.error is not None  # the stub never answers QEMU
    _assert_torn_down(infos[0])


def test_a_start_removes_what_a_killed_run_left(qemu_bin, mini, tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from vuser.qemu import rundir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{rundir.PREFIX}stale"
    stale.mkdir()
    (stale / rundir.OWNER).write_text(f"{gone.pid} 1")
    infos, on_ready = _capture()
    r = launch(mini("hello\r\n", 0), devices=[], timeout=30, qemu=qemu_bin, on_ready=on_ready)
    assert r.exit_status == 0
    assert not stale.exists()
    assert r.notes == [f"removed what a killed run left: {stale}"]
    _assert_torn_down(infos[0])


def test_a_server_whose_launcher_is_gone_does_not_start(tmp_path):
    import subprocess

    from vuser.qemu.launcher import PARENT_ENV, SERVER_COMMAND

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    p = subprocess.run([*SERVER_COMMAND, "--device", f"sample@{tmp_path}/s.sock"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, PARENT_ENV: str(gone.pid)})
    assert p.returncode != 0
    assert f"the launcher (pid {gone.pid}) is gone" in p.stderr
    assert not (tmp_path / "s.sock").exists()


def test_qemu_is_named_in_ps(qemu_bin, mini):
    """The process shows as qemu-vuser, not as the dynamic loader it runs through."""
    names = []

    def on_ready(info):
        comm = Path(f"/proc/{info.qemu_pid}/comm")
        for _ in range(40):
            names.append(comm.read_text().strip())
            if names[-1] == "qemu-vuser":
                return
            threading.Event().wait(0.05)

    r = launch(mini("booted\r\n", None), devices=[], timeout=2, qemu=qemu_bin, on_ready=on_ready)
    assert r.timed_out
    assert names and names[-1] == "qemu-vuser", names
