"""A hostile guest against vuser-iommu: page-table loops, table pointers outside
guest RAM, reserved bits, an invalidation queue full of garbage, a directory full
of tables. Each gives a recorded fault or IQE, never an exception, and the other
device on the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import pytest

from vuser.devices.sample import SampleDevice, SampleReg, SampleStatus, pattern
from vuser.devices.viommu_bind import MAX_BOUND
from vuser.devices.viommu_tables import MAX_SCAN_TABLES
from vuser.devices.vtd_layout import (
    ContextQw0, VtdFaultReason, Fsts, InvType, Iqei, Iqercd, PasidDirEntry,
    PasidEntry, PasidQw0, PasidQw2, Pgtt, Reg, RootHalf, Rtaddr,
)
from vuser.iommu import Fault
from vuser.iommu.pagetable import FirstStagePte

from viommu_guest import P, Rig, _type, context_cache, pasid_cache, wait

VICTIM = 0x0508          # the device the guest programs badly
BYSTANDER = 0x0609       # another device of the VM, pass-through
IOVA = 0x6000_0000
OUTSIDE = 0x7000_0000_0000   # a GPA well below 2^48 that is not guest RAM


@pytest.fixture
async def rig(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    r = Rig()
    await r.start(tmp_path, (VICTIM, BYSTANDER), lambda label: SampleDevice(label=label))
    await r.drv.init()
    r.drv.context(BYSTANDER)
    r.drv.pass_through(BYSTANDER, 0)
    await r.drv.enable_translation()
    yield r
    await r.close()
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, [rec.getMessage() for rec in errors]


async def bystander_still_serves(rig: Rig) -> None:
    """MMIO and a DMA of the other device, and the vIOMMU's own registers."""
    c = rig.dev_clients[BYSTANDER]
    dst = rig.ram.alloc(P)
    for off, v in ((SampleReg.DMA_ADDR_LO, dst & 0xFFFF_FFFF), (SampleReg.DMA_ADDR_HI, dst >> 32),
                   (SampleReg.DMA_LEN, 64), (SampleReg.DMA_SEED, 9), (SampleReg.DOORBELL, 1)):
        await c.region_write(0, off, struct.pack("<I", v))
    await asyncio.wait_for(rig.devices[BYSTANDER].idle(), 10)
    status = struct.unpack("<I", await c.region_read(0, SampleReg.STATUS, 4))[0]
    assert SampleStatus.DONE.get(status) and not SampleStatus.ERROR.get(status)
    assert rig.ram.read(dst, 64) == pattern(9, 64)
    assert await rig.drv.read32(Reg.VER) == 0x30


def victim(rig: Rig, pasid: int | None, iova: int = IOVA, data: bytes = b"hostile"):
    return rig.devices[VICTIM].iommu.write(pasid, iova, data)


async def only_fault(rig: Rig, pasid: int | None, reason: int) -> None:
    await rig.drv.until(lambda: rig.viommu.faults.recorded >= 1, "a fault record")
    recs = await rig.drv.faults()
    assert [(r.sid, r.pasid, r.reason) for r in recs] == [(VICTIM, pasid, reason)], recs


async def test_page_table_loops_terminate(rig):
    drv, ram = rig.drv, rig.ram
    pt = ram.page_tables()
    root = pt.root
    self_ref = FirstStagePte.pack(P=1, RW=1, US=1, ADDR=root >> 12)
    pt.write_entry(root, self_ref)                 # PML4[0] -> PML4 itself
    drv.context(VICTIM)
    drv.first_stage(VICTIM, 1, pt)
    await drv.submit(pasid_cache(1, did=1))
    # IOVA 0 walks PML4[0] four times: x86 semantics map it onto the PML4 page.
    assert victim(rig, 1, 0x800, b"selfmap!") is None
    assert ram.read(root + 0x800, 8) == b"selfmap!"
    assert pt.read_entry(root) & ~0x60 == self_ref          # only A/D may have changed
    # IOVA 0x1000 ends at PML4[1], empty: a first-stage not-present fault.
    assert isinstance(victim(rig, 1, 0x1000), Fault)
    await only_fault(rig, 1, VtdFaultReason.FS_P)
    # A two-table cycle A[0] -> B, B[0] -> A.
    a, b = ram.alloc(P), ram.alloc(P)
    ram.set_u64(a, FirstStagePte.pack(P=1, RW=1, US=1, ADDR=b >> 12))
    ram.set_u64(b, FirstStagePte.pack(P=1, RW=1, US=1, ADDR=a >> 12))
    drv.first_stage(VICTIM, 2, a)
    await drv.submit(pasid_cache(2, did=1))
    assert victim(rig, 2, 0x10, b"cycle") is None
    assert ram.read(a + 0x10, 5) == b"cycle"
    await bystander_still_serves(rig)


@pytest.mark.parametrize("where, reason", [
    ("rtaddr", VtdFaultReason.ROOT_ACCESS),
    ("context_table", VtdFaultReason.CONTEXT_ACCESS),
    ("pasid_dir", VtdFaultReason.PASID_DIR_ACCESS),
    ("pasid_table", VtdFaultReason.PASID_ACCESS),
    ("fsptptr", VtdFaultReason.FS_ACCESS),
    ("fsptptr_above_gaw", VtdFaultReason.PASID_RSVD),
])
async def test_table_pointer_outside_guest_ram(rig, where, reason):
    drv, ram = rig.drv, rig.ram
    pt = ram.page_tables()
    pt.map(IOVA, ram.alloc(P), P)
    ce = drv.context(VICTIM)
    pe = drv.first_stage(VICTIM, 1, pt)
    if where == "rtaddr":
        # another root table pointer, latched by SRTP: every device's lookup fails
        await drv.write64(Reg.RTADDR, OUTSIDE | Rtaddr.TTM.put(0, 1))
        await drv.gcmd(1 << 30)
        await drv.submit(context_cache())
    elif where == "context_table":
        re = drv.root + (VICTIM >> 8) * 16
        ram.set_u64(re, RootHalf.pack(P=1, CTP=OUTSIDE >> 12))
        await drv.submit(context_cache())
    elif where == "pasid_dir":
        qw0 = ram.u64(ce)
        ram.set_u64(ce, ContextQw0.PASIDDIRPTR.put(qw0, OUTSIDE >> 12))
        await drv.submit(context_cache())
    elif where == "pasid_table":
        ram.set_u64(drv.pasid_dirs[VICTIM], PasidDirEntry.pack(P=1, SMPTBLPTR=OUTSIDE >> 12))
        await drv.submit(pasid_cache(1, did=1))
    else:
        top = OUTSIDE if where == "fsptptr" else 1 << 50
        ram.set_u64(pe + 16, PasidQw2.pack(FSPTPTR=top >> 12))
        await drv.submit(pasid_cache(1, did=1))
    assert isinstance(victim(rig, 1), Fault)
    await only_fault(rig, 1, reason)
    if where == "rtaddr":   # that took every device's tables away: give them back
        await drv.write64(Reg.RTADDR, drv.root | Rtaddr.TTM.put(0, 1))
        await drv.gcmd(1 << 30)
        await drv.submit(context_cache())
    await bystander_still_serves(rig)


def _set(ram, addr: int, value: int) -> None:
    ram.set_u64(addr, ram.u64(addr) | value)


@pytest.mark.parametrize("what, reason", [
    ("root", VtdFaultReason.ROOT_RSVD),
    ("context_qw0", VtdFaultReason.CONTEXT_RSVD),
    ("context_qw2", VtdFaultReason.CONTEXT_RSVD),
    ("pasid_dir", VtdFaultReason.PASID_DIR_RSVD),
    ("pasid_qw0", VtdFaultReason.PASID_RSVD),
    ("pasid_qw5", VtdFaultReason.PASID_RSVD),
    ("pasid_ere", VtdFaultReason.PASID_RSVD),
    ("pgtt_second_stage", VtdFaultReason.PASID_INVALID),
    ("pgtt_reserved", VtdFaultReason.PASID_INVALID),
    ("fspm_reserved", VtdFaultReason.PASID_INVALID),
    ("pte", VtdFaultReason.FS_RSVD),
])
async def test_reserved_bits(rig, what, reason):
    drv, ram = rig.drv, rig.ram
    pt = ram.page_tables()
    pt.map(IOVA, ram.alloc(P), P)
    ce = drv.context(VICTIM)
    pe = drv.first_stage(VICTIM, 1, pt)
    if what == "root":
        _set(ram, drv.root + (VICTIM >> 8) * 16, 1 << 5)
    elif what == "context_qw0":
        _set(ram, ce, 1 << 6)
    elif what == "context_qw2":
        _set(ram, ce + 16, 1)
    elif what == "pasid_dir":
        _set(ram, drv.pasid_dirs[VICTIM], 1 << 3)
    elif what == "pasid_qw0":
        _set(ram, pe, 1 << 10)
    elif what == "pasid_qw5":
        _set(ram, pe + 40, 1 << 33)
    elif what == "pasid_ere":
        _set(ram, pe + 16, PasidQw2.ERE.mask)
    elif what.startswith("pgtt"):
        pgtt = Pgtt.SECOND_STAGE if what == "pgtt_second_stage" else 6
        ram.set_u64(pe, PasidQw0.pack(P=1, PGTT=pgtt))
    elif what == "fspm_reserved":
        _set(ram, pe + 16, PasidQw2.FSPM.put(0, 3))
    else:
        leaf = pt.entry_address(IOVA, 1)
        _set(ram, leaf, 1 << 50)                   # above the 48-bit output width
    await drv.submit(context_cache(), pasid_cache(1, did=1))
    assert isinstance(victim(rig, 1), Fault)
    await only_fault(rig, 1, reason)
    await bystander_still_serves(rig)


async def test_legacy_translation_table_mode_faults(rig):
    drv = rig.drv
    drv.context(VICTIM)
    drv.pass_through(VICTIM, 0)
    await drv.write64(Reg.RTADDR, drv.root)         # TTM 00b: legacy, not offered
    await drv.gcmd(1 << 30)
    await drv.submit(context_cache())
    assert isinstance(victim(rig, None, rig.ram.base), Fault)
    await only_fault(rig, None, VtdFaultReason.RTADDR_INV_TTM)


async def test_invalidation_queue_full_of_garbage(rig):
    drv, ram = rig.drv, rig.ram
    rnd = random.Random(1234)
    await drv.resize_queue(1)
    size = 2 * P
    slots = size // 32
    ram.write(drv.iq, rnd.randbytes(size))
    await drv.write64(Reg.IQT, size - 32)
    stops = 0
    while True:
        await drv.queue_idle(rig.viommu)
        head = await drv.read64(Reg.IQH)
        if head == size - 32:
            break
        assert Fsts.IQE.get(await drv.fsts())
        assert Iqercd.IQEI.get(await drv.read64(Reg.IQERCD)) in (
            Iqei.INVALID_TYPE, Iqei.RESERVED_FIELD, Iqei.NOT_AVAILABLE)
        stops += 1
        ram.write(drv.iq + head, wait())           # replace the bad one, as Linux does
        await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    assert stops > slots // 2                      # random bytes are mostly invalid
    await bystander_still_serves(rig)


async def test_random_well_typed_descriptors_never_crash(rig):
    """Random fields in every valid descriptor type: processed or IQE, nothing else."""
    drv, ram = rig.drv, rig.ram
    rnd = random.Random(99)
    drv.context(VICTIM)
    valid = [InvType.CONTEXT_CACHE, InvType.IOTLB, InvType.DEVICE_TLB, InvType.WAIT,
             InvType.PASID_IOTLB, InvType.PASID_CACHE, InvType.PASID_DEVICE_TLB,
             InvType.PAGE_GROUP_RESPONSE]
    for i in range(300):
        t = valid[i % len(valid)]
        qw0 = (rnd.getrandbits(64) & ~0xE0F) | _type(t)
        qw1 = rnd.getrandbits(64) if rnd.random() < 0.5 else 0
        if t == InvType.WAIT:
            qw0 &= ~(1 << 5)                        # no status write into random places
        desc = struct.pack("<4Q", qw0, qw1, 0, 0)
        head = drv.tail
        await drv.post(desc)
        await drv.queue_idle(rig.viommu)
        if Fsts.IQE.get(await drv.fsts()):
            ram.write(drv.iq + head, wait())
            await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    await drv.submit(pasid_cache())
    await bystander_still_serves(rig)


async def test_directory_full_of_tables_is_bounded(rig):
    drv, ram = rig.drv, rig.ram
    pt = ram.page_tables()
    pt.map(IOVA, ram.alloc(P), P)
    drv.context(VICTIM, pdts=7)                      # 2^14 directory entries
    table = ram.alloc(P)
    for i in range(64):
        ram.write(table + i * PasidEntry.SIZE, PasidEntry(
            PasidQw0.pack(P=1, PGTT=Pgtt.FIRST_STAGE), 1,
            PasidQw2.pack(FSPTPTR=pt.root >> 12), 0, 0, 0, 0, 0).pack())
    de = PasidDirEntry.pack(P=1, SMPTBLPTR=table >> 12)
    ram.write(drv.pasid_dirs[VICTIM], struct.pack("<Q", de) * (1 << 14))
    await drv.submit(pasid_cache())                  # global: a full scan
    attached = [a for a in rig.viommu.describe()["attachments"] if a["kind"] != "block"]
    assert len(attached) == MAX_BOUND < MAX_SCAN_TABLES * 64
    assert victim(rig, 1, IOVA) is None
    await bystander_still_serves(rig)
    drv.context(VICTIM)                              # a small directory again
    await drv.submit(context_cache())
    assert [(a["label"], a["pasid"]) for a in rig.viommu.describe()["attachments"]
            if a["kind"] != "block"] == [(BYSTANDER, None)]
