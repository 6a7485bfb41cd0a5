"""``RegisterFile.checked_read``/``checked_write`` (the 4-byte case in one
lookup) against the general ``access_check`` then ``read``/``write``: the same
bytes, the same stored values, the same callbacks, the same errno."""

from __future__ import annotations

import itertools

import pytest

from vuser.errors import RemoteProtocolError
from vuser.pci.region import Region, Register, RegisterFile

SIZE = 0x20


def _file(log: list) -> RegisterFile:
    return RegisterFile(SIZE, [
        Register(0x0, "CONST", reset=0x1234_5678, wmask=0),
        Register(0x4, "RW", reset=0xAAAA_5555),
        Register(0x8, "HALF", reset=0xFFFF_0000, wmask=0x0000_FFFF,
                 write=lambda v: log.append(("HALF", v))),
        Register(0xC, "CB", read=lambda: 0x1_0000_0007,   # above 32 bits: masked
                 write=lambda v: log.append(("CB", v))),
        Register(SIZE - 4, "LAST", reset=7, wmask=0xF0),
    ])   # 0x10..0x18: undeclared


def _outcome(fn):
    try:
        return ("ok", fn())
    except RemoteProtocolError as e:
        return ("errno", e.errno, str(e))


OFFSETS = [-4, -1, 0, 1, 2, 4, 8, 0xC, 0x10, 0x14, SIZE - 4, SIZE - 3, SIZE - 1, SIZE, SIZE + 4]
COUNTS = [0, 1, 2, 3, 4, 5, 8, 12, SIZE]


@pytest.mark.parametrize("offset,count", list(itertools.product(OFFSETS, COUNTS)))
def test_checked_read_is_access_check_then_read(offset: int, count: int) -> None:
    fast_log: list = []
    slow_log: list = []
    fast, slow = _file(fast_log), _file(slow_log)

    def general() -> bytes:
        slow.access_check(offset, count)
        return slow.read(offset, count) if count else b""

    assert _outcome(lambda: fast.checked_read(offset, count)) == _outcome(general)
    assert fast.values == slow.values and fast_log == slow_log


@pytest.mark.parametrize("offset,count", list(itertools.product(OFFSETS, COUNTS)))
def test_checked_write_is_access_check_then_write(offset: int, count: int) -> None:
    data = bytes(range(0xA1, 0xA1 + count))
    fast_log: list = []
    slow_log: list = []
    fast, slow = _file(fast_log), _file(slow_log)

    def general() -> None:
        slow.access_check(offset, len(data))
        if data:
            slow.write(offset, data)

    assert _outcome(lambda: fast.checked_write(offset, data)) == _outcome(general)
    assert fast.values == slow.values and fast_log == slow_log


def test_the_4_byte_case_is_taken_and_honours_the_write_mask() -> None:
    log: list = []
    f = _file(log)
    f.checked_write(0x8, (0x1234_ABCD).to_bytes(4, "little"))
    assert f["HALF"] == 0xFFFF_ABCD and log == [("HALF", 0x1234_ABCD)]
    f.checked_write(0x0, b"\xff" * 4)
    assert f["CONST"] == 0x1234_5678                  # wmask 0: read-only
    f.checked_write(SIZE - 4, b"\xff" * 4)
    assert f["LAST"] == 0xF7
    assert f.checked_read(0xC, 4) == (7).to_bytes(4, "little")
    assert f.checked_read(0x10, 4) == b"\0" * 4        # undeclared
    f.checked_write(0x10, b"\xff" * 4)                 # ignored
    assert f.checked_read(0x10, 4) == b"\0" * 4


def test_a_plain_region_checks_its_bounds_before_reading() -> None:
    class Echo(Region):
        def read(self, offset: int, count: int) -> bytes:
            return bytes(count)

    r = Echo(8)
    assert r.checked_read(4, 4) == bytes(4) and r.checked_read(8, 0) == b""
    with pytest.raises(RemoteProtocolError):
        r.checked_read(6, 4)
    with pytest.raises(RemoteProtocolError):
        r.checked_write(8, b"x")
