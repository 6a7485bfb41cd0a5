"""What a ``vuser run`` guest reported (a helper of the ``run`` command, not a
command itself: the CLI skips modules whose name starts with ``_``): its
programs and cases from the KTAP on its console, the summary printed at the
end, and how a guest that crashed or hung ended (the case a program died in,
its signal, the guest's tasks).

KTAP: Documentation/dev-tools/ktap.rst (``vuser.guest.ktap`` parses it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

__all__ = ["ProgramResult", "counts", "explain", "print_summary", "report", "results"]


@dataclass
class ProgramResult:
    """One guest test program's outcome in a guest's KTAP."""

    name: str
    status: str = "unfinished"  # pass, fail, skip, xfail, unfinished, missing
    reason: str = ""
    cases: list[tuple[str, str, str]] = field(default_factory=list)  # (name, status, reason)
    planned: int | None = None  # cases the program announced

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip", "xfail")


def results(console: str) -> list[ProgramResult]:
    """The programs a guest's console reports, in order, one per name; a
    program the top-level plan announced but never reported is ``missing``."""
    from vuser.guest import ktap

    doc = ktap.parse(console)
    progs: dict[str, ProgramResult] = {}
    for r in doc.results:
        p = progs.setdefault(r.name, ProgramResult(r.name))
        if r.subtests:
            p.cases = [(c.name, c.status.value if c.status else "unfinished", c.reason)
                       for c in r.subtests]
            p.planned = r.plan
        if r.status is not None:
            p.status, p.reason = r.status.value, r.reason
    out = list(progs.values())
    if doc.plan is not None and len(out) < doc.plan:
        out.append(ProgramResult(f"({doc.plan - len(out)} more program(s) announced)", "missing"))
    return out


def counts(p: ProgramResult) -> str:
    """'14 cases passed' or '7 passed, 1 failed, 1 not run'."""
    tally: dict[str, int] = {}
    for _, status, _ in p.cases:
        tally[status] = tally.get(status, 0) + 1
    not_run = (p.planned or 0) - len(p.cases)
    if not_run > 0:
        tally["not run"] = not_run
    if not tally:
        return ""
    if set(tally) == {"pass"}:
        return f"{tally['pass']} case{'s' if tally['pass'] != 1 else ''} passed"
    words = {"pass": "passed", "fail": "failed", "skip": "skipped", "xfail": "expected failure",
             "unfinished": "unfinished"}
    return ", ".join(f"{n} {words.get(s, s)}" for s, n in tally.items())


def print_summary(programs: list[ProgramResult]) -> None:
    """One line per program; the cases that did not pass below it."""
    from rich.console import Console
    from rich.markup import escape

    out = Console(stderr=False, highlight=False)
    colour = {"pass": "green", "skip": "yellow", "xfail": "yellow"}
    width = max((len(p.name) for p in programs), default=0)
    out.print("[bold]guest test results[/]")
    for p in programs:
        line = f"{escape(p.name):<{width}}  {counts(p)}".rstrip()
        extra = f"  # {escape(p.reason)}" if p.reason else ""
        out.print(f"  [{colour.get(p.status, 'red')}]{p.status:<10}[/] {line}{extra}",
                  soft_wrap=True)
        for name, status, reason in p.cases:
            if status != "pass":
                why = f"  # {escape(reason)}" if reason else ""
                out.print(f"      [{colour.get(status, 'red')}]{status:<10}[/] {escape(name)}{why}",
                          soft_wrap=True)


def explain(programs: list[ProgramResult], declared: dict, console: str,
             timed_out: bool = False) -> None:
    """Name the case a program died or hung in, and decode a signal's exit status."""
    from vuser.guest import ktap, postmortem

    doc = ktap.parse(console)
    for p in programs:
        cases = declared.get(p.name) if isinstance(declared, dict) else None
        if not cases or p.status in ("pass", "skip", "xfail"):
            continue
        death = postmortem.program_death(tuple(cases), doc.find(p.name), timed_out)
        p.reason = death if death else postmortem.describe_exit(p.reason)


def report(result, quiet: bool, declared: dict | None = None
            ) -> tuple[int, str | None, list[ProgramResult]]:
    """One guest's outcome: (exit status, error or None, its programs)."""
    from vuser.guest import klog, postmortem

    programs = results(result.console)
    explain(programs, declared or {}, result.console, bool(getattr(result, "timed_out", False)))
    for line in result.qemu_log.splitlines():
        if line.strip():
            print(f"vuser: QEMU: {line.strip()}", file=sys.stderr)
    if result.error:
        # A crash or a hang: the test failed; show how the console ended.
        dump = getattr(result, "task_dump", "")
        if quiet or result.timed_out:
            console = result.console
            if dump and (at := console.find(dump)) >= 0:
                console = console[:at]
            tail = klog.tail(console, 15)
            print("vuser: last console lines:\n" + (tail or "(none)"),
                  file=sys.stderr)
        if tasks := postmortem.user_tasks(dump):
            print("vuser: the guest's user tasks when it was stopped (SysRq t, l):\n" + tasks,
                  file=sys.stderr)
        return 1, result.error, programs
    if not programs:
        return 1, f"the guest printed no KTAP results (exit status {result.exit_status})", programs
    status = result.exit_status
    if status == 0 and not all(p.ok for p in programs):
        return 1, "the guest exited 0 but its KTAP results show failures or missing tests", programs
    print(f"vuser: guest exited with status {status} in {result.duration_s:.1f} s", file=sys.stderr)
    return status, None, programs
