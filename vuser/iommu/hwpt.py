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
from typing import TYPE_CHECKING, Any

from .errors import IommufdError, fail
from .io_pagetable import READABLE, WRITEABLE, check_range
from .objects import IommufdObject, ObjectTable, ObjType
from .pagetable.formats import FIRST_STAGE_LEVELS
from .pagetable.results import Access, Fault, FaultReason, Stage
from .uapi import (
    U64_MAX, VTD_INV_FLAGS_LEAF, DirtyBitmapFlags, HwptAllocFlags, HwptDataType,
    HwptInvalidateDataType, IommuHwptVtdS1, IommuHwptVtdS1Invalidate, VtdS1Flags, struct_from,
)

if TYPE_CHECKING:
    from .device import BoundDevice
    from .fault import FaultQueue
    from .ioas import Ioas
    from .viommu import Viommu

_ALLOC_FLAGS = int(HwptAllocFlags.NEST_PARENT | HwptAllocFlags.DIRTY_TRACKING
                   | HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID)
_NESTED_FLAGS = int(HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID)
_VTD_S1_FLAGS = int(VtdS1Flags.SRE | VtdS1Flags.EAFE | VtdS1Flags.WPE)
#: Kernel bound on HWPT_INVALIDATE entry_num.
MAX_INVALIDATE_ENTRIES = 1 << 19
_R, _W = int(Access.READ), int(Access.WRITE)


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
        a = self.ioas.iopt.find(gpa)
        if a is None:
            return Fault(FaultReason.PAGING_ENTRY_INV, Stage.S2, gpa, _W if write else _R)
        if write:
            if not a.prot & WRITEABLE:
                return Fault(FaultReason.WRITE, Stage.S2, gpa, _W)
            if self.dirty_tracking:
                self.dirty.add(gpa >> 12)
        elif not a.prot & READABLE:
            return Fault(FaultReason.READ, Stage.S2, gpa, _R)
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
        self.pgtbl_addr = s1.pgtbl_addr
        self.addr_width = s1.addr_width
        self.levels = FIRST_STAGE_LEVELS[s1.addr_width]
        self.s1_flags = s1.flags
        self.sre = bool(s1.flags & VtdS1Flags.SRE)
        self.eafe = bool(s1.flags & VtdS1Flags.EAFE)
        self.wpe = bool(s1.flags & VtdS1Flags.WPE)

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
    return hwpt if isinstance(hwpt, HwptPaging) else hwpt.parent  # type: ignore[attr-defined]


class HwptCommands:
    """HWPT_* commands of ``IoasidContext``."""

    _objects: ObjectTable
    if TYPE_CHECKING:
        def _hwpt_flush(self, hwpt: Hwpt, addr: int, npages: int) -> int: ...

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0,
                   data_type: int = HwptDataType.NONE, data: Any = None,
                   fault_id: int | None = None) -> int:
        """IOMMU_HWPT_ALLOC for device ``dev_id``; returns the HWPT id.

        ``pt_id`` an IOAS: a paging HWPT (flags NEST_PARENT 1, DIRTY_TRACKING
        2, PASID 8; no data). ``pt_id`` a NEST_PARENT paging HWPT or a vIOMMU:
        a nested HWPT, ``data_type`` VTD_S1 (1) with ``data`` the 24-byte
        ``iommu_hwpt_vtd_s1`` or a dict ``{flags, pgtbl_addr, addr_width}``.
        FAULT_ID_VALID (4) with ``fault_id`` makes it IOPF-capable.

        Errors: EOPNOTSUPP unknown flags, data on a paging HWPT, unknown data
        type or VTD_S1 flags, DIRTY_TRACKING or PASID the device lacks;
        EINVAL no data for a nested HWPT, a parent without NEST_PARENT, a
        nested parent, bad addr_width or unaligned pgtbl_addr; ENOENT ids.
        """
        from .device import BoundDevice
        from .fault import FaultQueue
        from .ioas import Ioas
        from .viommu import Viommu

        bd = self._objects.get(dev_id, BoundDevice)
        if not isinstance(flags, int) or flags & ~_ALLOC_FLAGS:
            raise fail(errno.EOPNOTSUPP, f"unknown HWPT flags {flags!r}")
        fault = None
        if flags & HwptAllocFlags.FAULT_ID_VALID:
            fault = self._objects.get(fault_id, FaultQueue)  # type: ignore[arg-type]
        elif fault_id:
            raise fail(errno.EINVAL, "fault_id without FAULT_ID_VALID")
        pt = self._objects.get(pt_id)
        if flags & HwptAllocFlags.PASID and not bd.dev.pasid_width:
            raise fail(errno.EOPNOTSUPP, f"{bd.dev.name} has no PASID support")
        if isinstance(pt, Ioas):
            if data_type != HwptDataType.NONE or data is not None:
                raise fail(errno.EOPNOTSUPP, "a paging HWPT takes no data")
            if flags & HwptAllocFlags.DIRTY_TRACKING and not bd.dev.dirty_tracking:
                raise fail(errno.EOPNOTSUPP, f"{bd.dev.name} cannot track dirty pages")
            hwpt: Hwpt = HwptPaging(
                pt, nest_parent=bool(flags & HwptAllocFlags.NEST_PARENT),
                enforce_dirty=bool(flags & HwptAllocFlags.DIRTY_TRACKING),
                pasid_compat=bool(flags & HwptAllocFlags.PASID), fault=fault)
            self._objects.commit(hwpt)
            pt.users += 1
            pt.hwpts.append(hwpt)  # type: ignore[arg-type]
        elif isinstance(pt, (HwptPaging, Viommu)):
            parent = pt if isinstance(pt, HwptPaging) else pt.parent
            viommu = pt if isinstance(pt, Viommu) else None
            if not parent.nest_parent:
                raise fail(errno.EINVAL, f"HWPT {parent.id} is not a NEST_PARENT")
            if flags & ~_NESTED_FLAGS:
                raise fail(errno.EOPNOTSUPP, "nested HWPTs take only FAULT_ID_VALID and PASID")
            s1 = _parse_vtd_s1(data_type, data)
            hwpt = HwptNested(parent, s1, viommu=viommu,
                              pasid_compat=bool(flags & HwptAllocFlags.PASID), fault=fault)
            self._objects.commit(hwpt)
            parent.users += 1
            if viommu is not None:
                viommu.users += 1
        elif isinstance(pt, HwptNested):
            raise fail(errno.EINVAL, "a nested HWPT cannot be a parent")
        else:
            raise fail(errno.EINVAL, f"object {pt_id} is a {pt.TYPE.value}, not an IOAS/HWPT")
        if fault is not None:
            fault.users += 1
        return hwpt.id

    def hwpt_invalidate(self, hwpt_id: int, entries: list[Any],
                        data_type: int = HwptInvalidateDataType.VTD_S1) -> int:
        """IOMMU_HWPT_INVALIDATE on a nested HWPT; returns the entries processed.

        Each entry is a VTD_S1 ``{addr, npages, flags}`` (dict or 24 bytes):
        ``addr`` 4 KiB aligned, ``flags`` LEAF (1) or 0; ``addr=0,
        npages=U64_MAX`` is all pages. The IOTLB entries of the HWPT in range
        go, and the device TLBs of every device attached to it are told. An
        empty list processes nothing (a probe). Processing stops at the first
        bad entry: EOPNOTSUPP for flags or reserved bits, EINVAL for
        alignment, ``npages`` 0 or a bad entry; the error's ``processed``
        says how many were done.
        """
        hwpt = self._objects.get(hwpt_id, HwptNested, HwptPaging)
        if isinstance(hwpt, HwptPaging):
            raise fail(errno.EINVAL, "HWPT_INVALIDATE needs a nested HWPT")
        if data_type != HwptInvalidateDataType.VTD_S1:
            raise fail(errno.EINVAL, f"invalidation data type {data_type!r} is not VTD_S1")
        if not isinstance(entries, (list, tuple)) or len(entries) > MAX_INVALIDATE_ENTRIES:
            raise fail(errno.EINVAL, "entries must be a list of at most 2^19")
        done = 0
        for raw in entries:
            try:
                inv = struct_from(IommuHwptVtdS1Invalidate, raw)
            except (ValueError, TypeError) as e:
                raise IommufdError(errno.EINVAL, f"entry {done}: {e}", processed=done) from None
            if inv.flags & ~VTD_INV_FLAGS_LEAF or inv.reserved:
                raise IommufdError(errno.EOPNOTSUPP, f"entry {done}: flags {inv.flags:#x}",
                                   processed=done)
            if inv.addr & 0xFFF or (inv.npages == U64_MAX and inv.addr) or inv.npages == 0:
                raise IommufdError(errno.EINVAL, f"entry {done}: bad range", processed=done)
            self._hwpt_flush(hwpt, inv.addr, inv.npages)
            done += 1
        return done

    def hwpt_set_dirty_tracking(self, hwpt_id: int, enable: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING on a paging HWPT.

        EOPNOTSUPP unless it was allocated with DIRTY_TRACKING. Enabling
        clears the dirty record first.
        """
        hwpt = self._objects.get(hwpt_id, HwptPaging)
        if not hwpt.enforce_dirty:
            raise fail(errno.EOPNOTSUPP, f"HWPT {hwpt_id} was not allocated with DIRTY_TRACKING")
        if enable and not hwpt.dirty_tracking:
            hwpt.dirty.clear()
        hwpt.dirty_tracking = bool(enable)

    def hwpt_get_dirty_bitmap(self, hwpt_id: int, iova: int, length: int, page_size: int,
                              flags: int = 0) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per ``page_size`` of the range.

        Returns the bitmap as little-endian u64 words (bit ``i`` = page ``i``).
        Reading clears the dirty record of the range unless NO_CLEAR (1).
        EOPNOTSUPP unknown flags; EINVAL a page size that is not a power of
        two, or a range not aligned to it; EOVERFLOW a wrapping range.
        """
        hwpt = self._objects.get(hwpt_id, HwptPaging)
        if not isinstance(flags, int) or flags & ~int(DirtyBitmapFlags.NO_CLEAR):
            raise fail(errno.EOPNOTSUPP, f"unknown dirty-bitmap flags {flags!r}")
        if not isinstance(page_size, int) or page_size <= 0 or page_size & (page_size - 1):
            raise fail(errno.EINVAL, f"page size {page_size!r} is not a power of two")
        last = check_range(iova, length)
        if iova % page_size or length % page_size:
            raise fail(errno.EINVAL, "range not aligned to the page size")
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
    if data_type == HwptDataType.NONE or data is None:
        raise fail(errno.EINVAL, "a nested HWPT needs data")
    if data_type != HwptDataType.VTD_S1:
        raise fail(errno.EOPNOTSUPP, f"HWPT data type {data_type!r} is not supported")
    try:
        s1 = struct_from(IommuHwptVtdS1, data)
    except (ValueError, TypeError) as e:
        raise fail(errno.EINVAL, f"bad VTD_S1 data: {e}") from None
    if s1.flags & ~_VTD_S1_FLAGS:
        raise fail(errno.EOPNOTSUPP, f"unknown VTD_S1 flags {s1.flags:#x}")
    if s1.addr_width not in FIRST_STAGE_LEVELS:
        raise fail(errno.EINVAL, f"addr_width {s1.addr_width} is not 48 or 57")
    if s1.pgtbl_addr & 0xFFF:
        raise fail(errno.EINVAL, f"pgtbl_addr {s1.pgtbl_addr:#x} is not 4K aligned")
    return s1
