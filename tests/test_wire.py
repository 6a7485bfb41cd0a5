"""vuser.wire: declared layouts round-trip and reject what does not fit."""

import pytest

from vuser.wire import Bits, BitLayout, Bytes, Pad, Struct, u8, u16, u32, u64


class Hdr(Struct, size=16):
    a: u16
    b: u16 = 7
    c: u32
    d: u64


class Tail(Hdr):
    name: Bytes(4)
    _rsvd: Pad(3)
    e: u8


def test_struct_round_trip_and_size():
    h = Hdr(a=1, c=3, d=1 << 63)
    assert Hdr.SIZE == 16 and len(h.pack()) == 16
    assert Hdr.unpack(h.pack()) == h
    assert h.b == 7


def test_struct_inherits_fields_and_ignores_padding():
    t = Tail(a=1, name=b"ab", e=9)
    raw = bytearray(t.pack())
    assert Tail.SIZE == 24 and Tail.offset_of("e") == 23
    raw[20] = 0xFF  # reserved byte set by a peer
    back = Tail.unpack(raw)
    assert back.name == b"ab\0\0" and back.e == 9


def test_struct_rejects_short_and_oversized():
    with pytest.raises(ValueError, match="needs 16 bytes"):
        Hdr.unpack(b"\0" * 15)
    with pytest.raises(ValueError, match="does not fit"):
        Hdr(a=1 << 16).pack()
    with pytest.raises(ValueError, match="does not fit"):
        Hdr(c=-1).pack()


def test_struct_size_assertion():
    with pytest.raises(TypeError, match="spec says 3"):
        class Bad(Struct, size=3):
            x: u32


class Pte(BitLayout, width=64):
    P = Bits(0)
    RW = Bits(1)
    ADDR = Bits(12, 51)
    XD = Bits(63)


def test_bits_pack_unpack():
    v = Pte.pack(P=1, ADDR=0xABCDE, XD=1)
    assert v == 0x8000_0000_ABCD_E001
    assert Pte.unpack(v) == {"P": 1, "RW": 0, "ADDR": 0xABCDE, "XD": 1}
    assert Pte.RW.put(v, 1) == v | 2
    with pytest.raises(ValueError):
        Pte.pack(ADDR=1 << 40)
    with pytest.raises(ValueError, match="no field"):
        Pte.pack(Q=1)


def test_bits_overlap_rejected():
    with pytest.raises(TypeError, match="overlaps"):
        class Bad(BitLayout, width=8):
            A = Bits(0, 3)
            B = Bits(3)


def test_bits_reserved_names_rejected():
    with pytest.raises(TypeError, match="reserved"):
        class Bad(BitLayout, width=16):
            WIDTH = Bits(0, 3)
