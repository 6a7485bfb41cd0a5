"""vuser.guest.pytest_plugin, without QEMU: the launcher is replaced by scripted
guests, and an inner pytest run (pytester) collects and judges their consoles."""

from __future__ import annotations

import shutil

import pytest

from guest_helpers import need_gcc
from vuser.errors import UserError
from vuser.guest import image as guest_image  # imported here: the inner runs must see the patch
from vuser.guest import programs
from vuser.qemu import find as qemu_find
from vuser.qemu import launcher
from vuser.qemu.launcher import GuestResult

pytest_plugins = ["pytester"]

MANIFEST = """
[enumerate]
devices = ["sample"]
timeout = 50

[environment]
devices = []
"""


def manifest(declared) -> str:
    """MANIFEST, plus every other real guest program, each in a guest of its own."""
    extra = "".join(f'\n[{n}]\ndevices = ["vuser-dma"]\nalone = true\n'
                    for n in sorted(declared) if n not in ("enumerate", "environment"))
    return MANIFEST + extra
CONFTEST = "from vuser.guest.pytest_plugin import pytest_collect_file  # noqa: F401\n"


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """The guest programs built once: program -> declared cases, and the cache holding them."""
    need_gcc()
    cache = tmp_path_factory.mktemp("cache")
    progs = programs.build_programs(cache=cache / "guest")
    return {n: list(p.cases) for n, p in progs.tests.items()}, cache


def run(pytester, *args: str):
    """An inner pytest run, without the plugins that only slow it down."""
    return pytester.runpytest("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args)


def ktap(program: str, lines: list[str], result: str | None) -> str:
    body = ["    KTAP version 1", f"    # Subtest: {program}", f"    1..{len(lines)}"]
    body += [f"    {ln}" for ln in lines]
    return "\n".join(["KTAP version 1", "1..1", *body] + ([result] if result else [])) + "\n"


def combine(results: list[GuestResult]) -> GuestResult:
    """One guest running several scripted programs: their subtests in one document,
    the top-level results renumbered, the exit status of the worst."""
    lines = ["KTAP version 1", f"1..{len(results)}"]
    for i, r in enumerate(results, 1):
        for ln in r.console.splitlines()[2:]:
            if ln.startswith(("ok 1 ", "not ok 1 ")):
                ln = ln.replace(" 1 ", f" {i} ", 1)
            lines.append(ln)
    status = [r.exit_status for r in results]
    worst = None if None in status else max(status)
    errors = [r.error for r in results if r.error]
    return GuestResult(exit_status=worst, console="\n".join(lines) + "\n",
                       error=errors[0] if errors else None)


class _Launches(list):
    """The scripted launches: (programs, devices, timeout, append); ``modes``:
    programs -> (kernel_iommu, kernel_args)."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[str, tuple[bool, tuple[str, ...]]] = {}


@pytest.fixture
def guest(pytester, monkeypatch, cases):
    """Script what each program's guest prints; returns (set_script, launches)."""
    declared, cache = cases
    monkeypatch.setenv("VUSER_CACHE", str(pytester.path / "cache"))
    shutil.copytree(cache, pytester.path / "cache")
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "markers =\n    guest: boots a guest\n")
    (pytester.path / "guest_tests.toml").write_text(manifest(declared))
    scripts: dict[str, GuestResult | Exception] = {}
    launches = _Launches()
    monkeypatch.setattr(qemu_find, "find_qemu", lambda **kw: "fake-qemu")

    def fake_launch(image, devices, timeout, qemu, kernel_iommu=False, kernel_args=()):
        names = list(image.tests)
        launches.append((",".join(names), devices, timeout, image.append))
        launches.modes[",".join(names)] = (kernel_iommu, tuple(kernel_args))
        whats = [scripts[n] for n in names]
        for what in whats:
            if isinstance(what, Exception):
                raise what
        return whats[0] if len(whats) == 1 else combine(whats)

    monkeypatch.setattr(launcher, "launch", fake_launch)
    monkeypatch.setattr(guest_image, "build_image", lambda tests, progress, **kw: _Image(tests))

    class _Image:
        def __init__(self, tests):
            self.tests = {t: declared[t] for t in tests}
            self.append = f"console=ttyS0 vuser.tests={','.join(tests)}"

    def all_ok(program: str) -> GuestResult:
        lines = [f"ok {i} {c}" for i, c in enumerate(declared[program], 1)]
        return GuestResult(exit_status=0, console=ktap(program, lines, f"ok 1 {program}"))

    return scripts, launches, declared, all_ok


def test_every_declared_case_is_an_item_and_passes(guest, pytester):
    scripts, launches, declared, all_ok = guest
    scripts.update({n: all_ok(n) for n in declared})
    res = run(pytester)
    total = sum(len(c) + 1 for c in declared.values())  # + guest_exit per program
    res.assert_outcomes(passed=total)
    # One boot per device list (here every program is alone), with its devices and timeout.
    assert ("enumerate", ["sample"], 50.0, "console=ttyS0 vuser.tests=enumerate") in launches
    assert ("environment", [], 300.0, "console=ttyS0 vuser.tests=environment") in launches
    assert len(launches) == len(declared)
    collected = run(pytester, "--collect-only", "-m", "guest").stdout.str()
    assert "guest_tests.toml::enumerate::find_device" in collected


def test_fail_skip_unreported_and_dead_guest(guest, pytester):
    scripts, _, declared, all_ok = guest
    first = declared["enumerate"][:3]
    lines = [f"ok 1 {first[0]}", "# STATUS 0x4", f"not ok 2 {first[1]}",
             f"ok 3 {first[2]} # SKIP no uio device"]
    console = ktap("enumerate", lines, None) + "[   9.1] Kernel panic - not syncing: oops\n"
    scripts["enumerate"] = GuestResult(
        exit_status=None, console=console,
        error="the guest stopped without writing isa-debug-exit (reboot, power-off or panic)")
    scripts["environment"] = all_ok("environment")
    res = run(pytester, "-k", "enumerate", "-rs")
    never = len(declared["enumerate"]) - 3
    res.assert_outcomes(passed=1, failed=1 + never + 1, skipped=1)
    out = res.stdout.str()
    assert f"not ok 2 {first[1]}" in out and "# STATUS 0x4" in out
    assert "guest: no uio device" in out
    running = declared["enumerate"][3]
    assert f"case {running} was running when program enumerate never finished (the guest " \
        "stopped)" in out
    if len(declared["enumerate"]) > 4:
        assert f"case {declared['enumerate'][4]} never ran: program enumerate never finished " \
            f"(the guest stopped) during case {running}" in out
    assert "Kernel panic - not syncing" in out  # the console tail
    assert "the guest did not end cleanly" in out


def test_exit_status_must_agree_with_results(guest, pytester):
    scripts, _, declared, all_ok = guest
    r = all_ok("environment")
    r.exit_status = 1
    scripts["environment"] = r
    res = run(pytester, "-k", "environment")
    res.assert_outcomes(passed=len(declared["environment"]), failed=1)
    assert "exit status 1 disagrees" in res.stdout.str()


def test_program_that_crashed_after_its_cases(guest, pytester):
    scripts, _, declared, _ = guest
    lines = [f"ok {i} {c}" for i, c in enumerate(declared["environment"], 1)]
    scripts["environment"] = GuestResult(
        exit_status=1, console=ktap("environment", lines, "not ok 1 environment # exit status 139"))
    res = run(pytester, "-k", "environment")
    res.assert_outcomes(passed=len(declared["environment"]), failed=1)
    assert "every case passed but the program failed: killed by SIGSEGV (exit status 139)" \
        in res.stdout.str()


def test_a_program_that_segfaults_mid_case(guest, pytester):
    """The case it died in is named, and the status is decoded (139: SIGSEGV)."""
    scripts, _, declared, all_ok = guest
    cases = declared["environment"]
    lines = [f"ok 1 {cases[0]}", "# about to crash"]
    console = (ktap("environment", lines, None) + "Segmentation fault\n"
               "# dmesg: [    3.883079] Run /init as init process\n"
               "# dmesg: [    5.101229] environment[102]: segfault at 8 ip 00000000004016d4\n"
               "not ok 1 environment # exit status 139\n")
    scripts["environment"] = GuestResult(exit_status=1, console=console)
    res = run(pytester, "-k", "environment")
    res.assert_outcomes(passed=1, failed=len(cases))  # the rest, and guest_exit
    out = res.stdout.str()
    assert f"case {cases[1]} was running when program environment killed by SIGSEGV " \
        "(exit status 139)" in out
    assert f"case {cases[2]} never ran: program environment killed by SIGSEGV (exit status " \
        f"139) during case {cases[1]}" in out
    assert f"program environment killed by SIGSEGV (exit status 139) during case {cases[1]}" \
        in out
    assert "every case passed" not in out
    assert "segfault at 8" in out and "[... 1 line(s) of boot messages left out]" in out


def test_a_hung_guest_reports_its_user_tasks(guest, pytester):
    """A timed-out guest: the case still running, and the user tasks of its SysRq dump."""
    from pathlib import Path

    scripts, _, declared, all_ok = guest
    cases = declared["environment"]
    transcript = (Path(__file__).parent / "data" / "console_hangs.txt").read_text()
    dump = transcript[transcript.index("[   21.818743] sysrq"):]
    console = ktap("environment", [f"ok 1 {cases[0]}"], None) + dump
    scripts["environment"] = GuestResult(exit_status=None, console=console, timed_out=True,
                                         error="guest timed out after 25 s, guest running",
                                         task_dump=dump)
    res = run(pytester, "-k", "environment")
    out = res.stdout.str()
    assert f"case {cases[1]} was still running when the guest timed out" in out
    assert "--- guest user tasks when it was stopped (SysRq t, l) ---" in out
    assert "task:hangs" in out and "__do_sys_pause" in out
    assert "task:kthreadd" not in out.split("Captured guest console")[0]


def test_no_qemu_skips_with_the_reason(guest, pytester, monkeypatch):
    def no_qemu(**kw):
        raise UserError("no qemu-system-x86_64 in PATH and $VUSER_NO_PROVISION is set")

    monkeypatch.setattr(qemu_find, "find_qemu", no_qemu)
    res = run(pytester, "-rs", "-k", "environment")
    res.assert_outcomes(skipped=len(guest[2]["environment"]) + 1)
    assert "prerequisite missing: no QEMU with vfio-user-pci" in res.stdout.str()


def test_launch_failure_fails_every_item(guest, pytester):
    scripts, _, declared, _ = guest
    scripts["environment"] = UserError("the vuser server exited with 1 before its sockets were ready")
    res = run(pytester, "-k", "environment")
    res.assert_outcomes(failed=len(declared["environment"]) + 1)
    assert "the guest could not be started: the vuser server exited" in res.stdout.str()


def test_manifest_and_programs_must_match(guest, pytester):
    (pytester.path / "guest_tests.toml").write_text('[enumerate]\n[ghost]\ndevices = []\n')
    res = run(pytester, "--collect-only")
    out = res.stdout.str()
    assert "guest_tests.toml::environment" in out and "guest_tests.toml::ghost" in out
    res = run(pytester, "-k", "ghost or environment and not exit")
    out = res.stdout.str()
    assert "guest test environment is not in guest_tests.toml" in out
    assert "lists [ghost] but there is no guest-tests/ghost.c" in out


def test_a_broken_program_fails_only_its_own_items(guest, pytester, monkeypatch, tmp_path):
    """A guest-tests/*.c that does not compile: one failing item per table that runs it,
    with the compiler's message; every other program collects and runs."""
    from vuser.guest import paths

    scripts, launches, declared, all_ok = guest
    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    (src / "broken.c").write_text('#include "lib/vuser.h"\nint main(void) { return nope_x; }\n')
    monkeypatch.setattr(paths, "GUEST_TESTS", src)
    (pytester.path / "guest_tests.toml").write_text(
        '[environment]\ndevices = []\n[broken]\ndevices = []\n'
        '[broken_again]\ndevices = []\nprogram = "broken"\n'
        + "".join(f'[{n}]\ndevices = []\nopt_in = true\n' for n in declared if n != "environment"))
    scripts["environment"] = all_ok("environment")
    res = run(pytester)
    res.assert_outcomes(passed=len(declared["environment"]) + 1, failed=2)
    out = res.stdout.str()
    assert "FAILED guest_tests.toml::broken - building guest test broken.c failed:" in out
    assert "FAILED guest_tests.toml::broken_again - building guest test broken.c failed:" in out
    assert "guest-tests/broken.c" in out and "nope_x" in out
    assert [ln[0] for ln in launches] == ["environment"]  # the broken one never boots


def test_bad_manifest_is_a_collection_error(guest, pytester):
    (pytester.path / "guest_tests.toml").write_text('[enumerate]\ndevices = "sample"\n')
    res = run(pytester)
    assert res.ret != 0
    assert "devices must be a list of device types" in res.stdout.str()


def test_programs_with_the_same_devices_share_one_guest(guest, pytester):
    scripts, launches, declared, all_ok = guest
    (pytester.path / "guest_tests.toml").write_text(
        manifest(declared).replace('[environment]\ndevices = []\n',
                                   '[environment]\ndevices = ["sample"]\ntimeout = 70\n'))
    bad = [f"not ok 1 {declared['environment'][0]}"] + [
        f"ok {i} {c}" for i, c in enumerate(declared["environment"][1:], 2)]
    scripts["environment"] = GuestResult(
        exit_status=1, console=ktap("environment", bad, "not ok 1 environment # exit status 1"))
    scripts["enumerate"] = all_ok("enumerate")
    res = run(pytester, "-k", "enumerate or environment")
    # One guest for both; environment's failed case fails, enumerate's exit agrees
    # with the guest's status 1 because a program of its guest failed.
    assert launches == [("enumerate,environment", ["sample"], 120.0,
                         "console=ttyS0 vuser.tests=enumerate,environment")] or \
        launches == [("environment,enumerate", ["sample"], 120.0,
                      "console=ttyS0 vuser.tests=environment,enumerate")]
    res.assert_outcomes(passed=len(declared["enumerate"]) + 1 + len(declared["environment"]),
                        failed=1)
    assert f"not ok 1 {declared['environment'][0]}" in res.stdout.str()


def test_iommu_mode_and_append_split_guests_and_reach_the_launcher(guest, pytester):
    scripts, launches, declared, all_ok = guest
    (pytester.path / "guest_tests.toml").write_text(
        manifest(declared).replace('[environment]\ndevices = []\n',
                                   '[environment]\ndevices = ["sample"]\niommu = "kernel"\n'
                                   'append = ["iommu.strict=1"]\n'))
    scripts.update(enumerate=all_ok("enumerate"), environment=all_ok("environment"))
    res = run(pytester, "-k", "enumerate or environment")
    res.assert_outcomes(passed=len(declared["enumerate"]) + len(declared["environment"]) + 2)
    # Same devices, but another vIOMMU mode and command line: two guests.
    assert sorted(ln[0] for ln in launches) == ["enumerate", "environment"]
    assert launches.modes == {"enumerate": (False, ()),
                              "environment": (True, ("iommu.strict=1",))}


def test_only_selected_programs_of_a_group_boot(guest, pytester):
    scripts, launches, declared, all_ok = guest
    (pytester.path / "guest_tests.toml").write_text(
        manifest(declared).replace('[environment]\ndevices = []\n',
                                   '[environment]\ndevices = ["sample"]\n'))
    scripts.update(enumerate=all_ok("enumerate"), environment=all_ok("environment"))
    res = run(pytester, "-k", "environment")
    res.assert_outcomes(passed=len(declared["environment"]) + 1)
    assert [ln[0] for ln in launches] == ["environment"]


def test_alone_must_be_a_boolean(guest, pytester):
    (pytester.path / "guest_tests.toml").write_text('[enumerate]\nalone = "yes"\n')
    res = run(pytester)
    assert res.ret != 0
    assert "alone must be true or false" in res.stdout.str()


def test_a_table_runs_another_program_on_another_kernel(guest, pytester, monkeypatch):
    """[enumerate_sid] runs enumerate again in its own guest, on the kernel it names;
    its items carry the table's name."""
    scripts, launches, declared, all_ok = guest
    scripts.update({n: all_ok(n) for n in declared})
    path = pytester.path / "guest_tests.toml"
    path.write_text(path.read_text() + '\n[enumerate_sid]\nprogram = "enumerate"\n'
                    'devices = ["sample"]\nkernel = "debian:sid"\ntimeout = 50\n')
    kernels = []
    fake = guest_image.build_image
    monkeypatch.setattr(guest_image, "build_image",
                        lambda tests, progress, **kw: kernels.append((tests, kw.get("kernel")))
                        or fake(tests, progress))
    res = run(pytester)
    total = sum(len(c) + 1 for c in declared.values()) + len(declared["enumerate"]) + 1
    res.assert_outcomes(passed=total)
    assert (["enumerate"], "debian:sid") in kernels and (["enumerate"], None) in kernels
    assert len(launches) == len(declared) + 1
    collected = run(pytester, "--collect-only", "-m", "guest").stdout.str()
    assert "guest_tests.toml::enumerate_sid::find_device" in collected


def test_an_opt_in_program_is_listed_but_not_collected(guest, pytester):
    (pytester.path / "guest_tests.toml").write_text(
        '[environment]\n[enumerate]\nopt_in = true\n')
    out = run(pytester, "--collect-only").stdout.str()
    assert "guest_tests.toml::environment" in out
    assert "enumerate" not in out  # neither an item nor an error
