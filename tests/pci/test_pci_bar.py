"""BAR sizing as a guest and QEMU do it: write all ones, read the size mask back."""

from __future__ import annotations

import pytest

from vuser.errors import LocalProtocolError
from vuser.pci.bar import ROM_BAR_OFFSET, Bar, bar_offset, define_rom_bar
from vuser.pci.config import ConfigSpace

ONES = b"\xff\xff\xff\xff"


def size_probe(cs: ConfigSpace, offset: int) -> int:
    """Save, write all ones, read, restore: the PCI sizing dance (PCI LB 3.0 §6.2.5.1)."""
    saved = cs.read(offset, 4)
    cs.write(offset, ONES)
    probed = int.from_bytes(cs.read(offset, 4), "little")
    cs.write(offset, saved)
    assert cs.read(offset, 4) == saved
    return probed


def mem_size(low: int, high: int = 0xFFFF_FFFF) -> int:
    mask = ((high << 32) | (low & ~0xF)) & ((1 << 64) - 1)
    return ((~mask) & ((1 << 64) - 1)) + 1


@pytest.mark.parametrize("size", [16, 4096, 1 << 20, 1 << 31])
def test_mem32(size):
    cs = ConfigSpace(256)
    Bar.mem32(size).define(cs, 0)
    probed = size_probe(cs, bar_offset(0))
    assert probed & 0xF == 0b0000                      # memory, 32-bit, not prefetchable
    assert mem_size(probed, 0xFFFF_FFFF) == size
    assert probed == (~(size - 1)) & 0xFFFF_FFF0


def test_mem32_prefetchable_and_address_programming():
    cs = ConfigSpace(256)
    Bar.mem32(0x4000, prefetchable=True).define(cs, 1)
    assert size_probe(cs, bar_offset(1)) == 0xFFFF_C008
    cs.write(bar_offset(1), (0xFEB0_4000).to_bytes(4, "little"))
    assert cs.peek(bar_offset(1), 4) == 0xFEB0_4008
    cs.write(bar_offset(1), (0xFEB0_5FFF).to_bytes(4, "little"))   # low address bits are RO 0
    assert cs.peek(bar_offset(1), 4) == 0xFEB0_4008


@pytest.mark.parametrize("size,prefetch", [(0x4000, True), (1 << 33, False), (1 << 40, True)])
def test_mem64_both_halves(size, prefetch):
    cs = ConfigSpace(4096)
    Bar.mem64(size, prefetchable=prefetch).define(cs, 2)
    low_off, high_off = bar_offset(2), bar_offset(3)
    cs.write(low_off, ONES)
    cs.write(high_off, ONES)
    low, high = cs.peek(low_off, 4), cs.peek(high_off, 4)
    assert low & 0xF == (0b0100 | (0b1000 if prefetch else 0))   # type 10b (64-bit)
    assert mem_size(low, high) == size
    # Upper half is a full address register: a 64-bit address sticks.
    cs.write(low_off, (0).to_bytes(4, "little"))
    cs.write(high_off, (0x80).to_bytes(4, "little"))
    addr = ((cs.peek(high_off, 4) << 32) | (cs.peek(low_off, 4) & ~0xF))
    assert addr == (0x80 << 32) & ~(size - 1)


def test_mem64_pair_cannot_start_at_bar5():
    with pytest.raises(LocalProtocolError):
        Bar.mem64(0x1000).define(ConfigSpace(256), 5)


@pytest.mark.parametrize("size", [4, 16, 256])
def test_io(size):
    cs = ConfigSpace(256)
    Bar.io(size).define(cs, 4)
    probed = size_probe(cs, bar_offset(4))
    assert probed & 0x3 == 0b01                        # I/O space indicator
    assert ((~(probed & ~0x3)) & 0xFFFF_FFFF) + 1 == size


def test_unused_bar_sizes_to_zero():
    cs = ConfigSpace(256)
    Bar.mem32(0x1000).define(cs, 0)
    for i in range(1, 6):
        assert size_probe(cs, bar_offset(i)) == 0


def test_rom_absent_reads_zero_size():
    cs = ConfigSpace(256)
    define_rom_bar(cs, 0)
    cs.write(ROM_BAR_OFFSET, (0xFFFF_F800).to_bytes(4, "little"))   # QEMU's ROM probe
    assert cs.peek(ROM_BAR_OFFSET, 4) == 0


def test_rom_present_sizes_and_enables():
    cs = ConfigSpace(256)
    define_rom_bar(cs, 0x8000)
    cs.write(ROM_BAR_OFFSET, (0xFFFF_F800).to_bytes(4, "little"))
    assert cs.peek(ROM_BAR_OFFSET, 4) == 0xFFFF_8000
    cs.write(ROM_BAR_OFFSET, ONES)
    assert cs.peek(ROM_BAR_OFFSET, 4) == 0xFFFF_8001                 # enable bit is RW


@pytest.mark.parametrize("make", [
    lambda: Bar.mem32(0x1800),               # not a power of two
    lambda: Bar.mem32(8),                    # below 16 bytes
    lambda: Bar.mem32(1 << 32),              # too big for 32 bits
    lambda: Bar.io(512),                     # I/O BARs are at most 256 bytes
    lambda: Bar(Bar.io(4).kind, 4, True),    # prefetchable I/O
    lambda: define_rom_bar(ConfigSpace(256), 1024),
])
def test_invalid_shapes_are_refused(make):
    with pytest.raises(LocalProtocolError):
        make()
