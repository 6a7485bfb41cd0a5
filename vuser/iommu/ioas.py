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

from .access import MAX_UNMAP_TRIES, notify_unmap
from .core import ContextCore
from .errors import IommufdError, fail
from .invalidation import s2_unmapped
from .io_pagetable import READABLE, WRITEABLE, Area, IoPagetable, check_range
from .objects import IommufdObject, ObjType
from .pagetable.addresses import HostOffset
from .pages import Pages
from .uapi import U64_MAX, IoasMapFlags, IovaRange, IovaRanges, OptionId, OptionOp

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


def _map_flags(flags: int) -> tuple[int, bool]:
    """IOAS_MAP/MAP_FILE/COPY flags: EOPNOTSUPP unknown bits; returns (prot, fixed)."""
    if not isinstance(flags, int) or flags & ~_MAP_FLAGS:
        raise fail(errno.EOPNOTSUPP, f"unknown map flags {flags!r}")
    return flags & (READABLE | WRITEABLE), bool(flags & FIXED_IOVA)


def _check_u64(*values: int | None) -> None:
    """``cmd->iova >= ULONG_MAX || cmd->length >= ULONG_MAX``: EOVERFLOW."""
    for v in values:
        if v is None:
            continue
        if not isinstance(v, int) or v < 0:
            raise fail(errno.EINVAL, f"{v!r} is not a u64")
        if v >= U64_MAX:
            raise fail(errno.EOVERFLOW, f"{v:#x} >= U64_MAX")


def _check_prot(prot: int) -> None:
    if not prot:
        raise fail(errno.EINVAL, "neither READABLE nor WRITEABLE")


def _check_fixed_flag(fixed: bool, iova: int | None) -> None:
    if fixed and iova is None:
        raise fail(errno.EINVAL, "FIXED_IOVA without an iova")


def _place(iopt: IoPagetable, length: int, iova: int | None) -> int:
    """``iopt_alloc_area_pages``: length alignment (EINVAL), then the IOVA."""
    if length == 0 or length % iopt.alignment:
        raise fail(errno.EINVAL, f"length {length:#x} is not {iopt.alignment:#x}-aligned")
    if iova is not None:
        iopt.check_fixed(iova, length)
        return iova
    return iopt.alloc_iova(length)


def get_ioas(ctx: ContextCore, ioas_id: int) -> Ioas:
    """``iommufd_get_ioas``: the IOAS ``ioas_id``, else ENOENT."""
    return ctx._objects.get(ioas_id, Ioas)


def ioas_alloc(ctx: ContextCore) -> int:
    """IOMMU_IOAS_ALLOC: a new, empty IOAS; returns its id."""
    ioas = Ioas()
    ctx._step("ioas_alloc")
    return ctx._objects.commit(ioas).id


def ioas_map(ctx: ContextCore, ioas_id: int, buffer: Any, length: int, iova: int | None = None,
             flags: int = DEFAULT_PROT) -> int:
    """IOMMU_IOAS_MAP: map ``buffer[0:length]`` (the ``user_va``) at ``iova``.

    ``iova=None`` allocates one (``iopt_alloc_iova``: ``length`` rounded
    up to a power of two, at most 2 MiB, inside the allowed ranges if
    any); otherwise the mapping is fixed (FIXED_IOVA is implied). Flags
    are READABLE (4) / WRITEABLE (2). Returns the IOVA.

    Checks in the kernel's order (``iommufd_ioas_map``): EOPNOTSUPP
    unknown flags; EOVERFLOW ``iova`` or ``length`` >= U64_MAX; EINVAL no
    permission; ENOENT the IOAS; EINVAL ``length`` 0 or not a multiple of
    the IOAS alignment (1 byte with no domain, 4 KiB with one); then
    ``iopt_check_iova`` (EINVAL misaligned, EOVERFLOW wrap, EINVAL
    reserved, EEXIST overlap) or ENOSPC; EFAULT not a buffer, too short,
    or read-only with WRITEABLE.

    Departure (docs/iommufd-fidelity.md): the model pins, that is
    references, the buffer at map time, so a bad buffer is EFAULT here
    even with no domain attached (the kernel may fault later); and it
    takes the buffer's start as page (and 2 MiB) aligned.
    """
    prot, fixed = _map_flags(flags)
    _check_u64(iova, length)
    _check_prot(prot)
    _check_fixed_flag(fixed, iova)
    ioas = get_ioas(ctx, ioas_id)
    at = _place(ioas.iopt, length, iova)
    try:
        pages = Pages.from_buffer(buffer)
    except TypeError as e:
        raise fail(errno.EFAULT, f"not a mappable buffer: {e}") from None
    if len(pages) < length:
        raise fail(errno.EFAULT, f"buffer has {len(pages)} bytes, not {length}")
    if prot & WRITEABLE and not pages.writable:
        raise fail(errno.EFAULT, "read-only buffer mapped WRITEABLE")
    area = Area(at, at + length - 1, pages, 0, prot)
    ctx._step("ioas_map: area")
    ioas.iopt.insert(area)
    return at


def ioas_map_file(ctx: ContextCore, ioas_id: int, fd: int, start: HostOffset, length: int,
                  iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
    """IOMMU_IOAS_MAP_FILE: map ``length`` bytes of file ``fd`` from ``start``.

    The model mmaps the range MAP_SHARED (read-only unless WRITEABLE); the
    caller keeps ownership of ``fd`` (the mmap holds its own reference).
    This is how QEMU's DMA_MAP memfd regions feed the GPA IOAS. Checks as
    for ``ioas_map`` up to the IOAS lookup, then EBADF for a bad fd,
    EINVAL for a range outside the file, then the placement checks, then
    the mmap errno.

    Departure: ``start`` must be page aligned (an mmap offset); the
    kernel keeps a sub-page start offset.
    """
    prot, fixed = _map_flags(flags)
    _check_u64(iova, length)
    _check_prot(prot)
    _check_fixed_flag(fixed, iova)
    ioas = get_ioas(ctx, ioas_id)
    try:
        st = os.fstat(fd)
    except (OSError, TypeError, ValueError, OverflowError):
        raise fail(errno.EBADF, f"bad fd {fd!r}") from None
    if not isinstance(start, int) or start < 0 or start % mmap.ALLOCATIONGRANULARITY:
        raise fail(errno.EINVAL, f"file offset {start!r} is not page aligned")
    if start + length > st.st_size:
        raise fail(errno.EINVAL, f"[{start:#x}, +{length:#x}) is beyond the file "
                                 f"({st.st_size:#x} bytes)")
    at = _place(ioas.iopt, length, iova)  # before mmap: nothing to undo on failure
    ctx._step("ioas_map_file: pages")
    mprot = mmap.PROT_READ | (mmap.PROT_WRITE if prot & WRITEABLE else 0)
    try:
        mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mprot, offset=start)
    except OSError as e:
        raise fail(e.errno or errno.EFAULT, f"mmap failed: {e}") from None
    pages = Pages(memoryview(mm), owner=mm, file_id=(st.st_dev, st.st_ino))
    area = Area(at, at + length - 1, pages, 0, prot)
    try:
        ctx._step("ioas_map_file: area")
    except IommufdError:
        pages.pin()
        pages.unpin()  # releases the mmap
        raise
    ioas.iopt.insert(area)
    return at


def ioas_unmap(ctx: ContextCore, ioas_id: int, iova: int, length: int) -> int:
    """IOMMU_IOAS_UNMAP: remove the areas inside ``[iova, iova + length)``.

    Returns the bytes unmapped. ``iova=0, length=U64_MAX`` unmaps
    everything (0 if empty). Otherwise, in the kernel's order: ENOENT
    the IOAS; EOVERFLOW ``iova``/``length`` >= U64_MAX; EINVAL length 0;
    EOVERFLOW wrap; then areas go in IOVA order, and the first area that
    sticks out of the range stops the unmap with ENOENT, the areas
    before it staying unmapped (``iopt_unmap_iova_range``); nothing
    mapped is ENOENT. Every cache that depends on the removed mappings
    is flushed, also on that ENOENT. Areas pinned by an access object are
    first reported to the accesses' unmap callbacks (see ``access``);
    EDEADLOCK if one does not let go.
    """
    ioas = get_ioas(ctx, ioas_id)
    err = None
    whole = iova == 0 and length == U64_MAX
    if not whole:
        _check_u64(iova, length)
        check_range(iova, length)
    _wait_for_accesses(ioas, 0 if whole else iova,
                            U64_MAX if whole else iova + length - 1)
    if whole:
        removed = ioas.iopt.remove_all()
        if removed:
            s2_unmapped(ctx, ioas, 0, U64_MAX)
    else:
        last = iova + length - 1
        removed, err = ioas.iopt.remove_covering(iova, last)
        if removed:
            s2_unmapped(ctx, ioas, iova, last)
    ioas.iopt.unpin(removed)  # after the flush: no cache still points at them
    if err is not None:
        raise err
    return sum(a.length for a in removed)


def _wait_for_accesses(ioas: Ioas, first: int, last: int) -> None:
    """Pinned areas in the range: tell the accesses, up to 100 rounds, then
    EDEADLOCK (departure: the model then unmaps nothing; the kernel keeps
    the areas it unmapped before the pinned one)."""
    for _ in range(MAX_UNMAP_TRIES):
        pinned = [a for a in ioas.iopt.overlapping(first, last) if a.num_accesses]
        if not pinned:
            return
        notify_unmap(ioas, pinned[:1])
    if any(a.num_accesses for a in ioas.iopt.overlapping(first, last)):
        raise fail(errno.EDEADLOCK, "an access does not unpin")


def ioas_copy(ctx: ContextCore, dst_ioas_id: int, src_ioas_id: int, src_iova: int, length: int,
              dst_iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
    """IOMMU_IOAS_COPY: map the pages behind ``src`` range again in ``dst``.

    The pages are shared, not copied (writes through one are visible
    through the other). Checks in the kernel's order
    (``iommufd_ioas_copy``): EOPNOTSUPP flags; EOVERFLOW values >=
    U64_MAX; EINVAL no permission; ENOENT the source IOAS; EINVAL length
    0, EOVERFLOW wrap, ENOENT source not fully and contiguously mapped
    (``iopt_get_pages``); ENOENT the destination IOAS; the placement
    checks of ``ioas_map`` in the destination; EPERM WRITEABLE over
    read-only pages (``iopt_insert_area``). Returns the destination IOVA.
    """
    prot, fixed = _map_flags(flags)
    _check_u64(length, src_iova, dst_iova)
    _check_prot(prot)
    _check_fixed_flag(fixed, dst_iova)
    src = get_ioas(ctx, src_ioas_id)
    src_last = check_range(src_iova, length)
    pieces = src.iopt.check_covered(src_iova, src_last)
    dst = get_ioas(ctx, dst_ioas_id)
    at = _place(dst.iopt, length, dst_iova)
    if prot & WRITEABLE and not all(a.pages.writable for a, _f, _l in pieces):
        raise fail(errno.EPERM, "source pages are read-only")
    new = []
    for area, first, last in pieces:
        new_iova = at + (first - src_iova)
        ctx._step("ioas_copy: area")
        new.append(Area(new_iova, new_iova + (last - first), area.pages,
                        area.offset + (first - area.iova), prot))
    for a in new:
        dst.iopt.insert(a)
    return at


def ioas_iova_ranges(ctx: ContextCore, ioas_id: int) -> IovaRanges:
    """IOMMU_IOAS_IOVA_RANGES: the usable inclusive ranges and the alignment.

    A fresh IOAS has the whole 64-bit range; attached devices narrow it
    with what lies outside their aperture and their reserved regions.
    The alignment is 1 with no domain, 4 KiB with one (or with HUGE_PAGES
    off, or a pinning access). ENOENT the IOAS. Departure
    (docs/iommufd-fidelity.md): the whole list is returned, so there is
    no EMSGSIZE for a short user buffer.
    """
    ioas = get_ioas(ctx, ioas_id)
    return IovaRanges([IovaRange(s, e) for s, e in ioas.iopt.iova_ranges()],
                      ioas.iopt.alignment)


def ioas_option(ctx: ContextCore, option_id: int, op: int, object_id: int = 0,
                val64: int = 0) -> int:
    """IOMMU_OPTION: RLIMIT_MODE (0, context-wide) and HUGE_PAGES (1, per IOAS).

    ``op`` GET (1) returns the value, SET (0) sets ``val64`` and returns
    it. EOPNOTSUPP unknown option or op, RLIMIT_MODE with an object id;
    RLIMIT_MODE SET: EBUSY once objects exist, EINVAL a value not 0/1;
    HUGE_PAGES: ENOENT the IOAS, EINVAL a value not 0/1, EINVAL turning
    huge pages off while a domain holds mappings, EADDRINUSE when an
    area is not page aligned (the alignment becomes 4 KiB).

    Departure: the model has no process capabilities, so RLIMIT_MODE
    SET needs no CAP_SYS_RESOURCE, and it accounts nothing; HUGE_PAGES
    only changes the alignment (the model's stage 2 has no page sizes).
    """
    if option_id == OptionId.RLIMIT_MODE:
        if object_id:
            raise fail(errno.EOPNOTSUPP, "RLIMIT_MODE is context-wide")
        if op == OptionOp.GET:
            return ctx._rlimit_mode
        if op != OptionOp.SET:
            raise fail(errno.EOPNOTSUPP, f"unknown option op {op!r}")
        if len(ctx._objects):
            raise fail(errno.EBUSY, "RLIMIT_MODE is set before any object exists")
        if val64 not in (0, 1):
            raise fail(errno.EINVAL, f"RLIMIT_MODE {val64!r} is not 0 or 1")
        ctx._rlimit_mode = int(val64)
        return ctx._rlimit_mode
    if option_id != OptionId.HUGE_PAGES:
        raise fail(errno.EOPNOTSUPP, f"unknown option {option_id!r}")
    iopt = get_ioas(ctx, object_id).iopt
    if op == OptionOp.GET:
        return int(not iopt.disable_large_pages)
    if op != OptionOp.SET:
        raise fail(errno.EOPNOTSUPP, f"unknown option op {op!r}")
    if val64 == 1:
        iopt.disable_large_pages = False
        iopt.alignment = iopt.wanted_alignment()
        return 1
    if val64 != 0:
        raise fail(errno.EINVAL, f"HUGE_PAGES {val64!r} is not 0 or 1")
    if not iopt.disable_large_pages:
        if iopt.domains and len(iopt):
            raise fail(errno.EINVAL, "domains already hold mappings")
        iopt.set_alignment(iopt.wanted_alignment(disable_large_pages=True))
        iopt.disable_large_pages = True
    return 0


def ioas_allow_iovas(ctx: ContextCore, ioas_id: int,
                     ranges: list[tuple[int, int]] | list[list[int]]) -> None:
    """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list (inclusive ranges).

    Automatic IOVAs then stay inside it, and attaching a device that would
    narrow it fails. ENOENT the IOAS; EINVAL for a malformed range, one
    with ``start >= last`` (a one-byte range included, as in
    ``iommufd_ioas_load_iovas``) or overlapping ranges; EADDRINUSE when a
    range overlaps a reserved one. An empty list clears.
    """
    ioas = get_ioas(ctx, ioas_id)
    clean: list[tuple[int, int]] = []
    for r in ranges:
        try:
            s, e = (int(r[0]), int(r[1])) if not isinstance(r, dict) else (
                int(r["start"]), int(r["last"]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise fail(errno.EINVAL, f"bad range {r!r}") from None
        if not 0 <= s < e <= U64_MAX:  # iommufd_ioas_load_iovas: start >= last
            raise fail(errno.EINVAL, f"bad range {r!r}")
        clean.append((s, e))
    clean.sort()
    for (_s0, e0), (s1, _e1) in zip(clean, clean[1:]):
        if s1 <= e0:
            raise fail(errno.EINVAL, "allowed ranges overlap")
    ioas.iopt.set_allowed(clean)


def ioas_areas(ctx: ContextCore, ioas_id: int) -> list[dict[str, Any]]:
    """Model extension: the areas of an IOAS, sorted by IOVA."""
    return [a.describe() for a in get_ioas(ctx, ioas_id).iopt.areas()]
