"""The ioasid model: a pure-Python model of /dev/ioasid as it became iommufd.

See architecture.md §3 and iommu-notes.md. The public surface:

- ``IommuRegistry`` / ``IommuDevice`` / ``IommuGroup``: what device models
  register, and the DMA API they call (``IommuDevice.translate`` ...);
- ``IoasidContext``: the iommufd file, with the iommufd commands as methods;
- ``Segment``, ``Fault``, ``FaultReason``, ``Stage``, ``Access``: DMA results;
- ``IommufdError``: a command's errno;
- ``vuser.iommu.uapi``: flags, data layouts and result values;
- ``vuser.iommu.pagetable``: VT-d formats, walkers and a table builder.
"""

from .context import IoasidContext
from .dma import AtsTranslation, Segment, TraceEvent
from .errors import IommufdError
from .pagetable.results import Access, Fault, FaultReason, Stage, Translation
from .registry import IommuDevice, IommuGroup, IommuRegistry

__all__ = [
    "Access", "AtsTranslation", "Fault", "FaultReason", "IoasidContext", "IommufdError",
    "IommuDevice", "IommuGroup", "IommuRegistry", "Segment", "Stage", "TraceEvent",
    "Translation",
]
