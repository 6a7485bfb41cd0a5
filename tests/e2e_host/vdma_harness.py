"""Host-side harness: our vfio-user client plays QEMU and a guest driver for vuser-dma.

``Rig`` serves vuser-dma devices (one ``Platform``) on sockets. ``GuestRam``
is a memfd mapped as guest RAM; ``VdmaDriver`` connects to one device like
QEMU (DMA_MAP of the RAM with its fd, MSI-X eventfds) and drives it like a
guest driver (config space, BAR0 registers, rings and descriptors written
into the memfd).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
from dataclasses import dataclass, field

from vuser.devices.dma_layout import (
    CompletionRecord, Ctrl, DescFlags, DescPasid, Descriptor, Opcode, QCtrl, QueueReg, Reg,
    queue_reg,
)
from vuser.devices.platform import Platform
from vuser.devices.vuser_dma import VuserDma
from vuser.iommu.pagetable.builder import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType
from vuser.pci.caps import walk_extended
from vuser.pci.caps_ext import AtsCtl, PasidCtl, PriCtl
from vuser.pci.config import Command
from vuser.backend import VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20
PAGE = 4096
TIMEOUT = 10
CFG = VFIO_PCI_CONFIG_REGION_INDEX
PASID_ID, ATS_ID, PRI_ID = 0x1B, 0x0F, 0x13
#: IOVAs the nested scenarios map in every PASID (the ``nested`` fixture).
SRC, DST, COMP = 0x1234_5000, 0x7_5555_0000, 0x9_0000_0000


async def eventually(cond, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``cond()`` until true (bounded): for effects of other tasks."""
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for: {what}")


def changed(before: bytes, after: bytes) -> list[tuple[int, int]]:
    """File ranges ``[start, end)`` where ``after`` differs from ``before``."""
    out: list[tuple[int, int]] = []
    for blk in range(0, len(after), PAGE):
        a, b = before[blk:blk + PAGE], after[blk:blk + PAGE]
        if a == b:
            continue
        for i in range(len(b)):
            if a[i] != b[i]:
                if out and out[-1][1] == blk + i:
                    out[-1] = (out[-1][0], blk + i + 1)
                else:
                    out.append((blk + i, blk + i + 1))
    return out


class GuestRam:
    """``size`` bytes of guest RAM in a memfd, at GPA ``gpa`` from file offset ``offset``.

    A non-zero ``offset`` makes stage 2 visible: GPA g is file byte
    ``g - gpa + offset``.
    """

    def __init__(self, size: int = 16 * MiB, gpa: int = 0x4000_0000, offset: int = 4 * MiB,
                 name: str = "guest-ram") -> None:
        self.size, self.gpa, self.offset = size, gpa, offset
        self.fd = sealed_memfd(name, offset + size)
        self.mm = mmap.mmap(self.fd, offset + size)
        #: The RAM as the guest sees it: byte 0 is GPA ``gpa``.
        self.view = memoryview(self.mm)[offset:offset + size]
        self._next = gpa
        #: GPA windows holding page tables (the walker sets A/D bits there).
        self.table_windows: list[tuple[int, int]] = []

    @property
    def ident(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def file_offset(self, gpa: int) -> int:
        assert self.gpa <= gpa < self.gpa + self.size
        return gpa - self.gpa + self.offset

    def alloc(self, size: int, align: int = PAGE) -> int:
        """A GPA range of ``size`` bytes (bump allocator, zeroed)."""
        at = -(-self._next // align) * align
        if at + size > self.gpa + self.size:
            raise MemoryError("guest RAM exhausted")
        self._next = at + size
        self.write(at, bytes(size))
        return at

    def read(self, gpa: int, n: int) -> bytes:
        return os.pread(self.fd, n, self.file_offset(gpa))

    def write(self, gpa: int, data: bytes) -> None:
        os.pwrite(self.fd, data, self.file_offset(gpa))

    def snapshot(self) -> bytes:
        return os.pread(self.fd, self.offset + self.size, 0)

    def page_tables(self, pages: int = 64) -> PageTableBuilder:
        """A first-stage table builder over a fresh window of this RAM."""
        start = self.alloc(pages * PAGE)
        self.table_windows.append((start, pages * PAGE))
        return PageTableBuilder(self.view, base=self.gpa, alloc_start=start,
                                alloc_end=start + pages * PAGE, fmt="first", levels=4)

    def close(self) -> None:
        self.view.release()
        self.mm.close()
        os.close(self.fd)


@dataclass
class Ring:
    queue: int
    base: int
    size: int
    tail: int = 0


def desc(opcode: int, *, src: int = 0, dst: int = 0, length: int = 0, pasid: int | None = None,
         completion: int = 0, pattern: int = 0, flags: int = DescFlags.COMPLETION) -> Descriptor:
    pv = 0 if pasid is None else DescPasid.pack(VALID=1, PASID=pasid)
    return Descriptor(opcode=int(opcode), flags=int(flags), pasid=pv, src=src, dst=dst,
                      length=length, completion=completion, pattern=pattern)


@dataclass
class VdmaDriver:
    """One connection to a vuser-dma, doing QEMU's and the guest driver's part."""

    dev: VuserDma
    client: Client
    ram: GuestRam
    efds: list[int] = field(default_factory=list)
    rings: dict[int, Ring] = field(default_factory=dict)
    last_completion: int = 0

    # -- QEMU's part -------------------------------------------------------
    async def map_ram(self, ram: GuestRam | None = None) -> None:
        ram = ram or self.ram
        await self.client.dma_map(ram.gpa, ram.size, fd=ram.fd, offset=ram.offset)

    async def msix(self) -> None:
        n = (await self.client.irq_info(VFIO_PCI_MSIX_IRQ_INDEX)).count
        self.efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(n)]
        await self.client.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, self.efds)

    def irq_count(self, vector: int) -> int:
        try:
            return os.eventfd_read(self.efds[vector])
        except BlockingIOError:
            return 0

    # -- config space --------------------------------------------------------
    async def cfg_read(self, off: int, size: int) -> int:
        return int.from_bytes(await self.client.region_read(CFG, off, size), "little")

    async def cfg_write(self, off: int, size: int, value: int) -> None:
        await self.client.region_write(CFG, off, value.to_bytes(size, "little"))

    async def ext_cap(self, cap_id: int) -> int:
        config = await self.client.region_read(CFG, 0, 4096)
        for c in walk_extended(config):
            if c.cap_id == cap_id:
                return c.offset
        raise LookupError(f"no extended capability {cap_id:#x}")

    async def bus_master(self, on: bool = True) -> None:
        cmd = await self.cfg_read(4, 2)
        bits = Command.MASTER.mask | Command.MEMORY.mask
        await self.cfg_write(4, 2, (cmd | bits) if on else (cmd & ~Command.MASTER.mask))

    async def enable_pasid(self) -> None:
        await self.cfg_write(await self.ext_cap(PASID_ID) + 6, 2, PasidCtl.ENABLE.mask)

    async def enable_ats(self, on: bool = True) -> None:
        await self.cfg_write(await self.ext_cap(ATS_ID) + 6, 2, AtsCtl.ENABLE.mask if on else 0)

    async def enable_pri(self, allocation: int = 32) -> None:
        off = await self.ext_cap(PRI_ID)
        await self.cfg_write(off + 0xC, 4, allocation)
        await self.cfg_write(off + 4, 2, PriCtl.ENABLE.mask)

    async def pri_status(self) -> int:
        return await self.cfg_read(await self.ext_cap(PRI_ID) + 6, 2)

    # -- BAR0 -------------------------------------------------------------------
    async def reg(self, off: int) -> int:
        return struct.unpack("<I", await self.client.region_read(0, off, 4))[0]

    async def set_reg(self, off: int, value: int) -> None:
        await self.client.region_write(0, off, struct.pack("<I", value & 0xFFFF_FFFF))

    async def qreg(self, q: int, r: QueueReg) -> int:
        return await self.reg(queue_reg(q, r))

    async def set_qreg(self, q: int, r: QueueReg, value: int) -> None:
        await self.set_reg(queue_reg(q, r), value)

    async def setup(self, queues: int = 1, ring_size: int = 64, *, irq: bool = True) -> None:
        """QEMU's connect (RAM map, MSI-X), then the driver's probe: bus master,
        device enable and ``queues`` rings of ``ring_size`` in guest RAM."""
        await self.map_ram()
        await self.msix()
        await self.bus_master()
        await self.set_reg(Reg.CTRL, Ctrl.ENABLE.mask)
        for q in range(queues):
            await self.setup_queue(q, ring_size, irq=irq)

    async def setup_queue(self, q: int, ring_size: int = 64, *, base: int | None = None,
                          irq: bool = True) -> Ring:
        base = self.ram.alloc(ring_size * Descriptor.SIZE) if base is None else base
        await self.set_qreg(q, QueueReg.RING_LO, base & 0xFFFF_FFFF)
        await self.set_qreg(q, QueueReg.RING_HI, base >> 32)
        await self.set_qreg(q, QueueReg.RING_SIZE, ring_size)
        await self.set_qreg(q, QueueReg.Q_CTRL, QCtrl.pack(ENABLE=1, VECTOR=q,
                                                          IRQ_ENABLE=int(irq)))
        ring = self.rings[q] = Ring(q, base, ring_size)
        return ring

    def completion(self) -> int:
        """A fresh, zeroed completion record in guest RAM."""
        self.last_completion = self.ram.alloc(CompletionRecord.SIZE, align=32)
        return self.last_completion

    async def submit(self, q: int, *descs: Descriptor, ring_write: bool = True) -> None:
        """Write descriptors at TAIL, advance TAIL, ring the doorbell (returns at once)."""
        ring = self.rings[q]
        for d in descs:
            if ring_write:
                self.ram.write(ring.base + ring.tail * Descriptor.SIZE, d.pack())
            ring.tail = (ring.tail + 1) % ring.size
        await self.set_qreg(q, QueueReg.TAIL, ring.tail)
        await self.set_qreg(q, QueueReg.DOORBELL, 1)

    async def run(self, q: int, *descs: Descriptor) -> None:
        """``submit`` and wait until the device has no work running."""
        await self.submit(q, *descs)
        await asyncio.wait_for(self.dev.idle(), TIMEOUT)

    def record(self, gpa: int) -> CompletionRecord:
        return CompletionRecord.unpack(self.ram.read(gpa, CompletionRecord.SIZE))

    async def memcpy(self, q: int, src: int, dst: int, n: int, *, pasid: int | None = None,
                     flags: int = DescFlags.COMPLETION) -> CompletionRecord:
        comp = self.completion()
        await self.run(q, desc(Opcode.MEMCPY, src=src, dst=dst, length=n, pasid=pasid,
                               completion=comp, flags=flags))
        return self.record(comp)

    def assert_only_written(self, before: bytes, *gpa_ranges: tuple[int, int]) -> None:
        """Since ``before``, guest RAM changed only in ``gpa_ranges`` (besides the
        rings the driver writes and the page tables, where walks set A/D bits)."""
        ram = self.ram
        allowed = [(ram.file_offset(g), n) for g, n in gpa_ranges]
        allowed += [(ram.file_offset(r.base), r.size * Descriptor.SIZE)
                    for r in self.rings.values()]
        allowed += [(ram.file_offset(g), n) for g, n in ram.table_windows]
        for start, end in changed(before, ram.snapshot()):
            assert any(a <= start and end <= a + n for a, n in allowed), \
                f"unexpected write at file bytes [{start:#x}, {end:#x})"

    def close(self) -> None:
        for fd in self.efds:
            os.close(fd)
        self.efds.clear()


def attach_s1(platform: Platform, dev: VuserDma, pgtbl_addr: int, pasid: int, *,
              fault_id: int | None = None) -> int:
    """Drive the model as the vIOMMU would for a first-stage PASID entry: a
    nested VTD_S1 HWPT over the VM's stage-2 parent, attached to (label, pasid)."""
    ctx, vm = platform.ctx, platform.vm_of(dev)
    flags = HwptAllocFlags.PASID | (HwptAllocFlags.FAULT_ID_VALID if fault_id else 0)
    hwpt = ctx.hwpt_alloc(dev.iommu.dev_id, vm.s2_hwpt_id, int(flags), HwptDataType.VTD_S1,
                          {"flags": 0, "pgtbl_addr": pgtbl_addr, "addr_width": 48},
                          fault_id=fault_id)
    ctx.device_attach(dev.iommu.dev_id, hwpt, pasid=pasid)
    return hwpt


class Rig:
    """vuser-dma devices served on one platform; ``drivers`` connect to them."""

    def __init__(self, tmp_path, platform: Platform | None = None) -> None:
        self.tmp_path = tmp_path
        self.platform = platform or Platform()
        self.devices: list[VuserDma] = []
        self.servers: list[DeviceServer] = []
        self.paths: list[str] = []
        self.drivers: list[VdmaDriver] = []

    async def add(self, **options) -> VuserDma:
        dev = VuserDma(platform=self.platform, **options)
        path = str(self.tmp_path / f"vdma{len(self.devices)}.sock")
        server = DeviceServer(dev, path, name=f"vuser-dma{len(self.devices)}")
        await server.start()
        self.devices.append(dev)
        self.servers.append(server)
        self.paths.append(path)
        return dev

    async def connect(self, i: int, ram: GuestRam) -> VdmaDriver:
        client = await Client.connect(self.paths[i])
        drv = VdmaDriver(self.devices[i], client, ram)
        self.drivers.append(drv)
        return drv

    async def disconnect(self, drv: VdmaDriver) -> None:
        await drv.client.close()
        i = self.devices.index(drv.dev)
        await eventually(lambda: self.servers[i].session is None, "the server saw the close")
        drv.close()

    async def close(self) -> None:
        for drv in self.drivers:
            await drv.client.close()
            drv.close()
        for server in self.servers:
            await server.close()
        for dev in self.devices:
            dev.close()
        self.platform.close()
