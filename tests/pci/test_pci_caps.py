"""Capabilities: placement, chains a guest can walk, fields and their RO/RW/RW1C bits."""

from __future__ import annotations

import pytest

from vuser.errors import LocalProtocolError
from vuser.pci.caps import CapabilityChain, ExtCapHeader, walk_extended, walk_standard
from vuser.pci.caps_ext import (
    Ats, AtsCap, AtsCtl, Pasid, PasidCap, PasidCtl, Pri, PriStatus, Vsec, VsecHeader,
)
from vuser.pci.caps_std import (
    Msi, MsiControl, MsiX, MsixControl, MsixTableReg, PciExpress, PcieFlags, Pmcsr,
    PowerManagement, VendorSpecific,
)
from vuser.pci.config import ConfigSpace, Status


def build(*caps):
    cs = ConfigSpace(4096)
    chain = CapabilityChain(cs)
    for cap in caps:
        chain.add(cap)
    return cs, chain


def all_caps():
    return [PowerManagement(), MsiX(4, 4, 0, 0x800), PciExpress(), VendorSpecific(0x1234),
            Msi(8), Pasid(20), Ats(), Pri(), Vsec(0x1234)]


def write(cs, off, size, value):
    cs.write(off, value.to_bytes(size, "little"))


def test_chains_are_walkable_and_match_placement():
    caps = all_caps()
    cs, chain = build(*caps)
    std = walk_standard(bytes(cs.config))
    ext = walk_extended(bytes(cs.config))
    assert [(e.offset, e.cap_id) for e in std] == [(c.offset, c.ID) for c in chain.standard]
    assert [(e.offset, e.cap_id, e.version) for e in ext] == [
        (c.offset, c.ID, c.VERSION) for c in chain.extended]
    assert [e.cap_id for e in std] == [0x01, 0x11, 0x10, 0x09, 0x05]
    assert [e.cap_id for e in ext] == [0x1B, 0x0F, 0x13, 0x0B]
    assert std[0].offset == 0x40 and ext[0].offset == 0x100
    assert cs.peek(0x34, 1) == 0x40 and cs.peek(0x06, 2) & Status.CAP_LIST.mask
    # Every capability lies after the previous one, DWORD aligned, without overlap.
    for group in (chain.standard, chain.extended):
        for a, b in zip(group, group[1:]):
            assert a.offset % 4 == 0 and a.offset + a.size() <= b.offset
    # The last next pointers are 0.
    assert cs.peek(chain.standard[-1].offset + 1, 1) == 0
    assert ExtCapHeader.NEXT.get(cs.peek(chain.extended[-1].offset, 4)) == 0


def test_headers_are_read_only():
    cs, chain = build(*all_caps())
    before = bytes(cs.config)
    for cap in chain:
        cs.write(cap.offset, b"\xff" * (4 if cap.EXTENDED else 2))
    assert bytes(cs.config) == before


def test_pasid_width_20_and_control():
    cs, chain = build(Pasid(20))
    cap = chain.extended[0]
    assert PasidCap.unpack(cap.read_field(cs, "cap")) == {"EXEC": 0, "PRIV": 0, "MAX_WIDTH": 20}
    write(cs, cap.field_offset("ctl"), 2, 0xFFFF)
    assert cap.read_field(cs, "ctl") == PasidCtl.ENABLE.mask     # exec/priv not supported: RO 0
    assert cap.enabled(cs)
    cs2, chain2 = build(Pasid(16, exec_perm=True, privileged=True))
    cap2 = chain2.extended[0]
    write(cs2, cap2.field_offset("ctl"), 2, 0xFFFF)
    assert cap2.read_field(cs2, "ctl") == 0b111
    assert PasidCap.MAX_WIDTH.get(cap2.read_field(cs2, "cap")) == 16


def test_ats():
    cs, chain = build(Ats(invq_depth=0))
    cap = chain.extended[0]
    assert AtsCap.unpack(cap.read_field(cs, "cap")) == {
        "INVQ_DEPTH": 0, "PAGE_ALIGNED": 1, "GLOBAL_INV": 1}
    write(cs, cap.field_offset("ctl"), 2, 0xFFFF)
    assert cap.read_field(cs, "ctl") == AtsCtl.ENABLE.mask | AtsCtl.STU.mask
    write(cs, cap.field_offset("cap"), 2, 0)
    assert AtsCap.PAGE_ALIGNED.get(cap.read_field(cs, "cap")) == 1


def test_pri_stopped_follows_enable_and_status_is_w1c():
    cs, chain = build(Pasid(), Pri(capacity=64))
    pri = chain.extended[1]
    status = lambda: PriStatus.unpack(pri.read_field(cs, "status"))  # noqa: E731
    assert status()["STOPPED"] == 1 and status()["PASID_REQUIRED"] == 1
    assert pri.read_field(cs, "capacity") == 64
    write(cs, pri.field_offset("ctl"), 2, 1)
    assert pri.enabled(cs) and status()["STOPPED"] == 0
    write(cs, pri.field_offset("ctl"), 2, 0b10)   # Reset with Enable clear: reads back 0
    assert pri.read_field(cs, "ctl") == 0 and status()["STOPPED"] == 1
    # RW1C: a failure the device recorded is cleared by writing 1, kept by writing 0.
    pri.poke_field(cs, "status", pri.read_field(cs, "status") | PriStatus.RESPONSE_FAILURE.mask)
    write(cs, pri.field_offset("status"), 2, 0)
    assert status()["RESPONSE_FAILURE"] == 1
    write(cs, pri.field_offset("status"), 2, 0xFFFF)
    assert status()["RESPONSE_FAILURE"] == 0 and status()["STOPPED"] == 1
    write(cs, pri.field_offset("allocation"), 4, 32)
    write(cs, pri.field_offset("capacity"), 4, 0)
    assert pri.read_field(cs, "allocation") == 32 and pri.read_field(cs, "capacity") == 64


def test_vsec_and_vendor_cap_carry_the_label():
    cs, chain = build(VendorSpecific(0xCAFE_F00D), Vsec(0xCAFE_F00D))
    vendor, vsec = chain.standard[0], chain.extended[0]
    assert cs.read(vendor.offset, 8) == bytes([0x09, 0, 8, 0]) + (0xCAFE_F00D).to_bytes(4, "little")
    assert VsecHeader.unpack(vsec.read_field(cs, "vsec_header")) == {
        "ID": Vsec.VSEC_ID_LABEL, "REV": 1, "LENGTH": 12}
    assert vsec.read_field(cs, "label") == 0xCAFE_F00D


def test_msix_cap():
    cs, chain = build(MsiX(vectors=4, bar=4, table_offset=0, pba_offset=0x800))
    cap = chain.standard[0]
    assert MsixControl.TABLE_SIZE.get(cap.read_field(cs, "control")) == 3
    assert MsixTableReg.unpack(cap.read_field(cs, "table")) == {"BIR": 4, "OFFSET": 0}
    assert MsixTableReg.unpack(cap.read_field(cs, "pba")) == {"BIR": 4, "OFFSET": 0x800 >> 3}
    write(cs, cap.field_offset("control"), 2, 0xFFFF)
    assert cap.read_field(cs, "control") == 0xC003   # Enable, Function Mask RW; size RO
    assert cap.enabled(cs)


def test_msi_cap():
    cs, chain = build(Msi(8))
    cap = chain.standard[0]
    ctl = MsiControl.unpack(cap.read_field(cs, "control"))
    assert ctl == {"ENABLE": 0, "MMC": 3, "MME": 0, "ADDR64": 1, "PVM": 1}
    write(cs, cap.field_offset("mask"), 4, 0xFFFF_FFFF)
    assert cap.read_field(cs, "mask") == 0xFF
    write(cs, cap.field_offset("address_lo"), 4, 0xFEE0_0003)
    assert cap.read_field(cs, "address_lo") == 0xFEE0_0000
    write(cs, cap.field_offset("pending"), 4, 0xFFFF_FFFF)
    assert cap.read_field(cs, "pending") == 0


def test_pcie_cap_v2_endpoint():
    cs, chain = build(PciExpress())
    cap = chain.standard[0]
    assert cap.size() == 0x3C
    assert PcieFlags.unpack(cap.read_field(cs, "flags")) == {
        "VERSION": 2, "TYPE": 0, "SLOT": 0, "IRQ": 0}
    cap.poke_field(cs, "devsta", 0x0025)        # correctable error + transactions pending
    write(cs, cap.field_offset("devsta"), 2, 0xFFFF)
    assert cap.read_field(cs, "devsta") == 0x0020   # RW1C error bit cleared, RO bit kept
    write(cs, cap.field_offset("devctl"), 2, 0xFFFF)
    assert cap.read_field(cs, "devctl") & 0x8000 == 0   # no FLR: Initiate FLR is RO 0


def test_pm_ignores_unsupported_states_and_resets():
    cs, chain = build(PowerManagement())
    pm = chain.standard[0]
    off = pm.field_offset("pmcsr")
    assert Pmcsr.NO_SOFT_RESET.get(pm.read_field(cs, "pmcsr")) == 1
    write(cs, off, 2, 3)
    assert pm.power_state == 3 and Pmcsr.POWER_STATE.get(pm.read_field(cs, "pmcsr")) == 3
    write(cs, off, 2, 1)                       # D1 is not supported: discarded
    assert Pmcsr.POWER_STATE.get(pm.read_field(cs, "pmcsr")) == 3
    chain.reset()
    assert pm.power_state == 0 and Pmcsr.POWER_STATE.get(pm.read_field(cs, "pmcsr")) == 0
    write(cs, off, 2, 2)
    assert Pmcsr.POWER_STATE.get(pm.read_field(cs, "pmcsr")) == 0


def test_explicit_offset_and_linking_in_order_of_addition():
    cs = ConfigSpace(4096)
    chain = CapabilityChain(cs)
    assert chain.add(PowerManagement(), offset=0x80) == 0x80
    assert chain.add(VendorSpecific(1)) == 0x88
    assert chain.add(Msi(1), offset=0x60) == 0x60
    assert [e.offset for e in walk_standard(bytes(cs.config))] == [0x80, 0x88, 0x60]


@pytest.mark.parametrize("case", ["misaligned", "below 0x40", "past 0xff", "overlap",
                                  "ext not at 0x100", "ext in PCI space", "placed twice"])
def test_placement_errors(case):
    cs = ConfigSpace(4096)
    chain = CapabilityChain(cs)
    chain.add(PowerManagement())
    with pytest.raises(LocalProtocolError):
        if case == "misaligned":
            chain.add(Msi(1), offset=0x62)
        elif case == "below 0x40":
            chain.add(Msi(1), offset=0x3C)
        elif case == "past 0xff":
            chain.add(PciExpress(), offset=0xF0)
        elif case == "overlap":
            chain.add(Msi(1), offset=0x44)
        elif case == "ext not at 0x100":
            chain.add(Pasid(), offset=0x200)
        elif case == "ext in PCI space":
            CapabilityChain(ConfigSpace(256)).add(Pasid())
        elif case == "placed twice":
            chain.add(chain.standard[0])


def test_standard_list_fills_up():
    cs = ConfigSpace(256)
    chain = CapabilityChain(cs)
    n = 0
    with pytest.raises(LocalProtocolError):
        while True:
            chain.add(PciExpress())
            n += 1
    assert n == (0x100 - 0x40) // 0x3C
    assert len(walk_standard(bytes(cs.config))) == n


def test_walkers_refuse_a_looping_list():
    cs, chain = build(PowerManagement(), VendorSpecific(1))
    cs.poke(chain.standard[1].offset + 1, 1, 0x40)  # points back to the first
    with pytest.raises(ValueError):
        walk_standard(bytes(cs.config))


@pytest.mark.parametrize("make", [lambda: Pasid(21), lambda: Pasid(0), lambda: Msi(3),
                                  lambda: MsiX(0, 0, 0, 8), lambda: MsiX(4, 6, 0, 0x800),
                                  lambda: Ats(invq_depth=32), lambda: VendorSpecific(1 << 32)])
def test_bad_parameters_are_refused(make):
    with pytest.raises(LocalProtocolError):
        make()
