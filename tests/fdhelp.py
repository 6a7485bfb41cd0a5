"""fd helpers shared by the PCI and device tests."""

from __future__ import annotations

import errno
import os


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def efd_count(fd: int) -> int:
    """Read and reset an eventfd counter; 0 if nothing was signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
