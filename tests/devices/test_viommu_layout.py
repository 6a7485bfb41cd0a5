"""vuser-iommu pieces without sockets: the VT-d layouts against hand-computed values
(so that the guest driver, which uses the same declarations, cannot hide a shared
mistake), the masked register bank, the event logic and the table reader."""

from __future__ import annotations

import errno
import struct

import pytest

from vuser.devices.viommu_regs import EventSource, RegisterBank, cap_value, ecap_value
from vuser.devices.viommu_tables import MAX_SCAN_TABLES, TableFault, TableReader
from vuser.devices.vtd_layout import (
    ContextEntry, ContextQw0, ContextQw1, VtdFaultReason, Frcd, FrcdHi, InvDesc, InvHeader,
    PageRequest, PasidDirEntry, PasidEntry, PasidQw0, PasidQw2, PcDesc, PgrespDesc, PgrespQw1,
    Pgtt, PrdHi, PrdLo, RootEntry, RootHalf, WaitAddr, WaitDesc, inv_type,
)
from vuser.errors import RemoteProtocolError
from vuser.backend import DmaError


def test_struct_sizes_follow_the_spec():
    assert (RootEntry.SIZE, ContextEntry.SIZE, PasidEntry.SIZE) == (16, 32, 64)
    assert (InvDesc.SIZE, PageRequest.SIZE, Frcd.SIZE) == (32, 32, 16)


def test_descriptor_bits_by_hand():
    assert PcDesc.pack(TYPE_LO=7, G=1, DID=5, PASID=7) == 0x0000_0007_0005_0017
    assert PgrespDesc.pack(TYPE_LO=9, PP=1, RC=1, RID=0x0108, PASID=3) == 0x0000_0003_0108_1019
    assert PgrespQw1.pack(LPIG=1, PRGI=17) == 0x8C
    assert WaitDesc.pack(TYPE_LO=5, IF=1, SW=1, STDATA=0xABCD) == 0x0000_ABCD_0000_0035
    assert WaitAddr.pack(STADDR=0x4000_1000 >> 2) == 0x4000_1000
    assert inv_type(InvHeader.pack(TYPE_LO=2, TYPE_HI=1)) == 0x12


def test_table_entry_bits_by_hand():
    assert PasidQw0.pack(P=1, PGTT=Pgtt.FIRST_STAGE) == 0x41
    assert PasidQw0.pack(P=1, PGTT=Pgtt.PASS_THROUGH) == 0x101
    assert PasidQw2.pack(FSPM=1, FSPTPTR=0x4000_5000 >> 12) == 0x4000_5004
    assert ContextQw0.pack(P=1, DTE=1, PRE=1, PDTS=7, PASIDDIRPTR=0x4000_2000 >> 12) \
        == 0x4000_2E15
    assert ContextQw1.pack(RID_PASID=5) == 5
    assert RootHalf.pack(P=1, CTP=0x4000_3000 >> 12) == 0x4000_3001
    assert PasidDirEntry.pack(P=1, FPD=1, SMPTBLPTR=0x4000_4000 >> 12) == 0x4000_4003


def test_fault_record_and_page_request_bits_by_hand():
    assert FrcdHi.pack(SID=0x108, PP=1, FR=0x59, PV=5, T1=1, F=1) == 0xC000_0559_8000_0108
    assert PrdLo.pack(TYPE=1, PP=1, RID=0x0108, PASID=3) == 0x0000_0003_0108_0101
    assert PrdHi.pack(RDR=1, WRR=1, LPIG=1, PRGI=17, ADDR=0x5555_3000 >> 12) == 0x5555_308F


def test_capabilities_by_hand():
    assert cap_value() == 0x1112_0780_2038_0C86
    # C QI DT PT IRO=0x10 NEST PRS SRS EAFS PSS=19 PASID PDS SMTS FSTS SMPWCS RPS
    assert ecap_value() == (0x1 | 0x2 | 0x4 | 0x40 | 0x1000 | 1 << 26 | 1 << 29 | 1 << 31
                            | 1 << 34 | 19 << 35 | 1 << 40 | 1 << 42 | 1 << 43 | 1 << 47
                            | 1 << 48 | 1 << 49)


# -- the register bank --------------------------------------------------------------

@pytest.fixture
def bank():
    seen = []
    b = RegisterBank(0x100)
    b.define(0x00, 8, 0x1111_2222_3333_4444)                         # RO
    b.define(0x08, 8, 0, wmask=0xFFFF_0000_FFFF_FFF0, on_write=seen.append)
    b.define(0x10, 4, 0xF, w1cmask=0x3, wmask=0x10)
    b.seen = seen
    return b


def test_bank_masks(bank):
    bank.write(0x00, struct.pack("<Q", 0))
    assert bank.get(0x00) == 0x1111_2222_3333_4444
    bank.write(0x08, struct.pack("<Q", (1 << 64) - 1))
    assert bank.get(0x08) == 0xFFFF_0000_FFFF_FFF0
    bank.write(0x10, struct.pack("<I", 0x11))      # clears bit 0 (W1C), sets bit 4 (RW)
    assert bank.get(0x10) == 0x1E
    assert bank.read(0x40, 4) == bytes(4)
    bank.write(0x40, b"\xff" * 4)                   # undeclared: ignored
    assert bank.read(0x40, 4) == bytes(4)


def test_bank_half_writes_of_a_quad_call_the_hook_with_the_written_half(bank):
    bank.write(0x0C, struct.pack("<I", 0xABCD_0000))
    bank.write(0x08, struct.pack("<I", 0x1234_5678))
    assert bank.get(0x08) == 0xABCD_0000_1234_5670
    assert bank.seen == [0xABCD_0000 << 32, 0x1234_5678]


@pytest.mark.parametrize("off, n", [(0x02, 4), (0x04, 8), (0x00, 2), (0x00, 16), (0x08, 3)])
def test_bank_access_must_be_aligned_4_or_8(bank, off, n):
    with pytest.raises(RemoteProtocolError) as ei:
        bank.read(off, n)
    assert ei.value.errno == errno.EINVAL


def test_bank_reset(bank):
    bank.write(0x08, struct.pack("<Q", 0x10))
    bank.set(0x00, 5)
    bank.reset()
    assert bank.get(0x08) == 0 and bank.get(0x00) == 0x1111_2222_3333_4444


def test_event_source_mask_and_pending():
    b = RegisterBank(0x100)
    b.define(0x38, 4, 1 << 31, wmask=1 << 31)
    fired = []
    ev = EventSource(b, 0x38, lambda: fired.append(1))
    ev.raise_event()
    assert fired == [] and b.get(0x38) == 0xC000_0000       # IM, IP
    b.write(0x38, struct.pack("<I", 0))
    ev.ctl_written()
    assert fired == [1] and b.get(0x38) == 0
    ev.raise_event()
    assert fired == [1, 1] and b.get(0x38) == 0


# -- the table reader ----------------------------------------------------------------

class Memory:
    """Sparse guest memory for the reader: pages that exist, DmaError elsewhere."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.reads = 0

    def page(self, gpa: int) -> bytearray:
        return self.pages.setdefault(gpa >> 12, bytearray(4096))

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa & 0xFFF
        self.page(gpa)[off:off + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        self.reads += 1
        out = bytearray()
        while n:
            if gpa >> 12 not in self.pages:
                raise DmaError(errno.EFAULT, gpa, n)
            off = gpa & 0xFFF
            k = min(n, 4096 - off)
            out += self.pages[gpa >> 12][off:off + k]
            gpa, n = gpa + k, n - k
        return bytes(out)


def rig_tables(mem: Memory, pdts: int = 0):
    root, ctp, pdir = 0x1000, 0x2000, 0x10_0000
    mem.write(root + 1 * 16, RootEntry(RootHalf.pack(P=1, CTP=ctp >> 12), 0).pack())
    mem.write(ctp + 8 * 32, ContextEntry(ContextQw0.pack(P=1, PDTS=pdts, PASIDDIRPTR=pdir >> 12),
                                         0, 0, 0).pack())
    for i in range(0, 8 << (pdts + 7), 4096):
        mem.page(pdir + i)
    return TableReader(mem.read, root | 1 << 10), pdir


def test_reader_pasid_beyond_the_directory_size():
    mem = Memory()
    reader, _ = rig_tables(mem, pdts=0)
    ci = reader.context(0x108)
    assert ci.dir_entries == 128
    assert reader.pasid(ci, 128 * 64) == TableFault(VtdFaultReason.PASID_DIR_P)
    assert reader.pasid(ci, 5) == TableFault(VtdFaultReason.PASID_DIR_P)


def test_reader_scan_reads_a_bounded_number_of_tables():
    mem = Memory()
    reader, pdir = rig_tables(mem, pdts=7)
    table = 0x20_0000
    pe = PasidEntry(PasidQw0.pack(P=1, PGTT=Pgtt.PASS_THROUGH), 0, 0, 0, 0, 0, 0, 0).pack()
    for i in range(64):
        mem.write(table + i * 64, pe)
    de = struct.pack("<Q", PasidDirEntry.pack(P=1, SMPTBLPTR=table >> 12))
    mem.write(pdir, de * (1 << 14))
    ci = reader.context(0x108)
    mem.reads = 0
    found = list(reader.scan(ci))
    assert len(found) == MAX_SCAN_TABLES * 64
    assert mem.reads == 1 + MAX_SCAN_TABLES


def test_reader_scan_skips_absent_and_unreadable_tables():
    mem = Memory()
    reader, pdir = rig_tables(mem)
    good = 0x30_0000
    mem.write(good + 3 * 64, PasidEntry(PasidQw0.pack(P=1, PGTT=Pgtt.PASS_THROUGH), 9,
                                        0, 0, 0, 0, 0, 0).pack())
    mem.write(pdir, struct.pack("<QQQ", PasidDirEntry.pack(P=1, SMPTBLPTR=0x7777_0000 >> 12),
                                0, PasidDirEntry.pack(P=1, SMPTBLPTR=good >> 12)))
    found = list(reader.scan(reader.context(0x108)))
    assert [(p, r.pgtt, r.did) for p, r in found] == [(2 * 64 + 3, Pgtt.PASS_THROUGH, 9)]
    assert reader.pasid(reader.context(0x108), 5) == TableFault(VtdFaultReason.PASID_ACCESS)


def test_reader_wrapping_pointers_are_access_errors():
    mem = Memory()
    reader = TableReader(mem.read, ((1 << 64) - 4096) | 1 << 10)
    assert reader.context(0xFF00) == TableFault(VtdFaultReason.ROOT_ACCESS)


def test_the_viommu_shows_its_label_like_every_vuser_device():
    """docs/architecture.md "Devices": the label is in a vendor capability and a VSEC."""
    from vuser.devices.platform import Platform
    from vuser.devices.viommu import VIommuDevice
    from vuser.pci.caps import walk_extended, walk_standard

    platform = Platform()
    try:
        dev = VIommuDevice(label=0x10042)
        dev.join_platform(platform)
        config = dev.config.read(0, dev.config.size)
        vendor = [e for e in walk_standard(config) if e.cap_id == 0x09]
        vsec = [e for e in walk_extended(config) if e.cap_id == 0x0B]
        assert len(vendor) == 1 and len(vsec) == 1
        at = vendor[0].offset
        assert int.from_bytes(config[at + 4:at + 8], "little") == 0x10042
        assert dev.iommu.label == 0x10042
    finally:
        dev.close()
        platform.close()


def test_event_source_keeps_ip_until_the_message_goes_out():
    b = RegisterBank(0x100)
    b.define(0x38, 4, 0, wmask=1 << 31)
    results = [False]
    ev = EventSource(b, 0x38, lambda: results[-1])
    ev.raise_event()
    assert b.get(0x38) == 0x4000_0000 and ev.signals == 0       # not sent: IP pending
    results.append(True)
    ev.retry()
    assert b.get(0x38) == 0 and ev.signals == 1
    ev.in_flight = True                                          # an asynchronous sender
    b.set(0x38, 0x4000_0000)
    ev.retry()
    assert ev.signals == 1 and b.get(0x38) == 0x4000_0000        # one message at a time
    ev.delivered()
    assert b.get(0x38) == 0 and not ev.in_flight
