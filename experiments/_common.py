"""What the experiments share: a headless nested rig and the result type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vuser.iommu import IoasidContext, IommuRegistry
from vuser.iommu.pagetable import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096


@dataclass
class Result:
    """A table, notes under it, and how to plot it (``plot(path)``)."""

    title: str
    headers: Sequence[str]
    rows: list[Sequence[Any]]
    notes: list[str] = field(default_factory=list)
    plot: Callable[[str], str] | None = None
    data: dict[str, Any] = field(default_factory=dict)


class NestedRig:
    """One PASID-capable device, a GPA IOAS (stage 2) and a VT-d stage-1 HWPT.

    Guest memory is ``mem_size`` bytes at GPA 0 (a server-owned buffer, as
    QEMU's RAM would be); stage-1 tables are built in its first ``tables``
    bytes with ``self.pt``; PASID ``pasid`` is attached to the nested HWPT.
    """

    def __init__(self, *, mem_size: int = 64 * MB, tables: int = 4 * MB, levels: int = 4,
                 iotlb_capacity: int = 4096, pasid: int = 1, ats: bool = False) -> None:
        self.reg = IommuRegistry()
        self.dev = self.reg.register("dma0", pasid_width=20, ats=ats, pri=True)
        self.ctx = IoasidContext(self.reg, iotlb_capacity=iotlb_capacity)
        ctx = self.ctx
        self.pasid = pasid
        self.dev_id = ctx.device_bind(self.dev)
        self.ioas = ctx.ioas_alloc()
        self.mem = bytearray(mem_size)
        ctx.ioas_map(self.ioas, self.mem, mem_size, 0)
        self.parent = ctx.hwpt_alloc(self.dev_id, self.ioas,
                                     int(HwptAllocFlags.NEST_PARENT | HwptAllocFlags.PASID))
        self.pt = PageTableBuilder(memoryview(self.mem), base=0, alloc_start=PAGE,
                                   alloc_end=tables, levels=levels)
        self.s1 = ctx.hwpt_alloc(self.dev_id, self.parent, int(HwptAllocFlags.PASID),
                                 HwptDataType.VTD_S1,
                                 {"flags": 0, "pgtbl_addr": self.pt.root,
                                  "addr_width": 48 if levels == 4 else 57})
        ctx.device_attach(self.dev_id, self.s1, pasid=pasid)

    def close(self) -> None:
        self.ctx.close()
