"""IOMMU_GET_HW_INFO: what the model's (VT-d) IOMMU reports for a device.

The VT-d data is ``{flags, cap_reg, ecap_reg}`` (struct iommu_hw_info_vtd).
CAP/ECAP advertise exactly what ``hwpt_alloc`` and attach accept: scalable
mode, first- and second-stage translation, nesting, a 4- or 5-level first
stage (FS5LP) with 1 GiB pages, SRE (SRS), the extended access flag (EAFS),
second-stage A/D (SSADS) only for a device that can track dirty pages, and
PASID/PRS/DT according to the device. Departure: the model reports one IOMMU
per device, so ECAP's PASID, PSS, PRS, DT and SSADS follow that device
(docs/iommufd-fidelity.md).

``out_capabilities`` follow ``iommufd_get_hw_info``: DIRTY_TRACKING, the PCI
PASID EXEC/PRIV bits only when the device's PASID capability enables them
(vuser-dma's does not), and ATS_NOT_SUPPORTED without ATS.
"""

from __future__ import annotations

import errno

from vuser.wire import BitLayout, Bits

from .device import get_device
from .core import ContextCore
from .errors import fail
from .uapi import HwCapabilities, HwInfo, HwInfoType


class VtdCap(BitLayout, width=64):
    """VT-d CAP_REG (VT-d §11.4.2); also the vIOMMU device's register."""

    ND = Bits(0, 2)          # number of domains: 6 = 64K
    AFL = Bits(3)
    RWBF = Bits(4)
    PLMR = Bits(5)
    PHMR = Bits(6)
    CM = Bits(7)             # caching mode: not-present entries may be cached
    SAGAW = Bits(8, 12)
    MGAW = Bits(16, 21)      # maximum guest address width - 1
    ZLR = Bits(22)
    FRO = Bits(24, 33)       # fault recording registers offset / 16
    SLLPS = Bits(34, 37)
    PSI = Bits(39)
    NFR = Bits(40, 47)       # number of fault recording registers - 1
    MAMV = Bits(48, 53)
    DWD = Bits(54)
    DRD = Bits(55)
    FS1GP = Bits(56)
    PI = Bits(59)
    FS5LP = Bits(60)
    ESIRTPS = Bits(62)
    ESRTPS = Bits(63)


class VtdEcap(BitLayout, width=64):
    """VT-d ECAP_REG (VT-d §11.4.3); also the vIOMMU device's register."""

    C = Bits(0)
    QI = Bits(1)
    DT = Bits(2)
    IR = Bits(3)
    EIM = Bits(4)
    PT = Bits(6)
    SC = Bits(7)
    IRO = Bits(8, 17)        # IOTLB registers offset / 16
    MHMV = Bits(20, 23)
    MTS = Bits(25)
    NEST = Bits(26)
    PRS = Bits(29)
    ERS = Bits(30)
    SRS = Bits(31)
    NWFS = Bits(33)
    EAFS = Bits(34)
    PSS = Bits(35, 39)       # PASID size - 1
    PASID = Bits(40)
    DIT = Bits(41)
    PDS = Bits(42)
    SMTS = Bits(43)
    VCS = Bits(44)
    SSADS = Bits(45)
    SSTS = Bits(46)          # second-stage translation support
    FSTS = Bits(47)          # first-stage translation support
    SMPWCS = Bits(48)
    RPS = Bits(49)


#: SAGAW bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level) second stage.
_SAGAW_48_57 = 0b01100
_MGAW_BITS = 57


def vtd_cap_ecap(pasid_width: int, ats: bool, pri: bool,
                 dirty_tracking: bool = True) -> tuple[int, int]:
    """The CAP and ECAP values the model reports for a device."""
    cap = VtdCap.pack(ND=2, SAGAW=_SAGAW_48_57, MGAW=_MGAW_BITS - 1, SLLPS=0b11, PSI=1, FS1GP=1,
                      FS5LP=1)
    ecap = VtdEcap.pack(
        QI=1, DT=int(ats), PT=1, SC=1, NEST=1, PRS=int(pri and pasid_width > 0), SRS=1,
        EAFS=1, PSS=max(pasid_width - 1, 0), PASID=int(pasid_width > 0), PDS=1, SMTS=1,
        SSADS=int(dirty_tracking), SSTS=1, FSTS=1)
    return cap, ecap


def get_hw_info(ctx: ContextCore, dev_id: int, in_data_type: int | None = None) -> HwInfo:
    """IOMMU_GET_HW_INFO: VT-d data, capabilities and max PASID width.

    ``in_data_type`` (IOMMU_HW_INFO_FLAG_INPUT_TYPE) asks for one data
    type: DEFAULT (0) or INTEL_VTD (1) give the VT-d data, any other is
    EOPNOTSUPP (``intel_iommu_hw_info``); the device is looked up first
    (ENOENT).
    """
    bd = get_device(ctx, dev_id)
    if in_data_type is not None and in_data_type not in (HwInfoType.NONE,
                                                         HwInfoType.INTEL_VTD):
        raise fail(errno.EOPNOTSUPP, f"hw_info type {in_data_type!r} is not VT-d")
    dev = bd.dev
    cap, ecap = vtd_cap_ecap(dev.pasid_width, dev.ats, dev.pri, dev.dirty_tracking)
    caps = HwCapabilities(0)
    if dev.dirty_tracking:
        caps |= HwCapabilities.DIRTY_TRACKING
    if dev.pasid_width and dev.pasid_exec:
        caps |= HwCapabilities.PCI_PASID_EXEC
    if dev.pasid_width and dev.pasid_priv:
        caps |= HwCapabilities.PCI_PASID_PRIV
    if not dev.ats:
        caps |= HwCapabilities.NO_ATS
    return HwInfo(int(HwInfoType.INTEL_VTD), {"flags": 0, "cap_reg": cap, "ecap_reg": ecap},
                  int(caps), dev.pasid_width)
