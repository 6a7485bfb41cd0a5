"""What a walk or a translation produces: ``Translation`` or ``Fault``.

Walkers and the DMA path never raise on guest-caused problems; they return a
``Fault`` carrying the VT-d fault reason (VT-d §7.1, the FR field of
the fault recording register). ``Stage`` says which stage faulted, and hence
who gets told: stage-1 faults go to the guest, stage-2 faults (including a
stage-2 fault met while fetching a stage-1 table, ``s1_fetch``) go to the host
(docs/architecture.md "The model", faults).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any


class FaultReason(enum.IntEnum):
    """VT-d fault reason codes (FRCD.FR) used by the model."""

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


class Stage(enum.IntEnum):
    """Which translation stage answered or faulted."""

    BLOCKED = 0  # no translation at all: unbound, detached or blocking
    S1 = 1       # first stage (guest IOVA -> GPA)
    S2 = 2       # second stage (GPA -> host memory)
    IOTLB = 3    # answered from the IOTLB (trace only)


class Access(enum.IntFlag):
    """A DMA request's attributes; the values are iommufd's fault ``perm``."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


@dataclass(frozen=True, slots=True)
class Fault:
    """A failed translation. Never raised: returned.

    ``addr`` is the faulting address in the faulting stage's input space (the
    IOVA for stage 1, the GPA for stage 2, the table-entry GPA for a stage-2
    fault during a stage-1 fetch). ``iova`` is always the request's IOVA.
    ``pasid`` is the PASID as the guest knows it (the vPASID) once the model
    has filled in the device fields.
    """

    reason: int
    stage: Stage
    addr: int
    access: int = 0
    iova: int | None = None
    level: int = 0
    s1_fetch: bool = False
    pasid: int | None = None
    label: int | None = None
    dev_id: int | None = None
    #: Paging-entry reads the walk made before it faulted.
    reads: int = 0

    def with_(self, **changes: Any) -> Fault:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly form."""
        return {
            "reason": int(self.reason), "stage": int(self.stage), "addr": self.addr,
            "access": int(self.access), "iova": self.iova, "level": self.level,
            "s1_fetch": self.s1_fetch, "pasid": self.pasid, "label": self.label,
            "dev_id": self.dev_id, "reads": self.reads,
        }


@dataclass(slots=True)
class Translation:
    """A successful walk: ``size`` bytes at input ``iova`` map to ``output``.

    ``ok`` is a 16-bit set: bit ``a`` is set when an access with attributes
    ``a`` (an ``Access`` value) is allowed by this translation *as cached*; a
    write is only allowed once the leaf's dirty flag is set, so a write after a
    read-only walk walks again and sets D (VT-d §3.6, like x86 paging).
    ``reads``/``writes`` count the paging-entry memory accesses of the walk,
    stage-2 table reads included when stage 2 is made of real tables.
    """

    iova: int
    output: int
    size: int
    level: int
    ok: int
    reads: int = 0
    writes: int = 0
    dirty: bool = False
    path: list[int] = field(default_factory=list)
