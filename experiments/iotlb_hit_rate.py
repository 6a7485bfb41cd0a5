"""IOTLB size vs hit rate for a strided DMA workload.

Headless by default: the ioasid model in-process, no QEMU and no guest. One
PASID-capable device has a PASID attached to a nested HWPT (4-level VT-d
stage 1 built in guest memory, over a stage-2 GPA IOAS). The workload is a
DMA engine reading ``--size`` bytes every ``--stride`` bytes across a
``--working-set`` of 4 KiB stage-1 pages, ``--passes`` times over. For each
IOTLB capacity the IOTLB is flushed, the counters are zeroed, and the
workload runs; the hit rate is ``hits / (hits + misses)`` from the model's
counters. The model's IOTLB is LRU, so a cyclic sweep larger than the IOTLB
misses on every page: the curve shows that cliff, softened by the accesses
that share a page (stride below 4 KiB).

Against a guest: ``--socket PATH`` (a server's control socket) measures the
live workload of whatever the guest is running instead. For each capacity
the server's IOTLB is resized and flushed, the counters are zeroed, and after
``--window`` seconds the hit rate is read; the original capacity is put back.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from vuser.iommu import Access

from ._common import MB, PAGE, NestedRig, Result

SUMMARY = "IOTLB capacity vs hit rate, strided DMA (headless; --socket for a live guest)"

DATA_IOVA = 0x40_0000_0000
DATA_GPA = 16 * MB


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capacities", default="16,64,256,1024,2048,4096",
                   help="IOTLB sizes in entries, comma-separated")
    p.add_argument("--strides", default="256,4096,16384",
                   help="DMA strides in bytes, comma-separated")
    p.add_argument("--working-set", type=int, default=2048, metavar="PAGES",
                   help="4 KiB pages the workload sweeps (default 2048 = 8 MiB)")
    p.add_argument("--passes", type=int, default=3, help="sweeps over the working set")
    p.add_argument("--size", type=int, default=64, help="bytes per DMA read (default 64)")
    p.add_argument("--socket", metavar="PATH",
                   help="measure a running server's live workload instead (see above)")
    p.add_argument("--window", type=float, default=5.0, metavar="S",
                   help="with --socket: seconds per capacity")


def _ints(text: str) -> list[int]:
    return [int(x, 0) for x in text.split(",") if x.strip()]


def headless(capacities: list[int], strides: list[int], pages: int, passes: int,
             size: int) -> dict[int, list[tuple[int, float, int]]]:
    """``{stride: [(capacity, hit_rate, translations)]}`` from the model."""
    rig = NestedRig(mem_size=DATA_GPA + pages * PAGE, tables=DATA_GPA)
    try:
        rig.pt.map(DATA_IOVA, DATA_GPA, pages * PAGE)
        ctx, dev_id, pasid = rig.ctx, rig.dev_id, rig.pasid
        span = pages * PAGE
        out: dict[int, list[tuple[int, float, int]]] = {}
        for stride in strides:
            addrs = [DATA_IOVA + off for off in range(0, span, stride)] * passes
            rows = []
            for cap in capacities:
                ctx.iotlb_set_capacity(cap)
                ctx.iotlb_invalidate()
                ctx.stats_reset()
                translate = ctx.translate
                for a in addrs:
                    translate(dev_id, pasid, a, size, Access.READ)
                s = ctx.stats()
                n = s["hits"] + s["misses"]
                rows.append((cap, s["hits"] / n if n else 0.0, s["translations"]))
            out[stride] = rows
        return out
    finally:
        rig.close()


def live(path: str, capacities: list[int], window: float) -> list[tuple[int, float, int]]:
    """``[(capacity, hit_rate, translations)]`` measured on a running server."""
    from vuser.rpc import SyncClient

    with SyncClient(path) as c:
        original = c.stats()["iotlb_capacity"]
        rows = []
        try:
            for cap in capacities:
                c.iotlb_set_capacity(cap)
                c.iotlb_invalidate()
                c.stats_reset()
                time.sleep(window)
                s = c.stats()
                n = s["hits"] + s["misses"]
                rows.append((cap, s["hits"] / n if n else 0.0, s["translations"]))
        finally:
            c.iotlb_set_capacity(original)
        return rows


def run(args: Any) -> Result:
    caps = _ints(args.capacities)
    if args.socket:
        rows = live(args.socket, caps, args.window)
        series = {"live workload": rows}
        title = (f"IOTLB size vs hit rate: live workload on {args.socket}, "
                 f"{args.window:g} s per size")
    else:
        series = {f"stride {s}": r for s, r in headless(
            caps, _ints(args.strides), args.working_set, args.passes, args.size).items()}
        title = (f"IOTLB size vs hit rate: {args.size}-byte DMA reads, {args.working_set} pages "
                 f"({args.working_set * 4} KiB) swept {args.passes}x, nested 4-level stage 1")
    names = list(series)
    table = []
    for i, cap in enumerate(caps):
        table.append([cap] + [f"{100 * series[n][i][1]:.1f}%" for n in names]
                     + [series[names[0]][i][2]])
    notes = ["hit rate = IOTLB hits / (hits + misses), from the model's counters; "
             "the IOTLB is LRU and flushed before each size"]

    def plot(out: str) -> str:
        from vuser.rpc.plot import plot_xy

        return plot_xy(out, "IOTLB size vs hit rate", "IOTLB entries", "hit rate (%)",
                       {n: ([r[0] for r in series[n]], [100 * r[1] for r in series[n]])
                        for n in names}, logx=True)

    return Result(title, ["IOTLB_ENTRIES"] + [f"HIT({n})" for n in names]
                  + [f"TRANSLATIONS({names[0]})"], table, notes, plot,
                  data={"series": series})
