"""Shared builders for the ioasid-model tests (iommufd-selftest style fixtures)."""

from __future__ import annotations

import errno as errno_mod
from typing import Any, Callable

import pytest

from vuser.iommu import Access, Fault, IoasidContext, IommufdError, IommuRegistry
from vuser.iommu.psc import DEFAULT_PSC_CAPACITY
from vuser.iommu.pagetable import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType

P = 4096
MB = 1 << 20
GB = 1 << 30
PASID = 100

#: Guest-physical layout of the nested rig.
TABLES_GPA = 0x100000           # 1 MiB of stage-1 tables
TABLES_SIZE = 1 * MB
DATA_GPA = 1 * GB               # 4 MiB of data, 1 GiB aligned
DATA_SIZE = 4 * MB


def expect_errno(err: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> IommufdError:
    """Call ``fn`` and assert it fails with ``err``."""
    with pytest.raises(IommufdError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, (
        f"expected {errno_mod.errorcode[err]}, got {errno_mod.errorcode.get(ei.value.errno)}: "
        f"{ei.value}")
    return ei.value


class Rig:
    """A registry, a context and one bound PASID-capable device."""

    def __init__(self, *, pasid_width: int = 20, iotlb_capacity: int = 4096,
                 psc_capacity: int = DEFAULT_PSC_CAPACITY, **dev_kw: Any) -> None:
        self.reg = IommuRegistry()
        dev_kw.setdefault("ats", True)
        dev_kw.setdefault("pri", True)
        self.dev = self.reg.register("dma0", pasid_width=pasid_width, **dev_kw)
        self.ctx = IoasidContext(self.reg, iotlb_capacity=iotlb_capacity,
                                 psc_capacity=psc_capacity)
        self.dev_id = self.ctx.device_bind(self.dev)
        self.ioas = self.ctx.ioas_alloc()

    def map(self, size: int, iova: int | None = None, **kw: Any) -> tuple[bytearray, int]:
        buf = bytearray(size)
        return buf, self.ctx.ioas_map(self.ioas, buf, size, iova, **kw)


class NestedRig(Rig):
    """Stage-2 GPA IOAS with tables and data buffers, a NEST_PARENT, and a
    VT-d stage-1 HWPT whose tables the test builds with ``self.pt``.

    ``self.tables`` backs GPA ``[TABLES_GPA, +1 MiB)``, ``self.data`` backs GPA
    ``[DATA_GPA, +4 MiB)``. PASID ``PASID`` of the device is attached to the
    nested HWPT.
    """

    def __init__(self, *, levels: int = 4, s1_flags: int = 0, fault: bool = False,
                 dirty: bool = False, depth: int = 8, **kw: Any) -> None:
        super().__init__(**kw)
        ctx = self.ctx
        self.tables = bytearray(TABLES_SIZE)
        self.data = bytearray(DATA_SIZE)
        ctx.ioas_map(self.ioas, self.tables, TABLES_SIZE, TABLES_GPA)
        ctx.ioas_map(self.ioas, self.data, DATA_SIZE, DATA_GPA)
        flags = HwptAllocFlags.NEST_PARENT | HwptAllocFlags.PASID
        if dirty:
            flags |= HwptAllocFlags.DIRTY_TRACKING
        self.parent = ctx.hwpt_alloc(self.dev_id, self.ioas, int(flags))
        self.pt = PageTableBuilder(memoryview(self.tables), base=TABLES_GPA, levels=levels)
        self.fault_id = ctx.fault_queue_alloc(depth=depth) if fault else None
        nflags = HwptAllocFlags.PASID | (HwptAllocFlags.FAULT_ID_VALID if fault else 0)
        self.s1 = ctx.hwpt_alloc(
            self.dev_id, self.parent, int(nflags), HwptDataType.VTD_S1,
            {"flags": s1_flags, "pgtbl_addr": self.pt.root,
             "addr_width": 48 if levels == 4 else 57},
            fault_id=self.fault_id)
        ctx.device_attach(self.dev_id, self.s1, pasid=PASID)

    def data_at(self, gpa: int, n: int) -> bytes:
        off = gpa - DATA_GPA
        return bytes(self.data[off:off + n])

    def translate(self, iova: int, length: int = 8, access: int = Access.READ,
                  pasid: int | None = PASID) -> Any:
        return self.ctx.translate(self.dev_id, pasid, iova, length, access)

    def gpa_of(self, iova: int, access: int = Access.READ) -> int | Fault:
        r = self.translate(iova, 1, access)
        return r if isinstance(r, Fault) else r[0].gpa
