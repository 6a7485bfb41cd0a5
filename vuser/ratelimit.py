"""Rate-limited logging for lines a guest can cause (Linux ``printk_ratelimit``).

A hostile guest can make a device log once per bad descriptor or bad
invalidation, millions of times a second. ``log(logger, level, msg, *args)``
lets each kind of line (its logger and message template) through at most
``BURST`` times per ``INTERVAL`` seconds, as the kernel's ``___ratelimit``
does with its defaults (10 per 5 s), and counts the rest. The first line let
through after some were held back says how many ("N similar lines
suppressed"), and ``stats()`` gives the totals per kind, which
``vuser ctl stats`` shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["log", "stats", "reset", "RateLimiter", "BURST", "INTERVAL"]

BURST = 10
INTERVAL = 5.0


@dataclass
class _Kind:
    begin: float
    printed: int = 0       # lines let through in the current interval
    held: int = 0          # suppressed since the last line let through
    emitted: int = 0       # totals
    suppressed: int = 0


class RateLimiter:
    """``BURST`` lines per ``INTERVAL`` for each key; ``clock`` is injectable."""

    def __init__(self, burst: int = BURST, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.interval, self.clock = burst, interval, clock
        self._kinds: dict[str, _Kind] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(let this line through?, lines held back before it)."""
        now = self.clock()
        k = self._kinds.get(key)
        if k is None:
            k = self._kinds[key] = _Kind(now)
        if now - k.begin >= self.interval:
            k.begin, k.printed = now, 0
        if k.printed < self.burst:
            k.printed += 1
            k.emitted += 1
            held, k.held = k.held, 0
            return True, held
        k.held += 1
        k.suppressed += 1
        return False, 0

    def stats(self) -> dict[str, dict[str, int]]:
        return {key: {"emitted": k.emitted, "suppressed": k.suppressed}
                for key, k in sorted(self._kinds.items())}

    def reset(self) -> None:
        self._kinds.clear()


_LIMITER = RateLimiter()


def log(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """``logger.log(level, msg, *args)``, rate-limited per (logger, ``msg``)."""
    if not logger.isEnabledFor(level):
        return
    ok, held = _LIMITER.allow(f"{logger.name}: {msg}")
    if ok:
        if held:
            msg += f" ({held} similar lines suppressed)"
        logger.log(level, msg, *args)


def stats() -> dict[str, dict[str, int]]:
    """Per kind of line (``"logger: template"``): lines emitted and suppressed."""
    return _LIMITER.stats()


def reset() -> None:
    _LIMITER.reset()
