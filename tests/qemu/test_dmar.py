"""vuser.qemu.dmar: the DMAR bytes against a table checked by hand (VT-d spec ch. 8), and back."""

from __future__ import annotations

import pytest

from vuser.qemu.dmar import (ATSR_ALL_PORTS, AcpiHeader, Atsr, DeviceScope, DmarHeader, Drhd,
                             PathEntry, Scope, build_dmar, parse_dmar)

# vuser-iommu behind the root port at 00:01.0 (register base 0xfe400000), a
# vuser-dma behind 00:02.0 and a sample behind 00:04.0. Offsets and values
# from the spec's tables: ACPI header (5.2.6), DMAR (8.1), DRHD (8.3),
# device scope (8.3.1), ATSR (8.5).
EXPECTED = [
    # offset, bytes, what
    (0, b"DMAR", "signature"),
    (4, (92).to_bytes(4, "little"), "length: 48 + DRHD 16 + 2 scopes of 10 + ATSR 8"),
    (8, b"\x01", "revision 1"),
    # 9: checksum, checked below
    (10, b"VUSER ", "OEM id"),
    (16, b"VUSERDMR", "OEM table id"),
    (24, (1).to_bytes(4, "little"), "OEM revision"),
    (28, b"VUSR", "creator id"),
    (32, (1).to_bytes(4, "little"), "creator revision"),
    (36, bytes([47]), "host address width 48 - 1"),
    (37, b"\x00", "flags: no INTR_REMAP"),
    (38, bytes(10), "reserved"),
    # DRHD
    (48, (0).to_bytes(2, "little"), "type 0: DRHD"),
    (50, (36).to_bytes(2, "little"), "DRHD length: 16 + 10 + 10"),
    (52, b"\x00", "flags: not INCLUDE_PCI_ALL"),
    (53, b"\x00", "size: 2^0 4 KiB pages of registers"),
    (54, (0).to_bytes(2, "little"), "segment 0"),
    (56, (0xFE400000).to_bytes(8, "little"), "register base address"),
    # scope 1: vuser-dma
    (64, b"\x01", "scope type 1: PCI endpoint"),
    (65, b"\x0a", "scope length 6 + 2 path entries"),
    (66, b"\x00\x00", "reserved"),
    (68, b"\x00", "enumeration id"),
    (69, b"\x00", "start bus 0"),
    (70, b"\x02\x00", "path: root port device 2, function 0"),
    (72, b"\x00\x00", "path: device 0, function 0 behind it"),
    # scope 2: sample
    (74, b"\x01\x0a\x00\x00\x00\x00\x04\x00\x00\x00", "endpoint, 00:04.0 then 0.0"),
    # ATSR
    (84, (2).to_bytes(2, "little"), "type 2: ATSR"),
    (86, (8).to_bytes(2, "little"), "ATSR length"),
    (88, b"\x01", "flags: ALL_PORTS"),
    (89, b"\x00", "reserved"),
    (90, (0).to_bytes(2, "little"), "segment 0"),
]


def table() -> bytes:
    return build_dmar(0xFE400000, [[(2, 0), (0, 0)], [(4, 0), (0, 0)]])


def test_layout_sizes_are_the_specs():
    assert (AcpiHeader.SIZE, DmarHeader.SIZE, Drhd.SIZE, DeviceScope.SIZE, PathEntry.SIZE,
            Atsr.SIZE) == (36, 48, 16, 6, 2, 8)
    assert DmarHeader.offset_of("host_address_width") == 36
    assert Drhd.offset_of("register_base") == 8


@pytest.mark.parametrize("offset, want, what", EXPECTED, ids=[e[2] for e in EXPECTED])
def test_bytes_match_the_hand_checked_table(offset, want, what):
    data = table()
    assert data[offset:offset + len(want)] == want, what


def test_the_table_is_exactly_that_long_and_sums_to_zero():
    data = table()
    covered = sum(len(b) for _, b, _ in EXPECTED) + 1  # + the checksum byte
    assert len(data) == 92 == covered
    assert sum(data) % 256 == 0
    assert data[9] == (-sum(data[:9] + data[10:])) % 256


def test_parse_round_trip():
    dmar = parse_dmar(table())
    assert dmar.header.signature == b"DMAR" and dmar.header.revision == 1
    assert dmar.host_address_width == 48
    assert dmar.header.flags == 0
    assert len(dmar.units) == 1
    unit = dmar.units[0]
    assert (unit.register_base, unit.flags, unit.segment, unit.size) == (0xFE400000, 0, 0, 0)
    assert unit.scopes == (Scope(((2, 0), (0, 0))), Scope(((4, 0), (0, 0))))
    assert all(s.type == 1 and s.start_bus == 0 for s in unit.scopes)
    assert dmar.atsrs == ((ATSR_ALL_PORTS, 0),)


def test_register_set_size_is_log2_pages():
    data = build_dmar(0xFE400000, [[(2, 0), (0, 0)]], register_size=0x4000)
    assert parse_dmar(data).units[0].size == 2


@pytest.mark.parametrize("base, endpoints, message", [
    (0xFE400800, [[(2, 0)]], "not a 4 KiB aligned address"),
    (0, [[(2, 0)]], "not a 4 KiB aligned address"),
    (0xFE400000, [], "without device scopes"),
    (0xFE400000, [[]], "needs a path"),
    (0xFE400000, [[(32, 0)]], r"\(32, 0\) is not a device 0..31"),
    (0xFE400000, [[(1, 8)]], r"\(1, 8\) is not a device 0..31, function 0..7"),
])
def test_bad_input_is_refused(base, endpoints, message):
    with pytest.raises(ValueError, match=message):
        build_dmar(base, endpoints)


def test_parse_refuses_damaged_tables():
    data = bytearray(table())
    bad_sum = bytes(data[:9]) + bytes([(data[9] + 1) % 256]) + bytes(data[10:])
    with pytest.raises(ValueError, match="checksum"):
        parse_dmar(bad_sum)
    with pytest.raises(ValueError, match="header length 92 but 91 bytes"):
        parse_dmar(bytes(data[:-1]))
    with pytest.raises(ValueError, match="signature"):
        parse_dmar(b"APIC" + bytes(data[4:]))
    # A scope length that runs past its DRHD (checksum fixed up, so only the length is wrong).
    data[65] = 0x30
    data[9] = (data[9] - 0x26) % 256
    with pytest.raises(ValueError, match="device scope at 64 has a bad length 48"):
        parse_dmar(bytes(data))
