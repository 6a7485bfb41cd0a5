"""Fidelity rows V1-V8 and E1-E6 (docs/iommufd-fidelity.md): vIOMMU, vDEVICE,
vEVENTQ, vIOMMU invalidation, and vPASID <-> pPASID end to end."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import DATA_GPA, DATA_SIZE, TABLES_GPA, TABLES_SIZE, P, Rig, expect_errno
from vuser.iommu import Access, Fault, Stage
from vuser.iommu.pagetable import PageTableBuilder
from vuser.iommu.uapi import (
    HwptAllocFlags, HwptDataType, HwptInvalidateDataType, IommuVeventVuserVtd,
    IommuViommuVuserVtdInvalidate, VeventHeader, VeventqFlags, VeventqType, ViommuType,
)

NEST = int(HwptAllocFlags.NEST_PARENT)
PASIDF = int(HwptAllocFlags.PASID)
FAULTF = int(HwptAllocFlags.FAULT_ID_VALID)
VUSER = int(ViommuType.VUSER_VTD)
VQ = int(VeventqType.VUSER_VTD)
VINV = int(HwptInvalidateDataType.VUSER_VTD)
S1 = {"flags": 0, "pgtbl_addr": 0x100000, "addr_width": 48}
VRID, VPASID, PPASID = 0x42, 7, 100


@pytest.fixture
def viommu(rig: Rig) -> tuple[Rig, int, int]:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST | PASIDF)
    return rig, parent, rig.ctx.viommu_alloc(rig.dev_id, parent, VUSER)


def test_V1_default_type_is_refused_before_the_device(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.viommu_alloc, 999, 999, int(ViommuType.DEFAULT))


def test_V2_upstream_types_are_not_vtd(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(errno.ENOENT, rig.ctx.viommu_alloc, 999, parent, 1)  # the device first
    for t in (int(ViommuType.ARM_SMMUV3), int(ViommuType.TEGRA241_CMDQV), 99):
        expect_errno(errno.EOPNOTSUPP, rig.ctx.viommu_alloc, rig.dev_id, parent, t)


def test_V3_vuser_type_needs_a_nest_parent(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.viommu_alloc, rig.dev_id, rig.ioas, VUSER)
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EINVAL, rig.ctx.viommu_alloc, rig.dev_id, plain, VUSER)


def test_V4_virt_id_range_first(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.vdevice_alloc, 999, 999, 1 << 64)
    expect_errno(errno.ENOENT, rig.ctx.vdevice_alloc, 999, 999, 1)


def test_V5_one_vdevice_per_device(viommu) -> None:
    rig, parent, v = viommu
    rig.ctx.vdevice_alloc(v, rig.dev_id, 1)
    v2 = rig.ctx.viommu_alloc(rig.dev_id, parent, VUSER)
    expect_errno(errno.EEXIST, rig.ctx.vdevice_alloc, v2, rig.dev_id, 2)


def test_V6_virt_id_taken(viommu) -> None:
    rig, _parent, v = viommu
    rig.ctx.vdevice_alloc(v, rig.dev_id, 1)
    d2 = rig.ctx.device_bind(rig.reg.register("d2"))
    expect_errno(errno.EEXIST, rig.ctx.vdevice_alloc, v, d2, 1)


def test_V7_viommu_in_use_is_ebusy(viommu) -> None:
    rig, parent, v = viommu
    q = rig.ctx.veventq_alloc(v, VQ, 2)
    expect_errno(errno.EBUSY, rig.ctx.destroy, v)
    expect_errno(errno.EBUSY, rig.ctx.destroy, parent)
    rig.ctx.destroy(q)
    rig.ctx.destroy(v)


def test_V8_vdevice_lookup_is_an_extension(viommu) -> None:
    rig, _parent, v = viommu
    rig.ctx.vdevice_alloc(v, rig.dev_id, 5)
    assert rig.ctx.vdevice_lookup(v, 5) == rig.dev_id
    expect_errno(errno.ENOENT, rig.ctx.vdevice_lookup, v, 6)


def test_E1_veventq_alloc_order(viommu) -> None:
    rig, _parent, v = viommu
    expect_errno(errno.EOPNOTSUPP, rig.ctx.veventq_alloc, 999, 0, 0)
    expect_errno(errno.EINVAL, rig.ctx.veventq_alloc, 999, VQ, 0)
    expect_errno(errno.ENOENT, rig.ctx.veventq_alloc, 999, VQ, 1)
    rig.ctx.veventq_alloc(v, VQ, 1)
    expect_errno(errno.EEXIST, rig.ctx.veventq_alloc, v, VQ, 8)
    assert rig.ctx.veventq_alloc(v, 3, 1)  # another type may coexist


class VRig:
    """A vDEVICE (vRID ``VRID``) whose vPASID ``VPASID`` is the host's ``PPASID``,
    attached to a nested HWPT on a VUSER_VTD vIOMMU, with a vEVENTQ and a fault queue."""

    def __init__(self, depth: int = 4) -> None:
        self.rig = rig = Rig()
        ctx = rig.ctx
        self.tables, self.data = bytearray(TABLES_SIZE), bytearray(DATA_SIZE)
        ctx.ioas_map(rig.ioas, self.tables, TABLES_SIZE, TABLES_GPA)
        ctx.ioas_map(rig.ioas, self.data, DATA_SIZE, DATA_GPA)
        self.parent = ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST | PASIDF)
        self.viommu = ctx.viommu_alloc(rig.dev_id, self.parent, VUSER)
        self.vdev = ctx.vdevice_alloc(self.viommu, rig.dev_id, VRID)
        self.veventq = ctx.veventq_alloc(self.viommu, VQ, depth)
        self.fault_id = ctx.fault_queue_alloc()
        self.pt = PageTableBuilder(memoryview(self.tables), base=TABLES_GPA, levels=4)
        self.s1 = ctx.hwpt_alloc(rig.dev_id, self.viommu, PASIDF | FAULTF,
                                 int(HwptDataType.VTD_S1),
                                 {"flags": 0, "pgtbl_addr": self.pt.root, "addr_width": 48},
                                 fault_id=self.fault_id)
        ctx.device_attach(rig.dev_id, self.parent)        # the RID: PASID-compatible
        ctx.device_attach(rig.dev_id, self.s1, PPASID)     # the host's PASID
        ctx.device_pasid_map(rig.dev_id, VPASID, PPASID)   # the guest calls it VPASID

    def events(self) -> list[tuple[int, int, IommuVeventVuserVtd | None]]:
        raw = self.rig.ctx.veventq_read(self.veventq, 1 << 16)
        out = []
        while raw:
            h = VeventHeader.unpack(raw[:VeventHeader.SIZE])
            raw = raw[VeventHeader.SIZE:]
            body = None
            if not h.flags & VeventqFlags.LOST_EVENTS:
                body = IommuVeventVuserVtd.unpack(raw[:IommuVeventVuserVtd.SIZE])
                raw = raw[IommuVeventVuserVtd.SIZE:]
            out.append((h.flags, h.sequence, body))
        return out


def test_E2_veventq_overflow_reports_lost_events() -> None:
    v = VRig(depth=2)
    for i in range(5):  # five stage-1 faults, room for two
        assert isinstance(v.rig.ctx.translate(v.rig.dev_id, PPASID, i * P, 8, 1), Fault)
    ev = v.events()
    assert [(f, s) for f, s, _b in ev] == [(0, 0), (0, 1), (int(VeventqFlags.LOST_EVENTS), 4)]
    v.rig.ctx.translate(v.rig.dev_id, PPASID, 0, 8, 1)
    assert [(f, s) for f, s, _b in v.events()] == [(0, 5)]  # room again; sequence goes on


def test_E3_veventq_reads_whole_records_only() -> None:
    v = VRig()
    v.rig.ctx.translate(v.rig.dev_id, PPASID, 0, 8, 1)
    v.rig.ctx.translate(v.rig.dev_id, PPASID, P, 8, 1)
    rec = VeventHeader.SIZE + IommuVeventVuserVtd.SIZE
    assert v.rig.ctx.veventq_read(v.veventq, rec - 1) == b""  # does not fit: stays queued
    assert len(v.rig.ctx.veventq_read(v.veventq, rec + rec - 1)) == rec
    assert len(v.rig.ctx.veventq_read(v.veventq, 4096)) == rec
    assert v.rig.ctx.veventq_read(v.veventq, 4096) == b""


def test_E4_viommu_invalidation_by_vrid_and_vpasid() -> None:
    v = VRig()
    ctx, dev_id = v.rig.ctx, v.rig.dev_id
    heard: list[tuple[int | None, int, int]] = []
    v.rig.dev.devtlb_invalidate = lambda p, a, n: heard.append((p, a, n))
    v.pt.map(0, DATA_GPA, P)
    assert ctx.translate(dev_id, PPASID, 0, 8, 1)[0].gpa == DATA_GPA
    v.pt.unmap(0)
    assert not isinstance(ctx.translate(dev_id, PPASID, 0, 8, 1), Fault)  # still cached
    fields = {"virt_id": VRID, "addr": 0, "npages": 1, "pasid": VPASID, "flags": 2,
              "reserved": 0}
    ent = IommuViommuVuserVtdInvalidate(**fields)
    assert ctx.hwpt_invalidate(v.viommu, [ent.pack()], VINV) == 1
    assert heard == [(PPASID, 0, 1)]  # the device hears its own (physical) PASID
    assert isinstance(ctx.translate(dev_id, PPASID, 0, 8, 1), Fault)
    e = expect_errno(errno.ENOENT, ctx.hwpt_invalidate, v.viommu,
                     [ent.pack(), {**fields, "virt_id": 0x43}], VINV)
    assert e.processed == 1
    expect_errno(errno.EOPNOTSUPP, ctx.hwpt_invalidate, v.viommu,
                 [{**fields, "flags": 4}], VINV)
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, v.viommu, [], int(HwptInvalidateDataType.VTD_S1))


def test_E5_fault_and_page_request_carry_the_vpasid() -> None:
    v = VRig()
    ctx, dev_id = v.rig.ctx, v.rig.dev_id
    f = ctx.translate(dev_id, PPASID, 0x5000, 8, int(Access.WRITE))
    assert isinstance(f, Fault) and f.stage == Stage.S1 and f.pasid == VPASID
    [(flags, seq, body)] = v.events()
    assert (flags, seq) == (0, 0)
    assert (body.virt_id, body.pasid, body.addr, body.flags) == (VRID, VPASID, 0x5000, 1)
    assert body.perm == int(Access.WRITE) and body.reason == int(f.reason)
    assert v.rig.dev.page_request(PPASID, 0x5000, 2, 1, True)
    [rec] = ctx.fault_read(v.fault_id)
    assert rec.pasid == VPASID


def test_E6_stage2_faults_stay_with_the_host() -> None:
    v = VRig()
    v.pt.map(0, DATA_GPA + DATA_SIZE + 16 * P, P)  # a GPA the host did not map
    f = v.rig.ctx.translate(v.rig.dev_id, PPASID, 0, 8, 1)
    assert isinstance(f, Fault) and f.stage == Stage.S2
    assert v.events() == []
