"""The host's view of a guest-built vIOMMU setup: trace events for vuser-iommu's
invalidation descriptors, page requests and responses (with what each one is),
``trace show`` wording, and the control service's PASID table (kind, first-stage
root and levels, blocked entries, capability vs enabled)."""

from __future__ import annotations

import struct

import pytest

from vuser.devices.vtd_layout import VtdFaultReason
from vuser.iommu import Access, Fault
from vuser.pci.caps_ext import Ats, AtsCtl
from vuser.rpc import Service, render
from vuser.rpc.tracing import TraceRecorder, read_trace, summarize

from viommu_guest import P, Rig, translating_rig, context_cache, page_response, pasid_cache, pdevtlb, piotlb

LABEL = 0x0230
IOVA = 0x5100_0000


@pytest.fixture
async def rig(tmp_path):
    r = await translating_rig(tmp_path, LABEL)
    yield r
    await r.close()


async def setup_tables(rig: Rig):
    buf = rig.ram.alloc(P)
    pt = rig.ram.page_tables(levels=5)
    pt.map(IOVA, buf, P)
    rig.drv.context(LABEL, pre=True)
    rig.drv.pass_through(LABEL, 0, did=2)
    rig.drv.first_stage(LABEL, 1, pt, did=1, levels=5)
    await rig.drv.submit(context_cache(), pasid_cache(1, did=1), pasid_cache(0, did=2))
    return buf, pt


async def test_trace_names_each_invalidation_and_page_request(rig, tmp_path):
    path = str(tmp_path / "v.trace")
    rec = TraceRecorder(path)
    rig.platform.ctx.set_trace(rec.hook)
    buf, pt = await setup_tables(rig)
    idev = rig.devices[LABEL].iommu
    assert idev.write(1, IOVA, b"s1") is None
    await rig.drv.submit(piotlb(1, did=1, addr=IOVA, am=1), pdevtlb(LABEL, 1, IOVA))
    assert idev.page_request(1, IOVA + 4 * P, Access.WRITE, 6, True, lambda code: None)
    (pr,) = await rig.drv.page_requests()
    await rig.drv.submit(page_response(LABEL, 1, pr.prgi, 0))
    rig.platform.ctx.set_trace(None)
    rec.stop()

    events = read_trace(path).events
    by_kind: dict[str, list] = {}
    for e in events:
        by_kind.setdefault(e["kind"], []).append(e)
    tr = [e for e in by_kind["translate"] if e["label"] == LABEL and e["pasid"] == 1]
    assert tr and tr[0]["stage"] == 1 and tr[0]["gpa"] == buf     # through the first stage
    (cc,) = by_kind["inv-context-cache"]
    assert cc["info"] == {"g": 1, "did": 0, "fm": 0}
    assert [(e["pasid"], e["info"]["did"], e["info"]["g"]) for e in by_kind["inv-pasid-cache"]] \
        == [(1, 1, 1), (0, 2, 1)]
    (pi,) = by_kind["inv-piotlb"]
    assert (pi["pasid"], pi["iova"], pi["length"], pi["info"]) == (1, IOVA, 2 * P,
                                                                    {"g": 3, "did": 1})
    (dt,) = by_kind["inv-devtlb"]
    assert (dt["label"], dt["pasid"], dt["iova"], dt["length"]) == (LABEL, 1, IOVA, P)
    (rq,) = by_kind["page-request"]
    assert (rq["label"], rq["pasid"], rq["iova"]) == (LABEL, 1, IOVA + 4 * P)
    assert rq["info"] == {"prgi": 6, "read": False, "write": True, "last": True}
    (rs,) = by_kind["page-response"]
    assert (rs["label"], rs["pasid"], rs["info"]) == (LABEL, 1,
                                                     {"prgi": 6, "code": 0, "matched": True})

    text = render.trace_events(events, 0.0)
    assert "PASID-IOTLB invalidation (pages) did 1, 0x51000000+2 pages" in text
    assert "device-TLB invalidation, 0x51000000+1 page" in text
    assert "PASID-cache invalidation (PASID) did 1" in text
    assert "page request w group 6 (last)" in text and "page response success group 6" in text
    for line in text.splitlines():
        if " inv" in line or "invalidate" in line:
            assert "BLOCKED" not in line and " -1 " not in line, line
    s = summarize(events)
    assert s["invalidation_descriptors"]["inv-piotlb"] == 1
    assert (s["page_requests"], s["page_responses"]) == (1, 1)
    assert "PASID-IOTLB invalidation descriptors" in render.trace_summary(s, {}, {"end": True})


async def test_pasid_table_shows_kernel_built_tables(rig):
    buf, pt = await setup_tables(rig)
    idev = rig.devices[LABEL].iommu
    assert isinstance(idev.write(200, IOVA, b"x"), Fault)   # PASID 200: no directory entry
    await rig.drv.submit(pasid_cache(200, did=1))           # now blocked, the reason cached
    service = Service.for_platform(rig.platform)
    try:
        t = service.call(None, "pasid_table", [LABEL])
        entries = {e["pasid"]: e for e in t["entries"]}
        assert entries[None]["kind"] == "pass-through" and entries[None]["did"] == 2
        s1 = entries[1]
        assert (s1["kind"], s1["pgtbl_addr"], s1["levels"], s1["did"]) == (
            "first-stage", pt.root, 5, 1)
        assert entries[200]["kind"] == "blocked" and entries[200]["hwpt"] is None
        assert entries[200]["reason"] == VtdFaultReason.PASID_DIR_P
        assert t["viommu"]["rid_pasid"] == 0 and t["viommu"]["translation"]
        assert t["features"] == {"pasid": {"cap": True, "enabled": False},
                                 "ats": {"cap": True, "enabled": False},
                                 "pri": {"cap": True, "enabled": False}}
        text = render.pasid_table(t)
        assert "ATS capable, not enabled" in text and "PRI capable, not enabled" in text
        assert "ATS on" not in text
        assert "first-stage" in text and f"{pt.root:#x}" in text and "PASID_DIR_P" in text
        dev = rig.devices[LABEL]
        ats = dev.caps.find(Ats)
        await rig.dev_clients[LABEL].region_write(
            7, ats.offset + 6, struct.pack("<H", AtsCtl.ENABLE.mask))
        t = service.call(None, "pasid_table", [LABEL])
        assert t["features"]["ats"] == {"cap": True, "enabled": True}
        assert "ATS capable, enabled" in render.pasid_table(t)
    finally:
        service.close()
