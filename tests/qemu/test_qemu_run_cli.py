"""``vuser run``, ``vuser doctor`` and ``vuser provision`` end to end (real QEMU, real guest image)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vuser.qemu import kvm

from qemu_helpers import read_until as _read_until
from qemu_helpers import exit_shell, kill_shell, run_vuser

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
    assert p.stdout.splitlines() == ["guest test results",
                                     "  pass       environment  6 cases passed"]
    assert re.search(r"vuser: guest exited with status 0 in [\d.]+ s", p.stderr)
    assert "that was the demo" not in p.stderr


def test_run_without_test_runs_the_demo(image_ready):
    from vuser.commands.run import default_tests
    from vuser.guest.manifest import load_manifest

    p = run_vuser("run", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    boots = re.findall(r"devices: ([^;]*); tests: (.*)", p.stderr)
    # enumerate, demo, then any other programs marked demo = true in the manifest
    assert boots[:2] == [("sample,label=0x21, vuser-dma,label=0x22", "enumerate"),
                         ("vuser-iommu, vuser-dma,label=0x42", "demo")]
    specs = load_manifest()
    demo = [specs[n].program_name for n in default_tests()]  # a table may run another's program
    assert [n for _, tests in boots for n in tests.split(", ")] == demo
    # The demo's story is on the console, as KTAP diagnostics of its cases.
    assert re.search(r"^    # vuser-dma: +\S+ 5655:0002, label 0x42", p.stdout, re.M)
    assert re.search(r"^    #   PASID 1 +0x\w+ +GPA 0x\w+ \(page B\) +SUCCESS, 4096 bytes$",
                     p.stdout, re.M)
    assert re.search(r"^    #   no PASID +0x\w+ +GPA 0x\w+ \(page D\) +SUCCESS, 4096 bytes$",
                     p.stdout, re.M)
    assert re.search(r"^    #   PASID 1 +0x\w+ +nothing written +PAGE_FAULT at 0x\w+; vIOMMU "
                     r"fault record: reason 0x71, source-id 0x42, PASID 1$", p.stdout, re.M)
    assert re.search(r"^    ok 9 what_went_where$", p.stdout, re.M)
    summary = p.stdout[p.stdout.index("guest test results"):].splitlines()
    assert summary[0] == "guest test results"
    programs = [ln for ln in summary[1:] if not ln.startswith("      ")]  # not case lines
    assert [ln.split()[:2] for ln in programs] == [["pass", n] for n in demo]
    assert re.match(r"  pass       enumerate +14 cases passed$", summary[1])
    assert re.match(r"  pass       demo +9 cases passed$", summary[2])
    assert "vuser: control socket " in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("vuser: that was the demo (enumerate")


def _args(*argv: str):
    import argparse

    from vuser.commands import run as run_cmd

    parser = argparse.ArgumentParser()
    run_cmd.configure(parser)
    return parser.parse_args(list(argv))


def test_plan_default_is_the_demo_and_all_is_every_program():
    from vuser.commands.run import _plan, default_tests
    from vuser.guest.manifest import demo_programs, load_manifest

    specs = load_manifest()
    # The demo is data: the programs marked demo = true, in manifest order.
    assert default_tests() == tuple(demo_programs(specs))
    assert default_tests()[:2] == ("enumerate", "demo")
    assert all(specs[n].demo for n in default_tests())
    default = _plan(_args())
    assert [n for p in default for n in p.programs] == [specs[n].program_name
                                                        for n in default_tests()]
    assert default[1].devices == specs["demo"].devices
    every = _plan(_args("--all"))
    listed = {n: s for n, s in specs.items() if not s.opt_in}  # --all leaves out the soak
    assert specs["soak"].opt_in and "soak" not in listed
    assert sorted(n for p in every for n in p.programs) == sorted(s.program_name
                                                                  for s in listed.values())
    # one guest per (devices, iommu mode, kernel arguments)
    assert len(every) == len({listed[n].boot_key() for n in listed})
    assert [(p.devices, p.programs) for p in _plan(_args("--test", "soak"))] == [
        (specs["soak"].devices, ("soak",))]  # named, it runs
    assert [p.programs for p in _plan(_args("--test", "dma_nested"))] == [("dma_nested",)]
    # --device: one guest with those devices, the demo's programs or all of them, of its mode.
    assert [(p.devices, p.programs) for p in _plan(_args("--device", "sample"))] == [
        (("sample",), default_tests("user"))]
    assert [sorted(p.programs) for p in _plan(_args("--device", "sample", "--all"))] == [
        sorted({s.program_name for s in listed.values() if not s.kernel_iommu})]


def test_plan_kernel_iommu_keeps_to_kernel_owned_programs():
    from vuser.commands.run import _plan
    from vuser.errors import UserError
    from vuser.guest.manifest import load_manifest

    specs = load_manifest()
    kernel = sorted(s.program_name for s in specs.values() if s.kernel_iommu)
    assert "kernel_iommu" in kernel
    plans = _plan(_args("--kernel-iommu", "--all"))
    assert sorted(n for p in plans for n in p.programs) == kernel
    assert all(p.kernel_iommu for p in plans)
    plans = _plan(_args("--kernel-iommu", "--test", "kernel_iommu"))
    assert [(p.programs, p.iommu) for p in plans] == [(("kernel_iommu",), "kernel")]
    # The manifest decides without the flag, too.
    assert [p.iommu for p in _plan(_args("--test", "kernel_iommu"))] == ["kernel"]
    plans = _plan(_args("--kernel-iommu", "--device", "vuser-iommu", "--device", "vuser-dma",
                        "--test", "kernel_iommu"))
    assert [(p.devices, p.iommu) for p in plans] == [(("vuser-iommu", "vuser-dma"), "kernel")]
    with pytest.raises(UserError, match=r"^dma_nested runs with a userspace-owned vIOMMU "
                                        r"\(iommu = \"user\" in guest_tests.toml\); "
                                        r"--kernel-iommu boots only kernel-owned guests$"):
        _plan(_args("--kernel-iommu", "--test", "dma_nested"))


@pytest.mark.parametrize("argv, message", [
    (("--test", "demo", "--all"), "--test and --all do not go together"),
    (("--shell", "--all"), "--shell and --all do not go together"),
    (("--shell", "--test", "demo"), "--shell and --test do not go together"),
    (("--test", "environment", "--append", "quiet vuser.tests=demo"),
     "--append must not set vuser.* (the launcher does): vuser.tests=demo"),
    (("--control", "/tmp/a.ctl", "--server-arg=--control=/tmp/b.ctl"),
     "--control and --server-arg --control do not go together"),
    (("--trace", "/tmp/a.trace", "--server-arg=--trace", "--server-arg=/tmp/b.trace"),
     "--trace and --server-arg --trace do not go together"),
])
def test_conflicting_options_are_one_line_errors(argv, message):
    p = run_vuser("run", *argv, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == f"vuser: error: {message}"


SPLIT_CONSOLE = """\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: demo
    1..4
    ok 1 find_devices
    not ok 2 context_entry
    ok 3 stage1_tables # SKIP no hugepages
# dmesg: [    2.8] kernel says something
not ok 1 demo # exit status 1
"""


def test_summary_of_a_failed_program(capsys):
    from vuser.commands._run_report import print_summary, results

    programs = results(SPLIT_CONSOLE)
    # The cases and the result line are one program, though kernel messages split them.
    assert [(p.name, p.status, p.reason) for p in programs] == [
        ("demo", "fail", "exit status 1"), ("(1 more program(s) announced)", "missing", "")]
    assert programs[0].cases == [("find_devices", "pass", ""), ("context_entry", "fail", ""),
                                 ("stage1_tables", "skip", "no hugepages")]
    assert not any(p.ok for p in programs)
    print_summary(programs)
    assert capsys.readouterr().out.splitlines() == [
        "guest test results",
        "  fail       demo                           1 passed, 1 failed, 1 skipped, 1 not run  "
        "# exit status 1",
        "      fail       context_entry",
        "      skip       stage1_tables  # no hugepages",
        "  missing    (1 more program(s) announced)",
    ]


def test_run_unknown_test_is_one_line_error(image_ready):
    p = run_vuser("run", "--test", "no-such-test", timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("vuser: error: no guest test no-such-test; there are: ")


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
    except BaseException:
        kill_shell(fd, pid)
        raise
    exit_shell(fd, pid, buf)


def test_shell_needs_a_terminal():
    p = subprocess.run([sys.executable, "-m", "vuser", "run", "--shell"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == "vuser: error: --shell needs a terminal on standard input"


def test_doctor_reports_qemu_image_and_tests(image_ready, qemu_bin):
    p = run_vuser("doctor", "--no-kvm-probe", timeout=120)
    assert p.returncode == 0, p.stdout
    lines = p.stdout.splitlines()
    assert any(ln.startswith(f"ok  QEMU         {qemu_bin.version} ({qemu_bin.source}) ")
               and ln.endswith("; vfio-user-pci present, with a socket property") for ln in lines)
    assert p.stdout.endswith("\n")  # the last line is a whole line
    assert any(ln.startswith("??  KVM          /dev/kvm") for ln in lines)
    assert any(ln.startswith("ok  guest image  kernel ") for ln in lines)
    assert any(ln.startswith("ok  guest tests  ") and "enumerate" in ln for ln in lines)
    # Debian's cloud kernel has intel_iommu and its SVM support.
    assert "ok  kernel IOMMU intel_iommu built in: `vuser run --kernel-iommu` gives it the " \
           "vIOMMU" in lines


def test_doctor_says_when_the_kernel_cannot_own_the_viommu(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from vuser.commands import doctor

    config = tmp_path / "config-6.1.0-x"
    config.write_text("CONFIG_INTEL_IOMMU=y\n")
    out = Console(highlight=False, soft_wrap=True, no_color=True, width=400)
    with out.capture() as cap:
        doctor._kernel_iommu_line(out, {"kernel_config": config, "kernel": "6.1.0-x"})
        config.write_text("# CONFIG_INTEL_IOMMU is not set\n")
        doctor._kernel_iommu_line(out, {"kernel_config": config, "kernel": "6.1.0-x"})
        doctor._kernel_iommu_line(out, {"kernel_config": None})
    assert cap.get().splitlines() == [
        "??  kernel IOMMU intel_iommu built in: `vuser run --kernel-iommu` gives it the vIOMMU; "
        "kernel 6.1.0-x has no CONFIG_INTEL_IOMMU_SVM=y: SVA (shared virtual addressing) will "
        "not work",
        "--  kernel IOMMU a kernel-owned vIOMMU needs intel_iommu, but kernel 6.1.0-x has no "
        f"CONFIG_INTEL_IOMMU=y ({config}); `vuser run --kernel-iommu` cannot be used",
        "??  kernel IOMMU not checked (the kernel package is not unpacked)",
    ]


def test_kvm_probe_without_dev_kvm(qemu_bin, monkeypatch, tmp_path):
    monkeypatch.setattr(kvm, "KVM_DEV", tmp_path / "kvm")
    st = kvm.probe_kvm(qemu_bin)
    assert not st.usable and st.reason == f"{tmp_path / 'kvm'} does not exist"


@pytest.mark.parametrize("linux, usable, says", [
    (None, True, "no guest image to try a Linux guest"),
    ({"exit_status": 0}, True, "the Linux guest passed its tests"),
    ({"exit_status": None, "timed_out": True, "error": "timed out"}, False,
     "the Linux guest hung (no exit within 20 s)"),
    ({"exit_status": 1, "error": None}, False, "the Linux guest failed: exit status 1"),
])
def test_kvm_probe_needs_the_linux_guest_too(qemu_bin, monkeypatch, tmp_path, linux, usable, says):
    """The mini-guest running is not enough (it runs here while Linux hangs):
    with an image, KVM is usable only if the Linux guest's test passes."""
    from vuser.qemu.launcher import GuestResult

    dev = tmp_path / "kvm"
    dev.touch()
    monkeypatch.setattr(kvm, "KVM_DEV", dev)
    calls = []

    def fake_launch(image, devices, timeout, **kw):
        calls.append((image, kw.get("kernel_args", ())))
        if len(calls) == 1:
            return GuestResult(kvm.PROBE_VALUE, "", duration_s=0.1)
        return GuestResult(console="", duration_s=1.0, **linux)

    monkeypatch.setattr(kvm, "launch", fake_launch)
    st = kvm.probe_kvm(qemu_bin, linux=None if linux is None else "IMAGE")
    assert st.usable is usable and says in st.reason
    if linux is not None:
        assert calls[1] == ("IMAGE", ("vuser.tests=environment",))


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


@pytest.fixture
def short_tmp():
    """A temp directory short enough to hold the run directory (sun_path is short)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="vuser-k-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_sigkill_to_run_takes_qemu_and_the_server_with_it(image_ready, short_tmp):
    from qemu_helpers import alive

    from vuser.qemu import rundir

    tmp_path = short_tmp
    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "vuser", "run", "--device", "sample",
                          "--test", "environment", "--timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = p.stdout.readline()  # the guest's console: QEMU runs
    assert first, p.stderr.read()
    children = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    assert len(children) == 2  # the server and QEMU
    p.kill()
    assert p.wait(10) == -9
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(c) for c in children):
        time.sleep(0.1)
    assert [c for c in children if alive(c)] == [], "QEMU or the server outlived vuser run"
    left = list(tmp_path.glob("vuser-run-*"))
    assert len(left) == 1 and (left[0] / rundir.OWNER).read_text().split()[0] == str(p.pid)
    # The next start removes the directory (and a control socket the server could not).
    removed = rundir.sweep([tmp_path])
    assert left[0] in removed and not left[0].exists()
    assert list(tmp_path.glob("vuser-*")) == []


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


def test_a_program_missing_from_the_manifest_is_one_line(tmp_path, monkeypatch):
    """A guest-tests/*.c without a table does not silently run with a sample device."""
    from vuser.commands.run import _plan
    from vuser.errors import UserError
    from vuser.guest import paths

    root = tmp_path / "guest-tests"
    root.mkdir()
    (root / "mine.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.setattr(paths, "GUEST_TESTS", root)
    monkeypatch.setattr("vuser.guest.programs.sources.__defaults__", (root,))
    with pytest.raises(UserError, match=r"^guest test mine is not in guest_tests.toml: add a "
                                        r"\[mine\] table saying which devices its guest needs, "
                                        r"or give --device$"):
        _plan(_args("--test", "mine"))
    # with --device it runs on the devices given
    assert [(p.devices, p.programs) for p in _plan(_args("--test", "mine", "--device", "sample"))] \
        == [(("sample",), ("mine",))]


def test_trace_paths_one_file_per_guest():
    from vuser.commands.run import trace_paths

    assert trace_paths(None, 2) == [None, None]
    assert trace_paths("/tmp/run.trace", 1) == ["/tmp/run.trace"]
    assert trace_paths("/tmp/run.trace", 3) == ["/tmp/run.1.trace", "/tmp/run.2.trace",
                                                "/tmp/run.3.trace"]
    assert trace_paths("out/run", 2) == ["out/run.1", "out/run.2"]


def test_run_options_reach_each_guest_launch(monkeypatch, capsys):
    """--append, --qemu-arg, --control and --trace as each guest's launch gets them (no guest)."""
    from types import SimpleNamespace

    from vuser.commands import run as run_cmd
    from vuser.guest.manifest import load_manifest

    launches = []

    def fake_launch(image, **kw):
        launches.append(kw)
        ktap = "KTAP version 1\n1..1\n" + "".join(
            f"ok {i} {n}\n" for i, n in enumerate(image.tests, 1))
        return SimpleNamespace(console=ktap, qemu_log="", error=None, exit_status=0,
                               duration_s=0.1, timed_out=False)

    monkeypatch.setattr("vuser.qemu.find.find_qemu",
                        lambda **kw: SimpleNamespace(version="11", source="test"))
    monkeypatch.setattr("vuser.guest.image.build_image",
                        lambda tests, **kw: SimpleNamespace(kernel_release="6.1", tests=tests))
    monkeypatch.setattr("vuser.qemu.launcher.launch", fake_launch)
    specs = load_manifest()
    assert specs["environment"].boot_key() != specs["dma_nested"].boot_key()  # two guests
    args = _args("-q", "--test", "environment", "--test", "dma_nested",
                 "--append", "foo=1  bar", "--qemu-arg=-name", "--qemu-arg", "g",
                 "--control", "/tmp/fixed.ctl", "--trace", "/tmp/run.trace")
    assert run_cmd.run(args) == 0
    assert len(launches) == 2
    for kw, trace, name in zip(launches, ("/tmp/run.1.trace", "/tmp/run.2.trace"),
                               ("environment", "dma_nested")):
        # after the manifest's own words
        assert list(kw["kernel_args"]) == [*specs[name].append, "foo=1", "bar"]
        assert kw["qemu_extra"] == ["-name", "g"]
        server = kw["extra_server_args"]
        assert server[server.index("--control") + 1] == "/tmp/fixed.ctl"
        assert server[server.index("--trace") + 1] == trace
    err = capsys.readouterr().err
    assert "kernel args: " in err and "foo=1 bar;" in err
    assert "vuser: trace /tmp/run.2.trace (vuser ctl trace summary /tmp/run.2.trace)" in err
    # a guest without devices has no server, so no trace: said, not claimed
    assert specs["environment"].devices == ()
    assert ("vuser: no trace /tmp/run.1.trace: this guest has no devices, so no server ran"
            in err)


def test_run_append_reaches_the_guest_and_trace_covers_the_run(image_ready, short_tmp):
    trace, ctl = short_tmp / "run.trace", short_tmp / "c.ctl"
    p = run_vuser("run", "--device", "sample", "--test", "environment",
                  "--append", "foo=1 loglevel=7", "--trace", str(trace), "--control", str(ctl),
                  timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    # loglevel=7 lets the kernel print its command line on the console
    assert re.search(r"Command line: .* vuser\.tests=environment foo=1 loglevel=7$",
                     p.stdout, re.M), p.stdout[:2000]
    assert f"vuser: control socket {ctl} " in p.stderr
    assert f"vuser: trace {trace} " in p.stderr
    s = run_vuser("ctl", "trace", "summary", str(trace), timeout=60)
    assert s.returncode == 0, s.stderr
    assert re.search(r"^events +\d+$", s.stdout, re.M), s.stdout
    assert "cut short" not in s.stdout  # the server wrote the footer when the guest ended


def test_a_guest_that_hangs_does_not_stop_the_next_one(monkeypatch, capsys):
    """With several guests, one that hangs is reported and the others still boot (no guest)."""
    from types import SimpleNamespace

    from vuser.commands import run as run_cmd
    from vuser.errors import UserError

    booted = []

    def fake_launch(image, **kw):
        booted.append(tuple(image.tests))
        if len(booted) == 1:
            return SimpleNamespace(console="KTAP version 1\n1..1\n", qemu_log="",
                                   error="guest timed out after 9 s, guest running",
                                   exit_status=None, duration_s=9.0, timed_out=True,
                                   task_dump="")
        ktap = "KTAP version 1\n1..1\n" + "".join(
            f"ok {i} {n}\n" for i, n in enumerate(image.tests, 1))
        return SimpleNamespace(console=ktap, qemu_log="", error=None, exit_status=0,
                               duration_s=0.1, timed_out=False, task_dump="")

    monkeypatch.setattr("vuser.qemu.find.find_qemu",
                        lambda **kw: SimpleNamespace(version="11", source="test"))
    monkeypatch.setattr("vuser.guest.image.build_image",
                        lambda tests, **kw: SimpleNamespace(kernel_release="6.1", tests=tests))
    monkeypatch.setattr("vuser.qemu.launcher.launch", fake_launch)
    args = _args("-q", "--test", "environment", "--test", "dma_nested")
    with pytest.raises(UserError, match="guest timed out after 9 s"):
        run_cmd.run(args)
    assert booted == [("environment",), ("dma_nested",)]
    assert "pass       dma_nested" in capsys.readouterr().out  # the second guest's result
