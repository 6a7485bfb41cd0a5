"""The kernel-log lines of a guest console worth showing on a failure.

A failure report shows the end of the guest's console, where kernel messages
(``[  3.88] ...``, and ``/init``'s ``# dmesg: [  3.88] ...`` tail after a
failed program) mix with KTAP. Most kernel messages there are boot chatter:
memory map, ACPI tables, PCI enumeration, clocksource, freed init memory.
``tail()`` drops those, keeping every line that explains a failure (oops,
BUG, WARNING, panic, call traces and register dumps, segfaults, DMAR/IOMMU
faults, hung tasks, OOM kills, vuser's own lines), and, when none of them
does, the last few kernel lines before the end; lines that are not kernel
messages (KTAP, a shell) are all kept.
"""

from __future__ import annotations

import re

__all__ = ["is_kernel_line", "explains", "is_noise", "tail"]

_KERNEL = re.compile(r"^(?:# dmesg: )?\[\s*\d+\.\d+\]")
_EXPLAINS = re.compile(
    r"Oops|\bBUG\b|WARNING|[Pp]anic|Call Trace|</?TASK>|</?IRQ>|^\s*(?:\? )?[\w.]+\+0x[0-9a-f]+/0x"
    r"|\b(?:RIP|RSP|RAX|RDX|RBP|R10|R13|CR2|Code):|Modules linked in|CPU: \d+ PID|Hardware name"
    r"|segfault|general protection|traps:|unable to handle|page fault"
    r"|DMAR|DRHD|\bdmar\d|PASID|\b[Ff]aults?\b|vuser|vfio|\buio|\bSVA\b|insmod|module"
    r"|hung_task|blocked for more than|stall|soft lockup|LOCKUP|Out of memory|Killed process"
    r"|oom-kill|\b[Ee]rrors?\b|\b[Ff]ailed\b|refused|[Tt]ainted|sysrq|NMI backtrace")
KEEP_LAST = 6  # kernel lines before the end kept when none explains anything


def is_kernel_line(line: str) -> bool:
    return bool(_KERNEL.match(line))


def _message(line: str) -> str:
    return _KERNEL.sub("", line, count=1).strip()


def explains(line: str) -> bool:
    """A kernel line that can explain a failure."""
    return bool(_EXPLAINS.search(_message(line)))


def is_noise(line: str) -> bool:
    """A kernel line that explains nothing (boot chatter: memory map, ACPI, PCI, clocks...)."""
    return is_kernel_line(line) and (not explains(line) or "ommand line:" in line)


def tail(text: str, lines: int = 40, keep_last: int = KEEP_LAST) -> str:
    """The last ``lines`` lines of ``text`` once boot chatter is dropped (module doc).

    A line saying how many were dropped takes their place.
    """
    all_lines = text.rstrip("\n").splitlines()
    kernel = [i for i, ln in enumerate(all_lines) if is_kernel_line(ln)]
    droppable = set(kernel)
    if keep_last and all(is_noise(all_lines[i]) for i in kernel):
        droppable -= set(kernel[-keep_last:])  # nothing explains: show how the log ended
    kept: list[str] = []
    dropped = 0
    for i, ln in enumerate(all_lines):
        if i in droppable and is_noise(ln):
            dropped += 1
            continue
        if dropped:
            kept.append(f"[... {dropped} line(s) of boot messages left out]")
            dropped = 0
        kept.append(ln)
    return "\n".join(kept[-lines:])
