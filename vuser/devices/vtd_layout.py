"""VT-d scalable-mode formats, declared once (Intel VT-d spec 4.x, chapters 9-11).

Everything the ``vuser-iommu`` function and its tests read or write in VT-d
format is here, as ``vuser.wire`` layouts:

- BAR0 register offsets (``Reg``, §11.4) and the bit fields of each register;
- the scalable-mode root entry, context entry, PASID directory entry and
  PASID table entry (§9.4, §9.5, §9.6);
- the 256-bit invalidation descriptors (§6.5.2) and the page group response
  (§7.7.1);
- the page request descriptor (§7.4.1) and the fault recording register
  (§11.4.14);
- the invalidation queue error codes (IQERCD.IQEI, §11.4.9.9); the fault
  reasons (Appendix A) are the model's ``VtdFaultReason``, named here with the
  FRCD.FR field that holds them.

Bit layouts cover one 64-bit word each (``qw0``, ``qw1`` ...); the word
structs (``RootEntry``, ``ContextEntry`` ...) give the byte layout in guest
memory. A field not declared in a word's layout is reserved: ``reserved(v)``
returns the set reserved bits of a word.
"""

from __future__ import annotations

import enum

from vuser.iommu.hw_info import VtdCap, VtdEcap
from vuser.iommu.pagetable.reasons import VtdFaultReason
from vuser.wire import BitLayout, Bits, Struct, u64

__all__ = [
    "Reg", "REGS_SIZE", "NFR", "FRCD_SIZE",
    "Cap", "Ecap", "Gcmd", "Rtaddr", "Ccmd", "Fsts", "EventCtl", "Iqa", "Iqh", "Iqercd",
    "Ics", "Pqh", "Pqa", "Prs", "IotlbReg", "Iva", "FrcdLo", "FrcdHi",
    "TTM_LEGACY", "TTM_SCALABLE",
    "RootEntry", "RootHalf", "ContextEntry", "ContextQw0", "ContextQw1",
    "PasidDirEntry", "PasidEntry", "PasidQw0", "PasidQw1", "PasidQw2", "Pgtt",
    "InvDesc", "InvType", "InvHeader", "CcDesc", "IotlbDesc", "IotlbAddr", "DevTlbDesc",
    "DevTlbAddr", "WaitDesc", "WaitAddr", "PiotlbDesc", "PcDesc", "PdevTlbDesc",
    "PdevTlbAddr", "PgrespDesc", "PgrespQw1", "inv_type",
    "PageRequest", "PrdLo", "PrdHi", "PRQ_ENTRY_SIZE", "IQ_ENTRY_SIZE",
    "Frcd", "VtdFaultReason", "Iqei", "reserved",
]


def reserved(layout: type[BitLayout], value: int) -> int:
    """The bits of ``value`` that ``layout`` does not define (reserved, must be 0)."""
    return value & ~layout.defined_mask() & ((1 << layout.WIDTH) - 1)


# -- registers (§11.4) ---------------------------------------------------------

class Reg(enum.IntEnum):
    """BAR0 register offsets."""

    VER = 0x000
    CAP = 0x008
    ECAP = 0x010
    GCMD = 0x018
    GSTS = 0x01C
    RTADDR = 0x020
    CCMD = 0x028
    FSTS = 0x034
    FECTL = 0x038
    FEDATA = 0x03C
    FEADDR = 0x040
    FEUADDR = 0x044
    IQH = 0x080
    IQT = 0x088
    IQA = 0x090
    ICS = 0x09C
    IECTL = 0x0A0
    IEDATA = 0x0A4
    IEADDR = 0x0A8
    IEUADDR = 0x0AC
    IQERCD = 0x0B0
    PQH = 0x0C0
    PQT = 0x0C8
    PQA = 0x0D0
    PRS = 0x0DC
    PECTL = 0x0E0
    PEDATA = 0x0E4
    PEADDR = 0x0E8
    PEUADDR = 0x0EC
    IVA = 0x100      # ECAP.IRO = 0x10 (16-byte units)
    IOTLB = 0x108
    FRCD = 0x200     # CAP.FRO = 0x20 (16-byte units)


#: Number of fault recording registers (CAP.NFR + 1) and the size of each.
NFR = 8
FRCD_SIZE = 16
#: BAR0 size: the register file fits one 4 KiB page.
REGS_SIZE = 0x1000


class Cap(VtdCap, width=64):
    """CAP_REG (§11.4.2): the fields are declared once, in the model's GET_HW_INFO."""


class Ecap(VtdEcap, width=64):
    """ECAP_REG (§11.4.3): the fields are declared once, in the model's GET_HW_INFO."""


class Gcmd(BitLayout, width=32):
    """GCMD_REG and GSTS_REG (§11.4.4, §11.4.5): same bit positions."""

    CFI = Bits(23)
    SIRTP = Bits(24)
    IRE = Bits(25)
    QIE = Bits(26)
    WBF = Bits(27)
    EAFL = Bits(28)
    SFL = Bits(29)
    SRTP = Bits(30)
    TE = Bits(31)


#: RTADDR_REG.TTM values.
TTM_LEGACY = 0
TTM_SCALABLE = 1


class Rtaddr(BitLayout, width=64):
    """RTADDR_REG (§11.4.6)."""

    TTM = Bits(10, 11)
    RTA = Bits(12, 63)


class Ccmd(BitLayout, width=64):
    """CCMD_REG: register-based context-cache invalidation (§11.4.7)."""

    DID = Bits(0, 15)
    SID = Bits(16, 31)
    FM = Bits(32, 33)
    CAIG = Bits(59, 60)
    CIRG = Bits(61, 62)
    ICC = Bits(63)


class Fsts(BitLayout, width=32):
    """FSTS_REG (§11.4.9.1)."""

    PFO = Bits(0)
    PPF = Bits(1)
    AFO = Bits(2)
    APF = Bits(3)
    IQE = Bits(4)
    ICE = Bits(5)
    ITE = Bits(6)
    FRI = Bits(8, 15)


class EventCtl(BitLayout, width=32):
    """FECTL / IECTL / PECTL: interrupt mask and pending (§11.4.9.2)."""

    IP = Bits(30)
    IM = Bits(31)


class Iqa(BitLayout, width=64):
    """IQA_REG (§11.4.9.5)."""

    QS = Bits(0, 2)          # 2^QS 4 KiB pages
    DW = Bits(11)            # 1: 256-bit descriptors
    IQA = Bits(12, 63)


class Iqh(BitLayout, width=64):
    """IQH_REG / IQT_REG: byte offset of a 128-bit slot (§11.4.9.3, .4)."""

    QH = Bits(4, 18)


class Iqercd(BitLayout, width=64):
    """IQERCD_REG (§11.4.9.9)."""

    IQEI = Bits(0, 3)
    ITESID = Bits(32, 47)
    ICESID = Bits(48, 63)


class Ics(BitLayout, width=32):
    """ICS_REG (§11.4.9.6)."""

    IWC = Bits(0)


class Pqh(BitLayout, width=64):
    """PQH_REG / PQT_REG: byte offset of a 32-byte page request slot (§11.4.11)."""

    PQH = Bits(5, 18)


class Pqa(BitLayout, width=64):
    """PQA_REG (§11.4.11.3)."""

    PQS = Bits(0, 2)         # 2^PQS 4 KiB pages: 2^(PQS+7) requests
    PQA = Bits(12, 63)


class Prs(BitLayout, width=32):
    """PRS_REG (§11.4.11.4)."""

    PPR = Bits(0)
    PRO = Bits(1)


class IotlbReg(BitLayout, width=64):
    """IOTLB_REG: register-based IOTLB invalidation (§11.4.8.1)."""

    DID = Bits(32, 47)
    DW = Bits(48)
    DR = Bits(49)
    IAIG = Bits(57, 58)
    IIRG = Bits(60, 61)
    IVT = Bits(63)


class Iva(BitLayout, width=64):
    """IVA_REG (§11.4.8.2)."""

    AM = Bits(0, 5)
    IH = Bits(6)
    ADDR = Bits(12, 63)


class FrcdLo(BitLayout, width=64):
    """Fault recording register, low 64 bits (§11.4.14)."""

    FI = Bits(12, 63)        # faulting address, page granular


class FrcdHi(BitLayout, width=64):
    """Fault recording register, high 64 bits (§11.4.14)."""

    SID = Bits(0, 15)
    T2 = Bits(28)
    PRIV = Bits(29)
    EXE = Bits(30)
    PP = Bits(31)
    FR = Bits(32, 39)
    PV = Bits(40, 59)
    AT = Bits(60, 61)
    T1 = Bits(62)            # 0: write request, 1: read request
    F = Bits(63)


class Frcd(Struct, size=FRCD_SIZE):
    """One fault recording register as it sits in BAR0."""

    lo: u64
    hi: u64


# -- tables in guest memory (§9) ------------------------------------------------

class RootHalf(BitLayout, width=64):
    """Each half of a scalable-mode root entry (§9.2): LP/LCTP or UP/UCTP.

    The lower half points to the context table of devfn 0..127, the upper
    half to that of devfn 128..255 (256-bit context entries: 128 per table).
    """

    P = Bits(0)
    CTP = Bits(12, 63)


class RootEntry(Struct, size=16):
    """Scalable-mode root entry: 256 of them, indexed by bus (label >> 8)."""

    lo: u64
    hi: u64


class ContextQw0(BitLayout, width=64):
    """Scalable-mode context entry, bits 63:0 (§9.4).

    PASIDE (bit 3) is accepted and ignored: Linux does not set it, and
    requests with a PASID are governed by the PASID table.
    """

    P = Bits(0)
    FPD = Bits(1)
    DTE = Bits(2)
    PASIDE = Bits(3)
    PRE = Bits(4)
    PDTS = Bits(9, 11)       # 2^(PDTS+7) PASID directory entries
    PASIDDIRPTR = Bits(12, 63)


class ContextQw1(BitLayout, width=64):
    """Scalable-mode context entry, bits 127:64."""

    RID_PASID = Bits(0, 19)
    RID_PRIV = Bits(20)


class ContextEntry(Struct, size=32):
    """Scalable-mode context entry: 128 per table, indexed by devfn & 0x7f."""

    qw0: u64
    qw1: u64
    qw2: u64
    qw3: u64


class PasidDirEntry(BitLayout, width=64):
    """Scalable-mode PASID directory entry (§9.5): index ``pasid >> 6``."""

    P = Bits(0)
    FPD = Bits(1)
    SMPTBLPTR = Bits(12, 63)


class Pgtt(enum.IntEnum):
    """PASID-granular translation type (PASID entry bits 8:6)."""

    FIRST_STAGE = 1
    SECOND_STAGE = 2
    NESTED = 3
    PASS_THROUGH = 4


class PasidQw0(BitLayout, width=64):
    """Scalable-mode PASID table entry, bits 63:0 (§9.6)."""

    P = Bits(0)
    FPD = Bits(1)
    AW = Bits(2, 4)
    SSEE = Bits(5)
    PGTT = Bits(6, 8)
    SSADE = Bits(9)
    SSPTPTR = Bits(12, 63)


class PasidQw1(BitLayout, width=64):
    """PASID table entry, bits 127:64."""

    DID = Bits(0, 15)
    PWSNP = Bits(23)
    PGSNP = Bits(24)
    CD = Bits(25)
    EMTE = Bits(26)
    EMT = Bits(27, 29)
    PWT = Bits(30)
    PCD = Bits(31)
    PAT = Bits(32, 63)


class PasidQw2(BitLayout, width=64):
    """PASID table entry, bits 191:128: the first-stage part."""

    SRE = Bits(0)
    ERE = Bits(1)
    FSPM = Bits(2, 3)        # first-stage paging mode (FLPM): 0 4-level, 1 5-level
    WPE = Bits(4)
    NXE = Bits(5)
    SMEP = Bits(6)
    EAFE = Bits(7)
    FSPTPTR = Bits(12, 63)   # first-stage page table pointer (FLPTR), a GPA


class PasidEntry(Struct, size=64):
    """Scalable-mode PASID table entry: 64 per table, index ``pasid & 0x3f``."""

    qw0: u64
    qw1: u64
    qw2: u64
    qw3: u64
    qw4: u64
    qw5: u64
    qw6: u64
    qw7: u64


# -- invalidation descriptors (§6.5.2, 256-bit form) ------------------------------

#: Bytes per slot of the invalidation queue (IQH/IQT count 128-bit slots) and
#: per 256-bit descriptor.
IQ_ENTRY_SIZE = 32


class InvType(enum.IntEnum):
    """Invalidation descriptor types (qw0 bits 11:9 and 3:0)."""

    CONTEXT_CACHE = 1
    IOTLB = 2
    DEVICE_TLB = 3
    INT_ENTRY_CACHE = 4
    WAIT = 5
    PASID_IOTLB = 6
    PASID_CACHE = 7
    PASID_DEVICE_TLB = 8
    PAGE_GROUP_RESPONSE = 9


class InvDesc(Struct, size=IQ_ENTRY_SIZE):
    """One 256-bit invalidation descriptor as fetched from the queue."""

    qw0: u64
    qw1: u64
    qw2: u64
    qw3: u64


class InvHeader(BitLayout, width=64):
    """The type fields every descriptor shares."""

    TYPE_LO = Bits(0, 3)
    TYPE_HI = Bits(9, 11)


def inv_type(qw0: int) -> int:
    """The 7-bit descriptor type of ``qw0``."""
    return (InvHeader.TYPE_HI.get(qw0) << 4) | InvHeader.TYPE_LO.get(qw0)


class CcDesc(InvHeader, width=64):
    """Context-cache invalidate descriptor qw0 (§6.5.2.1); qw1..3 reserved."""

    G = Bits(4, 5)           # 1 global, 2 domain, 3 device
    DID = Bits(16, 31)
    SID = Bits(32, 47)
    FM = Bits(48, 49)


class IotlbDesc(InvHeader, width=64):
    """IOTLB invalidate descriptor qw0 (§6.5.2.3)."""

    G = Bits(4, 5)           # 1 global, 2 domain, 3 page-selective
    DW = Bits(6)
    DR = Bits(7)
    DID = Bits(16, 31)


class IotlbAddr(BitLayout, width=64):
    """IOTLB and PASID-IOTLB invalidate descriptors, qw1."""

    AM = Bits(0, 5)
    IH = Bits(6)
    ADDR = Bits(12, 63)


class DevTlbDesc(InvHeader, width=64):
    """Device-TLB invalidate descriptor qw0 (§6.5.2.5): requests without PASID."""

    PFSID_LO = Bits(12, 15)
    MIP = Bits(16, 20)
    SID = Bits(32, 47)
    PFSID_HI = Bits(52, 63)


class DevTlbAddr(BitLayout, width=64):
    """Device-TLB invalidate descriptor qw1: S set = size encoded in ADDR."""

    S = Bits(0)
    ADDR = Bits(12, 63)


class WaitDesc(InvHeader, width=64):
    """Invalidation wait descriptor qw0 (§6.5.2.8)."""

    IF = Bits(4)             # interrupt on completion (ICS.IWC)
    SW = Bits(5)             # status write
    FN = Bits(6)             # fence
    PD = Bits(7)             # page-request drain
    STDATA = Bits(32, 63)


class WaitAddr(BitLayout, width=64):
    """Invalidation wait descriptor qw1: the status address (dword aligned)."""

    STADDR = Bits(2, 63)


class PiotlbDesc(InvHeader, width=64):
    """PASID-based IOTLB invalidate descriptor qw0 (§6.5.2.4); qw1 is ``IotlbAddr``."""

    G = Bits(4, 5)           # 2 all addresses of the PASID, 3 page-selective
    DID = Bits(16, 31)
    PASID = Bits(32, 51)


class PcDesc(InvHeader, width=64):
    """PASID-cache invalidate descriptor qw0 (§6.5.2.2)."""

    G = Bits(4, 5)           # 0 domain, 1 PASID-selective, 3 global
    DID = Bits(16, 31)
    PASID = Bits(32, 51)


class PdevTlbDesc(InvHeader, width=64):
    """PASID-based device-TLB invalidate descriptor qw0 (§6.5.2.6)."""

    MIP = Bits(4, 8)
    PFSID_LO = Bits(12, 15)
    SID = Bits(16, 31)
    PASID = Bits(32, 51)
    PFSID_HI = Bits(52, 63)


class PdevTlbAddr(BitLayout, width=64):
    """PASID-based device-TLB invalidate descriptor qw1."""

    G = Bits(0)              # all PASIDs
    S = Bits(11)
    ADDR = Bits(12, 63)


class PgrespDesc(InvHeader, width=64):
    """Page group response descriptor qw0 (§7.7.1)."""

    PP = Bits(4)
    RC = Bits(12, 15)        # 0 success, 1 invalid request, 0xF response failure
    RID = Bits(16, 31)
    PASID = Bits(32, 51)


class PgrespQw1(BitLayout, width=64):
    """Page group response descriptor qw1."""

    LPIG = Bits(2)
    PRGI = Bits(3, 11)


# -- page requests (§7.4.1) -------------------------------------------------------

#: Bytes per page request queue entry (PQH/PQT count them).
PRQ_ENTRY_SIZE = 32


class PrdLo(BitLayout, width=64):
    """Page request descriptor, bits 63:0."""

    TYPE = Bits(0, 1)        # 01b: page request
    PP = Bits(8)
    RID = Bits(16, 31)
    PASID = Bits(32, 51)
    EXR = Bits(52)
    PMR = Bits(53)


class PrdHi(BitLayout, width=64):
    """Page request descriptor, bits 127:64."""

    RDR = Bits(0)
    WRR = Bits(1)
    LPIG = Bits(2)
    PRGI = Bits(3, 11)
    ADDR = Bits(12, 63)


class PageRequest(Struct, size=PRQ_ENTRY_SIZE):
    """One page request queue entry; qw2/qw3 carry private data (none here)."""

    lo: u64
    hi: u64
    qw2: u64
    qw3: u64


# -- queue errors -----------------------------------------------------------------

class Iqei(enum.IntEnum):
    """IQERCD.IQEI: why the invalidation queue stopped."""

    NOT_AVAILABLE = 0
    TAIL_BEYOND_QUEUE = 1
    FETCH_ERROR = 2
    INVALID_TYPE = 3
    RESERVED_FIELD = 4
    INVALID_WIDTH = 5
    TAIL_MISALIGNED = 6
    INVALID_TTM = 7
