"""Round trips of every control method against a live server.

One scenario calls every method the server lists (``rpc_methods``) with
real arguments and checks each result against the model; the last assertion
fails if a method was added without a round trip here.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

from rpc_helpers import DATA_GPA, DATA_IOVA, PASID, P, Harness
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType, VeventqType, ViommuType
from vuser.rpc import Client, ControlServer, RpcCallError


class Recorder:
    def __init__(self, client: Client) -> None:
        self.c = client
        self.called: set[str] = set()

    async def __call__(self, method: str, *args: Any, **kw: Any) -> Any:
        self.called.add(method)
        return await self.c.call(method, *args, **kw)


async def test_every_method_round_trips(harness: Harness, server: ControlServer,
                                        client: Client, sockdir: str) -> None:
    h, call = harness, Recorder(client)
    ctx = h.ctx

    # -- meta --------------------------------------------------------------------
    methods = await call("rpc_methods")
    names = {m["name"] for m in methods}
    assert set(ctx.UAPI_METHODS) <= names
    info = await call("server_info")
    assert info["pid"] == os.getpid() and "fault" in info["topics"]

    # -- objects, IOAS -------------------------------------------------------------
    objs = await call("objects")
    assert [o["id"] for o in objs] == [o["id"] for o in ctx.objects()]
    assert (await call("object_info", h.ioas))["type"] == "ioas"
    ioas = await call("ioas_alloc")
    assert ctx.object_info(ioas)["type"] == "ioas"
    iova = await call("ioas_map", ioas, b"\x5a" * P, P, iova=0x10000)
    assert iova == 0x10000
    auto = await call("ioas_map", ioas, None, 2 * P)          # zeroed server buffer, auto IOVA
    with tempfile.NamedTemporaryFile(dir=sockdir) as f:
        f.write(b"\xa5" * 4 * P)
        f.flush()
        fiova = await call("ioas_map_file", ioas, f.name, 0, 4 * P, 0x100000)
    areas = await call("ioas_areas", ioas)
    assert [(a["iova"], a["last"]) for a in areas] == sorted(
        [(0x10000, 0x10000 + P - 1), (auto, auto + 2 * P - 1), (fiova, fiova + 4 * P - 1)])
    assert any(a["file_id"] for a in areas)
    dst = await call("ioas_alloc")
    copied = await call("ioas_copy", dst, ioas, 0x10000, P, dst_iova=0x20000)
    assert copied == 0x20000
    ranges = await call("ioas_iova_ranges", dst)
    assert ranges == {"ranges": [[0, (1 << 64) - 1]], "alignment": 1}  # no domain yet
    assert await call("ioas_option", 1, 1, dst) == 1  # HUGE_PAGES GET
    assert await call("ioas_option", 1, 0, dst, 0) == 0  # SET 0: 4 KiB alignment
    assert (await call("ioas_iova_ranges", dst))["alignment"] == P
    assert await call("ioas_allow_iovas", dst, [[0x20000, 0x2ffff]]) is None
    assert await call("ioas_unmap", ioas, auto, 2 * P) == 2 * P

    # -- the second device: bind, attach, HWPTs, vIOMMU --------------------------------
    dev2 = await call("device_bind", h.other.label)
    assert h.other.bound and h.other.dev_id == dev2
    assert await call("device_lookup", h.other.label) == dev2
    hw = await call("get_hw_info", dev2)
    assert hw["data_type"] == 1 and hw["max_pasid_log2"] == 20
    paging = await call("hwpt_alloc", dev2, ioas, int(HwptAllocFlags.NEST_PARENT
                                                      | HwptAllocFlags.DIRTY_TRACKING
                                                      | HwptAllocFlags.PASID))
    assert await call("device_attach", dev2, paging) == paging
    assert (await call("device_info", dev2))["attach"] == [[None, paging]]
    viommu = await call("viommu_alloc", dev2, paging, int(ViommuType.VUSER_VTD))
    vdev = await call("vdevice_alloc", viommu, dev2, 0x99)
    veq = await call("veventq_alloc", viommu, int(VeventqType.VUSER_VTD), 4)
    assert await call("veventq_read", veq, 64) == b""
    assert await call("vdevice_lookup", viommu, 0x99) == dev2
    nested = await call("hwpt_alloc", dev2, viommu, int(HwptAllocFlags.PASID),
                        int(HwptDataType.VTD_S1),
                        {"flags": 0, "pgtbl_addr": 0x1000, "addr_width": 57})
    assert await call("device_attach", dev2, nested, 3) == nested
    s2p = await call("hwpt_alloc", dev2, ioas, int(HwptAllocFlags.PASID))
    assert await call("device_replace", dev2, s2p, 3) == s2p
    assert await call("device_replace", dev2, nested, 3) == nested
    before = ctx.objects()
    assert await call("fail_nth", 1) is None  # the next allocation fails
    with pytest.raises(RpcCallError) as ei:
        await call("ioas_alloc")
    assert ei.value.errno == 12 and ctx.objects() == before
    assert await call("device_pasid_map", dev2, 5, 3) is None
    assert await call("device_ppasid", dev2, 5) == 3
    assert await call("hwpt_invalidate", nested, [{"addr": 0, "npages": 1, "flags": 0}]) == 1
    assert await call("hwpt_set_dirty_tracking", paging, True) is None
    # DMA through the paging HWPT (the RID) dirties a page.
    assert (await call("write", dev2, None, 0x10000, b"dirty"))["fault"] is None
    bitmap = await call("hwpt_get_dirty_bitmap", paging, 0x10000, 8 * P, P)
    assert isinstance(bitmap, bytes) and bitmap[0] & 1
    await call("device_detach", dev2, 3)
    await call("destroy", veq)
    await call("destroy", vdev)

    # -- the DMA path on the harness device ------------------------------------------------
    dev = h.dev_id
    tr = await call("translate", dev, PASID, DATA_IOVA + 8, 16, 1)
    assert tr == {"segments": [{"iova": DATA_IOVA + 8, "gpa": DATA_GPA + 8, "length": 16}],
                  "fault": None}
    assert (await call("write", dev, PASID, DATA_IOVA, b"hello"))["fault"] is None
    assert h.ram[DATA_GPA:DATA_GPA + 5] == b"hello"
    assert await call("read", dev, PASID, DATA_IOVA, 5) == {"data": b"hello", "fault": None}
    ats = await call("ats_translate", dev, PASID, DATA_IOVA, 1)
    assert ats["gpa"] == DATA_GPA and ats["size"] == P and ats["read"]
    bad = await call("translate", dev, PASID, 0x1234_0000_0000, 8, 1)
    assert bad["segments"] is None and bad["fault"]["reason"] == 7
    assert await call("page_request", dev, PASID, DATA_IOVA, 1, 3, True) is True
    st = await call("fault_queue_status", h.fault_q)
    assert st["queued"] == 1 and st["pending_groups"] == 1
    recs = await call("fault_read", h.fault_q, 0)
    assert len(recs) == 1 and recs[0]["label"] == 0x10 and recs[0]["pasid"] == PASID
    assert await call("fault_respond", h.fault_q, recs[0]["cookie"], 0) is None
    fq = await call("fault_queue_alloc", 4)
    assert ctx.object_info(fq)["depth"] == 4
    assert await call("iotlb_invalidate", dev, PASID) >= 1
    assert await call("iotlb_invalidate", dev, PASID, devtlb=False) >= 0
    heard = []
    h.dev.devtlb_invalidate = lambda pasid, addr, npages: heard.append((pasid, addr, npages))
    assert await call("devtlb_invalidate", dev, PASID, 0x3000, 2) is None
    assert heard == [(PASID, 0x3000, 2)]
    assert await call("iotlb_set_capacity", 128) is None
    stats = await call("stats")
    assert stats["iotlb_capacity"] == 128 and stats["translations"] >= 4
    assert await call("stats_reset") is None
    assert ctx.stats()["translations"] == 0

    # -- views -------------------------------------------------------------------------
    devs = await call("devices")
    d0 = next(d for d in devs if d["label"] == 0x10)
    assert d0["context"] == "this"
    assert {a["pasid"]: a["stage"] for a in d0["attach"]} == {None: "s2-only", PASID: "nested"}
    assert [g["context"] for g in await call("groups")] == ["this", "this"]
    pt = await call("pasid_table", 0x10)
    e = next(e for e in pt["entries"] if e["pasid"] == PASID)
    assert (e["hwpt"], e["parent"], e["ioas"], e["levels"], e["pgtbl_addr"]) == (
        h.s1, h.parent, h.ioas, 4, h.pt.root)
    il = await call("ioas_list")
    assert {i["id"] for i in il} == {o["id"] for o in ctx.objects() if o["type"] == "ioas"}
    hws = await call("hwpts")
    assert any(x["id"] == h.s1 and x["parent"] == h.parent for x in hws)
    cnt = await call("counters")
    assert cnt["model"] == ctx.stats()
    fl = await call("faults", 10)
    assert fl["total"] >= 1 and fl["recent"][-1]["reason"] == 7
    assert any(q["id"] == h.fault_q for q in fl["queues"])

    # -- subscriptions, tracing, injection -----------------------------------------------
    assert await call("subscribe", ["fault", "invalidate"]) == ["fault", "invalidate"]
    assert await call("unsubscribe", ["invalidate"]) == ["fault"]
    path = os.path.join(sockdir, "t.trace")
    assert (await call("trace_start", path))["recording"]
    assert (await call("trace_status"))["path"] == path
    stopped = await call("trace_stop")
    assert stopped["recording"] is False and os.path.getsize(path) == stopped["bytes"]
    rule = await call("inject_fault", 0x10, PASID, DATA_IOVA, P, 2)
    assert [r["id"] for r in await call("inject_list")] == [rule]
    await call("inject_remove", rule)
    await call("inject_fault", 0x10, None, 0, P)
    assert await call("inject_clear") == 1
    hole = await call("s2_unmap", h.ioas, DATA_GPA, P)
    assert [x["id"] for x in await call("s2_holes")] == [hole["id"]]
    assert (await call("s2_restore", hole["id"]))["id"] == hole["id"]

    # -- teardown through the uAPI --------------------------------------------------------
    await call("device_detach", dev2, None)
    await call("device_unbind", dev2)
    assert not h.other.bound

    from test_platform import PLATFORM_METHODS  # covered there, with a real platform

    missing = names - call.called - PLATFORM_METHODS
    assert not missing, f"methods without a round trip: {sorted(missing)}"
    assert PLATFORM_METHODS <= names
