"""Extended capabilities: PASID, ATS, PRI and a vendor-specific one (VSEC).

Each is declared once (``caps.Capability``, ``EXTENDED = True``); the header
(ID, version, next) is built by the chain. In this issue they are inert: the
guest sees and programs them, nothing translates through them yet.
"""

from __future__ import annotations

from vuser.errors import LocalProtocolError
from vuser.wire import BitLayout, Bits, Struct, u16, u32

from .caps import Capability
from .config import ConfigSpace

__all__ = [
    "Pasid", "Ats", "Pri", "Vsec",
    "PasidLayout", "AtsLayout", "PriLayout", "VsecLayout",
    "PasidCap", "PasidCtl", "AtsCap", "AtsCtl", "PriCtl", "PriStatus", "VsecHeader",
]


# -- PASID (PCIe Base 6.0 §7.8.8) ------------------------------------------

class PasidLayout(Struct, size=8):
    header: u32         # RO: ID 0x1B, version 1
    cap: u16            # RO: PasidCap
    ctl: u16            # RW PASID Enable; Execute/Privileged Enable if supported


class PasidCap(BitLayout, width=16):
    EXEC = Bits(1)              # Execute Permission Supported
    PRIV = Bits(2)              # Privileged Mode Supported
    MAX_WIDTH = Bits(8, 12)     # Max PASID Width (bits)


class PasidCtl(BitLayout, width=16):
    ENABLE = Bits(0)
    EXEC = Bits(1)
    PRIV = Bits(2)


class Pasid(Capability):
    """PASID capability, ``width`` bits of PASID (1..20)."""

    NAME, ID, VERSION, EXTENDED = "PASID", 0x1B, 1, True
    SPEC = "PCIe Base 6.0 §7.8.8"
    Layout = PasidLayout

    def __init__(self, width: int = 20, exec_perm: bool = False, privileged: bool = False) -> None:
        if not 1 <= width <= 20:
            raise LocalProtocolError(f"PASID width must be 1..20, not {width}")
        self.width, self.exec_perm, self.privileged = width, exec_perm, privileged

    def values(self) -> dict[str, int]:
        return {"cap": PasidCap.pack(EXEC=int(self.exec_perm), PRIV=int(self.privileged),
                                     MAX_WIDTH=self.width)}

    def rw(self) -> dict[str, int]:
        ctl = PasidCtl.ENABLE.mask
        ctl |= PasidCtl.EXEC.mask if self.exec_perm else 0
        ctl |= PasidCtl.PRIV.mask if self.privileged else 0
        return {"ctl": ctl}

    def enabled(self, config: ConfigSpace) -> bool:
        return bool(PasidCtl.ENABLE.get(self.read_field(config, "ctl")))


# -- ATS (PCIe Base 6.0 §10.5.1) -------------------------------------------

class AtsLayout(Struct, size=8):
    header: u32         # RO: ID 0x0F, version 1
    cap: u16            # RO: AtsCap
    ctl: u16            # RW Smallest Translation Unit, Enable


class AtsCap(BitLayout, width=16):
    INVQ_DEPTH = Bits(0, 4)     # 0 means 32
    PAGE_ALIGNED = Bits(5)      # Page Aligned Request: always 1 since ATS 1.1
    GLOBAL_INV = Bits(6)        # Global Invalidate Supported


class AtsCtl(BitLayout, width=16):
    STU = Bits(0, 4)
    ENABLE = Bits(15)


class Ats(Capability):
    """ATS capability (inert here: no device TLB yet)."""

    NAME, ID, VERSION, EXTENDED = "ATS", 0x0F, 1, True
    SPEC = "PCIe Base 6.0 §10.5.1"
    Layout = AtsLayout

    def __init__(self, invq_depth: int = 0, global_inv: bool = True) -> None:
        if not 0 <= invq_depth <= 31:
            raise LocalProtocolError(f"ATS invalidate queue depth must be 0..31, not {invq_depth}")
        self.invq_depth, self.global_inv = invq_depth, global_inv

    def values(self) -> dict[str, int]:
        return {"cap": AtsCap.pack(INVQ_DEPTH=self.invq_depth, PAGE_ALIGNED=1,
                                   GLOBAL_INV=int(self.global_inv))}

    def rw(self) -> dict[str, int]:
        return {"ctl": AtsCtl.STU.mask | AtsCtl.ENABLE.mask}

    def enabled(self, config: ConfigSpace) -> bool:
        return bool(AtsCtl.ENABLE.get(self.read_field(config, "ctl")))


# -- PRI (PCIe Base 6.0 §10.5.2) -------------------------------------------

class PriLayout(Struct, size=16):
    header: u32         # RO: ID 0x13, version 1
    ctl: u16            # RW Enable; Reset writes as 1, reads 0
    status: u16         # RW1C Response Failure, UPRGI; RO Stopped, PRG Response PASID Required
    capacity: u32       # RO: Outstanding Page Request Capacity
    allocation: u32     # RW: Outstanding Page Request Allocation


class PriCtl(BitLayout, width=16):
    ENABLE = Bits(0)
    RESET = Bits(1)


class PriStatus(BitLayout, width=16):
    RESPONSE_FAILURE = Bits(0)
    UPRGI = Bits(1)             # Unexpected Page Request Group Index
    STOPPED = Bits(8)
    PASID_REQUIRED = Bits(15)   # PRG Response PASID Required


class Pri(Capability):
    """PRI capability. Inert: no requests are ever outstanding, so Stopped is
    set exactly while Enable is clear (its default value is 1b)."""

    NAME, ID, VERSION, EXTENDED = "PRI", 0x13, 1, True
    SPEC = "PCIe Base 6.0 §10.5.2"
    Layout = PriLayout

    def __init__(self, capacity: int = 32, pasid_required: bool = True) -> None:
        if not 0 <= capacity < 1 << 32:
            raise LocalProtocolError(f"PRI capacity {capacity!r} is not a u32")
        self.capacity, self.pasid_required = capacity, pasid_required

    def values(self) -> dict[str, int]:
        return {"status": PriStatus.pack(STOPPED=1, PASID_REQUIRED=int(self.pasid_required)),
                "capacity": self.capacity}

    def rw(self) -> dict[str, int]:
        return {"ctl": PriCtl.ENABLE.mask, "allocation": 0xFFFF_FFFF}

    def w1c(self) -> dict[str, int]:
        return {"status": PriStatus.RESPONSE_FAILURE.mask | PriStatus.UPRGI.mask}

    def on_write(self, config: ConfigSpace) -> None:
        enabled = PriCtl.ENABLE.get(self.read_field(config, "ctl"))
        status = PriStatus.STOPPED.put(self.read_field(config, "status"), 1 - enabled)
        self.poke_field(config, "status", status)

    def enabled(self, config: ConfigSpace) -> bool:
        return bool(PriCtl.ENABLE.get(self.read_field(config, "ctl")))


# -- Vendor-specific extended capability (PCIe Base 6.0 §7.9.5) ------------

class VsecLayout(Struct, size=12):
    header: u32         # RO: ID 0x0B, version 1
    vsec_header: u32    # RO: VsecHeader
    label: u32          # RO: the vuser device label


class VsecHeader(BitLayout, width=32):
    ID = Bits(0, 15)
    REV = Bits(16, 19)
    LENGTH = Bits(20, 31)       # bytes, including both headers


class Vsec(Capability):
    """vuser's VSEC: VSEC ID 0x0001 rev 1 = the device label (u32)."""

    NAME, ID, VERSION, EXTENDED = "VSEC", 0x0B, 1, True
    SPEC = "PCIe Base 6.0 §7.9.5"
    Layout = VsecLayout
    VSEC_ID_LABEL = 0x0001

    def __init__(self, label: int) -> None:
        if not 0 <= label < 1 << 32:
            raise LocalProtocolError(f"device label {label!r} is not a u32")
        self.label = label

    def values(self) -> dict[str, int]:
        return {"vsec_header": VsecHeader.pack(ID=self.VSEC_ID_LABEL, REV=1,
                                               LENGTH=VsecLayout.SIZE),
                "label": self.label}
