"""What a guest test program was doing when it died or hung, for reports.

- ``/init`` prints ``not ok N prog # exit status S`` for a program that
  failed; a shell reports a process killed by signal N as status 128+N
  (POSIX ``wait``/``$?``), so 139 is SIGSEGV.
- A program prints each case's KTAP line after the case ran
  (``guest-tests/lib/runner.c``), so the case that was running when it died
  is the first declared case with no line after the last one reported.
- A hung guest's SysRq task dump (``vuser.qemu.sysrq``) lists every task;
  the report keeps the user tasks (not children of ``kthreadd``, pid 2) and
  the backtraces of CPUs that were not idle.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

from vuser.guest import ktap

__all__ = ["exit_signal", "describe_exit", "running_case", "program_death", "user_tasks"]

_EXIT = re.compile(r"exit status (\d+)")
_TASK = re.compile(r"task:(\S+)\s+state:\S+.*?\bpid:\s*(\d+)\s+ppid:\s*(\d+)")
_NMI = re.compile(r"NMI backtrace for cpu \d+")
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
# What follows the task blocks in a dump: the end of a block.
_END = re.compile(r"$|sysrq:|Sched Debug|runnable tasks:|Showing busy|\s*[SRDIT]\s+\S+\s+\d+\s+\d")


def exit_signal(status: int) -> str | None:
    """``SIGSEGV`` for 139 (128 + 11); None for a status that is not 128 + a signal."""
    if not 128 < status < 128 + 65:
        return None
    try:
        return signal.Signals(status - 128).name
    except ValueError:
        return f"signal {status - 128}"


def describe_exit(reason: str) -> str:
    """``exit status 139`` -> ``killed by SIGSEGV (exit status 139)``; other text unchanged."""
    m = _EXIT.search(reason)
    if not m or (sig := exit_signal(int(m.group(1)))) is None:
        return reason
    return reason.replace(m.group(0), f"killed by {sig} ({m.group(0)})", 1)


def running_case(declared: Sequence[str], result: ktap.KtapResult | None) -> str | None:
    """The first declared case without a KTAP line after the last case reported."""
    reported = {c.name for c in result.subtests if c.complete} if result else set()
    last = max((i for i, c in enumerate(declared) if c in reported), default=-1)
    return next((c for c in declared[last + 1:] if c not in reported), None)


def program_death(declared: Sequence[str], result: ktap.KtapResult | None,
                  timed_out: bool = False) -> str | None:
    """One line for a program that stopped before reporting every declared case
    (``killed by SIGSEGV (exit status 139) during case segfaults``), else None.
    ``timed_out``: the guest was stopped at its timeout."""
    case = running_case(declared, result)
    if case is None:
        return None
    if timed_out and result is not None and not result.complete:
        how = "timed out"
    elif result is not None and result.complete and result.reason:
        how = describe_exit(result.reason)
    elif result is not None and result.complete:
        how = f"ended ({result.status.value})"
    else:
        how = "never finished (the guest stopped)" if result else "never started"
        if not result:
            return f"{how}; its first case is {case}"
    return f"{how} during case {case}"


def user_tasks(dump: str) -> str:
    """The user tasks' blocks (and non-idle CPU backtraces) of a SysRq dump, timestamps dropped."""
    out: list[str] = []
    block: list[str] = []
    keep = False

    def close() -> None:
        idle = block and _NMI.search(block[0]) and any("swapper" in ln for ln in block[:3])
        if keep and not idle:  # an idle CPU's backtrace says nothing
            out.extend(block)
        block.clear()

    for raw in dump.splitlines():
        line = _STAMP.sub("", raw.rstrip())
        if m := _TASK.search(line):
            close()
            keep = int(m.group(2)) != 2 and int(m.group(3)) != 2  # not kthreadd or its children
        elif _NMI.search(line):
            close()
            keep = True
        elif _END.match(line):
            close()
            keep = False
        if keep:
            block.append(line)
    close()
    return "\n".join(out)
