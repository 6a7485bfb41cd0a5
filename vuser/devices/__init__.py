"""Guest-visible device models, by name (``vuser serve --device TYPE``).

``DEVICE_TYPES`` maps a type name to its class; the constructor takes keyword
options only (``TYPE@PATH,key=value`` on the command line passes strings).
"""

from __future__ import annotations

from .base import PciDevice
from .sample import SampleDevice
from .viommu import VIommuDevice
from .vuser_dma import VuserDma

__all__ = ["DEVICE_TYPES", "PciDevice", "SampleDevice", "VIommuDevice", "VuserDma"]

DEVICE_TYPES: dict[str, type[PciDevice]] = {
    "sample": SampleDevice,
    "vuser-dma": VuserDma,
    "vuser-iommu": VIommuDevice,
}
