"""Guest test cases as pytest items.

A manifest (``tests/guest/guest_tests.toml``) names each guest test program
(``guest-tests/<name>.c``) with the vuser devices its guest boots against::

    [enumerate]
    devices = ["sample"]
    timeout = 300       # seconds the guest may run
    alone = false       # true: never share a guest with other programs
    iommu = "user"      # "kernel": the guest kernel owns the vuser-iommu
    append = []         # extra kernel command line words
    kernel = "debian:sid"   # optional: another guest kernel
    program = "enumerate"   # optional: the program the table runs (default: its name)

(``vuser.guest.manifest`` reads it.) Items are named after the table, so one
program can run in two tables (say, once on each kernel).
Collection builds the listed programs, each on its own (host gcc, each cached
by its own inputs), and reads the cases each declares from its
``.vuser_cases`` ELF section, so every case is an item before anything
boots: ``guest_tests.toml::enumerate::find_device``. A program that does not
compile is one failing item per table that runs it, carrying the compiler's
message; the other programs collect and run.

Programs with the same devices, ``iommu``, ``append`` and ``kernel`` share one
guest (a *boot group*): the
first item of any of them builds the image and boots the guest once
(``vuser.qemu.launcher.launch``) running every program of the group that has
a selected item, one after the other (timeout: the sum of theirs). Each item
then reads its case's KTAP line: ``ok`` passes, ``not ok`` fails, ``# SKIP``
skips, ``# TODO`` xfails. A case that was declared but never reported fails,
saying whether it was the one running when the program died (and how: a
signal is decoded from ``/init``'s exit status) or the guest timed out, or
which case was; with the guest's end, the console tail without boot
messages (``vuser.guest.klog``) and, for a hung guest, its user tasks' stacks
(SysRq, ``vuser.guest.postmortem``). One more item per program,
``guest_exit``, fails when the guest did not end cleanly through
isa-debug-exit with a status that agrees with the results of the programs it
ran (timeout, server death, panic, crash after the last case).

Items are marked ``guest``. They skip only when no QEMU can be found or
provisioned, or no host gcc can build the guest tests, and say so.

Hook it up from a ``conftest.py``: ``from vuser.guest.pytest_plugin import
pytest_collect_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vuser.errors import UserError
from vuser.guest import klog, ktap, paths, postmortem, programs
from vuser.guest.manifest import ProgramSpec, load_manifest

__all__ = ["MANIFEST_NAME", "pytest_collect_file", "GuestManifest", "GuestProgramNode", "BootGroup",
           "GuestCaseItem", "GuestExitItem", "ProgramSpec", "load_manifest"]

MANIFEST_NAME = "guest_tests.toml"
EXIT_ITEM = "guest_exit"
# pytest-timeout budget of the item that boots: image (first run: download),
# QEMU (first run: provisioning) and the guest itself.
SETUP_ALLOWANCE_S = 1200.0
CONSOLE_TAIL = 40


class GuestFailure(Exception):
    """A guest case or guest run failed; the message is the whole report."""


@dataclass
class _Run:
    """The outcome of booting one program's guest, shared by its items."""

    skip: str | None = None  # a missing prerequisite
    error: str | None = None  # the image or the launch failed before the guest ran
    result: Any = None  # vuser.qemu.launcher.GuestResult
    program: ktap.KtapResult | None = None
    doc: ktap.KtapDocument | None = None
    programs: tuple[str, ...] = ()  # every program the guest ran (its boot group)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name == MANIFEST_NAME:
        return GuestManifest.from_parent(parent, path=file_path)
    return None


class GuestManifest(pytest.File):
    """``guest_tests.toml``: one ``GuestProgramNode`` per guest test program."""

    def collect(self):
        specs = load_manifest(self.path)
        try:
            names = programs.program_names(paths.GUEST_TESTS)
            wanted = sorted({s.program_name for s in specs.values() if not s.opt_in} & set(names))
            # Each on its own: a broken one fails alone.
            progs = programs.build_programs(wanted, paths.GUEST_TESTS)
        except UserError as e:
            if "gcc not found" in str(e):
                yield _SkipItem.from_parent(self, name="build_guest_tests",
                                            reason=f"prerequisite missing: {e}")
                return
            raise
        groups: dict[tuple[str, ...], BootGroup] = {}
        listed = {spec.program_name for spec in specs.values()}
        for name in sorted(set(names) - listed):
            yield _ErrorItem.from_parent(
                self, name=name,
                message=f"guest test {name} is not in {self.path.name}: add a [{name}] "
                        "table saying which devices its guest needs")
        for name, spec in sorted(specs.items()):
            if spec.opt_in:  # listed, run only when asked for (make soak)
                continue
            prog = progs.tests.get(spec.program_name)
            if prog is None:
                why = progs.failed.get(spec.program_name)
                yield _ErrorItem.from_parent(
                    self, name=name,
                    message=why or f"{self.path.name} lists [{name}] but there is no "
                                   f"guest-tests/{spec.program_name}.c")
                continue
            group = groups.setdefault(spec.boot_key(), BootGroup(spec.devices, spec))
            node = GuestProgramNode.from_parent(self, name=name, spec=spec, cases=prog.cases,
                                                group=group)
            group.nodes.append(node)
            yield node


class BootGroup:
    """Programs that share one guest: same devices, iommu and append (module doc)."""

    def __init__(self, devices: tuple[str, ...], spec: ProgramSpec | None = None) -> None:
        self.devices = devices
        self.kernel_iommu = spec.kernel_iommu if spec else False
        self.append = spec.append if spec else ()
        self.kernel = spec.kernel if spec else None
        self.nodes: list[GuestProgramNode] = []
        self._runs: dict[str, _Run] | None = None

    @property
    def timeout(self) -> float:
        """Upper bound of the group's guest run: every member's timeout."""
        return sum(n.spec.timeout for n in self.nodes)

    def run_for(self, node: GuestProgramNode) -> _Run:
        if self._runs is None:
            self._runs = self._boot(node.session)
        run = self._runs.get(node.name)
        if run is None:  # selected after the group booted (cannot happen in one session)
            run = self._boot_members([node])[node.name]
            self._runs[node.name] = run
        return run

    def _boot(self, session: pytest.Session) -> dict[str, _Run]:
        selected = {item.parent for item in getattr(session, "items", ())}
        members = [n for n in self.nodes if n in selected] or list(self.nodes)
        return self._boot_members(members)

    def _boot_members(self, members: list[GuestProgramNode]) -> dict[str, _Run]:
        from vuser.guest.image import build_image
        from vuser.qemu.find import find_qemu
        from vuser.qemu.launcher import launch

        names = [n.name for n in members]
        progs = list(dict.fromkeys(n.spec.program_name for n in members))
        try:
            qemu = find_qemu(show_progress=False)
        except UserError as e:
            run = _Run(skip=f"prerequisite missing: no QEMU with vfio-user-pci: {e}")
            return dict.fromkeys(names, run)
        try:
            image = build_image(tests=progs, progress=False, kernel=self.kernel,
                                guest_tests=paths.GUEST_TESTS)
            result = launch(image, devices=list(self.devices),
                            timeout=sum(n.spec.timeout for n in members), qemu=qemu,
                            kernel_iommu=self.kernel_iommu, kernel_args=self.append)
        except UserError as e:
            return dict.fromkeys(names, _Run(error=str(e)))
        doc = ktap.parse(result.console)
        return {n.name: _Run(result=result, doc=doc, program=doc.find(n.spec.program_name),
                             programs=tuple(progs)) for n in members}


class GuestProgramNode(pytest.Collector):
    """One guest test program: its cases, then ``guest_exit``; boots with its group."""

    def __init__(self, *, spec: ProgramSpec, cases: tuple[str, ...], group: BootGroup,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.cases = cases
        self.group = group

    def collect(self):
        for case in self.cases:
            yield GuestCaseItem.from_parent(self, name=case)
        yield GuestExitItem.from_parent(self, name=EXIT_ITEM)

    def run(self) -> _Run:
        return self.group.run_for(self)


def _guest_end(run: _Run) -> str:
    r = run.result
    if r.error:
        return r.error
    return f"the guest exited through isa-debug-exit with status {r.exit_status}"


def _report(run: _Run, headline: str, details: list[str] = ()) -> str:
    r = run.result
    parts = [headline, *details, f"guest: {_guest_end(run)}"]
    if r.server_died or (r.error and r.server_log):
        tail = "\n".join(r.server_log.rstrip().splitlines()[-15:])
        parts.append(f"--- server log (tail) ---\n{tail}")
    console = r.console
    if getattr(r, "task_dump", "") and (at := console.find(r.task_dump)) >= 0:
        console = console[:at]  # the dump has its own section
    parts.append(f"--- console (last {CONSOLE_TAIL} lines, boot messages left out) ---\n"
                 f"{klog.tail(console, CONSOLE_TAIL)}")
    if tasks := postmortem.user_tasks(getattr(r, "task_dump", "")):
        parts.append(f"--- guest user tasks when it was stopped (SysRq t, l) ---\n{tasks}")
    return "\n".join(parts)


class _GuestItem(pytest.Item):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.add_marker(pytest.mark.guest)
        self.add_marker(pytest.mark.timeout(self.parent.group.timeout + SETUP_ALLOWANCE_S))

    def _outcome(self) -> _Run:
        run = self.parent.run()
        if run.skip:
            pytest.skip(run.skip)
        if run.error:
            raise GuestFailure(f"the guest could not be started: {run.error}")
        self.add_report_section("call", "guest console", run.result.console)
        return run

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"guest {self.parent.name}::{self.name}"


class GuestCaseItem(_GuestItem):
    """One declared case, judged by its KTAP result line."""

    def runtest(self) -> None:
        run = self._outcome()
        case = run.program.find(self.name) if run.program else None
        if case is None or case.status is None:
            raise GuestFailure(_report(run, _unreported(run, self.parent.cases,
                                                        self.parent.spec.program_name,
                                                        self.name)))
        if case.status is ktap.Status.PASS:
            return
        if case.status is ktap.Status.SKIP:
            pytest.skip(f"guest: {case.reason or 'skipped'}")
        if case.status is ktap.Status.XFAIL:
            pytest.xfail(f"guest: {case.reason or 'TODO'}")
        details = [f"  # {d}" for d in case.diagnostics] + [f"  | {o}" for o in case.output]
        raise GuestFailure(_report(run, f"not ok {case.number} {self.name}"
                                        + (f" # {case.reason}" if case.reason else ""), details))


def _unreported(run: _Run, declared: tuple[str, ...], program: str, case: str) -> str:
    """Why ``case`` has no KTAP line: the program died or hung in it, or before it."""
    prog = run.program
    if prog is None:
        return f"case {case} was declared but never reported (the program never started)"
    running = postmortem.running_case(declared, prog)
    if run.result.timed_out and not prog.complete:
        how, what = "the guest timed out", "still running"
    else:
        how = (postmortem.program_death(declared, prog) or "stopped").split(" during case ")[0]
        how, what = f"program {program} {how}", "running"
    if case == running:
        return f"case {case} was {what} when {how}"
    return f"case {case} never ran: {how} during case {running}"


class GuestExitItem(_GuestItem):
    """The guest ended through isa-debug-exit, consistently with its results."""

    def runtest(self) -> None:
        run = self._outcome()
        r = run.result
        if r.error:
            raise GuestFailure(_report(run, "the guest did not end cleanly"))
        prog = run.program
        if prog is None or prog.status is None:
            raise GuestFailure(_report(run, f"the guest never reported program {self.parent.name}"))
        failed = prog.status is ktap.Status.FAIL
        ran = [run.doc.find(n) for n in run.programs] if run.programs else [prog]
        any_failed = any(p is None or p.status is not ktap.Status.PASS for p in ran)
        if r.exit_status != int(any_failed):
            others = f" and the {len(ran) - 1} other program(s) of its guest" if len(ran) > 1 else ""
            raise GuestFailure(_report(run, f"exit status {r.exit_status} disagrees with the "
                                            f"program's result ({prog.status.value}){others}"))
        if failed and (death := postmortem.program_death(self.parent.cases, prog)):
            raise GuestFailure(_report(run, f"program {self.parent.spec.program_name} {death}"))
        if failed and all(c.status in (ktap.Status.PASS, ktap.Status.SKIP) for c in prog.subtests):
            diag = "; ".join(d for d in prog.diagnostics[-3:] if not d.startswith("dmesg:"))
            raise GuestFailure(_report(run, f"every case passed but the program failed: "
                                            f"{postmortem.describe_exit(prog.reason or 'no reason')}"
                                            f" {diag}".rstrip()))


class _SkipItem(pytest.Item):
    def __init__(self, *, reason: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.reason = reason
        self.add_marker(pytest.mark.guest)

    def runtest(self) -> None:
        pytest.skip(self.reason)


class _ErrorItem(pytest.Item):
    def __init__(self, *, message: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.message = message

    def runtest(self) -> None:
        raise GuestFailure(self.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)
