"""A model with devices, a nested PASID attachment and a control service."""

from __future__ import annotations

import asyncio
import socket
import weakref
from typing import Any

import msgpack

from vuser.iommu import Access, IoasidContext, IommuRegistry
from vuser.iommu.pagetable import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType
from vuser.rpc import Service

P = 4096
MB = 1 << 20
PASID = 7
TABLES_GPA = 0x10_0000
DATA_GPA = 0x40_0000
DATA_IOVA = 0x7000_0000
DATA_PAGES = 64


class Harness:
    """Two devices (labels 0x10 and 0x11, one group each); ``dev`` is bound and
    has PASID ``PASID`` on a nested HWPT mapping ``DATA_PAGES`` pages at
    ``DATA_IOVA`` -> ``DATA_GPA``, with a fault queue. Device DMA goes through
    ``self.dev`` (the ``IommuDevice``), as a device model's would."""

    def __init__(self) -> None:
        self.reg = IommuRegistry()
        self.dev = self.reg.register("dma0", label=0x10, pasid_width=20, ats=True, pri=True)
        self.other = self.reg.register("dma1", label=0x11, pasid_width=20, ats=True, pri=True)
        self.ctx = IoasidContext(self.reg)
        ctx = self.ctx
        self.dev_id = ctx.device_bind(self.dev)
        self.ioas = ctx.ioas_alloc()
        self.ram = bytearray(8 * MB)
        ctx.ioas_map(self.ioas, self.ram, len(self.ram), 0)
        self.parent = ctx.hwpt_alloc(self.dev_id, self.ioas,
                                     int(HwptAllocFlags.NEST_PARENT | HwptAllocFlags.PASID))
        self.pt = PageTableBuilder(memoryview(self.ram), base=0, alloc_start=TABLES_GPA,
                                   alloc_end=DATA_GPA, levels=4)
        self.pt.map(DATA_IOVA, DATA_GPA, DATA_PAGES * P)
        self.fault_q = ctx.fault_queue_alloc(16)
        self.s1 = ctx.hwpt_alloc(
            self.dev_id, self.parent, int(HwptAllocFlags.PASID | HwptAllocFlags.FAULT_ID_VALID),
            HwptDataType.VTD_S1, {"flags": 0, "pgtbl_addr": self.pt.root, "addr_width": 48},
            fault_id=self.fault_q)
        ctx.device_attach(self.dev_id, self.parent)
        ctx.device_attach(self.dev_id, self.s1, pasid=PASID)
        self.service = Service(ctx)

    def dma_read(self, iova: int, n: int = 8, pasid: int | None = PASID) -> Any:
        return self.dev.read(pasid, iova, n, Access.READ)

    def close(self) -> None:
        self.service.close()
        self.ctx.close()


async def raw_connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path)


_UNPACKERS: "weakref.WeakKeyDictionary[asyncio.StreamReader, msgpack.Unpacker]" = \
    weakref.WeakKeyDictionary()


async def read_msg(reader: asyncio.StreamReader, timeout: float = 5.0) -> Any:
    """One msgpack message from a raw connection (None at EOF)."""
    u = _UNPACKERS.setdefault(reader, msgpack.Unpacker(raw=False, strict_map_key=False))
    while True:
        for obj in u:
            return obj
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            return None
        u.feed(data)


async def at_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    data = await asyncio.wait_for(reader.read(65536), timeout)
    return data == b""


def request(rid: int, method: str, params: Any) -> bytes:
    return msgpack.packb([0, rid, method, params], use_bin_type=True)


def unix_socket_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s
