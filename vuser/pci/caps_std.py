"""Standard capabilities: PM, MSI, MSI-X, PCI Express and vendor-specific.

Each is declared once (``caps.Capability``): layout with per-field RO/RW/RW1C
notes, reset values and masks. Placement is automatic (``CapabilityChain``).
"""

from __future__ import annotations

from vuser.errors import LocalProtocolError
from vuser.wire import BitLayout, Bits, Pad, Struct, u8, u16, u32

from .caps import Capability
from .config import ConfigSpace

__all__ = [
    "PowerManagement", "Msi", "MsiX", "PciExpress", "VendorSpecific",
    "PmLayout", "MsiLayout", "MsixLayout", "PcieLayout", "VendorLayout",
    "Pmc", "Pmcsr", "MsiControl", "MsixControl", "MsixTableReg", "PcieFlags", "DevCap2",
]


# -- Power Management (PCI Bus Power Management Interface 1.2 §3.2) --------

class PmLayout(Struct, size=8):
    cap_id: u8          # RO 0x01
    next: u8            # RO
    pmc: u16            # RO: Pmc
    pmcsr: u16          # RW PowerState; RO NoSoftReset
    pmcsr_bse: u8       # RO 0 (bridge support)
    data: u8            # RO 0


class Pmc(BitLayout, width=16):
    VERSION = Bits(0, 2)        # 011b: PM 1.2
    PME_CLOCK = Bits(3)
    DSI = Bits(5)
    AUX_CURRENT = Bits(6, 8)
    D1 = Bits(9)
    D2 = Bits(10)
    PME_SUPPORT = Bits(11, 15)


class Pmcsr(BitLayout, width=16):
    POWER_STATE = Bits(0, 1)    # RW: D0..D3hot
    NO_SOFT_RESET = Bits(3)     # RO
    PME_EN = Bits(8)            # RO 0 here: no PME support
    DATA_SELECT = Bits(9, 12)
    DATA_SCALE = Bits(13, 14)
    PME_STATUS = Bits(15)       # RO 0 here: no PME support


class PowerManagement(Capability):
    """PM capability: D0 and D3hot only, No_Soft_Reset set, no PME.

    A write of an unsupported state (D1, D2) completes and is discarded
    (PM 1.2 §5.4.1). The state has no effect on the device model.
    """

    NAME, ID, SPEC = "PM", 0x01, "PCI PM 1.2 §3.2; PCIe Base 6.0 §7.5.2"
    Layout = PmLayout

    def __init__(self) -> None:
        self._state = 0

    def values(self) -> dict[str, int]:
        return {"pmc": Pmc.pack(VERSION=3), "pmcsr": Pmcsr.pack(NO_SOFT_RESET=1)}

    def rw(self) -> dict[str, int]:
        return {"pmcsr": Pmcsr.POWER_STATE.mask}

    def on_write(self, config: ConfigSpace) -> None:
        pmcsr = self.read_field(config, "pmcsr")
        state = Pmcsr.POWER_STATE.get(pmcsr)
        if state in (1, 2):
            self.poke_field(config, "pmcsr", Pmcsr.POWER_STATE.put(pmcsr, self._state))
        else:
            self._state = state

    def on_reset(self, config: ConfigSpace) -> None:
        self._state = 0

    @property
    def power_state(self) -> int:
        return self._state


# -- MSI (PCI Local Bus 3.0 §6.8.1; PCIe Base 6.0 §7.7.1) -----------------

class MsiLayout(Struct, size=24):
    """64-bit address, per-vector masking variant."""

    cap_id: u8          # RO 0x05
    next: u8            # RO
    control: u16        # RW Enable, MME; RO MMC, 64-bit, PVM
    address_lo: u32     # RW bits 31..2
    address_hi: u32     # RW
    data: u16           # RW
    ext_data: u16       # RO 0 (extended message data not capable)
    mask: u32           # RW, one bit per supported vector
    pending: u32        # RO


class MsiControl(BitLayout, width=16):
    ENABLE = Bits(0)
    MMC = Bits(1, 3)            # multiple message capable (log2)
    MME = Bits(4, 6)            # multiple message enable (log2)
    ADDR64 = Bits(7)
    PVM = Bits(8)               # per-vector masking capable


class Msi(Capability):
    """MSI with 64-bit address and per-vector masking, ``vectors`` a power of two <= 32.

    QEMU emulates MSI itself; delivery goes through the eventfds of
    SET_IRQS index 1 (see irq.py), not through these registers.
    """

    NAME, ID, SPEC = "MSI", 0x05, "PCI Local Bus 3.0 §6.8.1; PCIe Base 6.0 §7.7.1"
    Layout = MsiLayout

    def __init__(self, vectors: int = 1) -> None:
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise LocalProtocolError(f"MSI vectors must be a power of two <= 32, not {vectors}")
        self.vectors = vectors

    def values(self) -> dict[str, int]:
        mmc = self.vectors.bit_length() - 1
        return {"control": MsiControl.pack(MMC=mmc, ADDR64=1, PVM=1)}

    def rw(self) -> dict[str, int]:
        return {"control": MsiControl.ENABLE.mask | MsiControl.MME.mask,
                "address_lo": 0xFFFF_FFFC, "address_hi": 0xFFFF_FFFF,
                "data": 0xFFFF, "mask": (1 << self.vectors) - 1}

    def enabled(self, config: ConfigSpace) -> bool:
        return bool(MsiControl.ENABLE.get(self.read_field(config, "control")))


# -- MSI-X (PCI Local Bus 3.0 §6.8.2; PCIe Base 6.0 §7.7.2) ---------------

class MsixLayout(Struct, size=12):
    cap_id: u8          # RO 0x11
    next: u8            # RO
    control: u16        # RW Enable, Function Mask; RO Table Size
    table: u32          # RO: BIR and offset of the table
    pba: u32            # RO: BIR and offset of the PBA


class MsixControl(BitLayout, width=16):
    TABLE_SIZE = Bits(0, 10)    # N - 1
    FUNCTION_MASK = Bits(14)
    ENABLE = Bits(15)


class MsixTableReg(BitLayout, width=32):
    BIR = Bits(0, 2)
    OFFSET = Bits(3, 31)        # QWORD-aligned offset >> 3


class MsiX(Capability):
    """MSI-X with ``vectors`` entries; the table and PBA live in BAR ``bar``.

    QEMU emulates the table and the enable/mask bits and tells the device
    which eventfd each vector uses (SET_IRQS index 2); PBA reads are forwarded.
    """

    NAME, ID, SPEC = "MSI-X", 0x11, "PCI Local Bus 3.0 §6.8.2; PCIe Base 6.0 §7.7.2"
    Layout = MsixLayout

    def __init__(self, vectors: int, bar: int, table_offset: int, pba_offset: int) -> None:
        if not 1 <= vectors <= 2048:
            raise LocalProtocolError(f"MSI-X vectors must be 1..2048, not {vectors}")
        if not 0 <= bar <= 5 or table_offset % 8 or pba_offset % 8:
            raise LocalProtocolError("MSI-X table and PBA need a BAR 0..5 and QWORD offsets")
        self.vectors, self.bar = vectors, bar
        self.table_offset, self.pba_offset = table_offset, pba_offset

    def values(self) -> dict[str, int]:
        return {"control": MsixControl.pack(TABLE_SIZE=self.vectors - 1),
                "table": MsixTableReg.pack(BIR=self.bar, OFFSET=self.table_offset >> 3),
                "pba": MsixTableReg.pack(BIR=self.bar, OFFSET=self.pba_offset >> 3)}

    def rw(self) -> dict[str, int]:
        return {"control": MsixControl.ENABLE.mask | MsixControl.FUNCTION_MASK.mask}

    def enabled(self, config: ConfigSpace) -> bool:
        return bool(MsixControl.ENABLE.get(self.read_field(config, "control")))


# -- PCI Express capability, version 2 (PCIe Base 6.0 §7.5.3) --------------

class PcieLayout(Struct, size=0x3C):
    cap_id: u8          # RO 0x10
    next: u8            # RO
    flags: u16          # RO: PcieFlags
    devcap: u32         # RO
    devctl: u16         # RW (see PciExpress.rw)
    devsta: u16         # RW1C error bits 3..0; RO others
    linkcap: u32        # RO
    linkctl: u16        # RW RCB, Common Clock, Extended Synch
    linksta: u16        # RO
    slotcap: u32        # RO 0: no slot on an endpoint
    slotctl: u16        # RO 0
    slotsta: u16        # RO 0
    rootctl: u16        # RO 0: not a root port
    rootcap: u16        # RO 0
    rootsta: u32        # RO 0
    devcap2: u32        # RO
    devctl2: u16        # RW Completion Timeout Disable
    devsta2: u16        # RO 0
    linkcap2: u32       # RO: supported speeds
    linkctl2: u16       # RO: target link speed
    linksta2: u16       # RO 0
    slotcap2: u32       # RO 0
    slotctl2: u16       # RO 0
    slotsta2: u16       # RO 0


class PcieFlags(BitLayout, width=16):
    VERSION = Bits(0, 3)
    TYPE = Bits(4, 7)           # 0000b PCI Express Endpoint
    SLOT = Bits(8)
    IRQ = Bits(9, 13)

    TYPE_ENDPOINT = 0b0000
    TYPE_RC_ENDPOINT = 0b1001


class DevCap(BitLayout, width=32):
    MPS = Bits(0, 2)            # max payload supported: 0 = 128 bytes
    EXT_TAG = Bits(5)
    RBER = Bits(15)             # role-based error reporting (1 since PCIe 1.1)
    FLR = Bits(28)


class DevCtl(BitLayout, width=16):
    CERE = Bits(0)
    NFERE = Bits(1)
    FERE = Bits(2)
    URRE = Bits(3)
    RELAXED = Bits(4)
    MPS = Bits(5, 7)
    EXT_TAG = Bits(8)
    NOSNOOP = Bits(11)
    MRRS = Bits(12, 14)


class DevCap2(BitLayout, width=32):
    CTDS = Bits(4)              # Completion Timeout Disable Supported
    EE_PREFIX = Bits(21)        # End-End TLP Prefix Supported
    EE_PREFIX_MAX = Bits(22, 23)  # Max End-End TLP Prefixes (01b = 1)


class Link(BitLayout, width=16):
    """Speed/width fields shared by Link Capabilities (low half) and Link Status."""

    SPEED = Bits(0, 3)          # 1 = 2.5 GT/s
    LINK_WIDTH = Bits(4, 9)     # x1


class PciExpress(Capability):
    """PCI Express capability v2 of an endpoint: x1 at 2.5 GT/s, no FLR, no slot.

    Version 2 makes the whole 0x3C-byte structure valid, so QEMU and the guest
    use the extended config space (PCIe Base 6.0 §7.5.3.2).
    """

    NAME, ID, SPEC = "PCIe", 0x10, "PCIe Base 6.0 §7.5.3"
    Layout = PcieLayout

    def __init__(self, port_type: int = PcieFlags.TYPE_ENDPOINT,
                 ee_tlp_prefix: bool = False) -> None:
        self.port_type = port_type
        self.ee_tlp_prefix = ee_tlp_prefix  # PASID travels in an End-End TLP Prefix

    def values(self) -> dict[str, int]:
        link = Link.pack(SPEED=1, LINK_WIDTH=1)
        return {
            "flags": PcieFlags.pack(VERSION=2, TYPE=self.port_type),
            "devcap": DevCap.pack(RBER=1),
            "devctl": DevCtl.pack(RELAXED=1, NOSNOOP=1, MRRS=2),
            "linkcap": link, "linksta": link,
            "devcap2": DevCap2.pack(CTDS=1, EE_PREFIX=int(self.ee_tlp_prefix),
                                    EE_PREFIX_MAX=int(self.ee_tlp_prefix)),
            "linkcap2": 1 << 1,         # Supported Link Speeds: 2.5 GT/s
            "linkctl2": 1,              # Target Link Speed: 2.5 GT/s
        }

    def rw(self) -> dict[str, int]:
        devctl = (DevCtl.CERE.mask | DevCtl.NFERE.mask | DevCtl.FERE.mask | DevCtl.URRE.mask
                  | DevCtl.RELAXED.mask | DevCtl.MPS.mask | DevCtl.EXT_TAG.mask
                  | DevCtl.NOSNOOP.mask | DevCtl.MRRS.mask)
        return {"devctl": devctl, "linkctl": (1 << 3) | (1 << 6) | (1 << 7),
                "devctl2": 1 << 4}

    def w1c(self) -> dict[str, int]:
        return {"devsta": 0x000F}   # correctable, non-fatal, fatal, unsupported request


# -- Vendor-specific (PCI Local Bus 3.0 §6.7, cap ID 09h) ------------------

class VendorLayout(Struct, size=8):
    cap_id: u8          # RO 0x09
    next: u8            # RO
    length: u8          # RO 8
    _pad: Pad(1)
    label: u32          # RO: the vuser device label (stream id)


class VendorSpecific(Capability):
    """The device label, so the guest can name this device to the vIOMMU.

    vuser convention (docs/sample-device.md): ``cap_id 0x09, next, len=8,
    pad, label u32``.
    """

    NAME, ID, SPEC = "Vendor", 0x09, "PCI Local Bus 3.0 §6.7 (vendor-specific)"
    Layout = VendorLayout

    def __init__(self, label: int) -> None:
        if not 0 <= label < 1 << 32:
            raise LocalProtocolError(f"device label {label!r} is not a u32")
        self.label = label

    def values(self) -> dict[str, int]:
        return {"length": VendorLayout.SIZE, "label": self.label}
