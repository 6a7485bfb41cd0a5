"""A small "guest driver" for vuser-iommu tests: our vfio-user client plays QEMU.

``GuestRam`` is a memfd mapped as guest RAM at ``base`` (the test reads and
writes it directly, as the guest CPU would). ``VtdDriver`` programs a
vuser-iommu function over a ``Client``: it builds the scalable-mode root,
context, PASID directory and PASID tables in guest RAM, first-stage page
tables (``vuser.iommu.pagetable.PageTableBuilder``), submits invalidation
descriptors (each batch followed by a wait descriptor whose status write it
polls), reads the page request queue and the fault recording registers.

Every format comes from ``vuser.devices.vtd_layout``; test_viommu_layout pins
those declarations to hand-computed values.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
from dataclasses import dataclass

from vuser.devices.viommu_faults import FaultRecord
from vuser.devices.vtd_layout import (
    FRCD_SIZE, IQ_ENTRY_SIZE, NFR, PRQ_ENTRY_SIZE, TTM_SCALABLE, ContextEntry, ContextQw0,
    ContextQw1, EventCtl, Fsts, Gcmd, InvDesc, InvType, IotlbAddr, Iqa, PageRequest,
    PasidDirEntry, PasidEntry, PasidQw0, PasidQw1, PasidQw2, PcDesc, PdevTlbAddr, PdevTlbDesc,
    PgrespDesc, PgrespQw1, Pgtt, PiotlbDesc, Pqa, PrdHi, PrdLo, Prs, Reg, RootEntry, RootHalf,
    Rtaddr, WaitAddr, WaitDesc,
)
from vuser.iommu.pagetable import PageTableBuilder
from vuser.transport.client import Client
from vuser.memory.seals import sealed_memfd

P = 4096
MiB = 1 << 20
TIMEOUT = 10


class GuestRam:
    """``size`` bytes of memfd at GPA ``base`` with a bump allocator."""

    def __init__(self, size: int = 16 * MiB, base: int = 0x4000_0000) -> None:
        self.size, self.base = size, base
        self.fd = sealed_memfd("guest-ram", size)
        self.mm = mmap.mmap(self.fd, size)
        self.view = memoryview(self.mm)
        self._next = base
        self._tables: list[PageTableBuilder] = []

    def close(self) -> None:
        for pt in self._tables:
            pt.mem.release()
        self.view.release()
        self.mm.close()
        os.close(self.fd)

    @property
    def end(self) -> int:
        return self.base + self.size

    def alloc(self, size: int, align: int = P) -> int:
        gpa = (self._next + align - 1) & ~(align - 1)
        if gpa + size > self.end:
            raise MemoryError("guest RAM exhausted")
        self._next = gpa + size
        self.write(gpa, bytes(size))
        return gpa

    def read(self, gpa: int, n: int) -> bytes:
        off = gpa - self.base
        assert 0 <= off and off + n <= self.size, f"{gpa:#x}+{n} outside guest RAM"
        return bytes(self.mm[off:off + n])

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.base
        assert 0 <= off and off + len(data) <= self.size, f"{gpa:#x} outside guest RAM"
        self.mm[off:off + len(data)] = data

    def u64(self, gpa: int) -> int:
        return struct.unpack("<Q", self.read(gpa, 8))[0]

    def set_u64(self, gpa: int, v: int) -> None:
        self.write(gpa, struct.pack("<Q", v))

    def page_tables(self, window: int = 1 * MiB, levels: int = 4) -> PageTableBuilder:
        """First-stage tables in a fresh window of guest RAM (addresses are GPAs)."""
        start = self.alloc(window)
        off = start - self.base
        pt = PageTableBuilder(self.view[off:off + window], base=start, levels=levels)
        self._tables.append(pt)
        return pt

    async def map_into(self, client: Client) -> None:
        """DMA_MAP the whole RAM to ``client``'s device, as QEMU does."""
        await client.dma_map(self.base, self.size, fd=self.fd)


@dataclass(frozen=True)
class PageRequestSeen:
    """A page request descriptor as the guest reads it from the PRQ."""

    rid: int
    pasid: int | None
    addr: int
    read: bool
    write: bool
    last: bool
    prgi: int

    @classmethod
    def decode(cls, raw: bytes) -> PageRequestSeen:
        d = PageRequest.unpack(raw)
        assert PrdLo.TYPE.get(d.lo) == 1, f"not a page request: {d}"
        return cls(PrdLo.RID.get(d.lo), PrdLo.PASID.get(d.lo) if PrdLo.PP.get(d.lo) else None,
                   d.hi & PrdHi.ADDR.mask, bool(PrdHi.RDR.get(d.hi)),
                   bool(PrdHi.WRR.get(d.hi)), bool(PrdHi.LPIG.get(d.hi)), PrdHi.PRGI.get(d.hi))


# -- descriptor builders ------------------------------------------------------------------

def _desc(qw0: int, qw1: int = 0) -> bytes:
    return InvDesc(qw0, qw1, 0, 0).pack()


def _type(t: int) -> int:
    return PcDesc.pack(TYPE_LO=t & 0xF, TYPE_HI=t >> 4)


def pasid_cache(pasid: int | None = None, did: int = 0, g: int | None = None) -> bytes:
    """PASID-cache invalidation: PASID-selective if ``pasid`` is given, else global."""
    if g is None:
        g = 3 if pasid is None else 1
    return _desc(_type(InvType.PASID_CACHE) | PcDesc.pack(G=g, DID=did, PASID=pasid or 0))


def context_cache(g: int = 1, sid: int = 0, fm: int = 0) -> bytes:
    from vuser.devices.vtd_layout import CcDesc
    return _desc(_type(InvType.CONTEXT_CACHE) | CcDesc.pack(G=g, SID=sid, FM=fm))


def piotlb(pasid: int, did: int = 0, addr: int | None = None, am: int = 0) -> bytes:
    """PASID-based IOTLB invalidation: every address, or ``2^am`` pages at ``addr``."""
    g = 2 if addr is None else 3
    qw1 = 0 if addr is None else IotlbAddr.pack(AM=am, ADDR=addr >> 12)
    return _desc(_type(InvType.PASID_IOTLB) | PiotlbDesc.pack(G=g, DID=did, PASID=pasid), qw1)


def pdevtlb(sid: int, pasid: int, addr: int = 0, all_pasids: bool = False) -> bytes:
    """PASID-based device-TLB invalidation of one page."""
    return _desc(_type(InvType.PASID_DEVICE_TLB) | PdevTlbDesc.pack(SID=sid, PASID=pasid),
                 PdevTlbAddr.pack(G=int(all_pasids), ADDR=addr >> 12))


def wait(status_gpa: int | None = None, data: int = 1, irq: bool = False) -> bytes:
    qw0 = _type(InvType.WAIT) | WaitDesc.pack(IF=int(irq))
    if status_gpa is not None:
        qw0 |= WaitDesc.pack(SW=1, STDATA=data)
    return _desc(qw0, 0 if status_gpa is None else WaitAddr.pack(STADDR=status_gpa >> 2))


def page_response(rid: int, pasid: int | None, prgi: int, code: int = 0) -> bytes:
    qw0 = _type(InvType.PAGE_GROUP_RESPONSE) | PgrespDesc.pack(RC=code, RID=rid)
    if pasid is not None:
        qw0 |= PgrespDesc.pack(PP=1, PASID=pasid)
    return _desc(qw0, PgrespQw1.pack(LPIG=1, PRGI=prgi))


# -- the driver ---------------------------------------------------------------------------

class VtdDriver:
    """Programs one vuser-iommu function (see the module doc).

    ``ram`` needs ``alloc(size, align=)``, ``read(gpa, n)`` and ``write(gpa, data)``
    only, so the vuser-dma harness's guest RAM works too.
    """

    def __init__(self, client: Client, ram: GuestRam, *, qs: int = 0, pqs: int = 0) -> None:
        self.c, self.ram = client, ram
        self.qs, self.pqs = qs, pqs
        self.root = ram.alloc(P)
        self.iq = ram.alloc(P << qs)
        self.prq = ram.alloc(P << pqs)
        self.status = ram.alloc(P)
        self.tail = 0
        self.prq_head = 0
        self.seq = 0
        self.contexts: dict[int, int] = {}     # label -> context entry GPA
        self.pasid_dirs: dict[int, int] = {}   # label -> PASID directory GPA
        self.pasid_tables: dict[tuple[int, int], int] = {}

    # -- registers --------------------------------------------------------------------
    async def read32(self, off: int) -> int:
        return struct.unpack("<I", await self.c.region_read(0, off, 4))[0]

    async def read64(self, off: int) -> int:
        return struct.unpack("<Q", await self.c.region_read(0, off, 8))[0]

    async def write32(self, off: int, v: int) -> None:
        await self.c.region_write(0, off, struct.pack("<I", v))

    async def write64(self, off: int, v: int) -> None:
        await self.c.region_write(0, off, struct.pack("<Q", v))

    async def gcmd(self, set_bits: int = 0, clear_bits: int = 0) -> int:
        """Write GCMD as Linux does (GSTS's persistent bits, changed); returns GSTS."""
        gsts = await self.read32(Reg.GSTS)
        keep = gsts & (Gcmd.TE.mask | Gcmd.QIE.mask)
        await self.write32(Reg.GCMD, (keep | set_bits) & ~clear_bits)
        return await self.read32(Reg.GSTS)

    # -- bring-up ------------------------------------------------------------------------
    async def init(self, *, unmask: bool = True) -> None:
        """Root table, invalidation queue (256-bit) and page request queue."""
        await self.write64(Reg.RTADDR, self.root | Rtaddr.TTM.put(0, TTM_SCALABLE))
        gsts = await self.gcmd(Gcmd.SRTP.mask)
        assert gsts & Gcmd.SRTP.mask, "RTPS not set"
        await self.write64(Reg.IQT, 0)
        await self.write64(Reg.IQA, self.iq | Iqa.DW.mask | self.qs)
        gsts = await self.gcmd(Gcmd.QIE.mask)
        assert Gcmd.QIE.get(gsts), "QIES not set"
        await self.write64(Reg.PQH, 0)
        await self.write64(Reg.PQT, 0)
        await self.write64(Reg.PQA, self.prq | Pqa.PQS.put(0, self.pqs))
        if unmask:
            for reg in (Reg.FECTL, Reg.IECTL, Reg.PECTL):
                await self.write32(reg, 0)

    async def resize_queue(self, qs: int) -> None:
        """A new, empty invalidation queue of ``2^qs`` pages (QI off, then on)."""
        await self.gcmd(clear_bits=Gcmd.QIE.mask)
        self.qs, self.tail = qs, 0
        self.iq = self.ram.alloc(P << qs)
        await self.write64(Reg.IQT, 0)
        await self.write64(Reg.IQA, self.iq | Iqa.DW.mask | qs)
        await self.gcmd(Gcmd.QIE.mask)

    async def enable_translation(self) -> None:
        gsts = await self.gcmd(Gcmd.TE.mask)
        assert Gcmd.TE.get(gsts), "TES not set"

    async def disable_translation(self) -> None:
        gsts = await self.gcmd(clear_bits=Gcmd.TE.mask)
        assert not Gcmd.TE.get(gsts)

    # -- tables ---------------------------------------------------------------------------
    def context(self, label: int, *, pre: bool = True, dte: bool = True, pdts: int = 0,
                rid_pasid: int = 0, fpd: bool = False) -> int:
        """Root and context entries for ``label`` with a fresh PASID directory."""
        bus, devfn = label >> 8, label & 0xFF
        re_addr = self.root + bus * RootEntry.SIZE
        root = RootEntry.unpack(self.ram.read(re_addr, RootEntry.SIZE))
        half = root.lo if devfn < 128 else root.hi
        if not RootHalf.P.get(half):
            half = RootHalf.pack(P=1, CTP=self.ram.alloc(P) >> 12)
            root = root.replace(lo=half) if devfn < 128 else root.replace(hi=half)
            self.ram.write(re_addr, root.pack())
        pdir = self.ram.alloc(max(P, 8 << (pdts + 7)))
        ce_addr = (half & RootHalf.CTP.mask) + (devfn & 0x7F) * ContextEntry.SIZE
        self.ram.write(ce_addr, ContextEntry(
            ContextQw0.pack(P=1, FPD=int(fpd), DTE=int(dte), PRE=int(pre), PDTS=pdts,
                            PASIDDIRPTR=pdir >> 12),
            ContextQw1.pack(RID_PASID=rid_pasid), 0, 0).pack())
        self.contexts[label] = ce_addr
        self.pasid_dirs[label] = pdir
        return ce_addr

    def pasid_entry_addr(self, label: int, pasid: int) -> int:
        key = (label, pasid >> 6)
        table = self.pasid_tables.get(key)
        if table is None:
            table = self.pasid_tables[key] = self.ram.alloc(P)
            self.ram.write(self.pasid_dirs[label] + (pasid >> 6) * 8,
                           struct.pack("<Q", PasidDirEntry.pack(P=1, SMPTBLPTR=table >> 12)))
        return table + (pasid & 0x3F) * PasidEntry.SIZE

    def first_stage(self, label: int, pasid: int, pt: PageTableBuilder | int, *,
                    did: int = 1, levels: int = 4, sre: bool = False) -> int:
        """PASID entry: PGTT first-stage with FSPTPTR = ``pt`` (a builder or a GPA)."""
        root = pt if isinstance(pt, int) else pt.root
        addr = self.pasid_entry_addr(label, pasid)
        self.ram.write(addr, PasidEntry(
            PasidQw0.pack(P=1, PGTT=Pgtt.FIRST_STAGE), PasidQw1.pack(DID=did),
            PasidQw2.pack(FSPM=0 if levels == 4 else 1, SRE=int(sre), FSPTPTR=root >> 12),
            0, 0, 0, 0, 0).pack())
        return addr

    def pass_through(self, label: int, pasid: int, *, did: int = 1) -> int:
        addr = self.pasid_entry_addr(label, pasid)
        self.ram.write(addr, PasidEntry(PasidQw0.pack(P=1, PGTT=Pgtt.PASS_THROUGH),
                                        PasidQw1.pack(DID=did), 0, 0, 0, 0, 0, 0).pack())
        return addr

    def clear_pasid(self, label: int, pasid: int) -> None:
        self.ram.write(self.pasid_entry_addr(label, pasid), bytes(PasidEntry.SIZE))

    # -- the invalidation queue -------------------------------------------------------------
    async def post(self, *descs: bytes) -> None:
        """Write descriptors at the tail and move IQT (no waiting)."""
        size = P << self.qs
        for d in descs:
            self.ram.write(self.iq + self.tail, d)
            self.tail = (self.tail + IQ_ENTRY_SIZE) % size
        await self.write64(Reg.IQT, self.tail)

    async def submit(self, *descs: bytes, irq: bool = False) -> None:
        """Post ``descs`` plus a wait descriptor, and wait for its status write."""
        self.seq += 1
        self.ram.write(self.status, struct.pack("<I", 0))
        await self.post(*descs, wait(self.status, self.seq, irq=irq))
        await self.until(lambda: struct.unpack("<I", self.ram.read(self.status, 4))[0]
                         == self.seq, "wait descriptor status")

    async def until(self, cond, what: str) -> None:
        async def poll() -> None:
            while not cond():
                await asyncio.sleep(0.001)
        try:
            await asyncio.wait_for(poll(), TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def queue_idle(self, device) -> None:
        """Let the device's queue task finish (for error cases with no status write)."""
        await asyncio.wait_for(device.idle(), TIMEOUT)

    # -- faults and page requests -------------------------------------------------------------
    async def fsts(self) -> int:
        return await self.read32(Reg.FSTS)

    async def faults(self) -> list[FaultRecord]:
        out = []
        for i in range(NFR):
            off = Reg.FRCD + i * FRCD_SIZE
            r = FaultRecord.decode(i, await self.read64(off), await self.read64(off + 8))
            if r is not None:
                out.append(r)
        return out

    async def clear_faults(self) -> None:
        for r in await self.faults():
            await self.write32(Reg.FRCD + r.index * FRCD_SIZE + 12, 1 << 31)   # F, W1C
        await self.write32(Reg.FSTS, Fsts.PFO.mask | Fsts.IQE.mask | Fsts.ICE.mask
                           | Fsts.ITE.mask)

    async def page_requests(self) -> list[PageRequestSeen]:
        """Read and consume every page request in the PRQ; clears PPR."""
        size = P << self.pqs
        tail = await self.read64(Reg.PQT)
        out = []
        while self.prq_head != tail:
            out.append(PageRequestSeen.decode(self.ram.read(self.prq + self.prq_head,
                                                            PRQ_ENTRY_SIZE)))
            self.prq_head = (self.prq_head + PRQ_ENTRY_SIZE) % size
        await self.write64(Reg.PQH, self.prq_head)
        await self.write32(Reg.PRS, Prs.PPR.mask)
        return out

    async def event_pending(self, ctl: int) -> bool:
        return bool(EventCtl.IP.get(await self.read32(ctl)))


# -- the server's DMA_WRITEs outside guest RAM: event messages ----------------------------

class MessageRecorder:
    """Plays QEMU's side of a vIOMMU's event messages on ``client``: every
    DMA_WRITE outside the client's local buffers is recorded as (addr, data)
    and answered with success, or with ``refuse`` (an errno) while it is set,
    as QEMU answers ENODEV while Bus Master Enable is clear."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.writes: list[tuple[int, bytes]] = []
        self.refused: list[tuple[int, bytes]] = []
        self.refuse: int | None = None
        self._serve = client._serve_dma
        client._serve_dma = self._serve_dma

    def _serve_dma(self, req) -> None:
        from vuser.protocol.consts import Command
        from vuser.protocol.events import ErrorReply, Reply
        from vuser.protocol.messages import VfioUserDmaRw
        if req.command is Command.DMA_WRITE:
            rw = req.body.rw
            try:
                self.client._local_view(rw.addr, rw.count, True)
            except OSError:
                entry = (rw.addr, bytes(req.body.data))
                if self.refuse is not None:
                    self.refused.append(entry)
                    self.client.channel.send(ErrorReply(req.msg_id, req.command, self.refuse))
                else:
                    self.writes.append(entry)
                    self.client.channel.send(Reply(req.msg_id, req.command, VfioUserDmaRw(
                        addr=rw.addr, count=rw.count)))
                return
        self._serve(req)

    def take(self) -> list[tuple[int, int]]:
        """The recorded messages as (address, 32-bit data), emptied."""
        out = [(a, struct.unpack("<I", d)[0] if len(d) == 4 else -1) for a, d in self.writes]
        self.writes.clear()
        return out


# -- a server with a vIOMMU and DMA devices, driven by our clients --------------------------

class Rig:
    """One platform: a vuser-iommu and DMA-capable devices, each on its own socket,
    all connected (our ``Client`` as QEMU) and sharing one guest RAM."""

    def __init__(self) -> None:
        from vuser.devices.platform import Platform
        self.platform = Platform()
        self.ram = GuestRam()
        self.servers: list = []
        self.clients: list[Client] = []
        self.devices: dict[int, object] = {}
        self.dev_clients: dict[int, Client] = {}
        self.efds: list[int] = []

    async def serve(self, device, path: str) -> Client:
        from vuser.transport.server import DeviceServer
        server = DeviceServer(device, path, name=type(device).__name__)
        await server.start()
        self.servers.append(server)
        client = await Client.connect(path)
        self.clients.append(client)
        return client

    async def start(self, tmp_path, labels, factory, *, msix: bool = True,
                    viommu_options: dict | None = None) -> None:
        """``msix`` False: the function's MSI-X stays off, as in a kernel-owned
        guest (events go out as DMA_WRITEs; see ``MessageRecorder``)."""
        from vuser.devices.viommu import VIommuDevice
        self.viommu = VIommuDevice(**(viommu_options or {}))
        self.viommu.join_platform(self.platform)
        self.vc = await self.serve(self.viommu, str(tmp_path / "viommu.sock"))
        self.messages = MessageRecorder(self.vc)
        await self.ram.map_into(self.vc)
        if msix:
            self.efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
            await self.vc.set_irq_eventfds(2, self.efds)   # MSI-X: fault, invalidation, PRQ
        self.drv = VtdDriver(self.vc, self.ram)
        for label in labels:
            dev = factory(label)
            dev.join_platform(self.platform)
            c = await self.serve(dev, str(tmp_path / f"dev{label:x}.sock"))
            await self.ram.map_into(c)
            self.devices[label] = dev
            self.dev_clients[label] = c

    def irq_count(self, vector: int) -> int:
        try:
            return os.eventfd_read(self.efds[vector])
        except BlockingIOError:
            return 0

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for s in self.servers:
            await s.close()
        for dev in list(self.devices.values()) + [self.viommu]:
            dev.close()
        self.platform.close()
        for fd in self.efds:
            os.close(fd)
        self.ram.close()


async def translating_rig(tmp_path, *labels: int) -> Rig:
    """A ``Rig`` of sample devices with ``labels``, the unit initialised and
    translation on (GCMD.TE); the caller closes it."""
    from vuser.devices.sample import SampleDevice

    r = Rig()
    await r.start(tmp_path, labels, lambda label: SampleDevice(label=label))
    await r.drv.init()
    await r.drv.enable_translation()
    return r
