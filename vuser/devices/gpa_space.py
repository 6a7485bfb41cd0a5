"""A VM's guest RAM over the ioasid context: ``GuestMemory`` bound to the VM's IOAS.

``vuser.memory.guest`` holds the rules (newest map wins, refcounted claims,
who owns which fd and mmap); this module gives it its ``IoasPort`` on the
context: areas by IOMMU_IOAS_MAP_FILE / IOMMU_IOAS_UNMAP, host-side reads and
writes through an access object on the same IOAS (``iommufd_access_rw``, as
VFIO's emulated devices reach IOAS memory), so the vIOMMU's table reads see
exactly the memory devices see, counted by the model.
"""

from __future__ import annotations

import errno

from vuser.iommu import IoasidContext, IommufdError
from vuser.memory.guest import READABLE, WRITEABLE, GpaSegment, GuestMemory
from vuser.backend import DmaError

__all__ = ["GpaSpace", "GpaSegment", "ContextIoas", "READABLE", "WRITEABLE"]

#: ``access_rw`` errno -> the ``DmaError`` errno a host-side access reports.
_RW_ERRNO = {errno.EPERM: errno.EPERM}


class ContextIoas:
    """``IoasPort`` on IOAS ``ioas_id`` of ``ctx``; owns one rw-only access on it."""

    def __init__(self, ctx: IoasidContext, ioas_id: int) -> None:
        self.ctx, self.ioas_id = ctx, ioas_id
        self.access_id = 0

    def map_file(self, fd: int, offset: int, size: int, iova: int, prot: int) -> None:
        self.ctx.ioas_map_file(self.ioas_id, fd, offset, size, iova=iova, flags=prot)

    def unmap(self, iova: int, size: int) -> None:
        self.ctx.ioas_unmap(self.ioas_id, iova, size)

    def rw(self, iova: int, data: bytes | int, write: bool) -> bytes | None:
        n = len(data) if isinstance(data, bytes | bytearray | memoryview) else data
        try:
            if not self.access_id:
                self.access_id = self.ctx.access_create(self.ioas_id)
            return self.ctx.access_rw(self.access_id, iova, data, write)
        except IommufdError as e:
            raise DmaError(_RW_ERRNO.get(e.errno, errno.EFAULT), iova, n,
                           f"guest RAM at {iova:#x}: {e}") from None

    def close(self) -> None:
        if self.access_id:
            access_id, self.access_id = self.access_id, 0
            try:
                self.ctx.destroy(access_id)
            except IommufdError:
                pass  # the context was closed first: it went with it


class GpaSpace(GuestMemory):
    """``GuestMemory`` of IOAS ``ioas_id`` in ``ctx``."""

    def __init__(self, ctx: IoasidContext, ioas_id: int) -> None:
        super().__init__(ContextIoas(ctx, ioas_id))
