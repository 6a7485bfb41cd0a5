"""DEVICE_RESET, DEVICE_FEATURE, MIG_DATA_READ/WRITE."""

import errno

import pytest

from proto_helpers import FakeBackend, Pair, message
from vuser.backend import DeviceInfo
from vuser.protocol.consts import VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, Command
from vuser.protocol.messages import (
    DeviceFeature, MigData, RegionData, VfioDeviceFeature, VfioUserMigData,
)


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def test_reset_reply_is_exactly_16_bytes(pair):
    pair.ok(Command.REGION_WRITE, RegionData.make(0, 8, b"\xff"))
    [(hdr, payload)] = pair.raw(message(Command.DEVICE_RESET))
    assert hdr.size == 16 and hdr.flags == 1 and payload == b""
    assert pair.backend.resets == 1 and pair.backend.regs[8] == 0


def test_reset_with_a_payload_is_einval(pair):
    assert pair.raw_error(message(Command.DEVICE_RESET, b"\0\0\0\0")) == errno.EINVAL
    assert pair.backend.resets == 0
    pair.still_serves()


def test_reset_of_a_device_without_reset_is_einval():
    backend = FakeBackend()
    backend.device_info = lambda: DeviceInfo(flags=2)
    pair = Pair(backend)
    assert pair.error(Command.DEVICE_RESET) == errno.EINVAL
    pair.close()


def test_reset_failure_is_an_error_reply_header_only(pair):
    pair.backend.fail_with = RuntimeError("stuck")
    assert pair.raw_error(message(Command.DEVICE_RESET)) == errno.EIO
    pair.still_serves()


def test_device_feature_is_enotty(pair):
    probe = DeviceFeature(VfioDeviceFeature(argsz=8, flags=1 | VFIO_DEVICE_FEATURE_PROBE))
    assert pair.error(Command.DEVICE_FEATURE, probe) == errno.ENOTTY
    get = DeviceFeature(VfioDeviceFeature(argsz=16, flags=2 | VFIO_DEVICE_FEATURE_GET))
    assert pair.error(Command.DEVICE_FEATURE, get) == errno.ENOTTY
    bad = DeviceFeature(VfioDeviceFeature(argsz=4, flags=1))
    assert pair.error(Command.DEVICE_FEATURE, bad) == errno.EINVAL
    pair.still_serves()


def test_migration_data_is_einval(pair):
    assert pair.error(Command.MIG_DATA_READ, VfioUserMigData(argsz=64, size=56)) == errno.EINVAL
    assert pair.error(Command.MIG_DATA_WRITE,
                      MigData(VfioUserMigData(argsz=8, size=2), b"ab")) == errno.EINVAL
    assert pair.raw_error(message(Command.MIG_DATA_READ, bytes(4))) == errno.EINVAL
    pair.still_serves()
