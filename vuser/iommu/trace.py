"""``TraceEvent``: one record of what the model did (a translation, a fault,
an invalidation), handed to the context's trace hook (``set_trace``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .pagetable.addresses import Gpa, Iova


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One trace record (``kind``: "translate", "fault" or "invalidate").

    ``stage`` is what answered: ``Stage.IOTLB`` on a hit, ``S1`` for a nested
    walk, ``S2`` for a stage-2-only lookup, the faulting stage on a fault.
    ``count`` is the number of IOTLB entries an invalidation dropped.
    A fault's ``fault`` is its ``FaultKind`` and ``vtd`` the VT-d scalable-mode
    reason a vIOMMU records for it (None: the host's), so a guest's "reason
    0x71" is found in a trace by that code.
    Emulated IOMMUs add their own kinds through ``trace_note`` (vuser-iommu:
    its invalidation descriptors, page requests and responses), with what
    they are in ``info``.
    """

    time: float
    kind: str
    label: int | None
    pasid: int | None
    iova: Iova
    gpa: Gpa | None
    stage: int
    hit: bool
    fault: int | None = None
    count: int = 0
    length: int = 0
    info: dict[str, Any] | None = None
    vtd: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "label": self.label, "pasid": self.pasid,
                "iova": self.iova, "gpa": self.gpa, "stage": int(self.stage), "hit": self.hit,
                "fault": self.fault, "count": self.count, "length": self.length,
                "info": self.info, "vtd": self.vtd}


TraceHook = Callable[[TraceEvent], None]
