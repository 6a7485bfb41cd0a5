"""Hostile-guest properties with canary pages (issue 14): random page tables,
PASID tables, rings and descriptors, and invalidation descriptors never make a
device write outside what the attached translation of that (label, PASID)
allows.

Guest RAM is filled with canary bytes; after each example every changed byte
must lie in a page the PASID's own first-stage table maps writable (besides
the completion records, the rings, the driver's queues and the page tables,
where walks set A/D bits: ``VdmaDriver.assert_only_written``). Descriptors run
one PASID at a time, so a write through one PASID into another's page counts
as an escape too. The canary bytes are even, so a walk that wanders into them
(a bogus PASID entry's table pointer) finds only not-present entries: what
such a walk may write is exactly nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_viommu_dma import LABEL, RID_COMPLETION, vdma, viommu  # noqa: F401 (fixtures)
from vdma_harness import PAGE, attach_s1, desc

from vuser.devices.dma_layout import CompletionStatus, Opcode, QueueReg
from vuser.iommu.pagetable.builder import PageTableBuilder
from vuser.devices.vtd_layout import (
    Fsts, InvType, PasidEntry, PasidQw0, PasidQw2, Pgtt, Reg, WaitDesc,
)

EXAMPLES = int(os.environ.get("VUSER_FUZZ_EXAMPLES", "12"))
IOVA = 0x5555_0000_0000          # every PASID maps its pages from here
POOL_PAGES = 24                  # data pages the random tables point into
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def canary(n: int, rng: random.Random) -> bytes:
    """Random even bytes: as page-table entries, never present."""
    return bytes(rng.getrandbits(8) & 0xFE for _ in range(n))


@st.composite
def mapping(draw):
    """Random first-stage leaves: IOVA page -> pool page, writable or not."""
    n = draw(st.integers(1, 8))
    pages = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n, unique=True))
    return [(p, draw(st.integers(0, POOL_PAGES - 1)), draw(st.booleans())) for p in pages]


@st.composite
def dma_descs(draw, pasids, pages):
    """1-6 descriptors; addresses mostly in or next to the mapped ``pages``."""
    def addr():
        if draw(st.integers(0, 3)) < 3:
            return IOVA + draw(st.sampled_from(pages)) * PAGE + draw(st.integers(-64, PAGE))
        return IOVA + draw(st.integers(-PAGE, 17 * PAGE))
    out = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from([Opcode.FILL, Opcode.MEMCPY, Opcode.COMPARE]))
        src, dst = addr(), addr()
        # FILL patterns stay even-byted like the canary: data a DMA writes can
        # never become a present entry for a bogus walk that wanders into it.
        pattern = draw(st.integers(0, 2**64 - 1)) & 0xFEFE_FEFE_FEFE_FEFE
        out.append((draw(st.sampled_from(pasids)), op, src, dst,
                    draw(st.integers(1, 2 * PAGE)), pattern))
    return out


class Windows:
    """Page-table windows of guest RAM allocated once and reused by every
    example (a long campaign would exhaust the RAM otherwise)."""

    def __init__(self, ram, n: int, pages: int = 16) -> None:
        self.ram, self.pages = ram, pages
        self.starts = []
        for _ in range(n):
            ram.page_tables(pages=pages)          # allocates and registers a window
            self.starts.append(ram.table_windows[-1][0])

    def builder(self, i: int) -> PageTableBuilder:
        start = self.starts[i]
        self.ram.write(start, bytes(self.pages * PAGE))
        return PageTableBuilder(self.ram.view, base=self.ram.gpa, alloc_start=start,
                                alloc_end=start + self.pages * PAGE, fmt="first", levels=4)


def allowed_pages(pool: int, leaves) -> list[tuple[int, int]]:
    return [(pool + g * PAGE, PAGE) for _p, g, w in leaves if w]


async def run_per_pasid(drv, ram, pool, leaves_of, descs):
    """Run ``descs`` one PASID at a time, checking the canary after each."""
    for pasid in sorted({d[0] for d in descs}):
        before = ram.snapshot()
        comps = []
        for _p, op, src, dst, n, pattern in (d for d in descs if d[0] == pasid):
            comp = drv.completion()
            comps.append(comp)
            await drv.run(0, desc(op, src=src, dst=dst, length=n, pattern=pattern,
                                  pasid=pasid, completion=comp, flags=RID_COMPLETION))
        assert await drv.qreg(0, QueueReg.Q_ERROR) == 0
        for comp in comps:
            assert drv.record(comp).status in (CompletionStatus.SUCCESS,
                                               CompletionStatus.PAGE_FAULT)
        drv.assert_only_written(before, *allowed_pages(pool, leaves_of.get(pasid, [])),
                                *((c, 32) for c in comps))


# --- random page tables and descriptors, attached through the model -----------------

@pytest.fixture
async def one(rig, ram):
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    await drv.enable_pasid()
    pool = ram.alloc(POOL_PAGES * PAGE)
    return dev, drv, pool, {"next": 1, "windows": Windows(ram, 3)}


@SETTINGS
@given(maps=st.lists(mapping(), min_size=1, max_size=3), data=st.data(),
       seed=st.integers(0, 2**32))
async def test_random_page_tables_and_descriptors_stay_inside_the_translation(
        one, rig, ram, maps, data, seed):
    dev, drv, pool, state = one
    rng = random.Random(seed)
    ram.write(pool, canary(POOL_PAGES * PAGE, rng))
    leaves_of, hwpts = {}, {}
    for i, leaves in enumerate(maps):        # fresh PASIDs: nothing stale from before
        pasid = state["next"]
        state["next"] += 1
        pt = state["windows"].builder(i)
        for page, g, w in leaves:
            pt.map(IOVA + page * PAGE, pool + g * PAGE, PAGE, write=w)
        hwpts[pasid] = attach_s1(rig.platform, dev, pt.root, pasid)
        leaves_of[pasid] = leaves
    unattached = 0xF_0000 + state["next"]   # never attached
    pages = sorted({p for leaves in maps for p, _g, _w in leaves})
    descs = data.draw(dma_descs(sorted(leaves_of) + [unattached], pages))
    try:
        await run_per_pasid(drv, ram, pool, leaves_of, descs)
    finally:                                 # the windows are reused: let go of them
        ctx = rig.platform.ctx
        for pasid, hwpt in hwpts.items():
            ctx.device_detach(dev.iommu.dev_id, pasid=pasid)
            ctx.destroy(hwpt)


# --- random PASID tables and invalidation descriptors, through the vIOMMU -----------

async def post_hostile(vt, descs: list[bytes]) -> int:
    """Post ``descs`` and a wait; skip every descriptor the vIOMMU refuses (IQE:
    overwrite it with a no-op wait, clear IQE), until the wait's status lands.
    Returns how many were refused."""
    vt.seq += 1
    vt.ram.write(vt.status, struct.pack("<I", 0))
    from viommu_guest import wait
    await vt.post(*descs, wait(vt.status, vt.seq))
    refused = 0
    for _ in range(len(descs) + 2):
        for _ in range(200):
            if struct.unpack("<I", vt.ram.read(vt.status, 4))[0] == vt.seq:
                return refused
            if Fsts.IQE.get(await vt.read32(Reg.FSTS)):
                break
            await asyncio.sleep(0.002)
        else:
            raise AssertionError("the invalidation queue neither finished nor stopped")
        head = await vt.read64(Reg.IQH)
        vt.ram.write(vt.iq + head, wait())
        await vt.write32(Reg.FSTS, Fsts.IQE.mask)
        refused += 1
    raise AssertionError("more refusals than descriptors")


def no_status_write(raw: bytes) -> bytes:
    """A random 256-bit descriptor; a wait loses SW (its status write goes to any
    GPA the guest names, by design: not a device write through a translation)."""
    qw0 = int.from_bytes(raw[:8], "little")
    if (qw0 & 0xF) | ((qw0 >> 9) & 0x7) << 4 == InvType.WAIT:
        qw0 &= ~WaitDesc.SW.mask
    return qw0.to_bytes(8, "little") + raw[8:]


@SETTINGS
@given(good=mapping(), garbage=st.lists(st.binary(min_size=64, max_size=64), min_size=1,
                                        max_size=3),
       invs=st.lists(st.binary(min_size=32, max_size=32), max_size=5),
       roots=st.lists(st.integers(0, POOL_PAGES + 15), min_size=3, max_size=3),
       data=st.data(), seed=st.integers(0, 2**32))
async def test_random_pasid_entries_and_invalidations_stay_inside_the_translation(
        vdma, viommu, ram, good, garbage, invs, roots, data, seed):  # noqa: F811
    dev, drv = vdma
    vt = viommu.drv
    rng = random.Random(seed)
    if not hasattr(vt, "_pool"):
        vt._pool, vt._windows = ram.alloc(POOL_PAGES * PAGE), Windows(ram, 1)
        vt._witness = ram.alloc(2 * PAGE)
    pool = vt._pool
    ram.write(pool, canary(POOL_PAGES * PAGE, rng))
    # PASIDs base..base+7 (within the 128-entry PASID directory), cleared after use
    base = 1 + 8 * rng.randrange(1000)
    # PASID base: a proper first-stage table with random leaves.
    pt = vt._windows.builder(0)
    for page, g, w in good:
        pt.map(IOVA + page * PAGE, pool + g * PAGE, PAGE, write=w)
    vt.first_stage(LABEL, base, pt, did=base)
    # PASIDs base+1..: random entries; their table pointer lands in the canary
    # pool or in the good table's pages; never pass-through or second-stage
    # (those allow all of guest RAM by design).
    table_pages = [pt.root + i * PAGE for i in range(16)]
    for i, raw in enumerate(garbage):
        qw = list(struct.unpack("<8Q", raw))
        pgtt = PasidQw0.PGTT.get(qw[0])
        if pgtt in (Pgtt.PASS_THROUGH, Pgtt.SECOND_STAGE, Pgtt.NESTED):
            qw[0] = PasidQw0.PGTT.put(qw[0], Pgtt.FIRST_STAGE)
        r = roots[i]
        root = pool + r * PAGE if r < POOL_PAGES else table_pages[r - POOL_PAGES]
        qw[2] = PasidQw2.FSPTPTR.put(qw[2], root >> 12)
        ram.write(vt.pasid_entry_addr(LABEL, base + 1 + i), PasidEntry(*qw).pack())
    from viommu_guest import pasid_cache
    await vt.submit(pasid_cache(None))       # global: every entry above is looked at
    await post_hostile(vt, [no_status_write(r) for r in invs])
    pasids = [base + i for i in range(len(garbage) + 1)] + [base + 7]
    descs = data.draw(dma_descs(pasids, [p for p, _g, _w in good]))
    # A bogus entry that shares the good table may write what the good table allows.
    shared = {base + 1 + i: good for i, r in enumerate(roots[:len(garbage)])
              if r >= POOL_PAGES}
    try:
        await run_per_pasid(drv, ram, pool, {base: good, **shared}, descs)
    finally:                                 # the window is reused: unbind its PASIDs
        for p in range(base, base + len(garbage) + 1):
            vt.clear_pasid(LABEL, p)
        await vt.submit(pasid_cache(None))
    # and the server still serves a proper DMA afterwards
    src, dst = vt._witness, vt._witness + PAGE
    ram.write(src, os.urandom(8))
    rec = await drv.memcpy(0, src, dst, 8)
    assert rec.status == CompletionStatus.SUCCESS and ram.read(dst, 8) == ram.read(src, 8)
