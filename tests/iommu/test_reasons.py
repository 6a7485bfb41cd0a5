"""The two fault vocabularies (model ``FaultKind``, VT-d ``VtdFaultReason``),
the one table between them, and ``Fault``'s stage-independent addresses."""

from __future__ import annotations

import pytest

from iommu_helpers import P, NestedRig
from vuser.iommu import (
    Access, Fault, FaultKind, Stage, TraceEvent, VtdFaultReason, parse_reason, reason_text,
    vtd_reason,
)
from vuser.iommu.pagetable.reasons import VTD_REASONS

K, V = FaultKind, VtdFaultReason


@pytest.mark.parametrize("kind, stage, fetch, want", [
    (K.PAGING_ENTRY_INV, Stage.S1, False, 0x71),
    (K.PAGING_ENTRY_RSVD, Stage.S1, False, 0x72),
    (K.WRITE, Stage.S1, False, 0x85),
    (K.READ, Stage.S1, False, 0x06),
    (K.ADDR_BEYOND_MGAW, Stage.S1, False, 0x04),
    (K.FS_NON_CANONICAL, Stage.S1, False, 0x80),
    (K.FS_PRIV_VIOLATION, Stage.S1, False, 0x81),
    (K.PAGING_ENTRY_INV, Stage.S2, True, 0x70),     # table pointer outside guest RAM
    (K.FS_BIT_UPDATE_FAILED, Stage.S2, True, 0x91),
    (K.PAGING_ENTRY_INV, Stage.S2, False, None),    # the final GPA: the host's fault
    (K.WRITE, Stage.S2, False, None),
    (K.PASID_ENTRY_P, Stage.BLOCKED, False, 0x59),
    (K.CONTEXT_ENTRY_P, Stage.BLOCKED, False, 0x02),  # no scalable-mode code: kept
])
def test_one_table_maps_model_kinds_to_vtd_reasons(kind: FaultKind, stage: Stage, fetch: bool,
                                                   want: int | None) -> None:
    assert vtd_reason(kind, stage, fetch) == want
    assert Fault(kind, stage, 0x1000, Access.READ, s1_fetch=fetch).vtd_reason == want


def test_the_table_speaks_both_vocabularies() -> None:
    assert all(isinstance(k, FaultKind) and isinstance(v, VtdFaultReason)
               for (k, _s, _f), v in VTD_REASONS.items())


@pytest.mark.parametrize("text", ["PAGING_ENTRY_INV", "paging_entry_inv", "7", "0x07",
                                  "FS_P", "0x71", "113", 0x71, 7])
def test_parse_reason_takes_either_name_or_code(text: str | int) -> None:
    assert parse_reason(text) is FaultKind.PAGING_ENTRY_INV


def test_parse_reason_of_other_vtd_codes() -> None:
    assert parse_reason("SM_WRITE") is FaultKind.WRITE
    assert parse_reason("0x72") is FaultKind.PAGING_ENTRY_RSVD
    assert parse_reason("PASID_P") is FaultKind.PASID_ENTRY_P


@pytest.mark.parametrize("text", ["NOPE", "0x4242", "", "0x70", "ROOT_P"])
def test_parse_reason_refuses_what_no_vocabulary_has(text: str) -> None:
    # 0x70 and ROOT_P are VT-d reasons, but no first-stage model fault records them.
    with pytest.raises(ValueError, match="unknown fault reason"):
        parse_reason(text)


def test_reason_text_leads_with_the_code_a_guest_sees() -> None:
    assert reason_text(0x07, 0x71) == "0x71 FS_P (PAGING_ENTRY_INV)"
    assert reason_text(0x07) == "PAGING_ENTRY_INV"
    assert reason_text(None) == "-"
    assert reason_text(0x4242) == "0x4242"


def test_fault_addresses_mean_the_same_at_every_stage() -> None:
    rig = NestedRig()
    seen: list[Fault] = []
    events: list[TraceEvent] = []
    rig.ctx.add_fault_observer(seen.append)
    rig.ctx.set_trace(events.append)
    rig.pt.map(0, 0x900000, P)                   # GPA not in stage 2
    rig.translate(0x5000)                        # stage 1
    rig.translate(0x10)                          # stage 2, final GPA
    s1, s2 = seen
    assert (s1.stage, s1.iova, s1.gpa, s1.vtd_reason) == (Stage.S1, 0x5000, None, 0x71)
    assert (s2.stage, s2.iova, s2.gpa, s2.vtd_reason) == (Stage.S2, 0x10, 0x900010, None)
    assert s1.to_dict()["vtd_reason"] == 0x71 and s1.to_dict()["iova"] == 0x5000
    faults = [e for e in events if e.kind == "fault"]
    assert [(e.iova, e.gpa, e.fault, e.vtd) for e in faults] == [
        (0x5000, None, 0x07, 0x71), (0x10, 0x900010, 0x07, None)]
    assert faults[0].to_dict()["vtd"] == 0x71
