"""Config space: RO/RW/RW1C masks, any width at any offset, bounds."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.pci.config import Command, ConfigSpace, Status, Type0Header


def test_ro_bytes_stay_rw_bytes_change():
    cs = ConfigSpace(256)
    cs.define(0x40, b"\x11\x22\x33\x44", wmask=b"\x00\xff\x0f\x00")
    cs.write(0x40, b"\xaa\xbb\xcc\xdd")
    assert cs.read(0x40, 4) == b"\x11\xbb\x3c\x44"


def test_w1c_clears_only_written_ones():
    cs = ConfigSpace(256)
    cs.define_int(0x06, 2, 0, w1cmask=Status.W1C)
    cs.poke(0x06, 2, Status.pack(PARITY=1, REC_MASTER_ABORT=1, CAP_LIST=1))
    cs.write(0x06, (0).to_bytes(2, "little"))  # writing 0 keeps everything
    assert cs.peek(0x06, 2) == Status.pack(PARITY=1, REC_MASTER_ABORT=1, CAP_LIST=1)
    cs.write(0x06, Status.pack(PARITY=1, CAP_LIST=1).to_bytes(2, "little"))
    # PARITY cleared; CAP_LIST is RO (not W1C) and stays; master abort untouched.
    assert cs.peek(0x06, 2) == Status.pack(REC_MASTER_ABORT=1, CAP_LIST=1)


def test_qemu_formula_with_rw_and_w1c_in_one_byte():
    cs = ConfigSpace(256)
    cs.define(0x50, b"\xf0", wmask=b"\x0f", w1cmask=b"\x30")
    cs.write(0x50, b"\x25")
    # ((0xf0 & ~0x0f) | (0x25 & 0x0f)) & ~(0x30 & 0x25) = (0xf0 | 0x05) & ~0x20
    assert cs.read(0x50, 1) == bytes([(0xF0 | 0x05) & ~0x20 & 0xFF])


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("offset", [0x41, 0x43, 0x45, 0xFD])
def test_widths_at_odd_offsets(width, offset):
    cs = ConfigSpace(256)
    cs.define(0x40, bytes(192), wmask=b"\xff\x00" * 96)  # even bytes RW, odd bytes RO
    if offset + width > 256:
        with pytest.raises(RemoteProtocolError):
            cs.write(offset, b"\xff" * width)
        return
    cs.write(offset, b"\xff" * width)
    got = cs.read(offset, width)
    assert got == bytes(0xFF if (offset + k) % 2 == 0 else 0 for k in range(width))
    assert cs.read(0x40, offset - 0x40) == bytes(offset - 0x40)


@given(data=st.data())
def test_every_write_follows_the_mask_formula(data):
    size = 256
    cs = ConfigSpace(size)
    init = data.draw(st.binary(min_size=size, max_size=size))
    wmask = data.draw(st.binary(min_size=size, max_size=size))
    w1c = bytes(b & ~m & 0xFF for b, m in zip(data.draw(st.binary(min_size=size, max_size=size)),
                                             wmask))
    cs.define(0, init, wmask, w1c)
    offset = data.draw(st.integers(0, size - 1))
    value = data.draw(st.binary(min_size=1, max_size=size - offset))
    cs.write(offset, value)
    want = bytearray(init)
    for k, v in enumerate(value):
        i = offset + k
        want[i] = ((init[i] & ~wmask[i]) | (v & wmask[i])) & ~(w1c[i] & v) & 0xFF
    assert cs.read(0, size) == want


@pytest.mark.parametrize("size", [256, 4096])
@pytest.mark.parametrize("where", ["negative offset", "straddles the end", "past the end",
                                   "larger than the space"])
def test_out_of_range_is_einval_and_changes_nothing(size, where):
    offset, count = {"negative offset": (-1, 2), "straddles the end": (size - 1, 2),
                     "past the end": (size, 1), "larger than the space": (0, size + 1)}[where]
    cs = ConfigSpace(size)
    cs.define(0, bytes(range(256)) * (size // 256), wmask=b"\xff" * size)
    before = bytes(cs.config)
    with pytest.raises(RemoteProtocolError) as e:
        cs.read(offset, count)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(RemoteProtocolError) as e:
        cs.write(offset, b"\xee" * count)
    assert e.value.errno == errno.EINVAL
    assert bytes(cs.config) == before


def test_negative_count_read_is_einval():
    with pytest.raises(RemoteProtocolError) as e:
        ConfigSpace(256).read(0, -1)
    assert e.value.errno == errno.EINVAL


def test_zero_length_access_at_the_end_is_allowed():
    cs = ConfigSpace(256)
    assert cs.read(256, 0) == b""
    cs.write(256, b"")


def test_hooks_run_only_for_overlapping_writes():
    cs = ConfigSpace(256)
    cs.define(0x04, b"\x00\x00", wmask=b"\xff\xff")
    calls = []
    cs.add_write_hook(0x04, 2, lambda off, n: calls.append((off, n)))
    cs.write(0x00, b"\x00" * 4)          # covers 0..3: no overlap
    cs.write(0x02, b"\x00" * 4)          # covers 2..5
    cs.write(0x05, b"\x01")
    assert calls == [(0x02, 4), (0x05, 1)]


def test_reset_restores_defaults_and_poke_does_not_change_them():
    cs = ConfigSpace(4096)
    cs.define_int(0x04, 2, 0, wmask=Command.MASTER.mask | Command.MEMORY.mask)
    cs.write(0x04, b"\x06\x00")
    cs.poke(0x06, 2, 0x10)
    assert cs.peek(0x04, 2) == 6 and cs.peek(0x06, 2) == 0x10
    cs.reset()
    assert cs.peek(0x04, 4) == 0


def test_device_side_misuse_is_local():
    cs = ConfigSpace(256)
    with pytest.raises(LocalProtocolError):
        cs.define(0xFF, b"\x00\x00")
    with pytest.raises(LocalProtocolError):
        cs.poke(0x100, 1, 0)
    with pytest.raises(LocalProtocolError):
        ConfigSpace(512)


def test_type0_header_layout_matches_the_spec():
    assert Type0Header.offset_of("command") == 0x04
    assert Type0Header.offset_of("bar0") == 0x10
    assert Type0Header.offset_of("subsystem_vendor_id") == 0x2C
    assert Type0Header.offset_of("rom_address") == 0x30
    assert Type0Header.offset_of("capabilities_ptr") == 0x34
    assert Type0Header.offset_of("interrupt_line") == 0x3C
    assert Type0Header.offset_of("interrupt_pin") == 0x3D
