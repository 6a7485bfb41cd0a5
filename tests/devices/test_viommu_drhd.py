"""vuser-iommu ``drhd_base``: the BAR0 address the firmware programs must be the register
base the DMAR table gives, checked when memory decode is on; a mismatch stops the
platform (``Platform.fatal``) with one error line."""

from __future__ import annotations

import struct

import pytest

from vuser.devices.platform import Platform
from vuser.devices.viommu import VIommuDevice
from vuser.errors import UserError

BAR0, COMMAND = 0x10, 0x04
BASE = 0xFE40_0000


@pytest.fixture
def unit():
    platform = Platform()
    dev = VIommuDevice(drhd_base=hex(BASE))
    dev.join_platform(platform)
    stops: list[str] = []
    platform.on_fatal.append(stops.append)
    yield dev, platform, stops
    dev.close()
    platform.close()


def write(dev: VIommuDevice, offset: int, value: int, size: int = 4) -> None:
    dev.region_write(7, offset, value.to_bytes(size, "little"))


def test_matching_base_is_accepted(unit):
    dev, platform, stops = unit
    write(dev, BAR0, 0xFFFF_FFFF)                  # size probe, decode off
    assert struct.unpack("<I", dev.region_read(7, BAR0, 4))[0] == 0xFFFF_F000
    write(dev, BAR0, BASE)
    write(dev, COMMAND, 0x0102, 2)                 # memory decode on
    write(dev, COMMAND, 0x0106, 2)                 # and bus master
    assert stops == [] and platform.fatal_error is None and dev.bar0_address == BASE


def test_mismatch_when_decode_is_enabled_is_fatal_once(unit):
    dev, platform, stops = unit
    write(dev, BAR0, 0xFE20_0000)
    assert stops == []                             # decode still off: not placed yet
    write(dev, COMMAND, 0x0002, 2)
    expected = ("vuser-iommu: firmware placed BAR0 at 0xfe200000 but the DMAR's DRHD base "
                "is 0xfe400000")
    assert stops == [expected] and platform.fatal_error == expected
    write(dev, COMMAND, 0x0006, 2)
    assert stops == [expected]                     # one error, not one per write


def test_bar_moved_while_decode_is_on_is_fatal(unit):
    dev, platform, stops = unit
    write(dev, BAR0, BASE)
    write(dev, COMMAND, 0x0002, 2)
    write(dev, BAR0, 0xFFFF_FFFF)                  # sizing with decode on: ignored
    assert stops == []
    write(dev, BAR0, BASE, 4)
    write(dev, BAR0, 0x0000, 2)                    # half a dword: waits for the rest
    assert stops == []
    write(dev, BAR0, 0xFE00_0000)
    assert len(stops) == 1 and "0xfe000000" in stops[0]


def test_without_drhd_base_anything_goes():
    platform = Platform()
    dev = VIommuDevice()
    dev.join_platform(platform)
    try:
        write(dev, BAR0, 0xFE20_0000)
        write(dev, COMMAND, 0x0006, 2)
        assert platform.fatal_error is None
    finally:
        dev.close()
        platform.close()


@pytest.mark.parametrize("value", ["x", "0", "0xfe400800", hex(1 << 32), "-4096"])
def test_bad_drhd_base_is_a_user_error(value):
    with pytest.raises(UserError, match="drhd_base"):
        VIommuDevice(drhd_base=value)
