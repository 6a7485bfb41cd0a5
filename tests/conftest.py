"""Shared pytest configuration for vuser's host-side suite: real eventfds,
closed at teardown if still open (used by the PCI and device tests)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def eventfds():
    """``eventfds(n)`` makes n non-blocking eventfds; leftovers closed at teardown."""
    made: list[int] = []

    def make(n: int = 1) -> list[int]:
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n)]
        made.extend(fds)
        return fds

    yield make
    for fd in set(made):  # still-open eventfds only: a closed number may have been reused
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                is_eventfd = "eventfd-count" in f.read()
        except OSError:
            continue
        if is_eventfd:
            os.close(fd)
