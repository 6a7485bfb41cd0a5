"""Shared pytest configuration for vuser's suite: real eventfds, closed at
teardown if still open (the PCI and device tests), and the QEMU to boot."""

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


@pytest.fixture(scope="session")
def qemu_bin():
    """The QEMU the project uses (provisioned by ``make test`` before pytest runs)."""
    from vuser.errors import UserError
    from vuser.qemu.find import find_qemu

    env = {k: os.environ.pop(k) for k in ("VUSER_QEMU", "VUSER_NO_PROVISION") if k in os.environ}
    try:
        return find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci and cannot provision one: {e}")
    finally:
        os.environ.update(env)
