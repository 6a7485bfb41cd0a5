"""The ioasid model: a pure-Python model of /dev/ioasid as it became iommufd.

See architecture.md §3 and iommu-notes.md. The public surface:

- ``IommuRegistry`` / ``IommuDevice`` / ``IommuGroup``: what device models
  register, and the DMA API they call (``IommuDevice.translate`` ...);
- ``IoasidContext``: the iommufd file, with the iommufd commands as methods;
- ``Segment``, ``Fault``, ``Stage``, ``Access``: DMA results;
- ``FaultKind`` (the model's fault kinds, ``Fault.reason``) and
  ``VtdFaultReason`` (the VT-d scalable-mode reasons a vIOMMU records), with
  ``vtd_reason``/``reason_text``/``parse_reason`` between them;
- ``Iova``, ``Gpa``, ``HostOffset``: address types (``typing.NewType``);
- ``IommufdError``: a command's errno;
- ``vuser.iommu.uapi``: flags, data layouts and result values;
- ``vuser.iommu.pagetable``: VT-d formats, walkers and a table builder.
"""

from .context import IoasidContext
from .dma import AtsTranslation, Segment, TraceEvent
from .errors import IommufdError
from .pagetable.addresses import Gpa, HostOffset, Iova
from .pagetable.reasons import VtdFaultReason, parse_reason, reason_text, vtd_reason
from .pagetable.results import Access, Fault, FaultKind, Stage, Translation
from .registry import IommuDevice, IommuGroup, IommuRegistry

__all__ = [
    "Access", "AtsTranslation", "Fault", "FaultKind", "Gpa", "HostOffset", "IoasidContext",
    "IommufdError", "IommuDevice", "IommuGroup", "IommuRegistry", "Iova", "Segment", "Stage",
    "TraceEvent", "Translation", "VtdFaultReason", "parse_reason", "reason_text", "vtd_reason",
]
