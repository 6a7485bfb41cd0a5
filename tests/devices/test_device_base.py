"""PciDevice: assembly rules, ROM and I/O BARs, MSI, raise_irq choices, tasks."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest
from fdhelp import efd_count, fd_is_open

from vuser.devices.base import NO_DMA, PciDevice
from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.pci.bar import Bar
from vuser.pci.caps_ext import Pasid
from vuser.pci.caps_std import MsiControl
from vuser.pci.config import Status
from vuser.pci.irq import IrqIndex
from vuser.pci.region import Register, RegisterFile
from vuser.backend import (
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, DmaError,
)

EVENTFD_TRIGGER = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
ROM = b"\x55\xaa" + bytes(range(200))


class Tiny(PciDevice):
    """A conventional PCI function: I/O BAR, ROM, MSI with 4 vectors."""

    DEVICE_ID = 0x00FF
    EXPRESS = False

    def __init__(self) -> None:
        super().__init__()
        self.regs = RegisterFile(64, [Register(0, "A"), Register(4, "B", reset=7, wmask=0xFF)])
        self.add_bar(1, Bar.io(64), self.regs)
        self.add_rom(ROM)
        self.msi = self.add_msi(4)
        self.resets = 0

    def on_reset(self) -> None:
        self.resets += 1


class NoPin(PciDevice):
    INTERRUPT_PIN = 0


@pytest.fixture
def tiny():
    d = Tiny()
    yield d
    d.close()


def test_conventional_config_space_and_io_bar(tiny):
    assert tiny.region_info(7).size == 256
    tiny.region_write(7, 0x14, b"\xff\xff\xff\xff")
    assert tiny.region_read(7, 0x14, 4) == (0xFFFF_FFC1).to_bytes(4, "little")
    assert tiny.region_info(1).size == 64
    tiny.region_write(1, 4, (0x1234).to_bytes(4, "little"))
    assert tiny.region_read(1, 0, 8) == bytes(4) + (0x34).to_bytes(4, "little")


def test_rom_region_and_rom_bar(tiny):
    info = tiny.region_info(6)
    assert info.size == 2048 and info.flags == VFIO_REGION_INFO_FLAG_READ
    data = tiny.region_read(6, 0, 2048)                # QEMU reads it in one go
    assert data[:len(ROM)] == ROM and data[len(ROM):] == b"\xff" * (2048 - len(ROM))
    with pytest.raises(RemoteProtocolError) as e:
        tiny.region_write(6, 0, b"\x00")
    assert e.value.errno == errno.EINVAL
    assert tiny.region_read(6, 0, 2) == b"\x55\xaa"
    tiny.region_write(7, 0x30, (0xFFFF_F800).to_bytes(4, "little"))
    assert tiny.region_read(7, 0x30, 4) == (0xFFFF_F800).to_bytes(4, "little")


def test_config_region_info():
    d = Tiny()
    try:
        assert d.region_info(7).flags == VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    finally:
        d.close()


def test_msi_delivery(tiny, eventfds):
    fds = eventfds(4)
    tiny.set_irqs(IrqIndex.MSI, EVENTFD_TRIGGER, 0, 4, list(fds), b"")
    assert tiny.raise_irq(3) and [efd_count(fd) for fd in fds] == [0, 0, 0, 1]
    assert not tiny.irqs.intx_level


def test_raise_irq_with_msi_enabled_in_config_but_no_eventfds(tiny):
    ctl = tiny.msi.field_offset("control")
    tiny.region_write(7, ctl, MsiControl.ENABLE.mask.to_bytes(2, "little"))
    assert not tiny.raise_irq(0)
    assert not tiny.irqs.intx_level                     # no INTx while MSI is enabled


def test_raise_irq_falls_back_to_intx(tiny):
    assert tiny.raise_irq(0) and tiny.irqs.intx_level
    assert tiny.region_read(7, 0x06, 2)[0] & Status.INTERRUPT.mask
    tiny.lower_intx()
    assert not tiny.region_read(7, 0x06, 2)[0] & Status.INTERRUPT.mask


def test_no_pin_no_intx():
    d = NoPin()
    try:
        assert d.irq_info(IrqIndex.INTX).count == 0
        assert not d.raise_irq(0) and not d.irqs.intx_level
        assert d.region_read(7, 0x3D, 1) == b"\x00"
    finally:
        d.close()


def test_reset_restores_config_registers_and_calls_the_hook(tiny, eventfds):
    tiny.region_write(7, 0x04, b"\x07\x04")
    tiny.region_write(7, 0x3C, b"\x0b")
    tiny.region_write(1, 4, b"\x99\x00\x00\x00")
    fds = eventfds(2)
    tiny.set_irqs(IrqIndex.MSI, EVENTFD_TRIGGER, 0, 2, list(fds), b"")
    tiny.reset()
    assert tiny.region_read(7, 0, 256) == bytes(tiny.config.defaults)
    assert tiny.regs["B"] == 7 and tiny.resets == 1 and tiny.epoch == 1
    assert not any(fd_is_open(fd) for fd in fds) and tiny.irqs.active is None


@pytest.mark.parametrize("case", ["slot taken", "upper half of a 64-bit BAR", "size mismatch",
                                  "64-bit at BAR5", "negative index", "extended cap on PCI",
                                  "MSI-X BAR taken"])
def test_assembly_errors(tiny, case):
    with pytest.raises(LocalProtocolError):
        if case == "slot taken":
            tiny.add_bar(1, Bar.mem32(64), RegisterFile(64, []))
        elif case == "upper half of a 64-bit BAR":
            tiny.add_bar(2, Bar.mem64(4096), RegisterFile(4096, []))
            tiny.add_bar(3, Bar.mem32(4096), RegisterFile(4096, []))
        elif case == "size mismatch":
            tiny.add_bar(0, Bar.mem32(4096), RegisterFile(64, []))
        elif case == "64-bit at BAR5":
            tiny.add_bar(5, Bar.mem64(4096), RegisterFile(4096, []))
        elif case == "negative index":
            tiny.add_bar(-1, Bar.mem32(4096), RegisterFile(4096, []))
        elif case == "extended cap on PCI":
            tiny.add_capability(Pasid())
        elif case == "MSI-X BAR taken":
            tiny.add_msix(bar=1, vectors=2)


async def test_no_dma_without_a_client(tiny):
    assert tiny.dma is NO_DMA
    with pytest.raises(DmaError) as e:
        await tiny.dma.dma_read(0x1000, 4)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(DmaError):
        await tiny.dma.dma_write(0x1000, b"x")


def test_spawn_needs_a_loop(tiny):
    async def work():
        return None
    with pytest.raises(LocalProtocolError):
        tiny.spawn(work())


async def test_spawned_task_errors_are_logged_not_raised(tiny, caplog):
    async def broken():
        raise ValueError("model bug")
    with caplog.at_level(logging.ERROR):
        tiny.spawn(broken(), name="broken")
        await tiny.idle()
    assert any("broken" in r.getMessage() and r.exc_info for r in caplog.records)
    assert not tiny._tasks


async def test_reset_and_disconnect_cancel_tasks(tiny):
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.Event().wait()
    for end in (tiny.reset, tiny.client_disconnected):
        task = tiny.spawn(forever())
        await started.wait()
        started.clear()
        end()
        await tiny.idle()
        assert task.cancelled()


def test_register_file_one_register_reads_as_part_of_a_longer_read():
    """A 4-byte read (served on its own) gives the bytes a 16-byte read gives there."""
    calls = []
    regs = RegisterFile(32, [Register(0, "A", reset=0x1122_3344),
                             Register(4, "B", read=lambda: calls.append("B") or 0x1_DEAD_BEEF),
                             Register(12, "D", reset=5)])
    whole = regs.read(0, 16)
    assert [regs.read(off, 4) for off in range(0, 16, 4)] == \
        [whole[k:k + 4] for k in range(0, 16, 4)]
    assert whole[4:8] == (0xDEAD_BEEF).to_bytes(4, "little") and calls == ["B", "B"]
    for off, count in ((2, 4), (0, 2), (4, 6)):
        with pytest.raises(RemoteProtocolError):
            regs.read(off, count)
