"""The fuzz suite: bounded in the default run, long with ``make fuzz``.

``VUSER_FUZZ_EXAMPLES`` sets hypothesis' ``max_examples`` per fuzzed target
(default 25 per vfio-user command and per control-RPC target, which keeps the
whole directory to a few seconds). Every example ends with three checks
(``check_after`` in each test module): a fresh client gets a valid answer,
nothing of ERROR level reached the log (``FuzzWatch``) nor the event loop's
exception handler, and the process has exactly the fds it had before.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_kit import COUNTS, EXAMPLES, FuzzWatch  # noqa: E402


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


@pytest.fixture(scope="module")
def watch(loop):
    w = FuzzWatch(loop)
    root = logging.getLogger()
    root.addHandler(w)
    yield w
    root.removeHandler(w)


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_sep("-", f"fuzz examples per target (max_examples={EXAMPLES})")
        for name, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name:40s} {n}")
        terminalreporter.write_line(f"{'total':40s} {sum(COUNTS.values())}")
