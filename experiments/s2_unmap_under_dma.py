"""Stage-2 unmap under running DMA: what faults, what completes, what the guest sees.

Headless, through our client acting as QEMU: a ``vuser-dma`` is served
in-process on a vfio-user socket; our vfio-user client maps guest RAM (a
memfd) with DMA_MAP as QEMU does and drives the device as a guest driver
would (rings and descriptors in guest RAM). The experimenter's side is the
control socket, as with ``vuser ctl``: it attaches a PASID to a nested HWPT
(VT-d stage 1 in guest RAM over the VM's stage-2 parent, as the vIOMMU would),
subscribes to faults and DMA completions, and -- while the device works
through a ring of 4 KiB MEMCPYs tagged with that PASID -- unmaps a stage-2
(GPA) range under the destination buffers (``s2_unmap``), then maps it back
(``s2_restore``) and runs the same copies again.

The table reports, per phase, how the descriptors completed (SUCCESS or
PAGE_FAULT with the fault stage), what the guest sees (completion records,
and whether each destination holds the copy or its old bytes) and what the
host saw (fault notifications at stage 2). Which descriptor is the first to
meet the hole depends on scheduling (``--unmap-after`` only says when the
experimenter acts); the counts are reproducible for a given run order.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

from ._common import Result
from ._vdma import PAGE, Stage, memcpy

SUMMARY = "unmap stage 2 under a running vuser-dma (headless, our client as QEMU)"

PASID = 5
SRC_IOVA = 0x10_0000_0000
DST_IOVA = 0x20_0000_0000


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--copies", type=int, default=64, help="4 KiB MEMCPYs per phase")
    p.add_argument("--hole", type=int, default=16, metavar="PAGES",
                   help="destination pages unmapped at stage 2 (from the middle)")
    p.add_argument("--unmap-after", type=int, default=16, metavar="N",
                   help="cut the hole once N copies of the running phase completed")


async def _phase(st: Stage, src: int, dst: int, n: int, rec_base: int, fill: int,
                 during: Any = None) -> list[tuple[int, Any]]:
    """Submit ``n`` copies (source pages filled with ``fill``); run ``during`` while
    they go; returns ``(index, completion record)`` for each."""
    for i in range(n):
        st.ram.write(src + i * PAGE, bytes([(fill + i) & 0xFF]) * PAGE)
        st.ram.write(rec_base + i * 32, bytes(32))
    descs = [memcpy(SRC_IOVA + i * PAGE, DST_IOVA + i * PAGE, PAGE, rec_base + i * 32, PASID)
             for i in range(n)]
    await st.submit(descs)
    if during is not None:
        await during()
    await st.idle()
    return [(i, st.record(rec_base + i * 32)) for i in range(n)]


async def _run(args: Any) -> dict[str, Any]:
    n = args.copies
    async with Stage() as st:
        await st.boot(ring_size=max(256, 1 << (2 * n - 1).bit_length()))
        pt = st.page_tables()
        src, dst = st.ram.alloc(n * PAGE), st.ram.alloc(n * PAGE)
        recs = st.ram.alloc(n * 32)
        pt.map(SRC_IOVA, src, n * PAGE)
        pt.map(DST_IOVA, dst, n * PAGE)
        await st.attach_pasid(PASID, pt.root)
        ctl = st.ctl
        assert ctl is not None
        faults: list[dict[str, Any]] = []
        completions: list[dict[str, Any]] = []

        def on_note(topic: str, payload: Any) -> None:
            (faults if topic == "fault" else completions).append(payload)
        ctl.on_notification = on_note
        await ctl.subscribe(["fault", "dma_completion"])
        [vm] = await ctl.vms()
        first = n // 2 - args.hole // 2
        hole_gpa, hole_len = dst + first * PAGE, args.hole * PAGE
        hole_pages = range(first, first + args.hole)
        phases: dict[str, Any] = {}
        holes: list[dict[str, Any]] = []

        async def cut() -> None:
            while (await ctl.device_state(st.label))["queues"][0]["completed"] < args.unmap_after:
                await asyncio.sleep(0)
            holes.append(await ctl.s2_unmap(vm["ioas_id"], hole_gpa, hole_len))

        for name, fill, during in (("before + during the unmap", 0x10, cut),
                                   ("hole left in place", 0x50, None),
                                   ("after s2_restore", 0x90, None)):
            if name == "after s2_restore":
                await ctl.s2_restore(holes[0]["id"])
            old = st.ram.read(dst, n * PAGE)
            f0 = len(faults)
            recs_out = await _phase(st, src, dst, n, recs, fill, during)
            await asyncio.sleep(0.05)  # the last completion notifications
            sees = Counter()
            status = Counter()
            for i, r in recs_out:
                got = st.ram.read(dst + i * PAGE, PAGE)
                if r.status == 1:
                    status["SUCCESS"] += 1
                    sees["copy" if got == bytes([(fill + i) & 0xFF]) * PAGE else "WRONG"] += 1
                elif r.status == 2:
                    stage = "stage 2" if r.fault_info & 2 else "stage 1"
                    status[f"PAGE_FAULT ({stage}{', write' if r.fault_info & 1 else ''})"] += 1
                    sees["old bytes" if got == old[i * PAGE:(i + 1) * PAGE] else "PARTIAL"] += 1
                    assert r.fault_addr == DST_IOVA + i * PAGE, "fault_addr is the IOVA"
                    assert i in hole_pages, "only copies into the hole fault"
                else:
                    status[f"status {r.status}"] += 1
            host = faults[f0:]
            phases[name] = {"status": dict(status), "sees": dict(sees),
                            "host_faults": len(host),
                            "host_stages": dict(Counter(f["stage"] for f in host)),
                            "faulted": [i for i, r in recs_out if r.status == 2]}
        return {"phases": phases, "completions": len(completions),
                "completed_total": sum(1 for c in completions if "status" in c), "hole": holes[0],
                "hole_pages": [hole_pages.start, hole_pages.stop - 1]}


def run(args: Any) -> Result:
    data = asyncio.run(_run(args))
    rows = []
    for name, ph in data["phases"].items():
        rows.append([name, ", ".join(f"{k} {v}" for k, v in ph["status"].items()),
                     ", ".join(f"{k} {v}" for k, v in ph["sees"].items()),
                     ph["host_faults"],
                     ", ".join(f"S{k} {v}" for k, v in ph["host_stages"].items()) or "-",
                     (f"{ph['faulted'][0]}..{ph['faulted'][-1]}" if ph["faulted"] else "-")])
    h = data["hole"]
    notes = [f"{args.copies} MEMCPYs of 4 KiB per phase on PASID {PASID} (nested: VT-d stage 1 "
             f"in guest RAM over the VM's stage-2 IOAS {h['ioas']})",
             f"hole: GPA [{h['iova']:#x}, +{h['length']:#x}) = destination pages "
             f"{data['hole_pages'][0]}..{data['hole_pages'][1]}, cut after "
             f"{args.unmap_after} completions of the running phase",
             f"dma_completion notifications: {data['completions']} covering "
             f"{data['completed_total']} descriptors",
             "guest sees: the completion record (status, fault_info stage-2/write bit, "
             "fault_addr = the IOVA) and the destination bytes"]

    def plot(out: str) -> str:
        from vuser.rpc.plot import plot_xy

        names = list(data["phases"])
        ok = [data["phases"][k]["status"].get("SUCCESS", 0) for k in names]
        bad = [sum(v for s, v in data["phases"][k]["status"].items() if s != "SUCCESS")
               for k in names]
        return plot_xy(out, "Stage-2 unmap under running DMA", "phase", "descriptors",
                       {"SUCCESS": (names, ok), "PAGE_FAULT": (names, bad)}, bar=True)

    return Result("Stage-2 unmap under running DMA (vuser-dma, headless)",
                  ["PHASE", "COMPLETION RECORDS", "GUEST SEES AT DST", "HOST FAULTS",
                   "FAULT STAGES", "FAULTED COPIES"], rows, notes, plot, data=data)
