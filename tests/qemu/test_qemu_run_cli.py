"""``vuser run``, ``vuser doctor`` and ``vuser provision`` end to end (real QEMU, real guest image)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vuser.qemu import kvm

from qemu_helpers import run_vuser

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def image_ready(qemu_bin):
    """The guest image, built (from cached packages, normally) if the sources changed."""
    from vuser.errors import UserError
    from vuser.guest.image import build_image, status
    try:
        build_image(progress=False)
    except UserError as e:
        if not str(e).startswith("apt-get update"):
            raise  # a broken build is a failure, not a missing prerequisite
        pytest.skip(f"prerequisite missing: the Debian archive, to build the guest image: {e}")
    return status()


def test_run_one_guest_test_prints_summary_and_exits_with_its_status(image_ready):
    p = run_vuser("run", "-q", "--test", "environment", timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "guest test results" in p.stdout
    assert re.search(r"pass\s+environment", p.stdout)
    assert re.search(r"pass\s+running_as_root", p.stdout)
    assert "enumerate" not in p.stdout  # only the test asked for
    assert re.search(r"vuser: guest exited with status 0 in [\d.]+ s", p.stderr)


def test_run_unknown_test_is_one_line_error(image_ready):
    p = run_vuser("run", "--test", "no-such-test", timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("vuser: error: no guest test no-such-test; there are: ")


def _read_until(fd: int, pattern: bytes, timeout: float, buf: bytearray) -> bool:
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


def test_run_shell_is_an_interactive_guest_console(image_ready):
    pid, fd = pty.fork()
    if pid == 0:  # the child: vuser run --shell on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "vuser", "run", "--shell"])
    buf = bytearray()
    try:
        assert _read_until(fd, b"exit the shell to power off", 120, buf), buf[-2000:].decode(errors="replace")
        time.sleep(1.0)  # let the shell start and print its prompt
        os.write(fd, b"echo vuser-$((40 + 2))\r")
        assert _read_until(fd, b"vuser-42", 60, buf), buf[-2000:].decode(errors="replace")
        os.write(fd, b"exit\r")  # /init then powers off through isa-debug-exit 0
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            _read_until(fd, b"\0never", 0.5, buf)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
        assert status == 0, buf[-2000:].decode(errors="replace")
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_shell_needs_a_terminal():
    p = subprocess.run([sys.executable, "-m", "vuser", "run", "--shell"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == "vuser: error: --shell needs a terminal on standard input"


def test_doctor_reports_qemu_image_and_tests(image_ready, qemu_bin):
    p = run_vuser("doctor", "--no-kvm-probe", timeout=120)
    assert p.returncode == 0, p.stdout
    lines = p.stdout.splitlines()
    assert any(ln.startswith(f"ok  QEMU         {qemu_bin.version} ({qemu_bin.source}) ") for ln in lines)
    assert any(ln.startswith("??  KVM          /dev/kvm") for ln in lines)
    assert any(ln.startswith("ok  guest image  kernel ") for ln in lines)
    assert any(ln.startswith("ok  guest tests  ") and "enumerate" in ln for ln in lines)


def test_kvm_probe_without_dev_kvm(qemu_bin, monkeypatch, tmp_path):
    monkeypatch.setattr(kvm, "KVM_DEV", tmp_path / "kvm")
    st = kvm.probe_kvm(qemu_bin)
    assert not st.usable and st.reason == f"{tmp_path / 'kvm'} does not exist"


def test_provision_when_cached_is_quiet(image_ready):
    p = run_vuser("provision", "--quiet", timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""


def test_run_timeout_shows_the_last_console_lines(image_ready):
    p = run_vuser("run", "-q", "--timeout", "1.5", timeout=120)
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert err[-1] == "vuser: error: guest timed out after 1.5 s, guest running"
    assert "vuser: last console lines:" in err


def test_sigterm_to_run_leaves_nothing_running(image_ready, tmp_path):
    from qemu_helpers import alive

    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "vuser", "-v", "run", "--timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Wait for the guest's console (QEMU runs), then SIGTERM vuser run.
    first = p.stdout.readline()
    assert first, p.stderr.read()
    children = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    assert len(children) == 2  # the server and QEMU
    p.terminate()
    assert p.wait(30) == 128 + 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(c) for c in children):
        time.sleep(0.1)
    assert not any(alive(c) for c in children)
    assert list(tmp_path.glob("vuser-run-*")) == []
