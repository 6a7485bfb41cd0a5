"""What a walk or a translation produces: ``Translation`` or ``Fault``.

Walkers and the DMA path never raise on guest-caused problems; they return a
``Fault`` carrying the model's ``FaultKind`` (``reasons``: the kinds, the
VT-d scalable-mode reasons and the table between them). ``Stage`` says which
stage faulted, and hence who gets told: stage-1 faults go to the guest,
stage-2 faults (including a stage-2 fault met while fetching a stage-1 table,
``s1_fetch``) go to the host
(docs/architecture.md "The model", faults).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from .addresses import Gpa, Iova
from .reasons import FaultKind, Stage, reason_text, vtd_reason

__all__ = ["Access", "Fault", "FaultKind", "Stage", "Translation"]


class Access(enum.IntFlag):
    """A DMA request's attributes; the values are iommufd's fault ``perm``."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


@dataclass(frozen=True, slots=True)
class Fault:
    """A failed translation. Never raised: returned.

    Addresses mean the same at every stage: ``iova`` is the DMA request's
    IOVA (None only for a bare stage-2 walk, which has no request); ``gpa`` is
    the guest-physical address stage 2 faulted on (the final GPA, or the GPA
    of a first-stage table entry when ``s1_fetch``), None when the fault is
    not a stage-2 one. ``reason`` is a ``FaultKind``; ``vtd_reason`` is the
    scalable-mode code a vIOMMU records for it. ``pasid`` is the PASID as the
    guest knows it (the vPASID) once the model has filled in the device fields.
    """

    reason: int
    stage: Stage
    iova: Iova | None
    access: int = 0
    gpa: Gpa | None = None
    level: int = 0
    s1_fetch: bool = False
    pasid: int | None = None
    label: int | None = None
    dev_id: int | None = None
    #: Paging-entry reads the walk made before it faulted.
    reads: int = 0

    @property
    def vtd_reason(self) -> int | None:
        """The VT-d scalable-mode reason (``reasons.VTD_REASONS``); None: the host's."""
        return vtd_reason(self.reason, self.stage, self.s1_fetch)

    def with_(self, **changes: Any) -> Fault:
        return replace(self, **changes)

    def describe(self) -> str:
        """The reason as a user reads it: the VT-d code first, when there is one."""
        return reason_text(self.reason, self.vtd_reason)

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly form."""
        return {
            "reason": int(self.reason), "vtd_reason": self.vtd_reason,
            "stage": int(self.stage), "iova": self.iova, "gpa": self.gpa,
            "access": int(self.access), "level": self.level,
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
