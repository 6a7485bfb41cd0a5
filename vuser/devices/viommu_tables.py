"""Reading the guest's scalable-mode tables: root, context, PASID directory and table.

VT-d §3.4.3 and §9.2-§9.6. The tables live in guest memory and are read
through ``read(gpa, n)``: ``Vm.gpa_read``, an access on the VM's GPA IOAS
(``vuser.memory.guest``), so they are read from the same areas device DMA
reaches; it raises ``DmaError`` on a hole. Nothing here raises on guest-caused problems: a
lookup returns the parsed entry or a ``TableFault`` with the scalable-mode
fault reason it would produce (SRT.x, SCT.x, SPD.x, SPT.x), and whether fault
processing is disabled (FPD) along the path.

The source-id of a device is its 16-bit device label: bus = ``label >> 8``
indexes the root table, devfn = ``label & 0xff`` picks the lower (devfn <
128) or upper half of the root entry and the 32-byte context entry.

A PASID entry is usable when PGTT is first-stage (FSPM 0 or 1) or
pass-through. Second-stage and nested PGTTs need a guest second stage, which
this vIOMMU does not offer (ECAP.SSTS = 0): they are "invalid programming"
(SPT.4), as are reserved PGTT values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vuser.backend import DmaError

from .vtd_layout import (
    TTM_SCALABLE, ContextEntry, ContextQw0, ContextQw1, VtdFaultReason, PasidDirEntry,
    PasidEntry, PasidQw0, PasidQw1, PasidQw2, Pgtt, RootEntry, RootHalf, Rtaddr, reserved,
)

__all__ = ["TableFault", "ContextInfo", "PasidConfig", "TableReader", "ReadFn",
           "FIRST_STAGE_WIDTH", "MAX_SCAN_TABLES"]

ReadFn = Callable[[int, int], bytes]

#: FSPM (FLPM) -> VTD_S1 ``addr_width``.
FIRST_STAGE_WIDTH = {0: 48, 1: 57}
#: At most this many PASID tables are read by one directory scan (a hostile
#: directory may point all of its 2^14 entries at tables).
MAX_SCAN_TABLES = 256
_ADDR_END = 1 << 64
_PASID_TABLE_BYTES = 64 * PasidEntry.SIZE


@dataclass(frozen=True)
class TableFault:
    """Why a lookup failed: a scalable-mode fault reason; ``fpd`` suppresses recording."""

    reason: int
    fpd: bool = False


@dataclass(frozen=True)
class ContextInfo:
    """What a present scalable-mode context entry says."""

    fpd: bool
    dte: bool
    pre: bool
    pdts: int
    pasid_dir: int
    rid_pasid: int

    @property
    def dir_entries(self) -> int:
        return 1 << (self.pdts + 7)


@dataclass(frozen=True)
class PasidConfig:
    """A present, valid PASID table entry."""

    pgtt: int
    did: int
    fpd: bool
    fsptptr: int = 0
    addr_width: int = 48
    sre: bool = False
    wpe: bool = False
    eafe: bool = False

    @property
    def first_stage(self) -> bool:
        return self.pgtt == Pgtt.FIRST_STAGE


LookupResult = PasidConfig | TableFault


class TableReader:
    """Lookups in the tables at ``rtaddr`` (the latched RTADDR_REG value)."""

    def __init__(self, read: ReadFn, rtaddr: int) -> None:
        self._read_fn = read
        self.rtaddr = rtaddr

    def _read(self, gpa: int, n: int) -> bytes | None:
        if gpa < 0 or gpa + n > _ADDR_END:
            return None
        try:
            data = self._read_fn(gpa, n)
        except (DmaError, ValueError, OverflowError):
            return None
        return data if len(data) == n else None

    # -- root and context (§9.2, §9.4) ---------------------------------------------
    def context(self, sid: int) -> ContextInfo | TableFault:
        """The context entry of source-id ``sid`` (a 16-bit label)."""
        if Rtaddr.TTM.get(self.rtaddr) != TTM_SCALABLE:
            return TableFault(VtdFaultReason.RTADDR_INV_TTM)
        bus, devfn = (sid >> 8) & 0xFF, sid & 0xFF
        raw = self._read((self.rtaddr & Rtaddr.RTA.mask) + bus * RootEntry.SIZE, RootEntry.SIZE)
        if raw is None:
            return TableFault(VtdFaultReason.ROOT_ACCESS)
        root = RootEntry.unpack(raw)
        half = root.lo if devfn < 128 else root.hi
        if not RootHalf.P.get(half):
            return TableFault(VtdFaultReason.ROOT_P)
        if reserved(RootHalf, half):
            return TableFault(VtdFaultReason.ROOT_RSVD)
        addr = (half & RootHalf.CTP.mask) + (devfn & 0x7F) * ContextEntry.SIZE
        raw = self._read(addr, ContextEntry.SIZE)
        if raw is None:
            return TableFault(VtdFaultReason.CONTEXT_ACCESS)
        ce = ContextEntry.unpack(raw)
        fpd = bool(ContextQw0.FPD.get(ce.qw0))
        if not ContextQw0.P.get(ce.qw0):
            return TableFault(VtdFaultReason.CONTEXT_P, fpd)
        if (reserved(ContextQw0, ce.qw0) or ce.qw2 or ce.qw3
                or reserved(ContextQw1, ce.qw1) or ContextQw1.RID_PRIV.get(ce.qw1)):
            # RID_PRIV needs ECAP.RPRIVS, which is not offered: reserved.
            return TableFault(VtdFaultReason.CONTEXT_RSVD, fpd)
        return ContextInfo(
            fpd=fpd, dte=bool(ContextQw0.DTE.get(ce.qw0)), pre=bool(ContextQw0.PRE.get(ce.qw0)),
            pdts=ContextQw0.PDTS.get(ce.qw0), pasid_dir=ce.qw0 & ContextQw0.PASIDDIRPTR.mask,
            rid_pasid=ContextQw1.RID_PASID.get(ce.qw1))

    # -- PASID directory and table (§9.5, §9.6) -----------------------------------
    def _dir_entry(self, ci: ContextInfo, index: int) -> int | TableFault:
        if index >= ci.dir_entries:
            return TableFault(VtdFaultReason.PASID_DIR_P, ci.fpd)
        raw = self._read(ci.pasid_dir + index * 8, 8)
        if raw is None:
            return TableFault(VtdFaultReason.PASID_DIR_ACCESS, ci.fpd)
        return int.from_bytes(raw, "little")

    @staticmethod
    def _check_dir(ci: ContextInfo, de: int) -> TableFault | None:
        fpd = ci.fpd or bool(PasidDirEntry.FPD.get(de))
        if not PasidDirEntry.P.get(de):
            return TableFault(VtdFaultReason.PASID_DIR_P, fpd)
        if reserved(PasidDirEntry, de):
            return TableFault(VtdFaultReason.PASID_DIR_RSVD, fpd)
        return None

    def pasid(self, ci: ContextInfo, pasid: int) -> LookupResult:
        """The PASID table entry of ``pasid`` under context ``ci``."""
        de = self._dir_entry(ci, pasid >> 6)
        if isinstance(de, TableFault):
            return de
        bad = self._check_dir(ci, de)
        if bad is not None:
            return bad
        fpd = ci.fpd or bool(PasidDirEntry.FPD.get(de))
        raw = self._read((de & PasidDirEntry.SMPTBLPTR.mask) + (pasid & 0x3F) * PasidEntry.SIZE,
                         PasidEntry.SIZE)
        if raw is None:
            return TableFault(VtdFaultReason.PASID_ACCESS, fpd)
        return parse_pasid_entry(PasidEntry.unpack(raw), fpd)

    def scan(self, ci: ContextInfo) -> Iterator[tuple[int, LookupResult]]:
        """The PASIDs whose table entry has P set, with the parsed entry, in order.

        Only present, valid directory entries are followed, and at most
        ``MAX_SCAN_TABLES`` tables are read (a hostile directory may point all
        of its 2^14 entries at tables); callers look up anything else they
        need one by one with ``pasid``.
        """
        raw = self._read(ci.pasid_dir, ci.dir_entries * 8)
        if raw is None:
            return
        tables = 0
        for index in range(ci.dir_entries):
            de = int.from_bytes(raw[index * 8:index * 8 + 8], "little")
            if self._check_dir(ci, de) is not None:
                continue
            if tables >= MAX_SCAN_TABLES:
                return
            tables += 1
            table = self._read(de & PasidDirEntry.SMPTBLPTR.mask, _PASID_TABLE_BYTES)
            if table is None:
                continue
            fpd = ci.fpd or bool(PasidDirEntry.FPD.get(de))
            for i in range(64):
                pe = PasidEntry.unpack(table, i * PasidEntry.SIZE)
                if PasidQw0.P.get(pe.qw0):
                    yield (index << 6) + i, parse_pasid_entry(pe, fpd)


def parse_pasid_entry(pe: PasidEntry, fpd: bool) -> LookupResult:
    """Validate one PASID table entry (§9.6); ``fpd`` is inherited from the path."""
    fpd = fpd or bool(PasidQw0.FPD.get(pe.qw0))
    if not PasidQw0.P.get(pe.qw0):
        return TableFault(VtdFaultReason.PASID_P, fpd)
    if (reserved(PasidQw0, pe.qw0) or reserved(PasidQw1, pe.qw1) or reserved(PasidQw2, pe.qw2)
            or pe.qw3 or pe.qw4 or pe.qw5 or pe.qw6 or pe.qw7
            or PasidQw2.ERE.get(pe.qw2)):   # ERE needs ECAP.ERS: not offered
        return TableFault(VtdFaultReason.PASID_RSVD, fpd)
    pgtt = PasidQw0.PGTT.get(pe.qw0)
    did = PasidQw1.DID.get(pe.qw1)
    if pgtt == Pgtt.PASS_THROUGH:
        return PasidConfig(pgtt, did, fpd)
    if pgtt != Pgtt.FIRST_STAGE:
        return TableFault(VtdFaultReason.PASID_INVALID, fpd)
    fspm = PasidQw2.FSPM.get(pe.qw2)
    if fspm not in FIRST_STAGE_WIDTH:
        return TableFault(VtdFaultReason.PASID_INVALID, fpd)
    return PasidConfig(pgtt, did, fpd, fsptptr=pe.qw2 & PasidQw2.FSPTPTR.mask,
                       addr_width=FIRST_STAGE_WIDTH[fspm], sre=bool(PasidQw2.SRE.get(pe.qw2)),
                       wpe=bool(PasidQw2.WPE.get(pe.qw2)), eafe=bool(PasidQw2.EAFE.get(pe.qw2)))
