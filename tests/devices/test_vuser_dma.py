"""vuser-dma driven directly (no sockets): identity, config space, registers,
options and registration, against docs/vuser-dma.md."""

from __future__ import annotations

import errno
import os

import pytest

from vuser.commands.serve import DeviceSpec, make_device
from vuser.devices import DEVICE_TYPES, VuserDma
from vuser.devices.dma_layout import (
    VDMA_ID, Cap, QCtrl, QStatus, QueueError, QueueReg, Reg, queue_reg,
)
from vuser.devices.platform import Platform
from vuser.errors import RemoteProtocolError, UserError
from vuser.pci.caps import walk_extended, walk_standard
from vuser.pci.caps_ext import PasidCap
from vuser.pci.caps_std import DevCap2
from vuser.pci.irq import IrqIndex
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20


@pytest.fixture
def platform():
    p = Platform()
    yield p
    p.close()


@pytest.fixture
def dev(platform):
    d = VuserDma(platform=platform, label=0x42, queues=3)
    yield d
    d.close()


@pytest.fixture
def bound(dev):
    """``dev`` with a connection that mapped guest RAM (so it is bound)."""
    fd = sealed_memfd("ram", MiB)
    sink = dev.dma_sink()
    sink.map(0x1000_0000, MiB, fd, 0, readable=True, writable=True)
    os.close(fd)
    yield dev
    sink.close()


def cfg(dev, off, size):
    return int.from_bytes(dev.region_read(7, off, size), "little")


def rd(dev, off):
    return int.from_bytes(dev.region_read(0, off, 4), "little")


def wr(dev, off, value):
    dev.region_write(0, off, value.to_bytes(4, "little"))


def test_registered_type_and_identity(dev):
    assert DEVICE_TYPES["vuser-dma"] is VuserDma
    assert cfg(dev, 0, 4) == 0x0002_5655
    assert cfg(dev, 0x08, 4) == 0x0880_0001            # class 088000, revision 1
    assert cfg(dev, 0x3D, 1) == 0                      # MSI-X only, no INTx pin
    assert dev.region_info(0).size == 0x1000 and dev.region_info(4).size == 0x1000
    assert dev.irq_info(IrqIndex.MSIX).count == 4      # one per queue + the error vector
    assert dev.irq_info(IrqIndex.INTX).count == 0


def test_capabilities_as_documented(dev):
    config = dev.region_read(7, 0, 4096)
    std, ext = walk_standard(config), walk_extended(config)
    assert [e.cap_id for e in std] == [0x01, 0x11, 0x10, 0x09]
    assert [(e.cap_id, e.version) for e in ext] == [(0x1B, 1), (0x0F, 1), (0x13, 1), (0x0B, 1)]
    assert PasidCap.unpack(cfg(dev, ext[0].offset + 4, 2)) == {"EXEC": 0, "PRIV": 0,
                                                               "MAX_WIDTH": 20}
    vendor = std[3].offset
    assert config[vendor:vendor + 8] == bytes([0x09, 0, 8, 0]) + (0x42).to_bytes(4, "little")
    assert cfg(dev, ext[3].offset + 8, 4) == 0x42
    pcie = std[2].offset
    assert cfg(dev, pcie + 2, 2) & 0xFF == 0x02
    assert DevCap2.EE_PREFIX.get(cfg(dev, pcie + 0x24, 4))
    msix = std[1].offset
    assert cfg(dev, msix + 2, 2) & 0x7FF == 3 and cfg(dev, msix + 8, 4) == 0x800 | 4


def test_model_registration(dev, platform):
    i = dev.iommu
    assert (i.label, i.pasid_width, i.ats, i.pri) == (0x42, 20, True, True)
    assert (0xFEE0_0000, 0xFEEF_FFFF) in i.reserved and i.aperture == (0, (1 << 48) - 1)
    assert i.devtlb_invalidate == dev.devtlb.invalidate
    assert platform.device_by_label(0x42) is dev and not i.bound


def test_bars_refused_until_bound(dev):
    for index, off in ((0, Reg.ID), (4, 0)):
        with pytest.raises(RemoteProtocolError) as e:
            dev.region_read(index, off, 4)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(RemoteProtocolError):
            dev.region_write(index, off, bytes(4))
    assert cfg(dev, 0, 2) == 0x5655                   # config space is not MMIO


def test_register_reset_values(bound):
    dev = bound
    assert rd(dev, Reg.ID) == VDMA_ID and rd(dev, Reg.VERSION) == 1
    assert Cap.unpack(rd(dev, Reg.CAP)) == {"NQUEUES": 3, "PASID": 1, "ATS": 1, "PRI": 1,
                                            "MAX_RING_LOG2": 12}
    assert rd(dev, Reg.LABEL) == 0x42
    assert [rd(dev, o) for o in (Reg.CTRL, Reg.STATUS, Reg.INT_STATUS, Reg.DEVTLB_CTRL)] == [0] * 4
    for q in range(3):
        assert [rd(dev, queue_reg(q, r)) for r in QueueReg] == [0] * len(QueueReg)
    wr(dev, Reg.ID, 0)                                 # RO
    assert rd(dev, Reg.ID) == VDMA_ID
    assert rd(dev, queue_reg(3, QueueReg.Q_CTRL)) == 0  # beyond the last queue: reads 0


def test_queue_enable_checks_the_ring_size(bound):
    dev = bound
    wr(dev, queue_reg(0, QueueReg.RING_SIZE), 1 << 13)    # above 2^ring_log2
    wr(dev, queue_reg(0, QueueReg.Q_CTRL), QCtrl.pack(ENABLE=1, VECTOR=2, IRQ_ENABLE=1))
    st = rd(dev, queue_reg(0, QueueReg.Q_STATUS))
    assert QStatus.unpack(st) == {"ENABLED": 1, "BUSY": 0, "HALTED": 1}
    assert rd(dev, queue_reg(0, QueueReg.Q_ERROR)) == QueueError.RING_SIZE
    assert rd(dev, Reg.STATUS) == 2                      # ERROR
    wr(dev, queue_reg(0, QueueReg.Q_CTRL), 0)
    assert rd(dev, queue_reg(0, QueueReg.Q_STATUS)) == 0
    wr(dev, queue_reg(0, QueueReg.RING_SIZE), 1 << 12)
    wr(dev, queue_reg(0, QueueReg.Q_CTRL), QCtrl.pack(ENABLE=1, VECTOR=2))
    assert rd(dev, queue_reg(0, QueueReg.Q_STATUS)) == 1 and rd(dev, queue_reg(0, QueueReg.Q_ERROR)) == 0
    assert QCtrl.VECTOR.get(rd(dev, queue_reg(0, QueueReg.Q_CTRL))) == 2


def test_device_reset_clears_everything(bound):
    dev = bound
    wr(dev, Reg.CTRL, 1)
    wr(dev, queue_reg(1, QueueReg.RING_SIZE), 8)
    wr(dev, queue_reg(1, QueueReg.Q_CTRL), 1)
    dev.reset()
    assert rd(dev, Reg.CTRL) == 0 and rd(dev, queue_reg(1, QueueReg.Q_CTRL)) == 0
    assert rd(dev, queue_reg(1, QueueReg.RING_SIZE)) == 0


@pytest.mark.parametrize("opts,match", [
    ({"queues": "0"}, "queues=0"), ({"queues": "61"}, "queues=61"), ({"queues": "x"}, "integer"),
    ({"ring_log2": "16"}, "ring_log2"), ({"label": "0x1_0000_0000"}, "label"),
])
def test_bad_options_are_one_line_user_errors(platform, opts, match):
    with pytest.raises(UserError, match=match) as e:
        VuserDma(platform=platform, **opts)
    assert "\n" not in str(e.value)


def test_serve_builds_devices_on_one_platform_with_groups(platform):
    types = {"vuser-dma": VuserDma}
    a = make_device(DeviceSpec("vuser-dma", "/a", {"label": "5", "group": "g"}), types, platform)
    b = make_device(DeviceSpec("vuser-dma", "/b", {"group": "g", "queues": "2"}), types, platform)
    c = make_device(DeviceSpec("vuser-dma", "/c", {}), types, platform)
    try:
        assert a.iommu.group is b.iommu.group is not c.iommu.group
        assert a.label == 5 and len({a.label, b.label, c.label}) == 3
        with pytest.raises(UserError, match="taken"):
            make_device(DeviceSpec("vuser-dma", "/d", {"label": "5"}), types, platform)
        assert sorted(d.label for d in platform.devices()) == sorted([a.label, b.label, c.label])
    finally:
        for d in (a, b, c):
            d.close()
    assert platform.devices() == []


def test_a_device_alone_gets_a_private_platform():
    d = VuserDma()
    try:
        assert d.platform is not None and d.platform.devices() == [d]
    finally:
        d.close()
    assert d.platform.ctx.closed


def test_describe(bound):
    d = bound.describe()
    assert d["label"] == 0x42 and len(d["queues"]) == 3 and d["engine"]["page_requests"] == 0
