"""The control socket over a real platform: vuser-dma driven by our client as QEMU."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments._vdma import PAGE, Stage, memcpy  # noqa: E402

#: Methods that need a platform; test_methods covers the rest.
PLATFORM_METHODS = {"vms", "device_state", "dma_queues"}

PASID = 3
SRC, DST = 0x10_0000_0000, 0x20_0000_0000


async def test_device_views_and_completion_notifications() -> None:
    async with Stage(label=0x31) as st:
        ctl = st.ctl
        assert ctl is not None
        assert await ctl.vms() == []  # no DMA_MAP yet: no VM
        await st.boot()
        [vm] = await ctl.vms()
        assert vm["labels"] == [0x31] and vm["ioas_id"] and vm["s2_hwpt_id"]
        devs = await ctl.devices()
        d = next(d for d in devs if d["label"] == 0x31)
        assert (d["type"], d["vm"], d["context"]) == ("VuserDma", vm["vm_id"], "this")
        assert d["attach"][0]["hwpt"] == vm["s2_hwpt_id"]  # the RID on the stage-2 parent

        pt = st.page_tables()
        src, dst = st.ram.alloc(4 * PAGE), st.ram.alloc(4 * PAGE)
        pt.map(SRC, src, 4 * PAGE)
        pt.map(DST, dst, 4 * PAGE)
        hwpt = await st.attach_pasid(PASID, pt.root)
        table = await ctl.pasid_table(0x31)
        e = next(e for e in table["entries"] if e["pasid"] == PASID)
        assert (e["hwpt"], e["parent"], e["ioas"], e["pgtbl_addr"]) == (
            hwpt, vm["s2_hwpt_id"], vm["ioas_id"], pt.root)

        await ctl.subscribe(["dma_completion", "fault"])
        recs = st.ram.alloc(4 * 32)
        st.ram.write(src, b"\xab" * PAGE)
        await st.submit([memcpy(SRC, DST, PAGE, recs, PASID),
                         memcpy(SRC, DST + 8 * PAGE, PAGE, recs + 32, PASID)])  # unmapped IOVA
        await st.idle()
        assert st.ram.read(dst, PAGE) == b"\xab" * PAGE
        assert (st.record(recs).status, st.record(recs + 32).status) == (1, 2)
        seen: dict[str, list] = {"fault": [], "dma_completion": []}
        while len(seen["dma_completion"]) < 2 or not seen["fault"]:
            topic, payload = await ctl.next_notification(timeout=5)
            seen[topic].append(payload)
        assert seen["fault"][0]["iova"] == DST + 8 * PAGE and seen["fault"][0]["stage"] == 1
        ok, bad = seen["dma_completion"]
        assert [(c["label"], c["queue"], c["index"]) for c in (ok, bad)] == [(0x31, 0, 0),
                                                                              (0x31, 0, 1)]
        assert (ok["status_name"], bad["status_name"]) == ("SUCCESS", "PAGE_FAULT")
        assert bad["fault_addr"] == DST + 8 * PAGE and ok["fault_addr"] is None

        state = await ctl.device_state(0x31)
        assert state["queues"][0]["completed"] == 2 and state["type"] == "VuserDma"
        [q0, *_] = await ctl.dma_queues()
        assert (q0["label"], q0["queue"], q0["completed"], q0["halted"]) == (0x31, 0, 2, False)
        cnt = await ctl.counters()
        assert cnt["devices"]["0x31"]["queue0_completed"] == 2
        assert "devtlb_hits" in cnt["devices"]["0x31"]
        assert cnt["model"]["faults"] >= 1
        from vuser.rpc import RpcCallError
        try:
            await ctl.device_state(0x99)
        except RpcCallError as err:
            assert err.errno_name == "ENOENT"
        else:
            raise AssertionError("device_state of an unknown label must fail")
        await asyncio.sleep(0)
