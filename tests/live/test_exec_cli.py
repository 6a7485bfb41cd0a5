"""``vuser run --exec`` and ``--share`` end to end (real QEMU, real guest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# the pty helpers of the --shell tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qemu"))

pytestmark = pytest.mark.timeout(600)


def vuser(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def test_exec_shows_output_and_exits_with_the_command_status(image):
    p = vuser("run", "--exec", "echo out; echo err >&2; exit 5")
    assert p.returncode == 5, p.stderr
    assert p.stdout == "out\n"  # the command's stdout only; vuser's own lines go to stderr
    lines = p.stderr.splitlines()
    assert "err" in lines
    assert lines[-1] == "vuser: guest command failed: exit status 5: echo out; echo err >&2; exit 5"


def test_exec_timeout_kills_the_command_and_exits_128_plus_signal(image):
    p = vuser("run", "--timeout", "1", "--exec", "sleep 100")
    assert p.returncode == 128 + 9, p.stderr
    assert p.stderr.splitlines()[-1] == ("vuser: guest command failed: killed by SIGKILL "
                                         "(timed out): sleep 100")


@pytest.mark.parametrize("extra, what", [
    (["--test", "environment"], "--exec and --test do not go together"),
    (["--all"], "--exec and --all do not go together"),
])
def test_exec_refuses_other_modes(extra, what):
    p = vuser("run", "--exec", "true", *extra, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == f"vuser: error: {what}"


def test_share_with_exec_is_visible_at_the_same_path(image, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_text("shared\n")
    p = vuser("run", "--share", str(tmp_path), "--exec",
              f"cat {tmp_path}/sub/f.txt && cat /proc/sys/kernel/osrelease")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("shared\n") and p.stdout.strip().endswith("-amd64")
    assert "failed" not in p.stderr
    assert f"vuser: --share {tmp_path}: copied into the initramfs at {tmp_path}" in p.stderr


def test_share_with_test_is_mounted_before_the_tests(image, tmp_path):
    (tmp_path / "f").write_text("x")
    p = vuser("run", "--share", str(tmp_path), "--test", "environment")
    assert p.returncode == 0, p.stderr
    assert f"# share {tmp_path}: a copy" in p.stdout  # /init's note in the KTAP stream
    assert "pass       environment" in p.stdout


def test_share_of_a_missing_directory_is_one_line(image, tmp_path):
    p = vuser("run", "--share", str(tmp_path / "nope"), "--exec", "true", timeout=120)
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == f"vuser: error: --share {tmp_path / 'nope'}: not a directory"


def test_share_with_shell(image, tmp_path):
    import pty
    import time

    from qemu_helpers import exit_shell, read_until

    (tmp_path / "f").write_text("from-the-host\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: vuser run --shell --share on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "vuser", "run", "--shell", "--share",
                                  str(tmp_path)])
    buf = bytearray()
    try:
        # /init's note, after its greeting
        assert read_until(fd, f"share {tmp_path}: a copy".encode(), 120, buf), \
            buf[-2000:].decode(errors="replace")
        time.sleep(1.0)  # let the shell print its prompt
        os.write(fd, f"cat {tmp_path}/f | tr a-z A-Z\r".encode())
        assert read_until(fd, b"FROM-THE-HOST", 60, buf), buf[-2000:].decode(errors="replace")
    finally:
        exit_shell(fd, pid, buf)  # /init powers off; vuser run ends with status 0
