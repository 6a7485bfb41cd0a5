"""ioasid-model cost, as ratios to references measured in the same run.

1. Warm IOTLB: ``translate`` of 8 bytes through a nested (4-level stage 1 over
   an IOAS stage 2) PASID attachment whose page is cached, against the floor of
   any cached translation in Python: one dict lookup plus a memoryview slice.
2. Cold IOTLB: the same translation when every access misses (IOTLB of one
   entry, two pages used in turn): a full 4-level walk, stage-2 lookups for
   each table fetch, and the fill. Reference: the warm translation.
3. 1 MiB copy through translation: ``read`` 1 MiB from one IOVA range and
   ``write`` it to another (what a DMA engine's memcpy does), warm IOTLB, with
   4 KiB and with 2 MiB stage-1 pages, against a plain memoryview copy of the
   same bytes (``dst[:] = src``).
4. Stage-2 lookup (``IoPagetable.find``, bisect over the area starts) at 1k
   and at 100k mappings; the ratio 100k/1k shows the O(log n) growth (the
   ideal is log(1e5)/log(1e3) = 1.67). Also a cold stage-2-only translation
   at both sizes.

Run: ``.venv/bin/python bench/bench_iommu.py [--n N]``.
"""

from __future__ import annotations

import argparse
import random
import time

from vuser.iommu import Access, IoasidContext, IommuRegistry
from vuser.iommu.ioas import get_ioas
from vuser.iommu.pagetable import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType

P = 4096
MB = 1 << 20
PASID = 1


def rate(fn, n: int) -> float:
    """Operations per second of ``fn(n)`` (best of three)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t)
    return n / best


class Nested:
    """Stage 2: 8 MiB of guest memory at GPA 0 (tables in the first MiB);
    stage 1: 4-level tables built in it; PASID 1 attached to the nested HWPT."""

    def __init__(self, iotlb_capacity: int = 4096) -> None:
        self.reg = IommuRegistry()
        self.dev = self.reg.register("bench", pasid_width=20)
        self.ctx = IoasidContext(self.reg, iotlb_capacity=iotlb_capacity)
        ctx = self.ctx
        self.dev_id = ctx.device_bind(self.dev)
        ioas = ctx.ioas_alloc()
        self.mem = bytearray(8 * MB)
        ctx.ioas_map(ioas, self.mem, len(self.mem), 0)
        parent = ctx.hwpt_alloc(self.dev_id, ioas, int(HwptAllocFlags.NEST_PARENT
                                                        | HwptAllocFlags.PASID))
        self.pt = PageTableBuilder(memoryview(self.mem), alloc_start=P, alloc_end=MB)
        s1 = ctx.hwpt_alloc(self.dev_id, parent, int(HwptAllocFlags.PASID), HwptDataType.VTD_S1,
                            {"flags": 0, "pgtbl_addr": self.pt.root, "addr_width": 48})
        ctx.device_attach(self.dev_id, s1, pasid=PASID)


def bench_warm(n: int) -> tuple[float, float]:
    rig = Nested()
    rig.pt.map(0x7F00_0000_0000, 2 * MB, P)
    translate, dev_id = rig.ctx.translate, rig.dev_id
    translate(dev_id, PASID, 0x7F00_0000_0010, 8, Access.READ)

    def ours(k: int) -> None:
        for _ in range(k):
            translate(dev_id, PASID, 0x7F00_0000_0010, 8, 1)

    table = {(dev_id, PASID, 0x7F00_0000_0010 >> 12, 1): memoryview(rig.mem)[2 * MB:2 * MB + P]}

    def reference(k: int) -> None:
        for _ in range(k):
            table[(dev_id, PASID, 0x7F00_0000_0010 >> 12, 1)][16:24]

    return rate(ours, n), rate(reference, n)


def bench_cold(n: int) -> tuple[float, float]:
    rig = Nested(iotlb_capacity=1)
    rig.pt.map(0x7F00_0000_0000, 2 * MB, 2 * P)
    translate, dev_id = rig.ctx.translate, rig.dev_id
    a, b = 0x7F00_0000_0010, 0x7F00_0000_1010

    def ours(k: int) -> None:
        for _ in range(k // 2):
            translate(dev_id, PASID, a, 8, 1)
            translate(dev_id, PASID, b, 8, 1)

    cold = rate(ours, n)
    assert rig.ctx.stats()["hits"] == 0
    return cold, bench_warm(n)[0]


def bench_copy(rounds: int, page: int) -> tuple[float, float]:
    rig = Nested()
    src_iova, dst_iova = 0x4000_0000, 0x8000_0000
    rig.pt.map(src_iova, 2 * MB, 2 * MB, page_size=page)
    rig.pt.map(dst_iova, 4 * MB, 2 * MB, page_size=page)
    ctx, dev_id = rig.ctx, rig.dev_id
    rig.mem[2 * MB:3 * MB] = random.randbytes(MB)

    def ours(k: int) -> None:
        for _ in range(k):
            data = ctx.read(dev_id, PASID, src_iova, MB)
            ctx.write(dev_id, PASID, dst_iova, data)

    ours(1)
    assert rig.mem[4 * MB:5 * MB] == rig.mem[2 * MB:3 * MB]
    view = memoryview(rig.mem)
    src, dst = view[2 * MB:3 * MB], view[4 * MB:5 * MB]

    def reference(k: int) -> None:
        for _ in range(k):
            dst[:] = src

    return rate(ours, rounds), rate(reference, rounds)


def build_s2(mappings: int) -> tuple[IoasidContext, int, int]:
    reg = IommuRegistry()
    dev = reg.register("bench")
    ctx = IoasidContext(reg, iotlb_capacity=1)
    dev_id = ctx.device_bind(dev)
    ioas = ctx.ioas_alloc()
    buf = bytearray(P)
    for i in range(mappings):
        ctx.ioas_map(ioas, buf, P, 2 * i * P)  # every other page: holes between areas
    ctx.device_attach(dev_id, ioas)
    return ctx, dev_id, ioas


def bench_lookup(n: int) -> list[tuple[str, float, str, float]]:
    found: dict[int, float] = {}
    cold: dict[int, float] = {}
    for size in (1000, 100_000):
        ctx, dev_id, ioas = build_s2(size)
        iopt = get_ioas(ctx, ioas).iopt
        addrs = [2 * random.randrange(size) * P + 5 for _ in range(1024)]

        def find(k: int, addrs=addrs, find=iopt.find) -> None:
            for i in range(k):
                find(addrs[i & 1023])

        def translate(k: int, addrs=addrs, t=ctx.translate, d=dev_id) -> None:
            for i in range(k):
                t(d, None, addrs[i & 1023], 8, 1)

        found[size] = rate(find, n)
        cold[size] = rate(translate, n // 4)
    return [("stage-2 lookup, 100k mappings", found[100_000], "1k mappings", found[1000]),
            ("cold s2-only translate, 100k", cold[100_000], "1k mappings", cold[1000])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="operations per measurement")
    args = parser.parse_args()
    n = args.n
    warm = bench_warm(n)
    cold = bench_cold(n // 4)
    copy4k = bench_copy(max(n // 2000, 5), P)
    copy2m = bench_copy(max(n // 500, 20), 2 * MB)
    rows = [
        ("warm translate (nested, 4-lvl)", warm[0], "dict get + slice", warm[1], "op/s"),
        ("cold translate (nested, 4-lvl)", cold[0], "warm translate", cold[1], "op/s"),
        ("1 MiB copy, 4 KiB pages", copy4k[0], "memoryview copy", copy4k[1], "MiB/s"),
        ("1 MiB copy, 2 MiB pages", copy2m[0], "memoryview copy", copy2m[1], "MiB/s"),
    ]
    rows += [(a, b, c, d, "op/s") for a, b, c, d in bench_lookup(n)]
    print(f"{'measurement':32} {'rate':>12}   {'reference':18} {'ref rate':>12} {'ratio':>8}")
    for name, ours, ref_name, ref, unit in rows:
        print(f"{name:32} {ours:12.0f}   {ref_name:18} {ref:12.0f} {ours / ref:8.3f}  ({unit})")


if __name__ == "__main__":
    main()
