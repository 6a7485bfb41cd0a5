"""Ask a hung guest for its task stacks with magic SysRq, before it is stopped.

Documentation/admin-guide/sysrq.rst: Alt+SysRq+<key> on the guest's keyboard
(QMP ``send-key``; the q35 machine has an i8042 PS/2 keyboard) runs a SysRq
function. ``/init`` enables them all (``/proc/sys/kernel/sysrq`` = 1; the
kernel's default mask lacks the dump functions) and sets the console
loglevel to 1, so the first key is ``9`` (console loglevel 9: every message
reaches the console), then ``t`` (every task's state and stack) and ``l``
(a backtrace of each active CPU). The dump arrives on the serial console;
``dump()`` returns what the console printed until it has been quiet for a
moment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from vuser.qemu import qmp

log = logging.getLogger(__name__)

__all__ = ["KEYS", "dump"]

KEYS = ("9", "t", "l")
QUIET_S = 1.5  # the console has been quiet this long: the dump is over
MAX_S = 20.0  # at most this long for the whole dump


def _send(qmp_path: Path, key: str) -> None:
    keys = [{"type": "qcode", "data": k} for k in ("alt", "sysrq", key)]
    qmp.call(qmp_path, ("send-key", {"keys": keys}), timeout=2.0)


def dump(qmp_path: Path, console: Callable[[], str], keys: tuple[str, ...] = KEYS,
         quiet_s: float = QUIET_S, max_s: float = MAX_S) -> str:
    """Send Alt+SysRq+``keys`` and return the console text they brought ("" if none)."""
    start = len(console())
    deadline = time.monotonic() + max_s
    try:
        for key in keys:
            _send(qmp_path, key)
            time.sleep(0.2)  # one function at a time: their output does not interleave
    except qmp.QmpError as e:
        log.debug("sysrq: send-key failed: %s", e)
        return ""
    seen, quiet_since = len(console()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = len(console())
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return console()[start:].replace("\r\n", "\n")
