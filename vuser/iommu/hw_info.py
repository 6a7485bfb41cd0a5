"""IOMMU_GET_HW_INFO: what the model's (VT-d) IOMMU reports for a device.

The VT-d data is ``{flags, cap_reg, ecap_reg}`` (struct iommu_hw_info_vtd).
The model advertises scalable mode with first- and second-stage translation,
nesting, 4/5-level first stage with 1 GiB pages, and PASID/PRS/DT according to
the device (iommu-notes.md §3 "Capability bits").
"""

from __future__ import annotations

from vuser.wire import BitLayout, Bits

from .device import BoundDevice
from .objects import ObjectTable
from .uapi import HwCapabilities, HwInfo, HwInfoType


class VtdCap(BitLayout, width=64):
    """VT-d Capability Register (the fields the model sets)."""

    ND = Bits(0, 2)
    SAGAW = Bits(8, 12)
    MGAW = Bits(16, 21)
    SLLPS = Bits(34, 37)
    PSI = Bits(39)
    FS1GP = Bits(56)


class VtdEcap(BitLayout, width=64):
    """VT-d Extended Capability Register (the fields the model sets)."""

    QI = Bits(1)
    DT = Bits(2)
    PT = Bits(6)
    SC = Bits(7)
    NEST = Bits(26)
    PRS = Bits(29)
    SRS = Bits(31)
    PSS = Bits(35, 39)
    PASID = Bits(40)
    PDS = Bits(42)
    SMTS = Bits(43)
    SLTS = Bits(46)
    FLTS = Bits(47)


#: SAGAW bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level) second stage.
_SAGAW_48_57 = 0b01100
_MGAW_BITS = 57


def vtd_cap_ecap(pasid_width: int, ats: bool, pri: bool) -> tuple[int, int]:
    """The CAP and ECAP values the model reports for a device."""
    cap = VtdCap.pack(ND=2, SAGAW=_SAGAW_48_57, MGAW=_MGAW_BITS - 1, SLLPS=0b11, PSI=1, FS1GP=1)
    ecap = VtdEcap.pack(
        QI=1, DT=int(ats), PT=1, SC=1, NEST=1, PRS=int(pri and pasid_width > 0), SRS=1,
        PSS=max(pasid_width - 1, 0), PASID=int(pasid_width > 0), PDS=1, SMTS=1,
        SLTS=1, FLTS=1)
    return cap, ecap


class HwInfoCommands:
    """GET_HW_INFO of ``IoasidContext``."""

    _objects: ObjectTable

    def get_hw_info(self, dev_id: int) -> HwInfo:
        """IOMMU_GET_HW_INFO: VT-d data, capabilities and max PASID width."""
        bd = self._objects.get(dev_id, BoundDevice)
        dev = bd.dev
        cap, ecap = vtd_cap_ecap(dev.pasid_width, dev.ats, dev.pri)
        caps = HwCapabilities(0)
        if dev.dirty_tracking:
            caps |= HwCapabilities.DIRTY_TRACKING
        if dev.pasid_width:
            caps |= HwCapabilities.PCI_PASID_EXEC | HwCapabilities.PCI_PASID_PRIV
        if not dev.ats:
            caps |= HwCapabilities.NO_ATS
        return HwInfo(int(HwInfoType.INTEL_VTD), {"flags": 0, "cap_reg": cap, "ecap_reg": ecap},
                      int(caps), dev.pasid_width)
