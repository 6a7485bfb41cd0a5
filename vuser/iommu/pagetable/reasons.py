"""The two fault vocabularies and the one table between them.

- ``FaultKind``: what went wrong in the model's translation. Its values are
  the VT-d legacy-mode fault reasons where one fits (VT-d spec, Appendix A,
  non-scalable-mode conditions) and are what ``Fault.reason`` holds.
- ``VtdFaultReason``: the VT-d scalable-mode fault reasons (FRCD.FR, Appendix A)
  that an emulated vIOMMU records and a guest driver prints ("reason 0x71").

``VTD_REASONS`` maps a model fault to the scalable-mode reason a vIOMMU
records for it; ``vtd_reason`` applies it to a ``Fault``, ``reason_text``
shows both, and ``parse_reason`` reads either name or code back into a
``FaultKind`` (``vuser ctl inject --reason``).
"""

from __future__ import annotations

import enum


class Stage(enum.IntEnum):
    """Which translation stage answered or faulted."""

    BLOCKED = 0  # no translation at all: unbound, detached or blocking
    S1 = 1       # first stage (guest IOVA -> GPA)
    S2 = 2       # second stage (GPA -> host memory)
    IOTLB = 3    # answered from the IOTLB (trace only)


class FaultKind(enum.IntEnum):
    """The model's fault kinds (``Fault.reason``), numbered as VT-d legacy reasons."""

    #: DMA from a device whose RID has nothing attached (blocking domain).
    CONTEXT_ENTRY_P = 0x02
    #: Input address above the second-stage address width (MGAW).
    ADDR_BEYOND_MGAW = 0x04
    #: Write to a page whose entry (either stage) forbids writes.
    WRITE = 0x05
    #: Read (or execute, for which the model has no finer code) denied.
    READ = 0x06
    #: Paging entry not present / not accessible.
    PAGING_ENTRY_INV = 0x07
    #: A set reserved bit in a present paging entry.
    PAGING_ENTRY_RSVD = 0x0C
    #: PASID-tagged DMA for a PASID with nothing attached.
    PASID_ENTRY_P = 0x59
    #: First-stage input address not canonical.
    FS_NON_CANONICAL = 0x80
    #: First-stage privilege (U/S or SRE) violation.
    FS_PRIV_VIOLATION = 0x81
    #: Setting an accessed/dirty flag failed (stage 2 forbids the write).
    FS_BIT_UPDATE_FAILED = 0x91


class VtdFaultReason(enum.IntEnum):
    """VT-d scalable-mode fault reasons (FRCD.FR; VT-d spec Appendix A)."""

    ADDR_BEYOND_MGAW = 0x04          # LGN.1 (reported as by the model)
    READ = 0x06                      # read/execute denied (model's code)
    RTADDR_INV_TTM = 0x31            # RTA.2: TTM is not scalable mode
    ROOT_ACCESS = 0x38               # SRT.1: root table not readable
    ROOT_P = 0x39                    # SRT.2: root entry LP/UP clear
    ROOT_RSVD = 0x3A                 # SRT.3: reserved bits in the root entry
    CONTEXT_ACCESS = 0x40            # SCT.1
    CONTEXT_P = 0x41                 # SCT.2
    CONTEXT_RSVD = 0x42              # SCT.3
    PRE_CLEAR = 0x47                 # SCT.8: page request with PRE = 0
    PASID_DIR_ACCESS = 0x50          # SPD.1
    PASID_DIR_P = 0x51               # SPD.2
    PASID_DIR_RSVD = 0x52            # SPD.3
    PASID_ACCESS = 0x58              # SPT.1
    PASID_P = 0x59                   # SPT.2
    PASID_RSVD = 0x5A                # SPT.3
    PASID_INVALID = 0x5B             # SPT.4: bad PGTT, paging mode ...
    FS_ACCESS = 0x70                 # SFL.1: first-stage table not readable
    FS_P = 0x71                      # SFL.2: first-stage entry not present
    FS_RSVD = 0x72                   # SFL.3: reserved bit in a first-stage entry
    FS_NON_CANONICAL = 0x80          # SGN.1
    FS_PRIV = 0x81                   # SGN.2: U/S or SRE violation
    SM_WRITE = 0x85                  # SGN.6: write to a read-only page
    FS_AD_UPDATE = 0x91              # SFL.10: accessed/dirty update failed


K, V = FaultKind, VtdFaultReason
#: ``(kind, stage, s1_fetch)`` -> the scalable-mode reason a vIOMMU records;
#: a stage-2 fault on the final GPA is the host's, not the guest's, and has
#: none (``vtd_reason`` gives None). A blocked RID (``CONTEXT_ENTRY_P``) has no
#: scalable-mode code of its own: a vIOMMU walks its tables for the reason, and
#: records the model's 0x02 when they give none.
VTD_REASONS: dict[tuple[FaultKind, Stage, bool], VtdFaultReason] = {
    (K.PASID_ENTRY_P, Stage.BLOCKED, False): V.PASID_P,
    (K.ADDR_BEYOND_MGAW, Stage.S1, False): V.ADDR_BEYOND_MGAW,
    (K.FS_NON_CANONICAL, Stage.S1, False): V.FS_NON_CANONICAL,
    (K.PAGING_ENTRY_INV, Stage.S1, False): V.FS_P,
    (K.PAGING_ENTRY_RSVD, Stage.S1, False): V.FS_RSVD,
    (K.WRITE, Stage.S1, False): V.SM_WRITE,
    (K.READ, Stage.S1, False): V.READ,
    (K.FS_PRIV_VIOLATION, Stage.S1, False): V.FS_PRIV,
    (K.PAGING_ENTRY_INV, Stage.S2, True): V.FS_ACCESS,
    (K.PAGING_ENTRY_RSVD, Stage.S2, True): V.FS_ACCESS,
    (K.ADDR_BEYOND_MGAW, Stage.S2, True): V.FS_ACCESS,
    (K.READ, Stage.S2, True): V.FS_ACCESS,
    (K.WRITE, Stage.S2, True): V.FS_ACCESS,
    (K.FS_BIT_UPDATE_FAILED, Stage.S2, True): V.FS_AD_UPDATE,
    (K.FS_BIT_UPDATE_FAILED, Stage.S2, False): V.FS_AD_UPDATE,
}
del K, V


def vtd_reason(kind: int, stage: int, s1_fetch: bool) -> int | None:
    """The scalable-mode reason for a model fault (``VTD_REASONS``); None if it
    is the host's. Any other stage-1 fetch fault is FS_ACCESS; any other
    guest-side combination keeps the model's code."""
    vtd = VTD_REASONS.get((kind, stage, s1_fetch))  # type: ignore[call-overload]
    if vtd is not None:
        return int(vtd)
    if stage == Stage.S2:
        return int(VtdFaultReason.FS_ACCESS) if s1_fetch else None
    return int(kind)


def reason_text(kind: int | None, vtd: int | None = None) -> str:
    """``kind`` by name, led by the VT-d code a guest sees when there is one:
    ``0x71 FS_P (PAGING_ENTRY_INV)``."""
    if kind is None:
        return "-"
    name = _name(FaultKind, kind)
    if vtd is None:
        return name
    return f"{vtd:#04x} {_name(VtdFaultReason, vtd)} ({name})"


def _name(enum_cls: type[enum.IntEnum], code: int) -> str:
    try:
        return enum_cls(code).name
    except ValueError:
        return f"{code:#x}"


def parse_reason(text: str | int) -> FaultKind:
    """A ``FaultKind`` from its name or code, or from a scalable-mode reason's
    name or code (the first-stage kind that a vIOMMU records under it).
    ``ValueError`` if neither vocabulary has it."""
    if isinstance(text, int):
        code: int | None = text
    else:
        t = text.strip()
        up = t.upper()
        if up in FaultKind.__members__:
            return FaultKind[up]
        if up in VtdFaultReason.__members__:
            code = VtdFaultReason[up]
        else:
            try:
                code = int(t, 0)
            except ValueError:
                code = None
    if code is not None:
        if code in FaultKind._value2member_map_:
            return FaultKind(code)
        for (kind, stage, fetch), vtd in VTD_REASONS.items():
            if vtd == code and stage != Stage.S2 and not fetch:
                return kind
    raise ValueError(f"unknown fault reason {text!r}: a name or code of "
                     f"{', '.join(FaultKind.__members__)} or of a VT-d scalable-mode reason "
                     "a first-stage fault records")
