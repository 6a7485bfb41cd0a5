"""A queue's ``enabled`` is a plain attribute set with Q_CTRL: after every way
Q_CTRL changes (a Q_CTRL write with any bits, CTRL.RESET, DEVICE_RESET) it is
Q_CTRL's ENABLE bit, and RING_LO/HI/SIZE writes are stored only while it is
clear (docs/vuser-dma.md, queue registers)."""

from __future__ import annotations

import pytest

from vuser.devices import VuserDma
from vuser.devices.dma_layout import Ctrl, QCtrl, QStatus, QueueReg, Reg, queue_reg
from vuser.devices.platform import Platform


def rd(dev, off):
    return int.from_bytes(dev.region_read(0, off, 4), "little")


def wr(dev, off, value):
    dev.region_write(0, off, value.to_bytes(4, "little"))


@pytest.fixture
def dev():
    p = Platform()
    d = VuserDma(platform=p, label=0x42, queues=2)
    d.iommu.ctx = object()          # BAR0 served as when bound (no DMA is run here)
    yield d
    d.iommu.ctx = None
    d.close()
    p.close()


def _consistent(dev) -> None:
    for q in dev.queues:
        assert q.enabled == bool(QCtrl.ENABLE.get(q.ctrl))
        assert q.enabled == bool(QStatus.ENABLED.get(rd(dev, queue_reg(q.index, QueueReg.Q_STATUS))))


STEPS = [
    ("q_ctrl", 0, QCtrl.pack(ENABLE=1, VECTOR=3, IRQ_ENABLE=1)),
    ("q_ctrl", 1, QCtrl.pack(VECTOR=5)),
    ("q_ctrl", 0, QCtrl.pack(VECTOR=2, IRQ_ENABLE=1)),       # ENABLE 1 -> 0, other bits kept
    ("q_ctrl", 0, 0xFFFF_FFFF),                             # undefined bits dropped
    ("ctrl", None, Ctrl.pack(RESET=1)),
    ("q_ctrl", 1, QCtrl.pack(ENABLE=1)),
    ("device_reset", None, None),
    ("q_ctrl", 0, QCtrl.pack(ENABLE=1)),
    ("q_ctrl", 0, QCtrl.pack(ENABLE=1, VECTOR=1)),          # stays enabled
]


def test_enabled_follows_q_ctrl_at_every_change(dev):
    _consistent(dev)
    for n, (what, q, value) in enumerate(STEPS):
        if what == "q_ctrl":
            wr(dev, queue_reg(q, QueueReg.Q_CTRL), value)
        elif what == "ctrl":
            wr(dev, Reg.CTRL, value)
        else:
            dev.reset()
        _consistent(dev)
        for queue in dev.queues:     # RING_* stored only while the queue is disabled
            for reg, attr in ((QueueReg.RING_LO, "ring_lo"), (QueueReg.RING_HI, "ring_hi"),
                              (QueueReg.RING_SIZE, "ring_size")):
                before = getattr(queue, attr)
                new = 0x1000 * (n + 1) + queue.index
                wr(dev, queue_reg(queue.index, reg), new)
                want = before if queue.enabled else new
                assert getattr(queue, attr) == want
                assert rd(dev, queue_reg(queue.index, reg)) == want
