"""The ``vuser-iommu`` BAR0: a VT-d register file described by masks (VT-d §10.4, §11.4).

``RegisterBank`` follows QEMU's ``vtd_define_quad``/``vtd_define_long``: each
register has a value, a write mask (RW bits) and a write-1-to-clear mask, and
a write of ``val`` stores ``((old & ~wmask) | (val & wmask)) & ~(w1cmask &
val)``. Accesses are 4 or 8 bytes, naturally aligned (VT-d §10.2; else
EINVAL); a 64-bit register may be written as two 32-bit halves, and its
``on_write`` hook then runs after each half. Undeclared offsets read 0 and
ignore writes.

``EventSource`` is the interrupt logic shared by the fault, invalidation
completion and page request events (§7.3, §7.5.1.2): an event sets IP; if IM
is clear the message is sent and IP cleared once it went out; clearing IM
with IP set sends it then; a message that cannot go out yet stays pending.

``cap_value``/``ecap_value`` are what the function advertises; see
docs/vuser-iommu.md for the reasons behind each bit.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.pci.region import Region

from .vtd_layout import (
    FRCD_SIZE, NFR, REGS_SIZE, Cap, Ecap, EventCtl, FrcdHi, Fsts, Ics, Iqa, Iqh, Pqa, Pqh, Prs,
    Reg, Rtaddr,
)

__all__ = ["RegisterBank", "EventSource", "cap_value", "ecap_value", "define_vtd_registers",
           "VER_VALUE", "PASID_BITS", "MAMV"]

#: VER_REG: architecture version 3.0 (scalable mode).
VER_VALUE = 0x30
#: PASIDs are 20 bits (ECAP.PSS = 19).
PASID_BITS = 20
#: CAP.MAMV: the largest address mask of a page-selective invalidation.
MAMV = 18

_Q = struct.Struct("<Q")


def cap_value(cm: int = 1) -> int:
    """CAP_REG: 64K domains, caching mode ``cm``, MGAW 57, 8 fault records at 0x200,
    PSI, first-stage 1 GiB pages and 5-level paging."""
    return Cap.pack(ND=6, CM=cm, SAGAW=0b01100, MGAW=56, FRO=Reg.FRCD // 16, PSI=1,
                    NFR=NFR - 1, MAMV=MAMV, FS1GP=1, FS5LP=1)


def ecap_value() -> int:
    """ECAP_REG: scalable mode, first stage, nested, PASID (20 bits), PRS, QI, DT,
    pass-through, page-walk coherency, IOTLB registers at 0x100."""
    return Ecap.pack(C=1, QI=1, DT=1, PT=1, IRO=Reg.IVA // 16, NEST=1, PRS=1, SRS=1, EAFS=1,
                     PSS=PASID_BITS - 1, PASID=1, PDS=1, SMTS=1, FSTS=1, SMPWCS=1, RPS=1)


@dataclass
class _Register:
    offset: int
    size: int
    on_write: Callable[[int], None] | None


class RegisterBank(Region):
    """Registers of 4 or 8 bytes with write and W1C masks (see the module doc)."""

    def __init__(self, size: int = REGS_SIZE) -> None:
        super().__init__(size)
        self.csr = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._reset = bytearray(size)
        self._regs: dict[int, _Register] = {}
        self._by_byte: dict[int, _Register] = {}

    def define(self, offset: int, size: int, value: int = 0, *, wmask: int = 0,
               w1cmask: int = 0, on_write: Callable[[int], None] | None = None) -> None:
        """Declare a register; ``on_write(offset)`` runs after every write to it."""
        if size not in (4, 8) or offset % size or offset + size > self.size or any(
                b in self._by_byte for b in range(offset, offset + size)):
            raise LocalProtocolError(f"register at {offset:#x}/{size} is misplaced")
        for arr, v in ((self.csr, value), (self._reset, value), (self.wmask, wmask),
                       (self.w1cmask, w1cmask)):
            arr[offset:offset + size] = v.to_bytes(size, "little")
        reg = _Register(offset, size, on_write)
        self._regs[offset] = reg
        for b in range(offset, offset + size):
            self._by_byte[b] = reg

    # -- device-side access -------------------------------------------------
    def get(self, offset: int) -> int:
        reg = self._regs[offset]
        return int.from_bytes(self.csr[offset:offset + reg.size], "little")

    def set(self, offset: int, value: int) -> None:
        """Device-side store: masks do not apply."""
        reg = self._regs[offset]
        self.csr[offset:offset + reg.size] = (value & ((1 << (8 * reg.size)) - 1)).to_bytes(
            reg.size, "little")

    def set_bits(self, offset: int, set_mask: int = 0, clear_mask: int = 0) -> int:
        """Device-side read-modify-write; returns the old value."""
        old = self.get(offset)
        self.set(offset, (old & ~clear_mask) | set_mask)
        return old

    # -- Region ---------------------------------------------------------------
    def _check(self, offset: int, count: int) -> None:
        if count not in (4, 8) or offset % count:
            raise RemoteProtocolError(errno.EINVAL, f"VT-d register access {offset:#x}+{count}"
                                      " is not an aligned 4- or 8-byte access")

    def read(self, offset: int, count: int) -> bytes:
        self._check(offset, count)
        return bytes(self.csr[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        val = int.from_bytes(data, "little")
        n = len(data)
        old = int.from_bytes(self.csr[offset:offset + n], "little")
        wm = int.from_bytes(self.wmask[offset:offset + n], "little")
        w1c = int.from_bytes(self.w1cmask[offset:offset + n], "little")
        new = ((old & ~wm) | (val & wm)) & ~(w1c & val)
        self.csr[offset:offset + n] = new.to_bytes(n, "little")
        hooks: list[_Register] = []
        for b in range(offset, offset + n):
            reg = self._by_byte.get(b)
            if reg is not None and reg not in hooks:
                hooks.append(reg)
        for reg in hooks:
            if reg.on_write is not None:
                lo = max(offset, reg.offset)
                raw = int.from_bytes(data[lo - offset:min(offset + n, reg.offset + reg.size)
                                          - offset], "little") << (8 * (lo - reg.offset))
                reg.on_write(raw)

    def reset(self) -> None:
        self.csr[:] = self._reset


class EventSource:
    """One of the three VT-d interrupt events (fault, invalidation, page request).

    IP means "a message is pending" (§10.4.9): it is set when the event arises
    and cleared only once the message went out. ``fire`` sends it and returns
    True (or None) when it was sent, False when it could not be sent now (IP
    stays set; ``retry`` tries again, as does the next event or IM write); a
    sender that completes later sets ``in_flight`` and calls ``delivered``.
    The data and address registers follow the control register (+4 DATA,
    +8 ADDR, +0xC UADDR: FECTL, IECTL and PECTL alike).
    """

    def __init__(self, regs: RegisterBank, ctl: int, fire: Callable[[], bool | None]) -> None:
        self.regs, self.ctl, self.fire = regs, ctl, fire
        self.signals = 0
        self.in_flight = False

    def message(self) -> tuple[int, int]:
        """``(address, data)`` of the event's MSI (UADDR:ADDR, DATA)."""
        addr = (self.regs.get(self.ctl + 0xC) << 32) | self.regs.get(self.ctl + 8)
        return addr, self.regs.get(self.ctl + 4)

    @property
    def pending(self) -> bool:
        return bool(EventCtl.IP.get(self.regs.get(self.ctl)))

    def raise_event(self) -> None:
        """The event condition arose: set IP, deliver unless masked."""
        self.regs.set_bits(self.ctl, EventCtl.IP.mask)
        self.retry()

    def ctl_written(self, _raw: int = 0) -> None:
        """IM cleared while IP is set: deliver now."""
        self.retry()

    def retry(self) -> None:
        """Send the pending message if IP is set, IM clear and none is in flight."""
        ctl = self.regs.get(self.ctl)
        if not EventCtl.IP.get(ctl) or EventCtl.IM.get(ctl) or self.in_flight:
            return
        if self.fire() is not False and not self.in_flight:
            self.delivered()

    def delivered(self) -> None:
        """The message went out: IP clears."""
        self.in_flight = False
        self.regs.set_bits(self.ctl, clear_mask=EventCtl.IP.mask)
        self.signals += 1

    def cancel(self) -> None:
        """The condition went away while pending (software cleared it): clear IP."""
        self.regs.set_bits(self.ctl, clear_mask=EventCtl.IP.mask)


def define_vtd_registers(bank: RegisterBank, hooks: dict[Reg, Callable[[int], None]],
                         *, cm: int = 1) -> None:
    """Declare every VT-d register of the function in ``bank``, with ``hooks``."""
    h = hooks.get
    ones = (1 << 64) - 1
    im = EventCtl.IM.mask
    bank.define(Reg.VER, 4, VER_VALUE)
    bank.define(Reg.CAP, 8, cap_value(cm))
    bank.define(Reg.ECAP, 8, ecap_value())
    bank.define(Reg.GCMD, 4, 0, on_write=h(Reg.GCMD))          # write-only: reads 0
    bank.define(Reg.GSTS, 4, 0)
    bank.define(Reg.RTADDR, 8, 0, wmask=Rtaddr.RTA.mask | Rtaddr.TTM.mask)
    bank.define(Reg.CCMD, 8, 0, wmask=ones, on_write=h(Reg.CCMD))
    fsts_w1c = Fsts.PFO.mask | Fsts.IQE.mask | Fsts.ICE.mask | Fsts.ITE.mask
    bank.define(Reg.FSTS, 4, 0, w1cmask=fsts_w1c, on_write=h(Reg.FSTS))
    bank.define(Reg.FECTL, 4, im, wmask=im, on_write=h(Reg.FECTL))
    bank.define(Reg.FEDATA, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.FEADDR, 4, 0, wmask=0xFFFF_FFFC)
    bank.define(Reg.FEUADDR, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.IQH, 8, 0)
    bank.define(Reg.IQT, 8, 0, wmask=Iqh.QH.mask, on_write=h(Reg.IQT))
    bank.define(Reg.IQA, 8, 0, wmask=Iqa.IQA.mask | Iqa.DW.mask | Iqa.QS.mask)
    bank.define(Reg.ICS, 4, 0, w1cmask=Ics.IWC.mask, on_write=h(Reg.ICS))
    bank.define(Reg.IECTL, 4, im, wmask=im, on_write=h(Reg.IECTL))
    bank.define(Reg.IEDATA, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.IEADDR, 4, 0, wmask=0xFFFF_FFFC)
    bank.define(Reg.IEUADDR, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.IQERCD, 8, 0)
    bank.define(Reg.PQH, 8, 0, wmask=Pqh.PQH.mask)
    bank.define(Reg.PQT, 8, 0, wmask=Pqh.PQH.mask)
    bank.define(Reg.PQA, 8, 0, wmask=Pqa.PQA.mask | Pqa.PQS.mask)
    bank.define(Reg.PRS, 4, 0, w1cmask=Prs.PPR.mask | Prs.PRO.mask)
    bank.define(Reg.PECTL, 4, im, wmask=im, on_write=h(Reg.PECTL))
    bank.define(Reg.PEDATA, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.PEADDR, 4, 0, wmask=0xFFFF_FFFC)
    bank.define(Reg.PEUADDR, 4, 0, wmask=0xFFFF_FFFF)
    bank.define(Reg.IVA, 8, 0, wmask=ones & ~0xF80)
    bank.define(Reg.IOTLB, 8, 0, wmask=ones, on_write=h(Reg.IOTLB))
    for i in range(NFR):
        off = Reg.FRCD + i * FRCD_SIZE
        bank.define(off, 8, 0)
        bank.define(off + 8, 8, 0, w1cmask=FrcdHi.F.mask, on_write=h(Reg.FRCD))
