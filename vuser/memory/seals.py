"""memfd seals: when a client's DMA fd is safe to mmap (memfd_create(2), fcntl(2)).

A ``MAP_SHARED`` view of a file the client can shrink is a trap: once the
client ``ftruncate``s the file, touching the lost pages raises SIGBUS and takes
the whole server process, every device with it. Only a file sealed with
``F_SEAL_SHRINK`` can never lose pages, so mmap-based DMA is used for those
alone. QEMU's ``memory-backend-memfd`` seals its guest RAM by default
(``seal=on``: F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL).

What happens to other fds is documented in ``docs/vfio-user-acceptance.md``
("DMA_MAP"): a plain device reaches them with ``pread``/``pwrite`` on the fd,
which cannot fault; a device behind the IOMMU model refuses them (EINVAL).
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["shrink_sealed", "seals", "sealed_memfd"]

#: Seals QEMU puts on a memory-backend-memfd with seal=on.
QEMU_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def seals(fd: int) -> int:
    """The file's seals (``F_GET_SEALS``); 0 for a file that has none or cannot have any."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return 0  # EINVAL: not a shmem/hugetlbfs file


def shrink_sealed(fd: int) -> bool:
    """True if the file behind ``fd`` can never shrink (``F_SEAL_SHRINK``)."""
    return bool(seals(fd) & fcntl.F_SEAL_SHRINK)


def sealed_memfd(name: str, size: int, *, cloexec: bool = True, add: int = QEMU_SEALS) -> int:
    """A memfd of ``size`` bytes sealed with ``add`` (by default as QEMU seals guest RAM)."""
    flags = os.MFD_ALLOW_SEALING | (os.MFD_CLOEXEC if cloexec else 0)
    fd = os.memfd_create(name, flags)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, add)
    except BaseException:
        os.close(fd)
        raise
    return fd
