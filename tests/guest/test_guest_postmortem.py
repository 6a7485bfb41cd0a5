"""Crash and hang reports: the case a program died in, its signal, a hung guest's
tasks (SysRq), and the kernel-log tail without boot chatter.

The unit tests read real console transcripts in ``data/`` (recorded from the
guests below); the guest tests boot ``data/crash_midway.c`` and ``data/hangs.c``,
added to a cached image through a per-run overlay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_helpers import need_gcc
from vuser.errors import UserError
from vuser.guest import klog, ktap, postmortem

DATA = Path(__file__).parent / "data"


def transcript(name: str) -> str:
    return (DATA / f"console_{name}.txt").read_text()


def test_exit_status_of_a_signal():
    assert postmortem.exit_signal(139) == "SIGSEGV"
    assert postmortem.exit_signal(134) == "SIGABRT"
    assert postmortem.exit_signal(1) is None and postmortem.exit_signal(128) is None
    assert postmortem.describe_exit("exit status 139") == "killed by SIGSEGV (exit status 139)"
    assert postmortem.describe_exit("exit status 1") == "exit status 1"


def test_the_case_running_when_a_program_died():
    doc = ktap.parse(transcript("crash_midway"))
    prog = doc.find("crash_midway")
    cases = ("before_the_crash", "segfaults", "never_reached")
    assert postmortem.running_case(cases, prog) == "segfaults"
    assert postmortem.program_death(cases, prog) == \
        "killed by SIGSEGV (exit status 139) during case segfaults"
    unfinished = ktap.parse(transcript("hangs")).find("hangs")
    assert postmortem.program_death(("before_the_hang", "blocks_for_ever"), unfinished,
                                    timed_out=True) == "timed out during case blocks_for_ever"
    assert postmortem.running_case(cases, None) == "before_the_crash"
    assert postmortem.program_death(cases, None) == "never started; its first case is " \
        "before_the_crash"
    # every case reported: nothing was running
    done = ktap.parse("KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\n"
                      "not ok 1 p # exit status 139\n").find("p")
    assert postmortem.running_case(("a",), done) is None
    assert postmortem.program_death(("a",), done) is None


def test_user_tasks_of_a_sysrq_dump():
    tasks = postmortem.user_tasks(transcript("hangs"))
    assert "task:hangs" in tasks and "__do_sys_pause" in tasks and "task:init" in tasks
    assert "kthreadd" not in tasks and "kworker" not in tasks  # kernel threads left out
    assert "native_safe_halt" not in tasks  # the idle CPU's backtrace says nothing
    assert "Sched Debug" not in tasks and "[   22." not in tasks
    assert postmortem.user_tasks("") == ""
    # a CPU busy in a user task: its backtrace is kept
    busy = ("[ 1.0] NMI backtrace for cpu 0\n[ 1.0] CPU: 0 PID: 102 Comm: spin Not tainted\n"
            "[ 1.0] RIP: 0033:0x401000\n[ 1.1] Sched Debug Version: v0.11\n")
    assert postmortem.user_tasks(busy).splitlines() == [
        "NMI backtrace for cpu 0", "CPU: 0 PID: 102 Comm: spin Not tainted", "RIP: 0033:0x401000"]


def test_kernel_log_tail_without_boot_chatter():
    boot = klog.tail(transcript("boot"), 400)
    for noise in ("ACPI:", "pci 0000:", "e820", "clocksource", "Freeing unused", "Run /init",
                  "Command line:"):
        assert noise not in boot, noise
    assert "boot messages left out" in boot
    assert boot.splitlines()[-1] == "ok 1 environment"  # KTAP is all kept
    crash = klog.tail(transcript("crash_midway"), 40)
    assert "segfault at 8" in crash and "Code:" in crash  # what explains it stays
    assert "Freeing unused" not in crash and "Segmentation fault" in crash
    assert crash.splitlines()[-1] == "not ok 1 crash_midway # exit status 139"
    # a call trace and register dump of an oops are kept whole
    oops = ("[ 9.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
            "[ 9.1] ACPI: something\n[ 9.1] Call Trace:\n[ 9.1]  <TASK>\n"
            "[ 9.1]  vdma_probe+0x1c/0x90 [vuser_dma]\n[ 9.1]  ? foo+0x5/0x10\n"
            "[ 9.1] RIP: 0010:vdma_probe+0x1c/0x90\n[ 9.1] DMAR: [DMA Write NO_PASID] fault\n")
    kept = klog.tail(oops)
    assert "ACPI" not in kept and len(kept.splitlines()) == 8
    # nothing explains: the last lines before the end are shown
    quiet = "\n".join(f"[ {i}.0] pci 0000:00:0{i}.0: chatter" for i in range(10))
    assert klog.tail(quiet).splitlines()[-6:] == quiet.splitlines()[-6:]


def test_run_summary_names_the_case_and_signal(capsys):
    from types import SimpleNamespace

    from vuser.commands._run_report import print_summary, report

    result = SimpleNamespace(console=transcript("crash_midway"), qemu_log="", error=None,
                             exit_status=1, duration_s=7.0, timed_out=False)
    declared = {"crash_midway": ["before_the_crash", "segfaults", "never_reached"]}
    status, error, progs = report(result, False, declared)
    assert status == 1 and error is None
    print_summary(progs)
    out = capsys.readouterr().out
    assert "killed by SIGSEGV (exit status 139) during case segfaults" in out
    assert "every case passed" not in out


# -- real guests ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest_with(tmp_path_factory):
    """Boot one of data/*.c in a guest with no devices; returns its GuestResult."""
    need_gcc()
    from vuser.guest import paths, programs
    from vuser.guest.image import build_image
    from vuser.guest.overlay import Overlay
    from vuser.qemu.find import find_qemu
    from vuser.qemu.launcher import launch

    try:
        qemu = find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci: {e}")
    src = tmp_path_factory.mktemp("src") / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    image = build_image(tests=["environment"], progress=False)

    def boot(name: str, timeout: float):
        shutil.copy(DATA / f"{name}.c", src)
        prog = programs.build_program(name, src)
        o = Overlay()
        o.add_file(f"tests/{name}", prog.path.read_bytes(), 0o755)
        return prog, launch(image, devices=[], timeout=timeout, qemu=qemu,
                            kernel_args=[f"vuser.tests={name}"], overlays=[o])

    return boot


@pytest.mark.guest
def test_a_real_segfault_names_its_case(guest_with, capsys):
    from vuser.commands._run_report import print_summary, report

    prog, result = guest_with("crash_midway", 120)
    assert result.error is None and result.exit_status == 1, result.console[-2000:]
    doc = ktap.parse(result.console)
    assert postmortem.program_death(prog.cases, doc.find("crash_midway")) == \
        "killed by SIGSEGV (exit status 139) during case segfaults"
    _, _, progs = report(result, True, {"crash_midway": list(prog.cases)})
    print_summary(progs)
    assert "killed by SIGSEGV (exit status 139) during case segfaults" in capsys.readouterr().out
    assert "segfault at 8" in klog.tail(result.console)


@pytest.mark.guest
def test_a_real_hang_dumps_the_guest_tasks(guest_with):
    prog, result = guest_with("hangs", 20)
    assert result.timed_out and result.error.startswith("guest timed out after 20 s")
    assert "sysrq: Show State" in result.task_dump, result.console[-3000:]
    tasks = postmortem.user_tasks(result.task_dump)
    assert "task:hangs" in tasks and "pause" in tasks, tasks
    doc = ktap.parse(result.console)
    assert postmortem.running_case(prog.cases, doc.find("hangs")) == "blocks_for_ever"
    assert postmortem.program_death(prog.cases, doc.find("hangs"), timed_out=True) == \
        "timed out during case blocks_for_ever"


def test_run_builds_only_what_it_runs_and_leaves_a_broken_program_out(tmp_path, monkeypatch,
                                                                      capsys):
    """`vuser run`: --test X builds X alone; a program that does not build is reported
    with the compiler's message and left out, and the other programs still run."""
    need_gcc()
    from vuser.commands.run import _buildable
    from vuser.guest import paths
    from vuser.guest.manifest import BootPlan

    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    (src / "broken.c").write_text('#include "lib/vuser.h"\nint main(void) { return nope_y; }\n')
    monkeypatch.setattr(paths, "GUEST_TESTS", src)
    monkeypatch.setenv("VUSER_CACHE", str(tmp_path / "cache"))
    built = []
    real = __import__("vuser.guest.programs", fromlist=["x"]).build_programs

    def spy(names, *a, **kw):
        built.append(list(names))
        return real(names, *a, **kw)

    monkeypatch.setattr("vuser.guest.programs.build_programs", spy)
    plans = [BootPlan((), ("environment",), 300.0)]
    assert _buildable(plans) == (plans, []) and built == [["environment"]]
    plans = [BootPlan(("sample",), ("broken", "environment"), 300.0),
             BootPlan((), ("broken",), 300.0)]
    kept, failed = _buildable(plans)
    assert [p.programs for p in kept] == [("environment",)]
    assert [(f.name, f.status) for f in failed] == [("broken", "fail")]
    err = capsys.readouterr().err
    assert "vuser: guest test broken does not build, left out:" in err
    assert "guest-tests/broken.c" in err and "nope_y" in err
