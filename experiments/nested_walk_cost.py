"""The cost of a nested walk: 4- vs 5-level stage 1, 4 KiB vs 2 MiB stage 2.

Headless: the VT-d walkers in-process, no QEMU, no guest, no caches. Guest
memory is a window of host memory; stage 2 is made of real second-stage
tables (4-level, GPA -> HPA) with 4 KiB or 2 MiB leaves; stage 1 is a 4- or
5-level VT-d first-stage table in guest memory mapping 4 KiB pages. Every
stage-1 table fetch is itself translated through stage 2, then the final GPA
is, so one translation costs ``(n1 + 1) * (n2 + 1) - 1`` memory reads for
``n1`` stage-1 and ``n2`` stage-2 levels (2 MiB leaves end stage 2 one level
early). The table reports the reads the walker counted for ``--samples``
random pages of each configuration, and what the model's own DMA path pays
per translation for the same random reads (its stage 2 is the IOAS interval
map, so a miss costs the stage-1 reads only, and an IOTLB hit none).
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from vuser.iommu import Access, Fault
from vuser.iommu.pagetable import PageTableBuilder, SecondStageTables, walk_nested

from ._common import MB, PAGE, NestedRig, Result

SUMMARY = "memory reads per nested translation: 4/5-level stage 1 x 4K/2M stage 2 (headless)"

GUEST_HPA = 16 * MB        # guest RAM starts here in host memory
GUEST_SIZE = 32 * MB       # GPA [0, 32 MiB)
S1_TABLES = 4 * MB         # stage-1 tables in GPA [4 KiB, 4 MiB)
DATA_GPA = 8 * MB
DATA_PAGES = 1024
DATA_IOVA = 0x7F_0000_0000


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=256, help="random pages per configuration")
    p.add_argument("--seed", type=int, default=1, help="random seed (reproducible)")


def walker_reads(s1_levels: int, s2_page: int, pages: list[int]) -> list[int]:
    """Reads of a cold nested walk for each page index in ``pages``."""
    host = bytearray(GUEST_HPA + GUEST_SIZE)
    s2 = PageTableBuilder(memoryview(host), base=0, alloc_start=PAGE, alloc_end=GUEST_HPA,
                          fmt="second", levels=4)
    s2.map(0, GUEST_HPA, GUEST_SIZE, page_size=s2_page)
    guest = memoryview(host)[GUEST_HPA:]
    s1 = PageTableBuilder(guest, base=0, alloc_start=PAGE, alloc_end=S1_TABLES, levels=s1_levels)
    s1.map(DATA_IOVA, DATA_GPA, DATA_PAGES * PAGE)
    port = SecondStageTables(host, s2.root, levels=4)
    out = []
    for i in pages:
        t = walk_nested(port, DATA_IOVA + i * PAGE + 8, Access.READ, root=s1.root,
                        levels=s1_levels)
        if isinstance(t, Fault):
            raise RuntimeError(f"walk faulted: {t}")
        out.append(t.reads)
    return out


def model_reads(s1_levels: int, pages: list[int]) -> tuple[float, float]:
    """(reads per translation, hit rate) of the model's DMA path, same accesses."""
    rig = NestedRig(mem_size=GUEST_SIZE, tables=S1_TABLES, levels=s1_levels)
    try:
        rig.pt.map(DATA_IOVA, DATA_GPA, DATA_PAGES * PAGE)
        rig.ctx.stats_reset()
        for i in pages:
            rig.ctx.translate(rig.dev_id, rig.pasid, DATA_IOVA + i * PAGE + 8, 8, Access.READ)
        s = rig.ctx.stats()
        n = s["translations"]
        return s["memory_reads"] / n, s["hits"] / n
    finally:
        rig.close()


def run(args: Any) -> Result:
    rng = random.Random(args.seed)
    pages = [rng.randrange(DATA_PAGES) for _ in range(args.samples)]
    rows = []
    bars: dict[str, tuple[list[str], list[float]]] = {"cold nested walk": ([], []),
                                                      "model DMA path": ([], [])}
    for s1_levels in (4, 5):
        m_reads, m_hits = model_reads(s1_levels, pages)
        for s2_page, s2_name, s2_levels in ((4096, "4K", 4), (2 * MB, "2M", 3)):
            reads = walker_reads(s1_levels, s2_page, pages)
            expect = (s1_levels + 1) * (s2_levels + 1) - 1
            mean = sum(reads) / len(reads)
            rows.append([f"{s1_levels}-level", s2_name, s2_levels, expect, f"{mean:.1f}",
                         min(reads), max(reads), f"{m_reads:.2f}", f"{100 * m_hits:.0f}%"])
            name = f"S1 {s1_levels}-level / S2 {s2_name}"
            bars["cold nested walk"][0].append(name)
            bars["cold nested walk"][1].append(mean)
            bars["model DMA path"][0].append(name)
            bars["model DMA path"][1].append(m_reads)
    notes = [f"{args.samples} random 4 KiB pages of {DATA_PAGES} (seed {args.seed}); "
             "EXPECTED = (n1+1)(n2+1)-1",
             "MODEL = the model's memory_reads / translations for the same accesses: its "
             "stage 2 is the IOAS map (no table reads) and repeated pages hit the IOTLB"]

    def plot(out: str) -> str:
        from vuser.rpc.plot import plot_xy

        return plot_xy(out, "Memory reads per nested translation", "configuration",
                       "memory reads per translation", bars, bar=True)

    return Result("Cost of a nested walk (memory reads per translation)",
                  ["STAGE1", "STAGE2_PAGES", "S2_LEVELS_WALKED", "EXPECTED", "MEAN", "MIN",
                   "MAX", "MODEL_READS/TR", "MODEL_HIT"], rows, notes, plot,
                  data={"rows": rows})
