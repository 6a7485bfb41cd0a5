"""Finding QEMU: $VUSER_QEMU, the system's, provisioning disabled or failing (fake QEMUs)."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from vuser.errors import UserError
from vuser.qemu import find
from vuser.qemu.find import find_qemu, parse_version

from qemu_helpers import run_vuser


def fake_qemu(path, version="11.1.3", vfio_user=True, help_rc=0):
    """A shell script answering like qemu-system-x86_64 to the three probes."""
    devices = "name \"e1000\", bus PCI\\n" + ("name \"vfio-user-pci\", bus PCI\\n" if vfio_user else "")
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
        --version) echo "QEMU emulator version {version} (fake)";;
        "-device help") printf '{devices}';;
        "-device vfio-user-pci,help") echo "vfio-user-pci options:"; echo "  socket=<SocketAddress>"; exit {help_rc};;
        *) echo "fake qemu: unexpected $*" >&2; exit 1;;
        esac
        """))
    path.chmod(0o755)
    return path


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No $VUSER_QEMU, an empty cache, and a PATH whose qemu-system-x86_64 lacks vfio-user-pci."""
    for var in ("VUSER_QEMU", "VUSER_NO_PROVISION", "VUSER_APT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VUSER_CACHE", str(tmp_path / "cache"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_qemu(bindir / "qemu-system-x86_64", version="7.2.22", vfio_user=False)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin")
    return tmp_path


def test_parse_version():
    assert parse_version("QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)") == (11, 1, 3)
    assert parse_version("10.1") == (10, 1)
    assert parse_version("nonsense") == ()


def test_env_qemu_is_used_as_given(clean_env, monkeypatch):
    q = fake_qemu(clean_env / "myqemu")
    monkeypatch.setenv("VUSER_QEMU", str(q))
    got = find_qemu()
    assert (got.source, got.version, got.argv, got.path) == ("env", "11.1.3", (str(q),), q)


def test_env_qemu_pointing_at_nothing(clean_env, monkeypatch):
    monkeypatch.setenv("VUSER_QEMU", str(clean_env / "nothing"))
    with pytest.raises(UserError, match=r"^\$VUSER_QEMU=.*/nothing: no such file$"):
        find_qemu()


def test_env_qemu_not_executable(clean_env, monkeypatch):
    q = fake_qemu(clean_env / "myqemu")
    q.chmod(stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.setenv("VUSER_QEMU", str(q))
    if os.access(q, os.X_OK):
        pytest.skip("prerequisite missing: a user for whom mode 0600 means not executable")
    with pytest.raises(UserError, match=r"myqemu is not executable$"):
        find_qemu()


def test_qemu_without_vfio_user_pci(clean_env, monkeypatch):
    q = fake_qemu(clean_env / "oldqemu", version="7.2.22", vfio_user=False)
    monkeypatch.setenv("VUSER_QEMU", str(q))
    with pytest.raises(UserError) as e:
        find_qemu()
    assert str(e.value) == (f"{q} (QEMU 7.2.22) has no vfio-user-pci device; "
                            "QEMU >= 10.1 with vfio-user is needed")


def test_qemu_too_old_or_broken_device(clean_env, monkeypatch):
    monkeypatch.setenv("VUSER_QEMU", str(fake_qemu(clean_env / "q1", version="10.0.2")))
    with pytest.raises(UserError, match=r"is QEMU 10\.0\.2; vfio-user-pci needs >= 10\.1$"):
        find_qemu()
    monkeypatch.setenv("VUSER_QEMU", str(fake_qemu(clean_env / "q2", help_rc=1)))
    with pytest.raises(UserError, match=r"-device vfio-user-pci,help failed"):
        find_qemu()


def test_system_qemu_with_vfio_user_is_preferred_to_provisioning(clean_env):
    fake_qemu(clean_env / "bin" / "qemu-system-x86_64")
    got = find_qemu()
    assert got.source == "system" and got.path == clean_env / "bin" / "qemu-system-x86_64"


def test_no_qemu_and_provisioning_disabled(clean_env, monkeypatch):
    monkeypatch.setenv("VUSER_NO_PROVISION", "1")
    with pytest.raises(UserError) as e:
        find_qemu()
    assert str(e.value) == (
        f"no QEMU with vfio-user-pci ({clean_env}/bin/qemu-system-x86_64 (QEMU 7.2.22) has no "
        "vfio-user-pci device; QEMU >= 10.1 with vfio-user is needed) and $VUSER_NO_PROVISION "
        "is set; set $VUSER_QEMU or allow provisioning")
    assert find.installed() is None


def test_no_qemu_and_apt_fails(clean_env, monkeypatch):
    monkeypatch.setenv("VUSER_APT_URI", "http://127.0.0.1:9/debian")
    with pytest.raises(UserError) as e:
        find_qemu(show_progress=False)
    msg = str(e.value)
    assert msg.startswith("apt-get update (sid): ") and "127.0.0.1:9" in msg and "\n" not in msg


def _error_lines(p):
    return [ln for ln in p.stderr.splitlines() if ln.strip()]


def test_cli_one_error_line_for_each_bad_situation(clean_env):
    env = {"VUSER_NO_PROVISION": "1"}
    p = run_vuser("provision", "--qemu", env=env)
    assert p.returncode == 1
    assert _error_lines(p) == [f"vuser: error: no QEMU with vfio-user-pci ({clean_env}/bin/qemu-system-x86_64 "
                               "(QEMU 7.2.22) has no vfio-user-pci device; QEMU >= 10.1 with vfio-user is "
                               "needed) and $VUSER_NO_PROVISION is set; set $VUSER_QEMU or allow provisioning"]
    p = run_vuser("run", "--test", "enumerate", env={"VUSER_QEMU": str(clean_env / "nothing")})
    assert p.returncode == 1
    assert _error_lines(p) == [f"vuser: error: $VUSER_QEMU={clean_env}/nothing: no such file"]
    p = run_vuser("provision", "--qemu", env={"VUSER_APT_URI": "http://127.0.0.1:9/debian"})
    assert p.returncode == 1
    last = _error_lines(p)[-1]
    assert last.startswith("vuser: error: apt-get update (sid): ")
    assert "Traceback" not in p.stderr


def test_doctor_reports_a_bad_env_qemu(clean_env):
    q = fake_qemu(clean_env / "oldqemu", version="7.2.22", vfio_user=False)
    p = run_vuser("doctor", "--no-kvm-probe", env={"VUSER_QEMU": str(q)})
    assert p.returncode == 1
    assert f"--  QEMU         {q} (QEMU 7.2.22) has no vfio-user-pci device" in p.stdout
