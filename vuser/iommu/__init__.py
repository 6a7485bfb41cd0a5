"""The ioasid model: a pure-Python model of /dev/ioasid as it became iommufd.

See docs/architecture.md ("The model") and docs/iommufd-fidelity.md. The
public surface (``__all__``):

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
from .dma import AtsTranslation, Segment
from .errors import IommufdError
from .inject import FaultInjector
from .io_pagetable import check_range
from .ioas import DEFAULT_PROT
from .pagetable.addresses import Gpa, HostOffset, Iova
from .pagetable.formats import FIRST_STAGE_LEVELS
from .pagetable.reasons import VtdFaultReason, parse_reason, reason_text, vtd_reason
from .pagetable.results import Access, Fault, FaultKind, Stage, Translation
from .registry import IommuDevice, IommuGroup, IommuRegistry
from .trace import TraceEvent
from .uapi import (
    DirtyBitmapFlags, FaultPerm, HwInfoType, HwptAllocFlags, HwptDataType,
    HwptInvalidateDataType, IoasMapFlags, OptionId, OptionOp, PageResponseCode,
    VeventqType, ViommuType,
)

__all__ = [
    "Access", "AtsTranslation", "Fault", "FaultKind", "Gpa", "HostOffset", "IoasidContext",
    "IommufdError", "IommuDevice", "IommuGroup", "IommuRegistry", "Iova", "Segment", "Stage",
    "TraceEvent", "Translation", "VtdFaultReason", "parse_reason", "reason_text", "vtd_reason",
    # for the control RPC, which sees the model through this list only
    "DEFAULT_PROT", "FIRST_STAGE_LEVELS", "FaultInjector", "IoasMapFlags", "check_range",
    # the uAPI's flag and enum types, whose names the control RPC accepts
    "DirtyBitmapFlags", "FaultPerm", "HwInfoType", "HwptAllocFlags", "HwptDataType",
    "HwptInvalidateDataType", "OptionId", "OptionOp", "PageResponseCode", "VeventqType",
    "ViommuType",
]
