"""vuser-iommu and the model's paging-structure cache: a guest that re-points
a PDE sees the old table until its PASID-based IOTLB invalidation, and the new
one after it (VT-d "paging-structure caches"; vuser/iommu/iotlb.py)."""

from __future__ import annotations

import pytest

from vuser.devices.sample import SampleDevice
from vuser.iommu.pagetable.formats import FirstStagePte

from viommu_guest import P, Rig, pasid_cache, piotlb

LABEL = 0x0108
IOVA = 0x7000_0000
PASID, DID = 3, 7


@pytest.fixture
async def rig(tmp_path):
    r = Rig()
    await r.start(tmp_path, (LABEL,), lambda label: SampleDevice(label=label))
    await r.drv.init()
    yield r
    await r.close()


def dma_write(rig: Rig, iova: int, data: bytes):
    return rig.devices[LABEL].iommu.write(PASID, iova, data)


@pytest.mark.parametrize("scope", ["page", "pasid", "other-page"])
async def test_a_re_pointed_pde_is_stale_until_the_pasid_iotlb_invalidation(rig, scope):
    drv, ram = rig.drv, rig.ram
    await drv.enable_translation()
    first, old, new = ram.alloc(P), ram.alloc(2 * P), ram.alloc(2 * P)
    pt = ram.page_tables()
    pt.map(IOVA, first, P)
    pt.map(IOVA + P, old, 2 * P)
    drv.context(LABEL)
    drv.first_stage(LABEL, PASID, pt, did=DID)
    await drv.submit(pasid_cache(PASID, did=DID))
    assert dma_write(rig, IOVA, b"warm") is None          # caches the PDE (and above)
    # The guest moves the PDE to a new table in which pages 1 and 2 map ``new``.
    table = pt.alloc_table()
    pt.write_entry(pt.entry_address(IOVA, 2),
                   FirstStagePte.pack(P=1, RW=1, US=1, ADDR=table >> 12))
    pt.map(IOVA + P, new, 2 * P)
    assert dma_write(rig, IOVA + P, b"one") is None       # through the cached PDE
    assert ram.read(old, 3) == b"one" and ram.read(new, 3) == bytes(3)
    # A PASID-IOTLB invalidation of another domain changes nothing.
    await drv.submit(piotlb(PASID, did=DID + 1))
    assert dma_write(rig, IOVA + P + 8, b"two") is None
    assert ram.read(old + 8, 3) == b"two"
    addr = {"page": IOVA + P, "pasid": None, "other-page": IOVA + 64 * P}[scope]
    await drv.submit(piotlb(PASID, did=DID, addr=addr))
    # Page 2 was never translated: its walk now reads the new table.
    assert dma_write(rig, IOVA + 2 * P, b"six") is None
    assert ram.read(new + P, 3) == b"six" and ram.read(old + P, 3) == bytes(3)
    # Page 1's leaf is in the IOTLB: it goes only if its page was invalidated.
    assert dma_write(rig, IOVA + P, b"ten") is None
    assert ram.read(old if scope == "other-page" else new, 3) == b"ten"
