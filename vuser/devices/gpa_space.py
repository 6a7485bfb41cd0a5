"""A VM's guest RAM as the union of its connections' fd-backed DMA_MAPs.

QEMU sends every vfio-user device of a VM the same guest RAM, one DMA_MAP per
memory section, each with the RAM block's fd (spec "VFIO_USER_DMA_MAP"). The VM's
GPA IOAS must hold that memory once, however many connections mapped it, and
must keep it while any of them still does. ``GpaSpace`` keeps the union as
disjoint *segments*, each refcounted by the connection maps that cover it,
and each mirrored by exactly one IOAS area (``ioas_map_file``).

Two maps may overlap only when they say the same thing: same file
(``(st_dev, st_ino)``), same file offset for every GPA, same permission
(EEXIST otherwise, as for an overlapping DMA_MAP). Segments are split where a
map or an unmap ends inside one; splitting an IOAS area means unmapping it and
mapping the kept pieces again (``ioas_unmap`` does not split, as iommufd's
``iopt_unmap_iova_range``), which also flushes every translation cached through it. This is the one
place where the server follows QEMU's ranges instead of iommufd's no-split
rule (issue 5).

The space keeps a duplicate of each file's fd while a segment uses it: for
re-mapping pieces and for host-side access (``read``/``write``, which the
vIOMMU uses for its tables, as a VMM reads guest memory directly).

Only files sealed against shrinking (``F_SEAL_SHRINK``) are taken: the IOAS
area is an mmap of the file, and a client that shrank an unsealed file would
make the next device access raise SIGBUS in the server process
(``docs/vfio-user-acceptance.md``, "DMA_MAP").
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
from dataclasses import dataclass

from vuser.errors import RemoteProtocolError
from vuser.iommu import IoasidContext
from vuser.backend import DmaError
from vuser.transport.seals import shrink_sealed

log = logging.getLogger(__name__)

__all__ = ["GpaSpace", "GpaSegment", "PAGE_SIZE"]

PAGE_SIZE = 4096
READABLE, WRITEABLE = 4, 2   # IOMMU_IOAS_MAP_READABLE / _WRITEABLE


@dataclass
class GpaSegment:
    """``[first, last]`` of guest RAM: file ``ident`` from ``offset``, ``refs`` maps."""

    first: int
    last: int
    ident: tuple[int, int]
    offset: int
    prot: int
    refs: int = 1

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def file_offset(self, gpa: int) -> int:
        return self.offset + (gpa - self.first)

    def describe(self) -> dict[str, object]:
        return {"gpa": self.first, "last": self.last, "file": list(self.ident),
                "offset": self.offset, "writable": bool(self.prot & WRITEABLE),
                "refs": self.refs}


class _File:
    def __init__(self, fd: int) -> None:
        self.fd, self.users = fd, 0


class GpaSpace:
    """The refcounted segments of one VM and their IOAS areas (see module doc)."""

    def __init__(self, ctx: IoasidContext, ioas_id: int) -> None:
        self.ctx, self.ioas_id = ctx, ioas_id
        self._segs: list[GpaSegment] = []     # sorted, disjoint
        self._starts: list[int] = []
        self._files: dict[tuple[int, int], _File] = {}

    # -- lookups ------------------------------------------------------------
    def segments(self) -> list[GpaSegment]:
        return list(self._segs)

    def files(self) -> list[tuple[int, int]]:
        return list(self._files)

    def has_file(self, ident: tuple[int, int]) -> bool:
        return ident in self._files

    def __len__(self) -> int:
        return len(self._segs)

    def find(self, gpa: int) -> GpaSegment | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and self._segs[i].last >= gpa:
            return self._segs[i]
        return None

    def _span(self, first: int, last: int) -> tuple[int, int]:
        i = bisect.bisect_right(self._starts, first) - 1
        if i < 0 or self._segs[i].last < first:
            i += 1
        j = bisect.bisect_right(self._starts, last)
        return i, max(i, j)

    # -- maps ---------------------------------------------------------------
    @staticmethod
    def check_aligned(first: int, last: int, offset: int) -> None:
        """EINVAL unless the map and its file offset are page aligned (IOAS_MAP_FILE)."""
        if first % PAGE_SIZE or (last + 1) % PAGE_SIZE or offset % PAGE_SIZE:
            raise RemoteProtocolError(errno.EINVAL, f"fd-backed DMA map {first:#x}..{last:#x} "
                                      f"(offset {offset:#x}) is not page aligned")

    def check_add(self, first: int, last: int, ident: tuple[int, int], offset: int,
                  prot: int) -> None:
        """EINVAL for an unaligned map, EEXIST for a contradicting overlap."""
        self.check_aligned(first, last, offset)
        i, j = self._span(first, last)
        for s in self._segs[i:j]:
            if s.ident != ident or s.offset - s.first != offset - first or s.prot != prot:
                raise RemoteProtocolError(
                    errno.EEXIST, f"DMA map {first:#x}..{last:#x} contradicts the VM's "
                    f"mapping {s.first:#x}..{s.last:#x}")

    def add(self, first: int, last: int, ident: tuple[int, int], fd: int, offset: int,
            prot: int) -> None:
        """One connection maps ``[first, last]``; ``fd`` stays the caller's.

        EINVAL for an fd not sealed against shrinking (module doc).
        """
        if not shrink_sealed(fd):
            raise RemoteProtocolError(errno.EINVAL, f"DMA map {first:#x}..{last:#x}: the fd is "
                                      "not sealed against shrinking (F_SEAL_SHRINK)")
        self.check_add(first, last, ident, offset, prot)
        file = self._files.get(ident)
        if file is None:
            file = self._files[ident] = _File(os.dup(fd))
        file.users += 1  # held across the changes below
        try:
            self._split_at(first)
            self._split_at(last + 1)
            i, j = self._span(first, last)
            covered = self._segs[i:j]
            for s in covered:
                s.refs += 1
            gaps, cur = [], first
            for s in covered:
                if s.first > cur:
                    gaps.append((cur, s.first - 1))
                cur = s.last + 1
            if cur <= last:
                gaps.append((cur, last))
            for g0, g1 in gaps:
                self._insert(GpaSegment(g0, g1, ident, offset + (g0 - first), prot))
        finally:
            self._file_put(ident)

    def remove(self, first: int, last: int) -> None:
        """One connection unmaps ``[first, last]`` (which it had mapped)."""
        self._split_at(first)
        self._split_at(last + 1)
        i, j = self._span(first, last)
        for s in list(self._segs[i:j]):
            s.refs -= 1
            if s.refs == 0:
                self._delete(s)

    def clear(self) -> None:
        """Drop every segment (the VM is going away)."""
        for s in list(self._segs):
            self._delete(s)

    # -- host-side access ---------------------------------------------------
    def _pieces(self, gpa: int, n: int, write: bool) -> list[tuple[GpaSegment, int, int]]:
        if gpa < 0 or n < 0 or gpa + n > 1 << 64:
            raise DmaError(errno.EFAULT, gpa, n, f"bad guest range {gpa:#x}+{n:#x}")
        out, pos = [], gpa
        while pos < gpa + n:
            s = self.find(pos)
            if s is None:
                raise DmaError(errno.EFAULT, gpa, n, f"no guest RAM at {pos:#x}")
            if write and not s.prot & WRITEABLE:
                raise DmaError(errno.EPERM, gpa, n, f"guest RAM at {pos:#x} is read-only")
            k = min(s.last + 1, gpa + n) - pos
            out.append((s, pos, k))
            pos += k
        return out

    def read(self, gpa: int, n: int) -> bytes:
        """Guest RAM bytes ``[gpa, gpa + n)``; ``DmaError(EFAULT)`` on a hole."""
        parts = []
        for s, pos, k in self._pieces(gpa, n, False):
            part = os.pread(self._files[s.ident].fd, k, s.file_offset(pos))
            if len(part) != k:  # cannot happen with F_SEAL_SHRINK; never hand back less
                raise DmaError(errno.EFAULT, gpa, n, f"guest RAM file ends at {pos:#x}")
            parts.append(part)
        return b"".join(parts)

    def write(self, gpa: int, data: bytes) -> None:
        """Store into guest RAM; all or nothing (holes checked first)."""
        view, done = memoryview(data), 0
        for s, pos, k in self._pieces(gpa, len(data), True):
            os.pwrite(self._files[s.ident].fd, view[done:done + k], s.file_offset(pos))
            done += k

    # -- internals ----------------------------------------------------------
    def _map_area(self, s: GpaSegment) -> None:
        self.ctx.ioas_map_file(self.ioas_id, self._files[s.ident].fd, s.offset, s.size,
                               iova=s.first, flags=s.prot)

    def _insert(self, s: GpaSegment) -> None:
        self._map_area(s)
        i = bisect.bisect_left(self._starts, s.first)
        self._segs.insert(i, s)
        self._starts.insert(i, s.first)
        self._files[s.ident].users += 1

    def _delete(self, s: GpaSegment) -> None:
        i = self._segs.index(s)
        del self._segs[i]
        del self._starts[i]
        self.ctx.ioas_unmap(self.ioas_id, s.first, s.size)
        self._file_put(s.ident)

    def _file_put(self, ident: tuple[int, int]) -> None:
        f = self._files[ident]
        f.users -= 1
        if f.users == 0:
            os.close(f.fd)
            del self._files[ident]

    def _split_at(self, gpa: int) -> None:
        """Make ``gpa`` a segment boundary (unmap the area, map both halves)."""
        s = self.find(gpa)
        if s is None or s.first == gpa:
            return
        lo = GpaSegment(s.first, gpa - 1, s.ident, s.offset, s.prot, s.refs)
        hi = GpaSegment(gpa, s.last, s.ident, s.file_offset(gpa), s.prot, s.refs)
        i = self._segs.index(s)
        self.ctx.ioas_unmap(self.ioas_id, s.first, s.size)
        try:
            self._map_area(lo)
            self._map_area(hi)
        except RemoteProtocolError:
            # mmap refused (e.g. vm.max_map_count): put the whole area back.
            for part in (lo, hi):
                try:
                    self.ctx.ioas_unmap(self.ioas_id, part.first, part.size)
                except RemoteProtocolError:
                    pass
            self._map_area(s)
            raise
        self._segs[i:i + 1] = [lo, hi]
        self._starts[i:i + 1] = [lo.first, hi.first]
        self._files[s.ident].users += 1
