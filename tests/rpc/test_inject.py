"""Fault injection: the model's inject hook, rules over RPC, stage-2 holes."""

from __future__ import annotations

import errno

import pytest

from rpc_helpers import DATA_GPA, DATA_IOVA, PASID, P, Harness
from vuser.iommu import Fault, FaultKind, IommufdError, Stage
from vuser.iommu.inject import FaultInjector
from vuser.iommu.uapi import ALL_PASIDS
from vuser.rpc import Client


def test_next_n_translations_fault_then_recover(harness: Harness) -> None:
    inj = FaultInjector(harness.ctx)
    seen: list[Fault] = []
    harness.ctx.add_fault_observer(seen.append)
    harness.dma_read(DATA_IOVA)  # cached: injection must still win over the IOTLB
    harness.ctx.stats_reset()
    inj.add(0x10, PASID, DATA_IOVA, 2 * P, count=2)
    for _ in range(2):
        f = harness.dma_read(DATA_IOVA + 8)
        assert isinstance(f, Fault)
        assert (f.reason, f.stage, f.label, f.pasid, f.iova) == (
            FaultKind.PAGING_ENTRY_INV, Stage.S1, 0x10, PASID, DATA_IOVA + 8)
    assert not isinstance(harness.dma_read(DATA_IOVA + 8), Fault)  # count used up
    assert inj.rules() == [] and harness.ctx._inject is None  # hook removed: no cost
    s = harness.ctx.stats()
    assert (s["faults"], s["translations"]) == (2, 3)
    assert len(seen) == 2


def test_rule_matching(harness: Harness) -> None:
    ctx = harness.ctx
    inj = FaultInjector(ctx)
    inj.add(0x10, PASID, DATA_IOVA + 4 * P, P, count=5, reason=0x06, stage=2)
    assert not isinstance(harness.dma_read(DATA_IOVA), Fault)             # outside the range
    rid = harness.dma_read(DATA_IOVA + 4 * P, pasid=None)  # the RID: not the rule's PASID
    assert isinstance(rid, Fault) and rid.reason == 0x07    # (a real fault: not mapped there)
    f = harness.dma_read(DATA_IOVA + 3 * P + 4090, 16)                    # overlaps the range
    assert isinstance(f, Fault) and f.stage == Stage.S2 and f.reason == 0x06
    assert f.iova == DATA_IOVA + 4 * P
    inj.clear()
    # The rule names the guest's PASID: with vPASID 9 -> pPASID 7 it matches PASID 7 DMA.
    ctx.device_pasid_map(harness.dev_id, 9, PASID)
    inj.add(0x10, 9, DATA_IOVA, P)
    f = harness.dma_read(DATA_IOVA)
    assert isinstance(f, Fault) and f.pasid == 9
    inj.add(0x10, ALL_PASIDS, 0, 1 << 40, count=2)
    assert isinstance(harness.dma_read(0x40_0000, pasid=None), Fault)
    assert isinstance(harness.dma_read(DATA_IOVA), Fault)
    assert inj.rules() == []


@pytest.mark.parametrize("kw, err", [
    ({"label": 0x99}, errno.ENOENT),
    ({"count": 0}, errno.EINVAL),
    ({"length": 0}, errno.EINVAL),
    ({"pasid": 1 << 20}, errno.EINVAL),
    ({"reason": 0x4242}, errno.EINVAL),
    ({"stage": 3}, errno.EINVAL),
    ({"iova": -1}, errno.EINVAL),
])
def test_bad_rules(harness: Harness, kw: dict[str, int], err: int) -> None:
    args = {"label": 0x10, "pasid": PASID, "iova": 0, "length": P, "count": 1}
    args.update(kw)
    with pytest.raises(IommufdError) as ei:
        FaultInjector(harness.ctx).add(**args)
    assert ei.value.errno == err


async def test_inject_over_rpc_reaches_subscribers(harness: Harness, client: Client) -> None:
    await client.subscribe(["fault"])
    rule = await client.inject_fault(0x10, PASID, DATA_IOVA, P, 1, 0x07, 1)
    assert (await client.inject_list())[0]["id"] == rule
    assert isinstance(harness.dma_read(DATA_IOVA), Fault)
    topic, f = await client.next_notification(timeout=5)
    assert topic == "fault" and f["iova"] == DATA_IOVA
    assert await client.inject_list() == []


def test_s2_hole_under_running_dma(harness: Harness) -> None:
    svc = harness.service
    harness.ram[DATA_GPA + 2 * P:DATA_GPA + 3 * P] = b"\x77" * P
    assert not isinstance(harness.dma_read(DATA_IOVA + 2 * P), Fault)   # cached
    areas_before = harness.ctx.ioas_areas(harness.ioas)
    hole = svc.holes.unmap(harness.ioas, DATA_GPA + 2 * P, P)
    # The cached translation is gone with the unmap: the DMA now faults at stage 2.
    f = harness.dma_read(DATA_IOVA + 2 * P)
    assert isinstance(f, Fault) and f.stage == Stage.S2 and f.gpa == DATA_GPA + 2 * P
    # Its neighbours (and the stage-1 tables) still translate to the same memory.
    assert harness.dma_read(DATA_IOVA + P, 4) == bytes(4)
    assert harness.dev.write(PASID, DATA_IOVA + 3 * P, b"ok") is None
    assert harness.ram[DATA_GPA + 3 * P:DATA_GPA + 3 * P + 2] == b"ok"
    assert len(harness.ctx.ioas_areas(harness.ioas)) == len(areas_before) + 1
    svc.holes.restore(hole.id)
    assert harness.dma_read(DATA_IOVA + 2 * P, 4) == b"\x77" * 4       # same pages back
    assert svc.holes.holes() == []


def test_s2_hole_errors(harness: Harness) -> None:
    holes = harness.service.holes
    before = harness.ctx.ioas_areas(harness.ioas)
    for args, err in (((harness.ioas, DATA_GPA + 1, P), errno.EINVAL),
                      ((harness.ioas, 1 << 40, P), errno.ENOENT),
                      ((harness.ioas, 8 << 20, 2 * P), errno.ENOENT),   # runs past RAM
                      ((999, 0, P), errno.ENOENT)):
        with pytest.raises(IommufdError) as ei:
            holes.unmap(*args)
        assert ei.value.errno == err
    assert harness.ctx.ioas_areas(harness.ioas) == before
    assert [o["type"] for o in harness.ctx.objects()].count("ioas") == 1  # no scratch left
    hole = holes.unmap(harness.ioas, DATA_GPA, P)
    harness.ctx.ioas_map(harness.ioas, bytearray(P), P, DATA_GPA)  # someone maps it meanwhile
    with pytest.raises(IommufdError) as ei:
        holes.restore(hole.id)
    assert ei.value.errno == errno.EEXIST


@pytest.mark.parametrize("reason", ["FS_P", "0x71", 0x71, "PAGING_ENTRY_INV", 7])
def test_rule_reason_by_name_or_code_of_either_vocabulary(harness: Harness,
                                                          reason: int | str) -> None:
    FaultInjector(harness.ctx).add(0x10, PASID, DATA_IOVA, P, reason=reason)
    f = harness.dma_read(DATA_IOVA)
    assert isinstance(f, Fault) and f.reason == FaultKind.PAGING_ENTRY_INV
    assert f.vtd_reason == 0x71


@pytest.mark.parametrize("reason", ["NOPE", "", True, 1.5])
def test_rule_reason_refused(harness: Harness, reason: object) -> None:
    with pytest.raises(IommufdError) as ei:
        FaultInjector(harness.ctx).add(0x10, PASID, DATA_IOVA, P, reason=reason)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL
