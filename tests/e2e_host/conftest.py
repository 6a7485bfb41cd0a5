"""Fixtures for the host-side vuser-dma scenarios (see vdma_harness)."""

from __future__ import annotations

import os

import pytest
from vdma_harness import COMP, DST, PAGE, SRC, GuestRam, Rig, attach_s1


@pytest.fixture
def ram():
    r = GuestRam()
    yield r
    r.close()


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    await r.close()


@pytest.fixture
async def nested(rig, ram):
    """One vuser-dma, PASIDs 1 and 2 with their own first-stage tables."""
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    await drv.enable_pasid()
    spaces = {}
    for pasid in (1, 2):
        pt = ram.page_tables()
        src, dst = ram.alloc(2 * PAGE), ram.alloc(2 * PAGE)
        comp = ram.alloc(PAGE)
        pt.map(SRC, src, 2 * PAGE)
        pt.map(DST, dst + PAGE, PAGE)               # the two destination pages swapped:
        pt.map(DST + PAGE, dst, PAGE)               # translation is per page
        pt.map(COMP, comp, PAGE)
        ram.write(src, os.urandom(2 * PAGE))
        hwpt = attach_s1(rig.platform, dev, pt.root, pasid)
        spaces[pasid] = {"src": src, "dst": dst, "comp": comp, "hwpt": hwpt, "pt": pt}
    return dev, drv, spaces
