"""vuser-dma descriptor throughput through our vfio-user client, as ratios.

A ``vuser-dma`` is served on a socket in this process; our client plays QEMU
(DMA_MAP of a memfd as guest RAM) and the guest driver (registers, a ring of
256 descriptors in guest RAM). Each round writes TAIL (+``--batch``
descriptors) and rings the doorbell, both as posted writes as QEMU sends them
for memory BARs, then waits until the device is idle. Every descriptor is a
MEMCPY with a completion record.

Cases: 4 KiB and 64 KiB copies,
- pass-through: untagged DMA on the VM's stage-2 parent;
- nested: PASID 1 on a VT-d first-stage table (4 KiB pages) over stage 2,
  IOTLB warm (one warm-up round first);
- nested + ATS: the same with the device TLB on (translations from the
  device's own cache).

Reference, measured in turns with each case: a plain memoryview copy of the
same size (``dst[:] = src``), the floor of any copy in Python. The printed "x" is
reference bytes/s over ours; the JSON ratio is ours over the reference.

Run: ``.venv/bin/python bench/bench_dma.py [--rounds N] [--batch B] [--json FILE]``;
with ``--json`` the figures are also written in the bench suite's JSON form;
``--calls`` counts the function calls per descriptor instead (no timing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import struct
import sys
import tempfile
import time

from vuser.devices.dma_layout import (
    CompletionRecord, Ctrl, DescFlags, DescPasid, Descriptor, Opcode, QCtrl, QueueReg, Reg,
    queue_reg,
)
from vuser.devices.platform import Platform
from vuser.devices.vuser_dma import VuserDma
from vuser.iommu.pagetable.builder import PageTableBuilder
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType
from vuser.pci.caps import walk_extended
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20
PAGE = 4096
GPA = 0x4000_0000
RAM = 64 * MiB
RING = 256
IOVA_SRC, IOVA_DST, IOVA_COMP = 0x10_0000_0000, 0x20_0000_0000, 0x30_0000_0000


class Bench:
    def __init__(self, path: str) -> None:
        self.path = path
        self.platform = Platform()
        self.dev = VuserDma(platform=self.platform, queues=1, devtlb=8192)
        self.server = DeviceServer(self.dev, path, name="bench")
        self.fd = sealed_memfd("bench-ram", RAM)   # as QEMU's memory-backend-memfd
        self.mm = mmap.mmap(self.fd, RAM)
        self.ram = memoryview(self.mm)
        self.client: Client | None = None

    async def start(self) -> None:
        await self.server.start()
        self.client = c = await Client.connect(self.path)
        await c.dma_map(GPA, RAM, fd=self.fd)
        cmd = int.from_bytes(await c.region_read(7, 4, 2), "little")
        await c.region_write(7, 4, (cmd | 6).to_bytes(2, "little"))       # MEM | MASTER
        config = await c.region_read(7, 0, 4096)
        caps = {e.cap_id: e.offset for e in walk_extended(config)}
        await c.region_write(7, caps[0x1B] + 6, (1).to_bytes(2, "little"))  # PASID Enable
        self.ats_ctl = caps[0x0F] + 6
        await self.reg(Reg.CTRL, Ctrl.ENABLE.mask)
        await self.reg(queue_reg(0, QueueReg.RING_LO), GPA)
        await self.reg(queue_reg(0, QueueReg.RING_SIZE), RING)
        await self.reg(queue_reg(0, QueueReg.Q_CTRL), QCtrl.pack(ENABLE=1))
        self.tail = 0
        # Stage-1 tables for PASID 1 at 32 MiB, mapping the copy windows.
        pt = PageTableBuilder(self.ram, base=GPA, alloc_start=GPA + 32 * MiB,
                              alloc_end=GPA + 40 * MiB)
        pt.map(IOVA_SRC, GPA + 4 * MiB, 8 * MiB)
        pt.map(IOVA_DST, GPA + 16 * MiB, 8 * MiB)
        pt.map(IOVA_COMP, GPA + MiB, PAGE * 4)
        ctx, vm = self.platform.ctx, self.platform.vm_of(self.dev)
        dev_id = self.dev.iommu.dev_id
        hwpt = ctx.hwpt_alloc(dev_id, vm.s2_hwpt_id, int(HwptAllocFlags.PASID),
                              HwptDataType.VTD_S1,
                              {"flags": 0, "pgtbl_addr": pt.root, "addr_width": 48})
        ctx.device_attach(dev_id, hwpt, pasid=1)

    async def reg(self, off: int, value: int, posted: bool = False) -> None:
        assert self.client is not None
        await self.client.region_write(0, off, struct.pack("<I", value), posted=posted)

    async def ats(self, on: bool) -> None:
        assert self.client is not None
        await self.client.region_write(7, self.ats_ctl, (0x8000 if on else 0).to_bytes(2, "little"))

    def fill_ring(self, size: int, pasid: int | None) -> None:
        """Every ring slot: a MEMCPY of ``size`` bytes, each slot its own buffers."""
        for i in range(RING):
            off = (i * size) % (8 * MiB - size)
            off -= off % 64
            if pasid is None:
                src, dst, comp = GPA + 4 * MiB + off, GPA + 16 * MiB + off, GPA + MiB + 32 * (i % 128)
            else:
                src, dst, comp = IOVA_SRC + off, IOVA_DST + off, IOVA_COMP + 32 * (i % 128)
            d = Descriptor(opcode=Opcode.MEMCPY, flags=DescFlags.COMPLETION,
                           pasid=0 if pasid is None else DescPasid.pack(VALID=1, PASID=pasid),
                           src=src, dst=dst, length=size, completion=comp)
            self.ram[0x0 + i * 64:(i + 1) * 64] = d.pack()

    async def round(self, batch: int) -> None:
        self.tail = (self.tail + batch) % RING
        await self.reg(queue_reg(0, QueueReg.TAIL), self.tail, posted=True)
        await self.reg(queue_reg(0, QueueReg.DOORBELL), 1, posted=True)
        await self.client.region_read(0, 0, 4)   # the posted writes are in
        await self.dev.idle()

    async def run(self, size: int, pasid: int | None, rounds: int, batch: int,
                  turns: int = 15) -> tuple[float, float]:
        """Bytes per second of MEMCPY descriptors and of the reference copy of
        as many bytes, measured in turns (best of ``turns`` each)."""
        self.fill_ring(size, pasid)
        for _ in range(RING // batch + 1):        # warm-up: every slot's pages cached
            await self.round(batch)
        best = ref_best = float("inf")
        for _ in range(turns):
            t = time.perf_counter()
            for _ in range(rounds):
                await self.round(batch)
            best = min(best, time.perf_counter() - t)
            ref_best = min(ref_best, reference_time(size, rounds * batch))
        comp = CompletionRecord.unpack(self.ram[MiB:MiB + 32])
        assert comp.status == 1, f"descriptors failed: {comp}"
        n = rounds * batch * size
        return n / best, n / ref_best

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.server.close()
        self.dev.close()
        self.platform.close()
        self.ram.release()
        self.mm.close()
        os.close(self.fd)


_REF = memoryview(bytearray(16 * MiB))


def reference_time(size: int, n: int) -> float:
    """Seconds for ``n`` plain memoryview copies of ``size`` bytes, walking the
    same 8 MiB windows as the descriptors."""
    view = _REF
    t = time.perf_counter()
    for i in range(n):
        off = (i * size) % (8 * MiB - size)
        view[8 * MiB + off:8 * MiB + off + size] = view[off:off + size]
    return time.perf_counter() - t


def figure(name: str, value: float, unit: str, ref_name: str | None, ref: float | None,
           target: str | None, met: bool | None, **extra: float) -> dict[str, object]:
    """One figure in the bench suite's JSON form (ratio: value over reference)."""
    return {"name": name, "value": value, "unit": unit, "reference": ref_name,
            "reference_value": ref, "ratio": value / ref if ref else None, "target": target,
            "met": met, "extra": extra}


async def count_calls(b: Bench, batch: int, rounds: int = 10) -> None:
    """Print the Python and C function calls per descriptor (``sys.setprofile``)
    of the nested 4 KiB and 64 KiB cases, IOTLB warm, the vfio-user messages
    of each doorbell included."""
    await b.ats(False)
    for size in (4096, 65536):
        b.fill_ring(size, 1)
        for _ in range(RING // batch + 1):
            await b.round(batch)
        calls = {"call": 0, "c_call": 0}

        def prof(_frame: object, event: str, _arg: object) -> None:
            if event in calls:
                calls[event] += 1

        sys.setprofile(prof)
        try:
            for _ in range(rounds):
                await b.round(batch)
        finally:
            sys.setprofile(None)
        n = rounds * batch
        print(f"nested MEMCPY {size // 1024:>2} KiB, IOTLB warm: {calls['call'] / n:5.1f} Python "
              f"calls and {calls['c_call'] / n:5.1f} C calls per descriptor")


async def main(rounds: int, batch: int, json_path: str | None, calls: bool = False) -> None:
    figs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d:
        b = Bench(os.path.join(d, "bench.sock"))
        await b.start()
        try:
            if calls:
                await count_calls(b, batch)
                return
            print(f"vuser-dma MEMCPY through the vfio-user client: {rounds} rounds x "
                  f"{batch} descriptors per doorbell, best of 15 turns against the reference")
            print(f"{'case':<28}{'size':>7}{'ours MB/s':>12}{'desc/s':>10}"
                  f"{'memoryview MB/s':>17}{'ratio':>8}")
            for size in (4096, 65536):
                for name, pasid, ats in (("pass-through", None, False),
                                         ("nested PASID 1, IOTLB warm", 1, False),
                                         ("nested PASID 1, ATS", 1, True)):
                    await b.ats(ats)
                    ours, ref = await b.run(size, pasid, rounds, batch)
                    print(f"{name:<28}{size // 1024:>5}Ki{ours / 1e6:>12.1f}"
                          f"{ours / size:>10.0f}{ref / 1e6:>17.1f}{ref / ours:>8.1f}x")
                    label = f"MEMCPY {size // 1024} KiB, {name}"
                    if size == 65536 and name.endswith("IOTLB warm"):
                        figs.append(figure("nested MEMCPY 64 KiB, IOTLB warm", ours / 1e6, "MB/s",
                                           "memoryview copy", ref / 1e6, ">= 0.5x",
                                           ours / ref >= 0.5, descriptors_per_s=ours / size))
                    elif size == 4096 and name.endswith("IOTLB warm"):
                        figs.append(figure("4 KiB descriptors per second, nested, warm",
                                           ours / size, "desc/s", None, None, ">= 150k/s",
                                           ours / size >= 150_000,
                                           **{"MB/s": ours / 1e6,
                                              "memoryview copy MB/s": ref / 1e6}))
                    else:
                        figs.append(figure(label, ours / 1e6, "MB/s", "memoryview copy",
                                           ref / 1e6, None, None, descriptors_per_s=ours / size))
        finally:
            await b.close()
    if json_path:
        with open(json_path, "w") as fp:
            json.dump({"script": "bench_dma.py", "figures": figs}, fp, indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--calls", action="store_true",
                    help="count function calls per descriptor instead of timing")
    args = ap.parse_args()
    asyncio.run(main(args.rounds, args.batch, args.json, args.calls))
