"""Shared by the fuzz suite (a module of its own: every test directory has a
``conftest`` module, so importing one by that name picks whichever came first)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os

EXAMPLES = int(os.environ.get("VUSER_FUZZ_EXAMPLES", "25"))
#: Examples run per target, printed at the end of the session (``make fuzz``).
COUNTS: collections.Counter[str] = collections.Counter()


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class FuzzWatch(logging.Handler):
    """Records ERROR-level log records and event-loop exceptions."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        loop.set_exception_handler(lambda _l, ctx: self.records.append(
            f"loop: {ctx.get('message')} {ctx.get('exception')!r}"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")

    def take(self) -> list[str]:
        out, self.records = self.records, []
        return out
