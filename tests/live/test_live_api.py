"""vuser.live against a real guest: commands through the agent (not the
console), files in and out, the kernel log, the control RPC, and a close that
leaves nothing running or on disk; a guest that cannot boot is a BootError."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from vuser.errors import UserError
from vuser.live import BootError, CommandFailed, boot

pytestmark = pytest.mark.timeout(600)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def guest(qemu_bin, image):
    g = boot(devices=["sample"], qemu=qemu_bin)
    yield g
    g.close()


def test_run_returns_output_and_status(guest):
    r = guest.run("echo out; echo err >&2; exit 3")
    assert (r.out, r.err, r.status, r.signal) == ("out\n", "err\n", 3, 0)
    assert guest.run("uname -r").out.strip() == guest.run("cat /proc/sys/kernel/osrelease").out.strip()


def test_a_killed_command_reports_its_signal(guest):
    r = guest.run("kill -TERM $$")
    assert r.status is None and r.signal == signal.SIGTERM and r.describe() == "killed by SIGTERM"


def test_timeout_kills_the_command(guest):
    r = guest.run("sleep 60", timeout=1)
    assert r.timed_out and r.signal == signal.SIGKILL


def test_check_raises_one_line(guest):
    with pytest.raises(CommandFailed) as ei:
        guest.run("echo nope >&2; exit 2", check=True)
    assert str(ei.value) == "guest command 'echo nope >&2; exit 2': exit status 2: nope"


def test_kernel_messages_do_not_mix_into_output(guest):
    # the console gets every kernel message (level 8) while the command prints
    r = guest.run("dmesg -n 8; for i in $(seq 1 200); do echo kmsg-$i > /dev/kmsg; echo line-$i; "
                  "done; dmesg -n 1")
    assert r.status == 0
    assert r.out == "".join(f"line-{i}\n" for i in range(1, 201))
    assert "kmsg-200" in guest.dmesg()


def test_copy_in_and_read_back(guest, tmp_path):
    data = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    src.chmod(0o750)
    guest.copy_in(src, "/root/new/dir/blob.bin")
    r = guest.run("stat -c %a /root/new/dir/blob.bin; sha256sum /root/new/dir/blob.bin")
    mode, digest = r.out.split()[:2]
    assert mode == "750" and digest == hashlib.sha256(data).hexdigest()
    assert guest.read_file("/root/new/dir/blob.bin") == data


def test_copy_in_errors(guest, tmp_path):
    with pytest.raises(UserError, match="copy_in .*missing"):
        guest.copy_in(tmp_path / "missing", "/tmp/x")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    with pytest.raises(UserError, match=r"at most \d+ in one file \(share its directory instead"):
        guest.copy_in(big, "/tmp/big")
    (tmp_path / "f").write_bytes(b"x")
    from vuser.guest.agent import AgentError

    with pytest.raises(AgentError) as ei:
        guest.copy_in(tmp_path / "f", "/proc/version/x")
    assert ei.value.errno_name in ("ENOTDIR", "ENOENT", "EACCES", "EEXIST")


def test_dmesg_is_the_kernel_log(guest):
    log = guest.dmesg()
    assert "Linux version" in log and "Command line:" in log


def test_control_rpc_reaches_the_model(guest):
    assert guest.control.faults()["total"] == 0
    stats = guest.control.stats()
    assert isinstance(stats, dict) and "translations" in stats


def test_close_leaves_nothing_behind(qemu_bin, image):
    g = boot(devices=["sample"], qemu=qemu_bin)
    info = g._bg.info
    assert g.run("true").ok and g.control.faults()["total"] == 0
    ctl, own = g.control_path, g._rundir
    assert _alive(info.qemu_pid) and _alive(info.server_pid) and os.path.exists(ctl)
    result = g.close()
    assert result.stopped and not g.running
    assert not _alive(info.qemu_pid) and not _alive(info.server_pid)
    assert not info.workdir.exists() and not own.exists() and not os.path.exists(ctl)
    assert g.close() is result


def test_a_guest_that_cannot_boot_is_a_boot_error(qemu_bin, image, monkeypatch):
    from vuser.qemu import launcher

    seen = []
    real = launcher.launch_in_background

    def spy(*a, **kw):
        bg = real(*a, **kw)
        seen.append(bg.info)
        return bg
    monkeypatch.setattr(launcher, "launch_in_background", spy)
    with pytest.raises(BootError) as ei:
        boot(devices=[], qemu=qemu_bin, append="rdinit=/nonexistent", boot_timeout=60)
    first = str(ei.value).splitlines()[0]
    assert first == ("the guest ended before its agent answered: the guest stopped without "
                     "writing isa-debug-exit (reboot, power-off or panic); last console lines:")
    assert "Kernel panic" in str(ei.value)
    assert seen and not _alive(seen[0].qemu_pid) and not seen[0].workdir.exists()


def test_append_may_not_set_vuser_options():
    with pytest.raises(UserError, match=r"append must not set vuser\.\* .*vuser\.shell=1"):
        boot(devices=[], append="quiet vuser.shell=1")
