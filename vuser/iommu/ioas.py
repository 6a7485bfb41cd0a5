"""IOAS objects and their commands (iommufd ``ioas.c``).

IOAS_ALLOC, IOAS_MAP, IOAS_MAP_FILE, IOAS_UNMAP, IOAS_COPY, IOAS_IOVA_RANGES
and IOAS_ALLOW_IOVAS, as methods of ``IoasidContext`` (this module defines
them on a mixin). Each validates completely, then acts. An unmap tells the
context so it can flush every cache that depends on the IOAS (stage-2 and
the stage-1 caches nested on it).
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import TYPE_CHECKING, Any

from .errors import fail
from .io_pagetable import READABLE, WRITEABLE, Area, IoPagetable, check_range
from .objects import IommufdObject, ObjectTable, ObjType
from .pages import Pages
from .uapi import PAGE_SIZE, U64_MAX, IoasMapFlags, IovaRange, IovaRanges

if TYPE_CHECKING:
    from .hwpt import HwptPaging

FIXED_IOVA = int(IoasMapFlags.FIXED_IOVA)
_MAP_FLAGS = FIXED_IOVA | READABLE | WRITEABLE
DEFAULT_PROT = READABLE | WRITEABLE


class Ioas(IommufdObject):
    """An I/O address space: areas of pinned pages, by IOVA."""

    TYPE = ObjType.IOAS

    def __init__(self) -> None:
        super().__init__()
        self.iopt = IoPagetable()
        #: Paging HWPTs built on this IOAS (each holds a user on it).
        self.hwpts: list[HwptPaging] = []

    def release(self, ctx: Any) -> None:
        self.iopt.unpin(self.iopt.remove_all())  # no HWPT left: nothing caches them

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(areas=len(self.iopt), hwpts=[h.id for h in self.hwpts])
        return d


def _map_flags(flags: int, iova: int | None) -> tuple[int, bool]:
    """Validate IOAS_MAP/COPY flags; returns (prot, fixed)."""
    if not isinstance(flags, int) or flags & ~_MAP_FLAGS:
        raise fail(errno.EOPNOTSUPP, f"unknown map flags {flags!r}")
    prot = flags & (READABLE | WRITEABLE)
    if not prot:
        raise fail(errno.EINVAL, "neither READABLE nor WRITEABLE")
    fixed = iova is not None
    if flags & FIXED_IOVA and not fixed:
        raise fail(errno.EINVAL, "FIXED_IOVA without an iova")
    return prot, fixed


def _place(iopt: IoPagetable, length: int, iova: int | None) -> int:
    if iova is not None:
        iopt.check_fixed(iova, length)
        return iova
    if length % PAGE_SIZE:
        raise fail(errno.EINVAL, f"length {length:#x} is not page aligned")
    return iopt.alloc_iova(length)


class IoasCommands:
    """IOAS_* commands of ``IoasidContext``."""

    _objects: ObjectTable
    if TYPE_CHECKING:
        def _s2_unmapped(self, ioas: Ioas, first: int, last: int) -> None: ...

    def _ioas(self, ioas_id: int) -> Ioas:
        return self._objects.get(ioas_id, Ioas)

    def ioas_alloc(self) -> int:
        """IOMMU_IOAS_ALLOC: a new, empty IOAS; returns its id."""
        return self._objects.commit(Ioas()).id

    def ioas_map(self, ioas_id: int, buffer: Any, length: int, iova: int | None = None,
                 flags: int = DEFAULT_PROT) -> int:
        """IOMMU_IOAS_MAP: map ``buffer[0:length]`` (the ``user_va``) at ``iova``.

        ``iova=None`` allocates one, aligned to the lowest set bit of
        ``length`` (inside the allowed ranges if any); otherwise the mapping is
        fixed (FIXED_IOVA). ``flags`` are READABLE (4) / WRITEABLE (2).
        Returns the IOVA. Errors: EOPNOTSUPP unknown flags; EINVAL no
        permission, misaligned, reserved overlap; EOVERFLOW wrap; EEXIST
        overlap; ENOSPC no room; EFAULT not a buffer, too short, or read-only
        with WRITEABLE. The pages stay pinned (referenced) while mapped.
        """
        ioas = self._ioas(ioas_id)
        prot, _fixed = _map_flags(flags, iova)
        check_range(0 if iova is None else iova, length)
        if length % PAGE_SIZE:
            raise fail(errno.EINVAL, f"length {length:#x} is not page aligned")
        try:
            pages = Pages.from_buffer(buffer)
        except TypeError as e:
            raise fail(errno.EFAULT, f"not a mappable buffer: {e}") from None
        if len(pages) < length:
            raise fail(errno.EFAULT, f"buffer has {len(pages)} bytes, not {length}")
        if prot & WRITEABLE and not pages.writable:
            raise fail(errno.EFAULT, "read-only buffer mapped WRITEABLE")
        at = _place(ioas.iopt, length, iova)
        ioas.iopt.insert(Area(at, at + length - 1, pages, 0, prot))
        return at

    def ioas_map_file(self, ioas_id: int, fd: int, start: int, length: int,
                      iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
        """IOMMU_IOAS_MAP_FILE: map ``length`` bytes of file ``fd`` from ``start``.

        The model mmaps the range MAP_SHARED (read-only unless WRITEABLE); the
        caller keeps ownership of ``fd`` (the mmap holds its own reference).
        This is how QEMU's DMA_MAP memfd regions feed the GPA IOAS. Errors as
        for ``ioas_map``, plus EINVAL for a range outside the file or an
        unaligned ``start``, EBADF for a bad fd, and the mmap errno otherwise.
        """
        ioas = self._ioas(ioas_id)
        prot, _fixed = _map_flags(flags, iova)
        check_range(0 if iova is None else iova, length)
        if not isinstance(start, int) or start < 0 or start % mmap.ALLOCATIONGRANULARITY:
            raise fail(errno.EINVAL, f"file offset {start!r} is not page aligned")
        if length % PAGE_SIZE:
            raise fail(errno.EINVAL, f"length {length:#x} is not page aligned")
        try:
            st = os.fstat(fd)
        except (OSError, TypeError, ValueError, OverflowError):
            raise fail(errno.EBADF, f"bad fd {fd!r}") from None
        if start + length > st.st_size:
            raise fail(errno.EINVAL, f"[{start:#x}, +{length:#x}) is beyond the file "
                                     f"({st.st_size:#x} bytes)")
        at = _place(ioas.iopt, length, iova)  # before mmap: nothing to undo on failure
        mprot = mmap.PROT_READ | (mmap.PROT_WRITE if prot & WRITEABLE else 0)
        try:
            mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mprot, offset=start)
        except OSError as e:
            raise fail(e.errno or errno.EFAULT, f"mmap failed: {e}") from None
        pages = Pages(memoryview(mm), owner=mm, file_id=(st.st_dev, st.st_ino))
        ioas.iopt.insert(Area(at, at + length - 1, pages, 0, prot))
        return at

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP: remove the areas inside ``[iova, iova + length)``.

        Returns the bytes unmapped. The range must cover whole areas: nothing
        mapped, or an area that would be split, gives ENOENT and unmaps
        nothing. ``iova=0, length=U64_MAX`` unmaps everything (0 if empty).
        Every cache that depends on these mappings is flushed.
        """
        ioas = self._ioas(ioas_id)
        if iova == 0 and length == U64_MAX:
            removed = ioas.iopt.remove_all()
            if removed:
                self._s2_unmapped(ioas, 0, U64_MAX)
        else:
            last = check_range(iova, length)
            removed = ioas.iopt.remove_covering(iova, last)
            self._s2_unmapped(ioas, iova, last)
        ioas.iopt.unpin(removed)  # after the flush: no cache still points at them
        return sum(a.length for a in removed)

    def ioas_copy(self, dst_ioas_id: int, src_ioas_id: int, src_iova: int, length: int,
                  dst_iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
        """IOMMU_IOAS_COPY: map the pages behind ``src`` range again in ``dst``.

        The pages are shared, not copied (writes through one are visible
        through the other). The source range must be fully and contiguously
        mapped (ENOENT otherwise); WRITEABLE needs writable pages (EPERM).
        Returns the destination IOVA.
        """
        dst = self._ioas(dst_ioas_id)
        src = self._ioas(src_ioas_id)
        prot, _fixed = _map_flags(flags, dst_iova)
        src_last = check_range(src_iova, length)
        if src_iova % PAGE_SIZE or length % PAGE_SIZE:
            raise fail(errno.EINVAL, "source range is not page aligned")
        pieces = src.iopt.check_covered(src_iova, src_last)
        if prot & WRITEABLE and not all(a.pages.writable for a, _f, _l in pieces):
            raise fail(errno.EPERM, "source pages are read-only")
        at = _place(dst.iopt, length, dst_iova)
        for area, first, last in pieces:
            new_iova = at + (first - src_iova)
            dst.iopt.insert(Area(new_iova, new_iova + (last - first), area.pages,
                                 area.offset + (first - area.iova), prot))
        return at

    def ioas_iova_ranges(self, ioas_id: int) -> IovaRanges:
        """IOMMU_IOAS_IOVA_RANGES: the usable inclusive ranges and the alignment.

        A fresh IOAS has the whole 64-bit range; attached devices narrow it
        with what lies outside their aperture and their reserved regions.
        """
        ioas = self._ioas(ioas_id)
        return IovaRanges([IovaRange(s, e) for s, e in ioas.iopt.iova_ranges()],
                          ioas.iopt.alignment)

    def ioas_allow_iovas(self, ioas_id: int, ranges: list[tuple[int, int]] | list[list[int]]
                         ) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list (inclusive ranges).

        Automatic IOVAs then stay inside it, and attaching a device that would
        narrow it fails. EINVAL for a malformed or self-overlapping list,
        EADDRINUSE when a range overlaps a reserved one. An empty list clears.
        """
        ioas = self._ioas(ioas_id)
        clean: list[tuple[int, int]] = []
        for r in ranges:
            try:
                s, e = (int(r[0]), int(r[1])) if not isinstance(r, dict) else (
                    int(r["start"]), int(r["last"]))
            except (TypeError, KeyError, IndexError, ValueError):
                raise fail(errno.EINVAL, f"bad range {r!r}") from None
            if not 0 <= s <= e <= U64_MAX:
                raise fail(errno.EINVAL, f"bad range {r!r}")
            clean.append((s, e))
        clean.sort()
        for (_s0, e0), (s1, _e1) in zip(clean, clean[1:]):
            if s1 <= e0:
                raise fail(errno.EINVAL, "allowed ranges overlap")
        ioas.iopt.set_allowed(clean)

    def ioas_areas(self, ioas_id: int) -> list[dict[str, Any]]:
        """Model extension: the areas of an IOAS, sorted by IOVA."""
        return [a.describe() for a in self._ioas(ioas_id).iopt.areas()]
