"""The sample device driven directly (no sockets), against docs/sample-device.md."""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
import mmap
import os

import pytest
from fdhelp import efd_count, fd_is_open

from vuser.devices import DEVICE_TYPES, SampleDevice
from vuser.devices.sample import SampleReg as R
from vuser.devices.sample import SampleStatus, pattern
from vuser.errors import RemoteProtocolError, UserError
from vuser.pci.caps import walk_extended, walk_standard
from vuser.pci.caps_ext import PasidCap
from vuser.pci.caps_std import DevCap2
from vuser.pci.config import Command, Status
from vuser.pci.irq import IrqIndex
from vuser.backend import (
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_REGION_INFO_FLAG_MMAP, DmaError,
)

GUEST_BASE = 0x10_0000
EVENTFD_TRIGGER = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER


class FakeDma:
    """A DmaPort over a bytearray of "guest memory" at GUEST_BASE; records every call."""

    def __init__(self, size: int = 2 << 20) -> None:
        self.mem = bytearray(size)
        self.writes: list[tuple[int, int]] = []
        self.gate: asyncio.Event | None = None

    def _check(self, addr: int, n: int) -> int:
        if addr < GUEST_BASE or addr + n > GUEST_BASE + len(self.mem):
            raise DmaError(errno.EFAULT, addr, n)
        return addr - GUEST_BASE

    async def dma_read(self, addr: int, n: int) -> bytes:
        off = self._check(addr, n)
        return bytes(self.mem[off:off + n])

    async def dma_write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, len(data)))
        if self.gate is not None:
            await self.gate.wait()
        off = self._check(addr, len(data))
        self.mem[off:off + len(data)] = data


@pytest.fixture
def dev():
    d = SampleDevice(label=0x42)
    yield d
    d.close()


@pytest.fixture
def dma(dev):
    port = FakeDma()
    dev.client_connected(port)
    return port


def wr(dev, off, value, size=4):
    dev.region_write(0, off, value.to_bytes(size, "little"))


def rd(dev, off, size=4):
    return int.from_bytes(dev.region_read(0, off, size), "little")


def cfg(dev, off, size):
    return int.from_bytes(dev.region_read(7, off, size), "little")


def cfg_wr(dev, off, size, value):
    dev.region_write(7, off, value.to_bytes(size, "little"))


def program(dev, addr, length, seed=0, vector=0):
    wr(dev, R.DMA_ADDR_LO, addr & 0xFFFF_FFFF)
    wr(dev, R.DMA_ADDR_HI, addr >> 32)
    wr(dev, R.DMA_LEN, length)
    wr(dev, R.DMA_SEED, seed)
    wr(dev, R.IRQ_VECTOR, vector)


def msix_fds(dev, eventfds):
    fds = eventfds(4)
    dev.set_irqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 4, list(fds), b"")
    return fds


def snapshot(dev):
    return (bytes(dev.config.config), dict(dev.regs.values), bytes(dev.ram.mem),
            dev.irqs.active, sorted(dev.irqs.owned_fds()), copy.deepcopy(dev.irqs._vec[2].fds))


# -- identity, config space, BARs -------------------------------------------------

def test_registry_and_identity(dev):
    assert DEVICE_TYPES["sample"] is SampleDevice
    assert cfg(dev, 0x00, 4) == 0x0001_5655
    assert cfg(dev, 0x08, 4) == 0xFF00_0001            # class ff0000, revision 1
    assert cfg(dev, 0x3D, 1) == 1                      # INTA
    assert cfg(dev, 0x0E, 1) == 0                      # type 0 header
    assert rd(dev, R.ID) == 0x5655_0001 and rd(dev, R.VERSION) == 1
    assert dev.region_info(7).size == 4096


def test_capabilities_as_documented(dev):
    config = dev.region_read(7, 0, 4096)
    std, ext = walk_standard(config), walk_extended(config)
    assert [e.cap_id for e in std] == [0x01, 0x11, 0x10, 0x09]
    assert [(e.cap_id, e.version) for e in ext] == [(0x1B, 1), (0x0F, 1), (0x13, 1), (0x0B, 1)]
    assert ext[0].offset == 0x100
    pasid = ext[0].offset
    assert PasidCap.unpack(cfg(dev, pasid + 4, 2)) == {"EXEC": 0, "PRIV": 0, "MAX_WIDTH": 20}
    vendor = std[3].offset
    assert config[vendor:vendor + 8] == bytes([0x09, 0, 8, 0]) + (0x42).to_bytes(4, "little")
    vsec = ext[3].offset
    assert cfg(dev, vsec + 8, 4) == 0x42
    pcie = std[2].offset
    assert cfg(dev, pcie + 2, 2) & 0xFF == 0x02       # version 2, endpoint
    assert DevCap2.EE_PREFIX.get(cfg(dev, pcie + 0x24, 4))   # PASID needs the TLP prefix
    msix = std[1].offset
    assert cfg(dev, msix + 2, 2) & 0x7FF == 3          # 4 vectors
    assert cfg(dev, msix + 4, 4) == 4 and cfg(dev, msix + 8, 4) == 0x800 | 4


@pytest.mark.parametrize("bar,want", [(0, 0xFFFF_F000), (1, 0), (2, 0xFFFF_C00C),
                                      (3, 0xFFFF_FFFF), (4, 0xFFFF_F000), (5, 0)])
def test_bar_sizing_through_region_7(dev, bar, want):
    off = 0x10 + 4 * bar
    cfg_wr(dev, off, 4, 0xFFFF_FFFF)
    assert cfg(dev, off, 4) == want


def test_rom_probe_sees_no_rom(dev):
    cfg_wr(dev, 0x30, 4, 0xFFFF_F800)
    assert cfg(dev, 0x30, 4) == 0
    assert dev.region_info(6).size == 0


def test_region_infos(dev):
    assert dev.region_info(0).size == 0x1000 and dev.region_info(0).fd is None
    info = dev.region_info(2)
    assert info.size == 0x4000 and info.flags & VFIO_REGION_INFO_FLAG_MMAP
    assert info.fd is not None and info.sparse_areas == ((0, 0x4000),)
    assert dev.region_info(3).size == 0                # upper half of the 64-bit BAR
    assert dev.region_info(4).size == 0x1000
    assert dev.region_info(8).size == 0
    with pytest.raises(RemoteProtocolError) as e:
        dev.region_info(9)
    assert e.value.errno == errno.EINVAL
    assert dev.device_info().num_regions == 9 and dev.device_info().num_irqs == 5
    assert dev.irq_info(IrqIndex.MSIX).count == 4 and dev.irq_info(IrqIndex.MSI).count == 0


def test_bar2_is_shared_memory(dev):
    info = dev.region_info(2)
    view = mmap.mmap(info.fd, info.size, offset=info.mmap_offset)   # as QEMU maps it
    try:
        view[0x100:0x104] = b"\xde\xad\xbe\xef"
        assert dev.region_read(2, 0x100, 4) == b"\xde\xad\xbe\xef"
        dev.region_write(2, 0x3FFC, b"\x01\x02\x03\x04")
        assert view[0x3FFC:0x4000] == b"\x01\x02\x03\x04"
    finally:
        view.close()


def test_qemu_realize_and_reset_sequence(dev, eventfds):
    """What QEMU 11's vfio-user-pci does at realize and reset, replayed against the backend."""
    for index in range(6):
        dev.region_info(index)
    assert dev.region_info(7).size == 4096
    assert dev.irq_info(IrqIndex.ERR).count == 1
    config = dev.region_read(7, 0, 4096)
    saved = dev.region_read(7, 0x30, 4)                # ROM sizing
    dev.region_write(7, 0x30, (0xFFFF_F800).to_bytes(4, "little"))
    assert dev.region_read(7, 0x30, 4) == bytes(4)
    dev.region_write(7, 0x30, saved)
    for bar in (0, 2, 4):
        dev.region_read(7, 0x10 + 4 * bar, 4)
    msix = walk_standard(config)[1].offset
    dev.region_read(7, msix + 2, 2)
    dev.region_read(7, msix + 4, 4)
    dev.region_read(7, msix + 8, 4)
    dev.irq_info(IrqIndex.MSIX)
    intx, err = eventfds(2)
    dev.set_irqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 1, [intx], b"")
    dev.set_irqs(IrqIndex.ERR, EVENTFD_TRIGGER, 0, 1, [err], b"")
    # Machine reset: INTx off, command cleared, PM D0, DEVICE_RESET, INTx back, BARs zeroed.
    dev.set_irqs(IrqIndex.INTX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, [], b"")
    assert not fd_is_open(intx)
    cmd = cfg(dev, 0x04, 2)
    cfg_wr(dev, 0x04, 2, cmd & ~0x0407)
    pm = walk_standard(config)[0].offset
    cfg_wr(dev, pm + 4, 2, 0)
    dev.reset()
    (intx2,) = eventfds(1)
    dev.set_irqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 1, [intx2], b"")
    for bar in range(6):
        cfg_wr(dev, 0x10 + 4 * bar, 4, 0)
    assert dev.region_read(7, 0, 4096) == config       # back to what realize read
    assert fd_is_open(err) and dev.irqs.active is IrqIndex.INTX
    # MSI-X enable as QEMU does it: no-vector enable after INTx off, then per vector.
    dev.set_irqs(IrqIndex.INTX, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, [], b"")
    dev.set_irqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 1, [], b"")
    (vec,) = eventfds(1)
    dev.set_irqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 1, 1, [vec], b"")
    assert dev.raise_irq(1) and efd_count(vec) == 1


# -- registers -----------------------------------------------------------------

def test_register_access_rules(dev):
    wr(dev, R.SCRATCH, 0x1234_5678)
    assert rd(dev, R.SCRATCH) == 0x1234_5678
    for ro in (R.ID, R.VERSION, R.STATUS, R.COMPLETIONS):
        before = rd(dev, ro)
        wr(dev, ro, 0xFFFF_FFFF)
        assert rd(dev, ro) == before
    assert rd(dev, R.DOORBELL) == 0                    # write-only
    assert rd(dev, 0x800) == 0                         # undeclared offset
    wr(dev, 0x800, 0xFFFF_FFFF)
    assert rd(dev, 0x800) == 0
    dev.region_write(0, R.DMA_ADDR_LO, (0x1_2345_6000).to_bytes(8, "little"))   # one 8-byte access
    assert rd(dev, R.DMA_ADDR_LO) == 0x2345_6000 and rd(dev, R.DMA_ADDR_HI) == 1
    assert rd(dev, R.DMA_ADDR_LO, 8) == 0x1_2345_6000


BAD_ACCESS = {
    "index 9": (9, 0, 4),
    "index -1": (-1, 0, 4),
    "BAR1 (unused)": (1, 0, 4),
    "BAR3 (upper half)": (3, 0, 4),
    "ROM (absent)": (6, 0, 4),
    "VGA (absent)": (8, 0, 4),
    "beyond BAR0": (0, 0xFFC, 8),
    "past BAR0": (0, 0x1000, 4),
    "negative offset": (0, -4, 4),
    "misaligned register": (0, R.SCRATCH + 1, 4),
    "short register": (0, R.SCRATCH, 2),
    "beyond BAR2": (2, 0x3FFF, 2),
    "beyond BAR4": (4, 0xFFF, 4),
    "beyond config": (7, 0xFFF, 2),
    "config negative": (7, -1, 1),
}


@pytest.mark.parametrize("case", sorted(BAD_ACCESS))
def test_bad_region_access_is_einval_and_changes_nothing(dev, eventfds, case):
    index, offset, count = BAD_ACCESS[case]
    msix_fds(dev, eventfds)
    wr(dev, R.SCRATCH, 0xAAAA_5555)
    before = snapshot(dev)
    for op in (lambda: dev.region_read(index, offset, count),
               lambda: dev.region_write(index, offset, b"\xff" * count)):
        with pytest.raises(RemoteProtocolError) as e:
            op()
        assert e.value.errno == errno.EINVAL
    assert snapshot(dev) == before


def test_zero_length_accesses_succeed(dev):
    assert dev.region_read(0, 0x1000, 0) == b""
    dev.region_write(1, 0, b"")
    assert dev.region_read(7, 4096, 0) == b""


# -- the doorbell ----------------------------------------------------------------

async def test_doorbell_dmas_the_pattern_and_raises_the_msix_vector(dev, dma, eventfds):
    fds = msix_fds(dev, eventfds)
    addr = GUEST_BASE + 0x1234
    program(dev, addr, 3000, seed=0x1_F0, vector=2)
    wr(dev, R.DOORBELL, 1)
    assert dma.writes == []                            # returned before any DMA
    assert rd(dev, R.STATUS) == SampleStatus.BUSY.mask
    await dev.idle()
    assert dma.writes == [(addr, 3000)]
    off = addr - GUEST_BASE
    assert dma.mem[off:off + 3000] == pattern(0x1F0, 3000)
    assert dma.mem[off] == 0xF0 and dma.mem[off + 16] == 0x00
    assert dma.mem[off - 1] == 0 and dma.mem[off + 3000] == 0
    assert rd(dev, R.STATUS) == SampleStatus.DONE.mask
    assert rd(dev, R.COMPLETIONS) == 1
    assert [efd_count(fd) for fd in fds] == [0, 0, 1, 0]
    assert not cfg(dev, 0x06, 2) & Status.INTERRUPT.mask     # MSI-X in use: no INTx


async def test_unmapped_dma_sets_error_and_raises_nothing(dev, dma, eventfds, caplog):
    fds = msix_fds(dev, eventfds)
    program(dev, 0x4000_0000, 64, vector=1)            # nothing mapped there
    with caplog.at_level(logging.INFO):
        wr(dev, R.DOORBELL, 1)
        await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.pack(DONE=1, ERROR=1)
    assert rd(dev, R.COMPLETIONS) == 1
    assert efd_count(fds[1]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The next doorbell, to a good address, clears ERROR.
    program(dev, GUEST_BASE, 64, vector=1)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.DONE.mask and rd(dev, R.COMPLETIONS) == 2


async def test_no_client_means_dma_error(dev):
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.pack(DONE=1, ERROR=1)


async def test_dma_len_limit(dev, dma):
    program(dev, GUEST_BASE, (1 << 20) + 1)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.pack(DONE=1, ERROR=1) and dma.writes == []
    program(dev, GUEST_BASE, 1 << 20, seed=7)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.DONE.mask
    assert dma.mem[:1 << 20] == pattern(7, 1 << 20)
    program(dev, GUEST_BASE, 0)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.DONE.mask and len(dma.writes) == 1
    assert rd(dev, R.COMPLETIONS) == 3


async def test_doorbell_values_and_busy(dev, dma):
    dma.gate = asyncio.Event()
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 2)                             # only 1 rings
    await asyncio.sleep(0)
    assert rd(dev, R.STATUS) == 0
    wr(dev, R.DOORBELL, 1)
    await asyncio.sleep(0)
    wr(dev, R.DOORBELL, 1)                             # busy: ignored
    dma.gate.set()
    await dev.idle()
    assert len(dma.writes) == 1 and rd(dev, R.COMPLETIONS) == 1


async def test_intx_path_status_interrupt_and_intx_disable(dev, dma, eventfds):
    (intx,) = eventfds(1)
    dev.set_irqs(IrqIndex.INTX, EVENTFD_TRIGGER, 0, 1, [intx], b"")
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert efd_count(intx) == 1
    assert cfg(dev, 0x06, 2) & Status.INTERRUPT.mask
    wr(dev, R.STATUS, SampleStatus.DONE.mask)          # RW1C: acknowledge, INTx drops
    assert rd(dev, R.STATUS) == 0
    assert not cfg(dev, 0x06, 2) & Status.INTERRUPT.mask
    # uio_pci_generic style: INTX_DISABLE set, completion still shows in Status.INTERRUPT.
    cfg_wr(dev, 0x04, 2, Command.INTX_DISABLE.mask)
    dev.set_irqs(IrqIndex.INTX, VFIO_IRQ_SET_DATA_NONE | 0x10, 0, 1, [], b"")   # UNMASK (EOI)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert efd_count(intx) == 0 and cfg(dev, 0x06, 2) & Status.INTERRUPT.mask
    cfg_wr(dev, 0x04, 2, 0)                            # the driver unmasks: delivered now
    assert efd_count(intx) == 1


async def test_pba_shows_a_masked_vector_pending(dev, dma, eventfds):
    fds = msix_fds(dev, eventfds)
    dev.set_irqs(IrqIndex.MSIX, VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_MASK, 3, 1, [], b"\x01")
    program(dev, GUEST_BASE, 8, vector=3)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert efd_count(fds[3]) == 0
    assert int.from_bytes(dev.region_read(4, 0x800, 8), "little") == 1 << 3
    dev.region_write(4, 0x800, b"\x00" * 8)            # the PBA is read-only
    assert int.from_bytes(dev.region_read(4, 0x800, 8), "little") == 1 << 3
    dev.set_irqs(IrqIndex.MSIX, VFIO_IRQ_SET_DATA_NONE | 0x10, 3, 1, [], b"")
    assert efd_count(fds[3]) == 1 and dev.region_read(4, 0x800, 8) == bytes(8)


async def test_out_of_range_irq_vector_is_dropped(dev, dma, eventfds):
    fds = msix_fds(dev, eventfds)
    program(dev, GUEST_BASE, 8, vector=99)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.DONE.mask
    assert [efd_count(fd) for fd in fds] == [0, 0, 0, 0]


# -- reset and disconnect ----------------------------------------------------------

async def test_reset_during_dma(dev, dma, eventfds):
    fds = msix_fds(dev, eventfds)
    (err,) = eventfds(1)
    dev.set_irqs(IrqIndex.ERR, EVENTFD_TRIGGER, 0, 1, [err], b"")
    cfg_wr(dev, 0x04, 2, Command.MEMORY.mask | Command.MASTER.mask)
    cfg_wr(dev, 0x10, 4, 0xFEB0_0000)
    dma.gate = asyncio.Event()
    wr(dev, R.SCRATCH, 5)
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 1)
    await asyncio.sleep(0)
    dev.reset()
    dma.gate.set()
    await dev.idle()
    assert rd(dev, R.STATUS) == 0 and rd(dev, R.COMPLETIONS) == 0 and rd(dev, R.SCRATCH) == 0
    assert cfg(dev, 0x04, 2) == 0 and cfg(dev, 0x10, 4) == 0
    assert not any(fd_is_open(fd) for fd in fds) and fd_is_open(err)
    assert dev.irqs.active is None and dma.mem[:16] == bytes(16)


async def test_disconnect_during_dma(dev, dma, eventfds):
    fds = msix_fds(dev, eventfds)
    (req,) = eventfds(1)
    dev.set_irqs(IrqIndex.REQ, EVENTFD_TRIGGER, 0, 1, [req], b"")
    cfg_wr(dev, 0x04, 2, Command.MEMORY.mask)
    dma.gate = asyncio.Event()
    wr(dev, R.SCRATCH, 5)
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 1)
    await asyncio.sleep(0)
    dev.client_disconnected()
    assert not any(fd_is_open(fd) for fd in fds + [req]) and not dev.irqs.owned_fds()
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.pack(DONE=1, ERROR=1)
    assert rd(dev, R.COMPLETIONS) == 1
    assert rd(dev, R.SCRATCH) == 5 and cfg(dev, 0x04, 2) == Command.MEMORY.mask   # state kept
    # A new client finds the device serving; DMA goes through its port.
    dma2 = FakeDma()
    dev.client_connected(dma2)
    wr(dev, R.DOORBELL, 1)
    await dev.idle()
    assert dma2.writes == [(GUEST_BASE, 16)] and rd(dev, R.COMPLETIONS) == 2


async def test_disconnect_before_the_task_runs(dev, dma):
    program(dev, GUEST_BASE, 16)
    wr(dev, R.DOORBELL, 1)
    dev.client_disconnected()                          # task cancelled before its first step
    await dev.idle()
    assert rd(dev, R.STATUS) == SampleStatus.pack(DONE=1, ERROR=1) and dma.writes == []


# -- options and resources ---------------------------------------------------------

@pytest.mark.parametrize("label,want", [("0x10", 16), ("7", 7), (3, 3)])
def test_label_option(label, want):
    d = SampleDevice(label=label)
    try:
        assert d.label == want
        assert int.from_bytes(d.region_read(7, 0x100 + 0x20 + 8, 4), "little") == want
    finally:
        d.close()


@pytest.mark.parametrize("label", ["abc", "-1", str(1 << 32)])
def test_bad_label_is_a_user_error(label):
    with pytest.raises(UserError):
        SampleDevice(label=label)


def test_close_releases_every_fd(eventfds):
    before = len(os.listdir("/proc/self/fd"))
    d = SampleDevice()
    fds = eventfds(4)
    d.set_irqs(IrqIndex.MSIX, EVENTFD_TRIGGER, 0, 4, list(fds), b"")
    d.close()
    assert len(os.listdir("/proc/self/fd")) == before
