"""vuser-iommu over real sockets: nested PASID DMA programmed through the vIOMMU's
registers and tables, isolation, stale translations and FRCD.

The DMA devices here are ``sample`` functions used as bus masters through their
``IommuDevice`` (the model's DMA API), so these tests need nothing but the vIOMMU
and the platform; test_viommu_dma.py repeats the key cases with vuser-dma.
"""

from __future__ import annotations

import pytest

from vuser.devices.sample import SampleDevice
from vuser.devices.viommu import VECTOR_FAULT
from vuser.devices.vtd_layout import Cap, Ecap, VtdFaultReason, Fsts, Reg
from vuser.iommu import Access, Fault, Stage

from viommu_guest import MiB, P, Rig, context_cache, pasid_cache, pdevtlb, piotlb

LABEL = 0x0108          # bus 1, devfn 8: the lower half of root entry 1
LABEL_HI = 0x0281       # bus 2, devfn 0x81: the upper half of root entry 2
IOVA = 0x7000_0000


@pytest.fixture
async def rig(tmp_path):
    r = Rig()
    await r.start(tmp_path, (LABEL, LABEL_HI), lambda label: SampleDevice(label=label))
    await r.drv.init()
    yield r
    await r.close()


def dma_write(rig: Rig, label: int, pasid: int | None, iova: int, data: bytes):
    return rig.devices[label].iommu.write(pasid, iova, data)


def dma_read(rig: Rig, label: int, pasid: int | None, iova: int, n: int):
    return rig.devices[label].iommu.read(pasid, iova, n)


async def test_registers_advertise_scalable_first_stage_pasid_prs_qi_dt(rig):
    drv = rig.drv
    config = await rig.vc.region_read(7, 0, 12)
    assert int.from_bytes(config[0:2], "little") == 0x5655
    assert int.from_bytes(config[2:4], "little") == 0x0003
    assert int.from_bytes(config[9:12], "little") == 0x080600     # class: IOMMU
    cap, ecap = await drv.read64(Reg.CAP), await drv.read64(Reg.ECAP)
    assert Cap.FS1GP.get(cap) and Cap.FS5LP.get(cap) and Cap.PSI.get(cap)
    assert Cap.FRO.get(cap) * 16 == Reg.FRCD and Cap.NFR.get(cap) == 7
    assert Cap.MGAW.get(cap) == 56 and Cap.CM.get(cap)
    for bit in ("QI", "DT", "PT", "NEST", "PRS", "PASID", "SMTS", "FSTS"):
        assert getattr(Ecap, bit).get(ecap), bit
    assert Ecap.PSS.get(ecap) == 19 and Ecap.IRO.get(ecap) * 16 == Reg.IVA
    assert not Ecap.SSTS.get(ecap)
    # RO registers ignore writes; GCMD reads 0
    await drv.write64(Reg.CAP, 0)
    assert await drv.read64(Reg.CAP) == cap
    assert await drv.read32(Reg.GCMD) == 0


async def test_passthrough_before_translation_is_enabled(rig):
    gpa = rig.ram.base + 8 * MiB
    assert dma_write(rig, LABEL, None, gpa, b"untranslated") is None
    assert rig.ram.read(gpa, 12) == b"untranslated"


async def test_nested_pasid_dma_stage1_then_stage2(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    buf1, buf2 = ram.alloc(P), ram.alloc(P)
    pt1, pt2 = ram.page_tables(), ram.page_tables()
    pt1.map(IOVA, buf1, P)
    pt2.map(IOVA, buf2, P)
    drv.context(LABEL)
    drv.pass_through(LABEL, 0)                  # RID2PASID: untagged DMA is GPA
    drv.first_stage(LABEL, 1, pt1, did=1)
    drv.first_stage(LABEL, 2, pt2, did=2)
    # Not visible before the invalidation: the vIOMMU caches like hardware.
    f = dma_write(rig, LABEL, 1, IOVA, b"early")
    assert isinstance(f, Fault) and f.stage == Stage.BLOCKED
    await drv.submit(context_cache(), pasid_cache(1, did=1), pasid_cache(2, did=2),
                     pasid_cache(0, did=1))
    await drv.clear_faults()
    assert dma_write(rig, LABEL, 1, IOVA + 0x10, b"pasid one") is None
    assert dma_write(rig, LABEL, 2, IOVA + 0x10, b"pasid two") is None
    assert ram.read(buf1 + 0x10, 9) == b"pasid one"
    assert ram.read(buf2 + 0x10, 9) == b"pasid two"
    assert dma_read(rig, LABEL, 1, IOVA + 0x10, 9) == b"pasid one"
    # Untagged DMA follows the RID_PASID entry (pass-through): GPA.
    assert dma_write(rig, LABEL, None, buf1 + 0x100, b"gpa") is None
    assert ram.read(buf1 + 0x100, 3) == b"gpa"
    assert await drv.faults() == []


async def test_upper_half_root_entry_and_five_level_tables(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    buf = ram.alloc(P)
    pt = ram.page_tables(levels=5)
    iova = 1 << 50
    pt.map(iova, buf, P)
    drv.context(LABEL_HI)
    drv.first_stage(LABEL_HI, 9, pt, levels=5)
    await drv.submit(pasid_cache(9, did=1))
    assert dma_write(rig, LABEL_HI, 9, iova, b"57-bit") is None
    assert ram.read(buf, 6) == b"57-bit"
    # the other device (lower half, no context) is untouched by it
    assert isinstance(dma_write(rig, LABEL, 9, iova, b"x"), Fault)


async def test_isolation_unattached_pasid_is_recorded_in_frcd(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    buf = ram.alloc(P)
    pt = ram.page_tables()
    pt.map(IOVA, buf, P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 1, pt)
    await drv.submit(pasid_cache(1, did=1))
    before = ram.read(buf, P)
    f = dma_write(rig, LABEL, 5, IOVA + 0x234, b"intruder")
    assert isinstance(f, Fault)
    assert ram.read(buf, P) == before
    (rec,) = await drv.faults()
    assert (rec.sid, rec.pasid, rec.reason, rec.addr) == (LABEL, 5, VtdFaultReason.PASID_P,
                                                          IOVA)
    assert rec.write
    fsts = await drv.fsts()
    assert Fsts.PPF.get(fsts) and Fsts.FRI.get(fsts) == rec.index
    assert rig.irq_count(VECTOR_FAULT) == 1


async def test_stale_translation_until_pasid_iotlb_invalidation(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    old, new = ram.alloc(P), ram.alloc(P)
    pt = ram.page_tables()
    pt.map(IOVA, old, P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 3, pt, did=7)
    await drv.submit(pasid_cache(3, did=7))
    assert dma_write(rig, LABEL, 3, IOVA, b"one") is None          # caches IOVA -> old
    pt.map(IOVA, new, P)                                           # PTE changed, no flush
    assert dma_write(rig, LABEL, 3, IOVA, b"two") is None
    assert ram.read(old, 3) == b"two" and ram.read(new, 3) == bytes(3)
    await drv.submit(piotlb(3, did=7, addr=IOVA, am=0))
    assert dma_write(rig, LABEL, 3, IOVA, b"six") is None
    assert ram.read(new, 3) == b"six" and ram.read(old, 3) == b"two"
    # A PASID-IOTLB invalidation of another domain leaves the entry alone.
    pt.map(IOVA, old, P)
    await drv.submit(piotlb(3, did=8))
    assert dma_write(rig, LABEL, 3, IOVA, b"ten") is None
    assert ram.read(new, 3) == b"ten"


async def test_stale_device_tlb_until_pasid_device_tlb_invalidation(rig):
    """An ATS device TLB (``devtlb.DeviceTlb`` on the sample's IommuDevice) keeps the
    old page after the PTE changes, even after the PASID-IOTLB invalidation, until
    a PASID device-TLB invalidation (VT-d §6.5.2: two caches, two descriptors)."""
    from vuser.devices.devtlb import DeviceTlb

    drv, ram = rig.drv, rig.ram
    dev = rig.devices[LABEL]
    atc = DeviceTlb()
    dev.iommu.devtlb_invalidate = atc.invalidate
    await drv.enable_translation()
    old, new = ram.alloc(P), ram.alloc(P)
    pt = ram.page_tables()
    pt.map(IOVA, old, P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 4, pt)
    await drv.submit(pasid_cache(4, did=1))

    def ats_write(data: bytes) -> None:
        e = atc.lookup(4, IOVA)
        if e is None:
            t = dev.iommu.ats_translate(4, IOVA, Access.WRITE)
            assert not isinstance(t, Fault), t
            e = atc.insert(4, t)
        e.mem[:len(data)] = data

    ats_write(b"first")
    pt.map(IOVA, new, P)
    ats_write(b"stale")
    assert ram.read(old, 5) == b"stale"
    await drv.submit(piotlb(4, did=1, addr=IOVA, am=0))
    assert atc.lookup(4, IOVA) is not None           # the IOTLB flush left the ATC alone
    ats_write(b"still")
    assert ram.read(old, 5) == b"still" and ram.read(new, 5) == bytes(5)
    await drv.submit(pdevtlb(LABEL, 4, IOVA))
    assert atc.lookup(4, IOVA) is None
    ats_write(b"fresh")
    assert ram.read(new, 5) == b"fresh" and ram.read(old, 5) == b"still"


async def test_pass_through_pasid_and_blocking_after_clear(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    gpa = ram.alloc(P)
    drv.context(LABEL)
    drv.pass_through(LABEL, 6)
    await drv.submit(pasid_cache(6, did=1))
    assert dma_write(rig, LABEL, 6, gpa, b"pt") is None
    assert ram.read(gpa, 2) == b"pt"
    drv.clear_pasid(LABEL, 6)
    assert dma_write(rig, LABEL, 6, gpa, b"st") is None            # still cached
    await drv.submit(pasid_cache(6, did=1))
    assert isinstance(dma_write(rig, LABEL, 6, gpa, b"no"), Fault)
    assert ram.read(gpa, 2) == b"st"


async def test_translation_off_restores_pass_through_and_blocks_pasids(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    buf = ram.alloc(P)
    pt = ram.page_tables()
    pt.map(IOVA, buf, P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 0, pt)      # RID2PASID = first stage: untagged DMA translated
    drv.first_stage(LABEL, 1, pt)
    await drv.submit(pasid_cache(0, did=1), pasid_cache(1, did=1))
    assert dma_write(rig, LABEL, None, IOVA, b"rid") is None
    assert ram.read(buf, 3) == b"rid"
    await drv.disable_translation()
    assert isinstance(dma_write(rig, LABEL, 1, IOVA, b"x"), Fault)
    assert dma_write(rig, LABEL, None, buf + 8, b"gpa") is None
    assert ram.read(buf + 8, 3) == b"gpa"
    assert rig.viommu.describe()["attachments"] == []


async def test_missing_root_and_context_entries_block_untagged_dma(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    assert isinstance(dma_write(rig, LABEL, None, ram.base, b"x"), Fault)
    (rec,) = await drv.faults()
    assert (rec.sid, rec.pasid, rec.reason) == (LABEL, None, VtdFaultReason.ROOT_P)
    await drv.clear_faults()
    ce = drv.context(LABEL)
    ram.write(ce, bytes(32))                   # root entry present, context entry not
    await drv.submit(context_cache(g=3, sid=LABEL))
    assert isinstance(dma_write(rig, LABEL, None, ram.base, b"x"), Fault)
    (rec,) = await drv.faults()
    assert (rec.sid, rec.reason) == (LABEL, VtdFaultReason.CONTEXT_P)


async def test_fpd_suppresses_fault_recording(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    drv.context(LABEL, fpd=True)
    await drv.submit(context_cache())
    assert isinstance(dma_write(rig, LABEL, 7, IOVA, b"x"), Fault)
    assert isinstance(dma_write(rig, LABEL, None, ram.base + 0x10_0000_0000, b"x"), Fault)
    assert await drv.faults() == []


async def test_first_stage_not_present_is_sfl2_with_write_type(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    pt = ram.page_tables()
    pt.map(IOVA, ram.alloc(P), P, write=False)
    drv.context(LABEL)
    drv.first_stage(LABEL, 1, pt)
    await drv.submit(pasid_cache(1, did=1))
    assert isinstance(dma_read(rig, LABEL, 1, IOVA + P, 4), Fault)
    assert isinstance(dma_write(rig, LABEL, 1, IOVA, b"ro"), Fault)
    await drv.until(lambda: rig.viommu.faults.recorded == 2, "two fault records")
    recs = await drv.faults()
    assert [(r.reason, r.addr, r.write) for r in recs] == [
        (VtdFaultReason.FS_P, IOVA + P, False), (VtdFaultReason.SM_WRITE, IOVA, True)]


async def test_fault_records_overflow_sets_pfo_and_masked_events_stay_pending(rig):
    drv = rig.drv
    await drv.write32(Reg.FECTL, 1 << 31)              # IM
    await drv.enable_translation()
    drv.context(LABEL)
    await drv.submit(context_cache())
    for i in range(10):
        assert isinstance(dma_write(rig, LABEL, 100 + i, IOVA, b"x"), Fault)
    recs = await drv.faults()
    assert [r.pasid for r in recs] == list(range(100, 108))
    assert Fsts.PFO.get(await drv.fsts())
    assert rig.irq_count(VECTOR_FAULT) == 0
    assert await drv.event_pending(Reg.FECTL)
    await drv.write32(Reg.FECTL, 0)                    # unmask: the pending event goes out
    assert rig.irq_count(VECTOR_FAULT) == 1
    await drv.clear_faults()
    assert not await drv.fsts() & (Fsts.PPF.mask | Fsts.PFO.mask)
    assert isinstance(dma_write(rig, LABEL, 200, IOVA, b"x"), Fault)
    assert [r.pasid for r in await drv.faults()] == [200]


def test_registered_type_and_own_label_outside_source_ids():
    from vuser.devices import DEVICE_TYPES
    from vuser.devices.platform import Platform
    from vuser.devices.viommu import VIommuDevice
    from vuser.errors import UserError

    assert DEVICE_TYPES["vuser-iommu"] is VIommuDevice
    p = Platform()
    try:
        dma = SampleDevice(label=1)
        dma.join_platform(p)
        vi = VIommuDevice()
        vi.join_platform(p)
        assert vi.iommu.label == 0x10000 and vi.iommu.pasid_width == 20
        other = VIommuDevice(label="0x20")
        other.join_platform(p)
        assert other.iommu.label == 0x20
        with pytest.raises(UserError):
            VIommuDevice(label="many")
        for d in (dma, vi, other):
            d.close()
    finally:
        p.close()


async def test_device_reset_turns_translation_off(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    buf = ram.alloc(P)
    pt = ram.page_tables()
    pt.map(IOVA, buf, P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 0, pt)
    drv.first_stage(LABEL, 1, pt)
    await drv.submit(pasid_cache(0, did=1), pasid_cache(1, did=1))
    assert dma_write(rig, LABEL, 1, IOVA, b"on") is None
    await rig.vc.reset()
    assert await drv.read32(Reg.GSTS) == 0 and await drv.read64(Reg.IQA) == 0
    assert isinstance(dma_write(rig, LABEL, 1, IOVA, b"x"), Fault)
    assert dma_write(rig, LABEL, None, buf + 16, b"gpa") is None
    assert ram.read(buf + 16, 3) == b"gpa"
    assert rig.viommu.describe()["attachments"] == []


async def test_model_objects_are_released_with_the_vm(rig):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    pt = ram.page_tables()
    pt.map(IOVA, ram.alloc(P), P)
    drv.context(LABEL)
    drv.first_stage(LABEL, 1, pt)
    await drv.submit(pasid_cache(1, did=1))
    ctx = rig.platform.ctx
    kinds = {o["type"] for o in ctx.objects()}
    assert {"hwpt_nested", "fault"} <= kinds, kinds
    for c in rig.clients:
        await c.close()
    for s in rig.servers:
        await drv.until(lambda s=s: s.session is None, "the session to end")
    assert ctx.objects() == []
    assert rig.viommu.binder is None and rig.viommu.prq is None
