"""Tracing overhead: translations per second with and without a trace, same run.

The workload is device DMA through a nested PASID attachment (4-level VT-d
stage 1 over a stage-2 IOAS): 8-byte reads over 256 pages, so most
translations hit the IOTLB and a few walk (the IOTLB holds 128 entries, a
cyclic sweep of 256 pages: the worst case, every page misses; and a 16-page
sweep: every access hits). For each workload:

- ``off``: no trace hook (the model's normal state);
- ``hook``: a trace hook that drops events (the model building ``TraceEvent``s);
- ``file``: the control RPC's ``TraceRecorder`` writing a msgpack trace file.

The ratios are translations/s with tracing over translations/s without,
measured in the same run (best of three); 1.0 means free.

Run: ``.venv/bin/python bench/bench_trace.py [--n N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import NestedRig  # noqa: E402
from vuser.iommu import Access  # noqa: E402
from vuser.rpc.tracing import TraceRecorder, read_trace  # noqa: E402

P = 4096
IOVA = 0x40_0000_0000
GPA = 16 << 20


def rate(fn, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="translations per measurement")
    n = ap.parse_args().n
    rig = NestedRig(mem_size=GPA + 256 * P, tables=GPA, iotlb_capacity=128)
    rig.pt.map(IOVA, GPA, 256 * P)
    ctx, dev_id, pasid = rig.ctx, rig.dev_id, rig.pasid
    translate = ctx.translate

    def workload(pages: int):
        addrs = [IOVA + (i % pages) * P + 8 for i in range(4096)]

        def go(k: int) -> None:
            for i in range(k):
                translate(dev_id, pasid, addrs[i & 4095], 8, Access.READ)
        return go

    tmp = tempfile.mkdtemp(prefix="vuser-bench-")
    print(f"tracing overhead, {n} translations per measurement (best of 3)")
    print(f"{'workload':34} {'off tr/s':>11} {'hook tr/s':>11} {'file tr/s':>11} "
          f"{'hook/off':>9} {'file/off':>9}")
    try:
        for name, pages in (("all IOTLB hits (16 pages)", 16),
                            ("all walks (256 pages, 128 entries)", 256)):
            go = workload(pages)
            ctx.set_trace(None)
            off = rate(go, n)
            ctx.set_trace(lambda ev: None)
            hook = rate(go, n)
            path = os.path.join(tmp, "bench.trace")
            rec = TraceRecorder(path)
            ctx.set_trace(rec.hook)
            filed = rate(go, n)
            ctx.set_trace(None)
            st = rec.stop()
            assert st["events"] >= 3 * n and not st["dropped"], st
            print(f"{name:34} {off:11,.0f} {hook:11,.0f} {filed:11,.0f} "
                  f"{hook / off:9.2f} {filed / off:9.2f}")
            print(f"{'':34} trace: {st['events']:,} events, {st['bytes'] / st['events']:.1f} "
                  f"bytes/event, written while recording")
        t = read_trace(path, limit=10)
        assert t.events and t.events[0]["kind"] == "translate"
    finally:
        rig.close()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
