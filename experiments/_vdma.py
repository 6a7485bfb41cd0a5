"""A headless stage: a vuser server in-process, our vfio-user client acting as QEMU.

``Stage`` serves one ``vuser-dma`` (a ``Platform``, a ``DeviceServer`` on a
socket) and its control socket (``ControlServer``). ``Stage.driver`` plays
QEMU (guest RAM in a memfd handed over with DMA_MAP) and the guest driver
(config space, BAR0 registers, rings and descriptors written into guest
RAM). The experimenter's side goes through ``Stage.ctl``, an RPC ``Client``,
exactly as ``vuser ctl`` would.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import shutil
import struct
import tempfile
from typing import Any

from vuser.devices.dma_layout import (
    CompletionRecord, Ctrl, DescFlags, DescPasid, Descriptor, QCtrl, QueueReg, Reg, queue_reg,
)
from vuser.devices.platform import Platform
from vuser.devices.vuser_dma import VuserDma
from vuser.iommu.pagetable import PageTableBuilder
from vuser.pci.caps import walk_extended
from vuser.pci.caps_ext import PasidCtl
from vuser.pci.config import Command
from vuser.backend import VFIO_PCI_CONFIG_REGION_INDEX
from vuser.rpc import Client as RpcClient
from vuser.rpc import ControlServer, Service
from vuser.transport.client import Client
from vuser.memory.seals import sealed_memfd
from vuser.transport.server import DeviceServer

PAGE = 4096
MB = 1 << 20
CFG = VFIO_PCI_CONFIG_REGION_INDEX
PASID_CAP = 0x1B


class GuestRam:
    """``size`` bytes of guest RAM at GPA ``gpa``, in a memfd (as QEMU's memory-backend-memfd)."""

    def __init__(self, size: int, gpa: int) -> None:
        self.size, self.gpa = size, gpa
        self.fd = sealed_memfd("vuser-experiment-ram", size)
        self.mm = mmap.mmap(self.fd, size)
        self.view = memoryview(self.mm)
        self._next = gpa

    def alloc(self, size: int, align: int = PAGE) -> int:
        at = -(-self._next // align) * align
        if at + size > self.gpa + self.size:
            raise MemoryError("guest RAM exhausted")
        self._next = at + size
        return at

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.view[gpa - self.gpa:gpa - self.gpa + n])

    def write(self, gpa: int, data: bytes) -> None:
        self.view[gpa - self.gpa:gpa - self.gpa + len(data)] = data

    def close(self) -> None:
        self.view.release()
        self.mm.close()
        os.close(self.fd)


class Stage:
    """Server, device, control socket and the QEMU/guest-driver side."""

    def __init__(self, *, label: int = 0x20, ram_size: int = 32 * MB,
                 ram_gpa: int = 0x4000_0000) -> None:
        self.dir = tempfile.mkdtemp(prefix="vuser-exp-", dir="/tmp")
        self.platform = Platform()
        self.dev = VuserDma(platform=self.platform, label=label)
        self.label = label
        self.ram = GuestRam(ram_size, ram_gpa)
        self.server = DeviceServer(self.dev, os.path.join(self.dir, "dma.sock"), name="vuser-dma")
        self.control = ControlServer(Service.for_platform(self.platform),
                                     os.path.join(self.dir, "ctl.sock"))
        self.qemu: Client | None = None
        self.ctl: RpcClient | None = None
        self.ring = 0
        self.ring_size = 0
        self.tail = 0

    async def __aenter__(self) -> Stage:
        await self.server.start()
        await self.control.start()
        self.qemu = await Client.connect(self.server.path)
        self.ctl = await RpcClient.connect(self.control.path)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.ctl is not None:
            await self.ctl.close()
        if self.qemu is not None:
            await self.qemu.close()
        await self.control.close()
        self.control.service.close()
        await self.server.close()
        self.dev.close()
        self.platform.close()
        self.ram.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- QEMU's part and the guest driver's probe ----------------------------------
    async def _cfg(self, off: int, size: int) -> int:
        assert self.qemu is not None
        return int.from_bytes(await self.qemu.region_read(CFG, off, size), "little")

    async def _set_cfg(self, off: int, size: int, value: int) -> None:
        assert self.qemu is not None
        await self.qemu.region_write(CFG, off, value.to_bytes(size, "little"))

    async def _set_reg(self, off: int, value: int) -> None:
        assert self.qemu is not None
        await self.qemu.region_write(0, off, struct.pack("<I", value & 0xFFFF_FFFF))

    async def boot(self, ring_size: int = 256) -> None:
        """DMA_MAP the RAM; bus master, PASID and the device on; one ring."""
        assert self.qemu is not None
        await self.qemu.dma_map(self.ram.gpa, self.ram.size, fd=self.ram.fd)
        cmd = await self._cfg(4, 2)
        await self._set_cfg(4, 2, cmd | Command.MASTER.mask | Command.MEMORY.mask)
        config = await self.qemu.region_read(CFG, 0, 4096)
        pasid = next(c.offset for c in walk_extended(config) if c.cap_id == PASID_CAP)
        await self._set_cfg(pasid + 6, 2, PasidCtl.ENABLE.mask)
        await self._set_reg(Reg.CTRL, Ctrl.ENABLE.mask)
        self.ring, self.ring_size = self.ram.alloc(ring_size * Descriptor.SIZE), ring_size
        await self._set_reg(queue_reg(0, QueueReg.RING_LO), self.ring & 0xFFFF_FFFF)
        await self._set_reg(queue_reg(0, QueueReg.RING_HI), self.ring >> 32)
        await self._set_reg(queue_reg(0, QueueReg.RING_SIZE), ring_size)
        await self._set_reg(queue_reg(0, QueueReg.Q_CTRL), QCtrl.pack(ENABLE=1))

    def page_tables(self, pages: int = 64) -> PageTableBuilder:
        start = self.ram.alloc(pages * PAGE)
        return PageTableBuilder(self.ram.view, base=self.ram.gpa, alloc_start=start,
                                alloc_end=start + pages * PAGE, levels=4)

    async def attach_pasid(self, pasid: int, pgtbl_addr: int) -> int:
        """What the vIOMMU does for a first-stage PASID entry, through the RPC."""
        assert self.ctl is not None
        [vm] = await self.ctl.vms()
        dev_id = await self.ctl.device_lookup(self.label)
        hwpt = await self.ctl.hwpt_alloc(dev_id, vm["s2_hwpt_id"], 8, 1,
                                         {"flags": 0, "pgtbl_addr": pgtbl_addr,
                                          "addr_width": 48})
        await self.ctl.device_attach(dev_id, hwpt, pasid)
        return hwpt

    async def submit(self, descs: list[Descriptor]) -> None:
        for d in descs:
            self.ram.write(self.ring + self.tail * Descriptor.SIZE, d.pack())
            self.tail = (self.tail + 1) % self.ring_size
        await self._set_reg(queue_reg(0, QueueReg.TAIL), self.tail)
        await self._set_reg(queue_reg(0, QueueReg.DOORBELL), 1)

    async def idle(self) -> None:
        await asyncio.wait_for(self.dev.idle(), 30)

    def record(self, gpa: int) -> CompletionRecord:
        return CompletionRecord.unpack(self.ram.read(gpa, CompletionRecord.SIZE))


def memcpy(src: int, dst: int, n: int, completion: int, pasid: int | None) -> Descriptor:
    """MEMCPY with a completion record written untagged (the ring's space)."""
    pv = 0 if pasid is None else DescPasid.pack(VALID=1, PASID=pasid)
    return Descriptor(opcode=1, flags=int(DescFlags.COMPLETION | DescFlags.COMPLETION_RID),
                      pasid=pv, src=src, dst=dst, length=n, completion=completion, pattern=0)
