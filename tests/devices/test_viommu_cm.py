"""vuser-iommu caching mode (``cm=0|1``, CAP.CM). With CM=1 entries take effect only
on invalidation; with CM=0 the unit fetches root, context and PASID entries when a
DMA misses, caches present ones until a context- or PASID-cache invalidation, and
never caches not-present ones (VT-d §6.1, §6.2.1)."""

from __future__ import annotations

import pytest

from vuser.devices.sample import SampleDevice
from vuser.devices.vtd_layout import Cap, ContextEntry, VtdFaultReason, Reg
from vuser.errors import UserError
from vuser.iommu import Fault, Stage
from vuser.backend import DmaError

from viommu_guest import P, Rig, context_cache, pasid_cache

LABEL = 0x0318
IOVA = 0x4400_0000


async def make_rig(tmp_path, cm: str) -> Rig:
    r = Rig()
    (tmp_path / cm).mkdir()
    await r.start(tmp_path / cm, (LABEL,), lambda label: SampleDevice(label=label),
                  viommu_options={"cm": cm})
    await r.drv.init()
    return r


@pytest.fixture
async def rig0(tmp_path):
    r = await make_rig(tmp_path, "0")
    yield r
    await r.close()


@pytest.fixture
async def rig1(tmp_path):
    r = await make_rig(tmp_path, "1")
    yield r
    await r.close()


def dev(rig: Rig):
    return rig.devices[LABEL].iommu


def tables(rig: Rig, pasid: int = 1):
    """Context, RID_PASID pass-through and a first-stage PASID ``pasid``: no invalidation."""
    buf = rig.ram.alloc(P)
    pt = rig.ram.page_tables()
    pt.map(IOVA, buf, P)
    rig.drv.context(LABEL)
    rig.drv.pass_through(LABEL, 0)
    rig.drv.first_stage(LABEL, pasid, pt, did=3)
    return buf, pt


async def test_cap_cm_follows_the_option(rig0, rig1):
    assert not Cap.CM.get(await rig0.drv.read64(Reg.CAP))
    assert Cap.CM.get(await rig1.drv.read64(Reg.CAP))


@pytest.mark.parametrize("value", ["2", "yes", ""])
def test_bad_cm_is_a_user_error(value):
    from vuser.devices.viommu import VIommuDevice
    with pytest.raises(UserError, match="caching mode"):
        VIommuDevice(cm=value)


async def test_entries_without_invalidation_work_with_cm0_and_fault_with_cm1(rig0, rig1):
    for rig, works in ((rig0, True), (rig1, False)):
        await rig.drv.enable_translation()
        buf, _ = tables(rig)
        r = dev(rig).write(1, IOVA + 8, b"on demand")
        if works:
            assert r is None and rig.ram.read(buf + 8, 9) == b"on demand"
            # untagged DMA through the RID_PASID entry, by the device's own port
            await rig.devices[LABEL].dma.dma_write(buf + 0x40, b"rid")
            assert rig.ram.read(buf + 0x40, 3) == b"rid"
            assert await rig.drv.faults() == []
        else:
            assert isinstance(r, Fault) and r.stage == Stage.BLOCKED
            with pytest.raises(DmaError):
                await rig.devices[LABEL].dma.dma_write(buf + 0x40, b"rid")


async def test_cm0_not_present_entry_is_not_cached(rig0):
    rig = rig0
    await rig.drv.enable_translation()
    rig.drv.context(LABEL)
    f = dev(rig).write(1, IOVA, b"x")
    assert isinstance(f, Fault)
    await rig.drv.until(lambda: rig.viommu.faults.recorded == 1, "the fault record")
    assert [r.reason for r in await rig.drv.faults()] == [VtdFaultReason.PASID_DIR_P]
    buf = rig.ram.alloc(P)
    pt = rig.ram.page_tables()
    pt.map(IOVA, buf, P)
    rig.drv.first_stage(LABEL, 1, pt)                  # present now, no invalidation
    assert dev(rig).write(1, IOVA, b"now") is None
    assert rig.ram.read(buf, 3) == b"now"


async def test_cm0_stale_pasid_entry_is_used_until_invalidated(rig0):
    rig = rig0
    await rig.drv.enable_translation()
    buf_a, _ = tables(rig)
    assert dev(rig).write(1, IOVA, b"A") is None       # fetched and cached
    buf_b = rig.ram.alloc(P)
    pt_b = rig.ram.page_tables()
    pt_b.map(IOVA, buf_b, P)
    rig.drv.first_stage(LABEL, 1, pt_b, did=3)         # changed, not invalidated
    assert dev(rig).write(1, IOVA + 1, b"a") is None
    assert rig.ram.read(buf_a, 2) == b"Aa" and rig.ram.read(buf_b, 2) == bytes(2)
    await rig.drv.submit(pasid_cache(1, did=3))
    assert dev(rig).write(1, IOVA, b"B") is None
    assert rig.ram.read(buf_b, 1) == b"B" and rig.ram.read(buf_a, 2) == b"Aa"


async def test_cm0_domain_selective_pasid_cache_invalidation_drops_that_domain(rig0):
    rig = rig0
    await rig.drv.enable_translation()
    tables(rig)
    assert dev(rig).write(1, IOVA, b"x") is None
    assert rig.viommu.binder.target(LABEL, 1) is not None
    await rig.drv.submit(pasid_cache(did=9, g=0))          # another domain
    assert rig.viommu.binder.target(LABEL, 1) is not None
    await rig.drv.submit(pasid_cache(did=3, g=0))
    assert rig.viommu.binder.target(LABEL, 1) is None
    assert dev(rig).write(1, IOVA, b"y") is None            # fetched again


async def test_cm0_context_entry_is_cached_until_context_cache_invalidation(rig0):
    rig = rig0
    await rig.drv.enable_translation()
    tables(rig, pasid=1)
    buf2 = rig.ram.alloc(P)
    pt2 = rig.ram.page_tables()
    pt2.map(IOVA, buf2, P)
    rig.drv.first_stage(LABEL, 2, pt2, did=4)
    assert dev(rig).write(1, IOVA, b"x") is None            # context entry now cached
    rig.ram.write(rig.drv.contexts[LABEL], bytes(ContextEntry.SIZE))   # context not present
    assert dev(rig).write(2, IOVA, b"old ctx") is None       # PASID 2 through the cached context
    assert rig.ram.read(buf2, 7) == b"old ctx"
    await rig.drv.submit(context_cache())
    f = dev(rig).write(2, IOVA, b"x")
    assert isinstance(f, Fault)
    f = dev(rig).write(None, rig.ram.base, b"x")
    assert isinstance(f, Fault)
    await rig.drv.until(lambda: rig.viommu.faults.recorded == 2, "two fault records")
    assert {r.reason for r in await rig.drv.faults()} == {VtdFaultReason.CONTEXT_P}


async def test_cm0_translation_off_puts_the_rid_back_on_stage2(rig0):
    rig = rig0
    await rig.drv.enable_translation()
    rig.drv.context(LABEL)                                   # no RID_PASID entry
    assert isinstance(dev(rig).write(None, rig.ram.base, b"x"), Fault)
    await rig.drv.disable_translation()
    assert dev(rig).write(None, rig.ram.base + 0x10, b"gpa") is None
    assert rig.ram.read(rig.ram.base + 0x10, 3) == b"gpa"


async def test_cm0_device_bound_after_te_has_nothing_cached(rig0, tmp_path):
    """Its RID must not stay pass-through on the stage-2 parent: its DMA fetches."""
    rig = rig0
    await rig.drv.enable_translation()
    late = SampleDevice(label=0x0400)
    late.join_platform(rig.platform)
    c = await rig.serve(late, str(tmp_path / "late.sock"))
    await rig.ram.map_into(c)
    rig.devices[0x0400] = late
    assert isinstance(late.iommu.write(None, rig.ram.base, b"x"), Fault)   # no context entry
    rig.drv.context(0x0400)
    rig.drv.pass_through(0x0400, 0)
    assert late.iommu.write(None, rig.ram.base + 0x20, b"late") is None
    assert rig.ram.read(rig.ram.base + 0x20, 4) == b"late"


async def test_cm0_page_request_reads_an_uncached_context_entry(rig0):
    """PRE comes from the context entry even when a context-cache invalidation
    dropped it (a request queued in the model before the invalidation and
    delivered after it): the unit reads the entry instead of refusing it."""
    rig = rig0
    await rig.drv.enable_translation()
    tables(rig)                                         # context entry with PRE
    assert dev(rig).write(1, IOVA, b"x") is None
    assert rig.viommu._pre_enabled(LABEL) is True
    await rig.drv.submit(context_cache())               # context entry dropped
    assert rig.viommu.binder.context(LABEL) is None
    assert rig.viommu._pre_enabled(LABEL) is True
    rig.drv.context(LABEL, pre=False)
    assert rig.viommu._pre_enabled(LABEL) is False
