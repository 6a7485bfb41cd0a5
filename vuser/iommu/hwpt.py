"""HW page tables and their commands (iommufd ``hw_pagetable.c``).

``HwptPaging`` is a stage-2 domain over an IOAS. The model does not build
second-stage tables for it: the IOAS interval map *is* its table, and
``fetch`` (the walker's stage-2 port) looks GPAs up there in O(log n). Real
second-stage tables exist for experiments (``pagetable.SecondStageTables``).
A paging HWPT may be a NEST_PARENT, track dirty pages, and be automatic (made
by attaching a device to an IOAS, freed when its last device leaves).

``HwptNested`` is a stage-1 domain (data type VTD_S1 ``{flags, pgtbl_addr,
addr_width}``) over a NEST_PARENT paging HWPT, directly or through a vIOMMU.
Its tables live in guest memory and every fetch goes through the parent.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, cast

from .core import ContextCore
from .errors import fail
from .fault import FaultQueue
from .invalidation import hwpt_flush, run_entries
from .io_pagetable import READABLE, WRITEABLE, check_range
from .ioas import Ioas
from .objects import IommufdObject, ObjType
from .pagetable.formats import DEFAULT_OAW, FIRST_STAGE_LEVELS, leaf_address_mask
from .pagetable.results import Access, Fault, FaultKind, Stage
from .pagetable.walker import walk_modes
from .uapi import (
    U64_MAX, VTD_INV_FLAGS_LEAF, DirtyBitmapFlags, HwptAllocFlags, HwptDataType,
    HwptInvalidateDataType, IommuHwptVtdS1, IommuHwptVtdS1Invalidate, VtdS1Flags,
    copy_struct_from_user,
)

if TYPE_CHECKING:  # their files import this one
    from .device import BoundDevice
    from .viommu import Viommu

_ALLOC_FLAGS = int(HwptAllocFlags.NEST_PARENT | HwptAllocFlags.DIRTY_TRACKING
                   | HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID)
_NESTED_FLAGS = int(HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID)
_R, _W = int(Access.READ), int(Access.WRITE)
#: The table-address bits of a first-stage root (``walk_first_stage``'s mask).
_TABLE_MASK = leaf_address_mask(1, DEFAULT_OAW)


class Hwpt(IommufdObject):
    """Common part of both HWPT kinds (``struct iommufd_hw_pagetable``)."""

    def __init__(self, *, pasid_compat: bool, fault: FaultQueue | None) -> None:
        super().__init__()
        self.pasid_compat = pasid_compat
        self.fault = fault
        self.auto = False
        #: ``(device, pasid)`` pairs attached here (pasid None: the RID).
        self.attached: set[tuple[BoundDevice, int | None]] = set()

    def release(self, ctx: Any) -> None:
        if self.fault is not None:
            self.fault.users -= 1

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(pasid_compat=self.pasid_compat, auto=self.auto,
                 fault=self.fault.id if self.fault else None,
                 attached=sorted(([bd.id, p] for bd, p in self.attached),
                                 key=lambda a: (a[0], -1 if a[1] is None else a[1])))
        return d


class HwptPaging(Hwpt):
    """A stage-2 (paging) domain over an IOAS."""

    TYPE = ObjType.HWPT_PAGING

    def __init__(self, ioas: Ioas, *, nest_parent: bool = False, enforce_dirty: bool = False,
                 pasid_compat: bool = False, fault: FaultQueue | None = None) -> None:
        super().__init__(pasid_compat=pasid_compat, fault=fault)
        self.ioas = ioas
        self.nest_parent = nest_parent
        self.enforce_dirty = enforce_dirty
        self.dirty_tracking = False
        #: 4 KiB page numbers (of this stage's input space) written while tracking.
        self.dirty: set[int] = set()

    def fetch(self, gpa: int, write: bool) -> tuple[memoryview, int, int] | Fault:
        """Stage-2 port for the first-stage walker (see ``pagetable.walker``)."""
        iopt = self.ioas.iopt
        a = iopt.recent
        if a is None or not a.iova <= gpa <= a.last:
            a = iopt.find(gpa)
            if a is None:
                return Fault(FaultKind.PAGING_ENTRY_INV, Stage.S2, None, _W if write else _R,
                             gpa)
            iopt.recent = a
        if write:
            if not a.prot & WRITEABLE:
                return Fault(FaultKind.WRITE, Stage.S2, None, _W, gpa)
            if self.dirty_tracking:
                self.dirty.add(gpa >> 12)
        elif not a.prot & READABLE:
            return Fault(FaultKind.READ, Stage.S2, None, _R, gpa)
        return a.pages.mem, a.offset + (gpa - a.iova), 0

    def mark_dirty(self, addr: int, length: int) -> None:
        first, last = addr >> 12, (addr + length - 1) >> 12
        if first == last:
            self.dirty.add(first)
        else:
            self.dirty.update(range(first, last + 1))

    def release(self, ctx: Any) -> None:
        super().release(ctx)
        self.ioas.users -= 1
        self.ioas.hwpts.remove(self)
        iopt = self.ioas.iopt
        iopt.domains -= 1
        iopt.alignment = iopt.wanted_alignment()  # lowering never fails

    def check_domain_add(self) -> None:
        """``iopt_table_add_domain``: EADDRINUSE if an area is not 4 KiB aligned."""
        iopt = self.ioas.iopt
        iopt.check_alignment(iopt.wanted_alignment(domains=iopt.domains + 1))

    def link(self) -> None:
        """Join the IOAS (after ``check_domain_add`` and the commit)."""
        self.ioas.users += 1
        self.ioas.hwpts.append(self)
        iopt = self.ioas.iopt
        iopt.domains += 1
        iopt.set_alignment(iopt.wanted_alignment())

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(ioas=self.ioas.id, nest_parent=self.nest_parent,
                 enforce_dirty=self.enforce_dirty, dirty_tracking=self.dirty_tracking)
        return d


class HwptNested(Hwpt):
    """A stage-1 domain: guest tables at ``pgtbl_addr`` (a GPA), over ``parent``."""

    TYPE = ObjType.HWPT_NESTED

    def __init__(self, parent: HwptPaging, s1: IommuHwptVtdS1, *, viommu: Viommu | None,
                 pasid_compat: bool, fault: FaultQueue | None) -> None:
        super().__init__(pasid_compat=pasid_compat, fault=fault)
        self.parent = parent
        self.viommu = viommu
        #: ``pasid_set_flptr`` keeps bits 63:12 only.
        self.pgtbl_addr = s1.pgtbl_addr & ~0xFFF
        self.addr_width = s1.addr_width
        #: None for an address width the hardware lacks: attach fails (EINVAL).
        self.levels = FIRST_STAGE_LEVELS.get(s1.addr_width)
        self.s1_flags = s1.flags
        self.sre = bool(s1.flags & VtdS1Flags.SRE)
        self.eafe = bool(s1.flags & VtdS1Flags.EAFE)
        self.wpe = bool(s1.flags & VtdS1Flags.WPE)
        #: ``walk_first_stage_raw``'s ``(table, levels, modes, eafe)`` for this
        #: HWPT, made once: none of these fields changes after allocation (a new
        #: stage 1 is a new HWPT, attached in place of this one).
        self.walk_args = (self.pgtbl_addr & _TABLE_MASK, self.levels,
                          walk_modes(self.sre, self.wpe), self.eafe)

    def release(self, ctx: Any) -> None:
        super().release(ctx)
        self.parent.users -= 1
        if self.viommu is not None:
            self.viommu.users -= 1

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(parent=self.parent.id, viommu=self.viommu.id if self.viommu else None,
                 pgtbl_addr=self.pgtbl_addr, addr_width=self.addr_width, flags=self.s1_flags)
        return d


def paging_of(hwpt: Hwpt) -> HwptPaging:
    """The stage-2 domain under ``hwpt`` (kernel ``find_hwpt_paging``)."""
    return hwpt if isinstance(hwpt, HwptPaging) else cast(HwptNested, hwpt).parent


def hwpt_alloc(ctx: ContextCore, dev_id: int, pt_id: int, flags: int = 0,
               data_type: int = HwptDataType.NONE, data: Any = None,
               fault_id: int | None = None) -> int:
    """IOMMU_HWPT_ALLOC for device ``dev_id``; returns the HWPT id.

    ``pt_id`` an IOAS: a paging HWPT (flags NEST_PARENT 1, DIRTY_TRACKING
    2, FAULT_ID_VALID 4, PASID 8; no data). ``pt_id`` a NEST_PARENT
    paging HWPT or a vIOMMU: a nested HWPT, ``data_type`` VTD_S1 (1) with
    ``data`` the ``iommu_hwpt_vtd_s1`` bytes or a dict ``{flags,
    pgtbl_addr, addr_width}``; flags FAULT_ID_VALID and PASID only.
    With FAULT_ID_VALID, ``fault_id`` names the fault queue; without it,
    ``fault_id`` is ignored.

    Checks in the kernel's order (``iommufd_hwpt_alloc`` and
    ``intel_iommu_domain_alloc_nested``): EINVAL ``data_type`` NONE with
    data or another type without; ENOENT the device; EINVAL ``pt_id``
    missing or of another kind. Paging: EOPNOTSUPP unknown flags,
    DIRTY_TRACKING the device lacks, FAULT_ID_VALID with NEST_PARENT,
    data, or PASID on a device whose IOMMU reports no PASID (departure:
    the model has one IOMMU per device, see ``get_hw_info``); EADDRINUSE
    an area not 4 KiB aligned. Nested: EOPNOTSUPP flags other than
    FAULT_ID_VALID/PASID, no data, a type other than VTD_S1; EINVAL a
    parent that is not a NEST_PARENT; EINVAL data shorter than the
    struct, E2BIG a longer one with a non-zero tail. Last, ENOENT a
    missing fault queue. The VT-d stage-1 fields are checked at attach
    (``intel_pasid_setup_nested``: EINVAL for an ``addr_width`` other
    than 48/57), unknown VTD_S1 flag bits are ignored, and the low 12
    bits of ``pgtbl_addr`` are dropped, as in the kernel.
    """
    has_data = data is not None and not (isinstance(data, (bytes, bytearray, memoryview))
                                         and len(data) == 0)
    if (data_type == HwptDataType.NONE) == has_data:
        raise fail(errno.EINVAL, "data_type and data must be given together")
    bd: BoundDevice = ctx._objects.get_of(dev_id, ObjType.DEVICE)
    pt = ctx._objects.find(pt_id) if isinstance(pt_id, int) else None
    if pt is None:
        raise fail(errno.EINVAL, f"no object {pt_id!r} to allocate on")
    if not isinstance(flags, int):
        raise fail(errno.EOPNOTSUPP, f"bad HWPT flags {flags!r}")
    if isinstance(pt, Ioas):
        if flags & ~_ALLOC_FLAGS:
            raise fail(errno.EOPNOTSUPP, f"unknown HWPT flags {flags:#x}")
        if flags & HwptAllocFlags.DIRTY_TRACKING and not bd.dev.dirty_tracking:
            raise fail(errno.EOPNOTSUPP, f"{bd.dev.name} cannot track dirty pages")
        if flags & HwptAllocFlags.FAULT_ID_VALID and flags & HwptAllocFlags.NEST_PARENT:
            raise fail(errno.EOPNOTSUPP, "a NEST_PARENT cannot take a fault queue")
        if has_data:
            raise fail(errno.EOPNOTSUPP, "a VT-d paging HWPT takes no data")
        if flags & HwptAllocFlags.PASID and not bd.dev.pasid_width:
            raise fail(errno.EOPNOTSUPP, f"the IOMMU of {bd.dev.name} has no PASID support")
        paging = HwptPaging(
            pt, nest_parent=bool(flags & HwptAllocFlags.NEST_PARENT),
            enforce_dirty=bool(flags & HwptAllocFlags.DIRTY_TRACKING),
            pasid_compat=bool(flags & HwptAllocFlags.PASID))
        paging.check_domain_add()
        hwpt: Hwpt = paging
    elif isinstance(pt, HwptPaging) or pt.TYPE is ObjType.VIOMMU:
        if flags & ~_NESTED_FLAGS:
            raise fail(errno.EOPNOTSUPP, "nested HWPTs take only FAULT_ID_VALID and PASID")
        if not has_data:
            raise fail(errno.EOPNOTSUPP, "a nested HWPT needs data")
        viommu: Viommu | None = None
        if isinstance(pt, HwptPaging):
            parent = pt
        else:
            viommu = cast("Viommu", pt)
            parent = viommu.parent
        if viommu is None and not parent.nest_parent:
            raise fail(errno.EINVAL, f"HWPT {parent.id} is not a NEST_PARENT")
        s1 = _parse_vtd_s1(data_type, data)
        hwpt = HwptNested(parent, s1, viommu=viommu,
                          pasid_compat=bool(flags & HwptAllocFlags.PASID), fault=None)
    else:
        raise fail(errno.EINVAL, f"object {pt_id} is a {pt.TYPE.value}, not an IOAS/HWPT")
    ctx._step("hwpt_alloc: domain")
    fault = None
    if flags & HwptAllocFlags.FAULT_ID_VALID:
        fault = ctx._objects.get(fault_id, FaultQueue)
    hwpt.fault = fault
    ctx._objects.commit(hwpt)
    if isinstance(hwpt, HwptPaging):
        hwpt.link()
    elif isinstance(hwpt, HwptNested):
        hwpt.parent.users += 1
        if hwpt.viommu is not None:
            hwpt.viommu.users += 1
    if fault is not None:
        fault.users += 1
    return hwpt.id


def hwpt_invalidate(ctx: ContextCore, hwpt_id: int, entries: list[Any],
                    data_type: int = HwptInvalidateDataType.VTD_S1) -> int:
    """IOMMU_HWPT_INVALIDATE on a nested HWPT or a vIOMMU; returns the entries done.

    On a nested HWPT each entry is a VTD_S1 ``{addr, npages, flags}``
    (dict, or bytes of at least 24): ``addr`` 4 KiB aligned, ``flags``
    LEAF (1) or 0; ``addr=0, npages=U64_MAX`` is all pages; ``npages``
    0 is accepted and flushes nothing. The IOTLB entries of the HWPT in
    range go, and the device TLBs of every device attached to it are
    told. On a vIOMMU see ``Viommu`` (vuser data type). An empty list
    processes nothing (a probe).

    Checks in the kernel's order (``iommufd_hwpt_invalidate``,
    ``intel_nested_cache_invalidate_user``): ENOENT the id; EINVAL an
    object that is neither; EINVAL another data type; per entry, EINVAL
    shorter than the struct, E2BIG longer with a non-zero tail,
    EOPNOTSUPP unknown flags or reserved bits, EINVAL an unaligned
    ``addr`` or ``npages=U64_MAX`` with ``addr``. Processing stops at
    the first bad entry; the error's ``processed`` says how many were
    done. Departure: the model caps the list at 2^19 entries (EINVAL).
    """
    obj = ctx._objects.get(hwpt_id)
    if obj.TYPE is ObjType.VIOMMU:
        return cast("Viommu", obj).cache_invalidate(ctx, entries, data_type)
    if not isinstance(obj, HwptNested):
        raise fail(errno.EINVAL, f"object {hwpt_id} is not a nested HWPT or a vIOMMU")
    if data_type != HwptInvalidateDataType.VTD_S1:
        raise fail(errno.EINVAL, f"invalidation data type {data_type!r} is not VTD_S1")

    def act(done: int, inv: Any) -> None:
        if inv.npages:
            hwpt_flush(ctx, obj, inv.addr, inv.npages)

    return run_entries(entries, IommuHwptVtdS1Invalidate, VTD_INV_FLAGS_LEAF, act)


def hwpt_set_dirty_tracking(ctx: ContextCore, hwpt_id: int, enable: bool) -> None:
    """IOMMU_HWPT_SET_DIRTY_TRACKING on a paging HWPT.

    ENOENT unless a paging HWPT; EOPNOTSUPP unless it was allocated with
    DIRTY_TRACKING. Every enable clears the dirty record first, also when
    tracking is on already (``iopt_set_dirty_tracking``).
    """
    hwpt = ctx._objects.get(hwpt_id, HwptPaging)
    if not hwpt.enforce_dirty:
        raise fail(errno.EOPNOTSUPP, f"HWPT {hwpt_id} was not allocated with DIRTY_TRACKING")
    if enable:  # iopt_set_dirty_tracking clears on every enable
        hwpt.dirty.clear()
    hwpt.dirty_tracking = bool(enable)


def hwpt_get_dirty_bitmap(ctx: ContextCore, hwpt_id: int, iova: int, length: int,
                          page_size: int, flags: int = 0) -> bytes:
    """IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per ``page_size`` of the range.

    Returns the bitmap as little-endian u64 words (bit ``i`` = page ``i``).
    Reading clears the dirty record of the range unless NO_CLEAR (1).
    Checks in the kernel's order (``iommufd_hwpt_get_dirty_bitmap``,
    ``iommufd_check_iova_range``): EOPNOTSUPP unknown flags; ENOENT the
    HWPT; EOVERFLOW a wrapping range; EINVAL a range not aligned to the
    IOAS alignment; EINVAL page size 0 or a range not aligned to it;
    EOPNOTSUPP a HWPT without DIRTY_TRACKING. Departure: the model also
    refuses a page size that is not a power of two and a length of 0
    (EINVAL); the kernel's behaviour there is not specified.
    """
    if not isinstance(flags, int) or flags & ~int(DirtyBitmapFlags.NO_CLEAR):
        raise fail(errno.EOPNOTSUPP, f"unknown dirty-bitmap flags {flags!r}")
    hwpt = ctx._objects.get(hwpt_id, HwptPaging)
    last = check_range(iova, length)
    align = hwpt.ioas.iopt.alignment
    if iova % align or length % align:
        raise fail(errno.EINVAL, f"range not aligned to the IOAS alignment {align:#x}")
    if not isinstance(page_size, int) or page_size <= 0 or page_size & (page_size - 1):
        raise fail(errno.EINVAL, f"page size {page_size!r} is not a power of two")
    if iova % page_size or length % page_size:
        raise fail(errno.EINVAL, "range not aligned to the page size")
    if not hwpt.enforce_dirty:
        raise fail(errno.EOPNOTSUPP, f"HWPT {hwpt_id} was not allocated with DIRTY_TRACKING")
    nbits = length // page_size
    bits = 0
    hit: list[int] = []
    for p in hwpt.dirty:
        lo, hi = p << 12, (p << 12) + 4095
        if hi < iova or lo > last:
            continue
        hit.append(p)
        first_bit = (max(lo, iova) - iova) // page_size
        last_bit = (min(hi, last) - iova) // page_size
        bits |= ((1 << (last_bit - first_bit + 1)) - 1) << first_bit
    if not flags & DirtyBitmapFlags.NO_CLEAR:
        hwpt.dirty.difference_update(hit)
    return bits.to_bytes(-(-nbits // 64) * 8, "little")


def _parse_vtd_s1(data_type: int, data: Any) -> IommuHwptVtdS1:
    """``intel_iommu_domain_alloc_nested``: the type, then the struct's length."""
    if data_type != HwptDataType.VTD_S1:
        raise fail(errno.EOPNOTSUPP, f"HWPT data type {data_type!r} is not supported")
    return cast(IommuHwptVtdS1, copy_struct_from_user(IommuHwptVtdS1, data))


def check_vtd_s1(hwpt: HwptNested) -> None:
    """``intel_pasid_setup_nested``: what the VT-d hardware must support (EINVAL)."""
    if hwpt.levels is None:
        raise fail(errno.EINVAL, f"stage-1 addr_width {hwpt.addr_width} is not 48 or 57")
