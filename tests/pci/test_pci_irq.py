"""Interrupts: SET_IRQS with real eventfds, fd ownership, masking, INTx level rules."""

from __future__ import annotations

import asyncio
import copy
import errno
import os

import pytest
from fdhelp import efd_count, fd_is_open

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.pci.irq import Interrupts, IrqIndex
from vuser.backend import (
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK as MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER as TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK as UNMASK,
    VFIO_IRQ_SET_DATA_BOOL as BOOL, VFIO_IRQ_SET_DATA_EVENTFD as EVENTFD,
    VFIO_IRQ_SET_DATA_NONE as NONE,
)

INTX, MSI, MSIX, ERR, REQ = IrqIndex


def make(msi=2, msix=4):
    levels = []
    irqs = Interrupts(intx=True, msi=msi, msix=msix, on_intx_level=levels.append)
    return irqs, levels


def state(irqs: Interrupts):
    return (irqs.active, irqs.intx_level, irqs.intx_masked, irqs.intx_disabled,
            irqs.intx_unmask_fd, sorted(irqs.owned_fds()),
            {i: copy.deepcopy((v.fds, v.masked, v.pending)) for i, v in irqs._vec.items()})


def test_info():
    irqs, _ = make()
    assert irqs.info(INTX).flags == (VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE
                                     | VFIO_IRQ_INFO_AUTOMASKED)
    assert irqs.info(INTX).count == 1
    assert irqs.info(MSI).count == 2 and irqs.info(MSIX).count == 4
    assert not irqs.info(MSIX).flags & VFIO_IRQ_INFO_NORESIZE   # vectors may be added later
    assert irqs.info(ERR).count == 1 and irqs.info(REQ).count == 1
    with pytest.raises(RemoteProtocolError) as e:
        irqs.info(5)
    assert e.value.errno == errno.EINVAL


def test_msix_assign_trigger_replace_deassign_disable(eventfds):
    irqs, _ = make()
    a, b, c, d = eventfds(4)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 2, [a, b], b"")
    assert irqs.active is MSIX
    assert irqs.signal(MSIX, 1) and efd_count(b) == 1 and efd_count(a) == 0
    irqs.set_irqs(MSIX, NONE | TRIGGER, 0, 2, [], b"")            # loopback trigger
    assert efd_count(a) == 1 and efd_count(b) == 1
    irqs.set_irqs(MSIX, BOOL | TRIGGER, 0, 2, [], b"\x00\x01")
    assert efd_count(a) == 0 and efd_count(b) == 1
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 1, 1, [c], b"")       # replace vector 1
    assert not fd_is_open(b) and irqs.eventfd(MSIX, 1) == c
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 1, [-1], b"")      # de-assign with -1
    assert not fd_is_open(a) and irqs.eventfd(MSIX, 0) is None and irqs.active is MSIX
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 3, 1, [d], b"")
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 3, 1, [], b"")        # de-assign with no fds
    assert not fd_is_open(d)
    irqs.set_irqs(MSIX, NONE | TRIGGER, 0, 0, [], b"")           # count 0: disable
    assert not fd_is_open(c) and irqs.active is None and not irqs.owned_fds()
    assert not irqs.signal(MSIX, 1)


def test_qemu_msix_enable_with_no_vectors_then_per_vector(eventfds):
    """vfio-user-notes §3 #10: SET_IRQS(2, EVENTFD|TRIGGER, 0, 1, no fd), then one per vector."""
    irqs, _ = make()
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 1, [], b"")
    assert irqs.active is MSIX and not irqs.owned_fds()
    (fd,) = eventfds(1)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 2, 1, [fd], b"")
    assert irqs.signal(MSIX, 2) and efd_count(fd) == 1


def test_msix_mask_sets_pending_and_unmask_delivers(eventfds):
    irqs, _ = make()
    fds = eventfds(4)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 4, fds, b"")
    irqs.set_irqs(MSIX, BOOL | MASK, 0, 4, [], b"\x00\x01\x00\x01")
    assert not irqs.signal(MSIX, 1) and irqs.signal(MSIX, 2)
    assert irqs.pending_bits(MSIX) == 0b0010 and efd_count(fds[1]) == 0
    assert efd_count(fds[2]) == 1
    irqs.set_irqs(MSIX, NONE | UNMASK, 1, 1, [], b"")
    assert irqs.pending_bits(MSIX) == 0 and efd_count(fds[1]) == 1
    irqs.set_irqs(MSIX, NONE | UNMASK, 3, 1, [], b"")           # nothing pending: no event
    assert efd_count(fds[3]) == 0 and not irqs.vector_masked(MSIX, 3)


def test_msi_vectors(eventfds):
    irqs, _ = make(msi=2)
    a, b = eventfds(2)
    irqs.set_irqs(MSI, EVENTFD | TRIGGER, 0, 2, [a, b], b"")
    assert irqs.active is MSI and irqs.signal(MSI, 1) and efd_count(b) == 1
    assert not irqs.signal(MSI, 2)             # beyond the count: dropped, not an error
    assert not irqs.signal(MSIX, 0)            # not the active index


def test_intx_level_automask_unmask_and_intx_disable(eventfds):
    irqs, levels = make()
    (fd,) = eventfds(1)
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [fd], b"")
    assert irqs.active is INTX
    irqs.intx_assert()
    assert levels == [True] and efd_count(fd) == 1 and irqs.intx_masked
    irqs.intx_assert()                          # already asserted and automasked: nothing
    assert efd_count(fd) == 0
    irqs.set_irqs(INTX, NONE | UNMASK, 0, 1, [], b"")   # EOI: still asserted, so again
    assert efd_count(fd) == 1 and irqs.intx_masked
    irqs.set_intx_disable(True)
    irqs.set_irqs(INTX, NONE | UNMASK, 0, 1, [], b"")
    assert efd_count(fd) == 0 and not irqs.intx_masked   # gated by INTX_DISABLE
    irqs.set_intx_disable(False)
    assert efd_count(fd) == 1                   # delivered once the gate opens
    irqs.intx_deassert()
    irqs.set_irqs(INTX, NONE | UNMASK, 0, 1, [], b"")
    assert levels == [True, False] and efd_count(fd) == 0
    irqs.set_irqs(INTX, BOOL | MASK, 0, 1, [], b"\x01")
    irqs.intx_assert()
    assert efd_count(fd) == 0                   # masked by the client
    irqs.set_irqs(INTX, BOOL | UNMASK, 0, 1, [], b"\x01")
    assert efd_count(fd) == 1


def test_intx_level_before_enable_is_delivered_on_enable(eventfds):
    irqs, _ = make()
    irqs.intx_assert()
    (fd,) = eventfds(1)
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [fd], b"")
    assert efd_count(fd) == 1


def test_intx_deassign_disables(eventfds):
    irqs, _ = make()
    (fd,) = eventfds(1)
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [fd], b"")
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [-1], b"")
    assert irqs.active is None and not fd_is_open(fd)


async def test_intx_resample_fd_unmasks(eventfds):
    """KVM irqfd + resample: QEMU hands a resample eventfd with EVENTFD | UNMASK."""
    loop = asyncio.get_running_loop()

    class Watcher:
        def watch(self, fd, cb):
            loop.add_reader(fd, cb)

        def unwatch(self, fd):
            loop.remove_reader(fd)

    irqs = Interrupts(intx=True, watcher=Watcher())
    trigger, resample, resample2 = eventfds(3)
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [trigger], b"")
    irqs.set_irqs(INTX, EVENTFD | UNMASK, 0, 1, [resample], b"")
    irqs.intx_assert()
    assert efd_count(trigger) == 1 and irqs.intx_masked
    os.eventfd_write(resample, 1)               # the guest's EOI, as KVM reports it
    delivered = 0
    for _ in range(100):
        await asyncio.sleep(0.01)
        delivered += efd_count(trigger)
        if delivered:
            break
    assert delivered == 1 and irqs.intx_masked  # unmasked, still asserted: re-delivered, re-masked
    assert efd_count(resample) == 0             # drained by the device
    irqs.set_irqs(INTX, EVENTFD | UNMASK, 0, 1, [resample2], b"")
    assert not fd_is_open(resample) and irqs.intx_unmask_fd == resample2
    irqs.set_irqs(INTX, NONE | TRIGGER, 0, 0, [], b"")   # disabling INTx drops the resample fd
    assert not fd_is_open(resample2) and not fd_is_open(trigger) and irqs.intx_unmask_fd is None


def test_err_and_req(eventfds):
    irqs, _ = make()
    err, req = eventfds(2)
    irqs.set_irqs(ERR, EVENTFD | TRIGGER, 0, 1, [err], b"")
    irqs.set_irqs(REQ, EVENTFD | TRIGGER, 0, 1, [req], b"")
    assert irqs.active is None                 # not exclusive with INTx/MSI/MSI-X
    assert irqs.signal(ERR) and efd_count(err) == 1
    irqs.set_irqs(REQ, NONE | TRIGGER, 0, 1, [], b"")
    assert efd_count(req) == 1
    irqs.set_irqs(REQ, NONE | TRIGGER, 0, 0, [], b"")
    assert not fd_is_open(req) and fd_is_open(err)


def test_reset_keeps_err_req_and_close_all_closes_everything(eventfds):
    irqs, levels = make()
    intx, err, req = eventfds(3)
    irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [intx], b"")
    irqs.set_irqs(ERR, EVENTFD | TRIGGER, 0, 1, [err], b"")
    irqs.set_irqs(REQ, EVENTFD | TRIGGER, 0, 1, [req], b"")
    irqs.intx_assert()
    irqs.reset()
    assert not fd_is_open(intx) and fd_is_open(err) and fd_is_open(req)
    assert irqs.active is None and not irqs.intx_level and levels == [True, False]
    irqs.close_all()
    assert not fd_is_open(err) and not fd_is_open(req) and not irqs.owned_fds()


def test_close_all_closes_msix_vectors(eventfds):
    irqs, _ = make()
    fds = eventfds(4)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 4, fds, b"")
    irqs.close_all()
    assert not any(fd_is_open(fd) for fd in fds) and irqs.active is None


def test_exclusive_indexes(eventfds):
    irqs, _ = make()
    a, b = eventfds(2)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 1, [a], b"")
    with pytest.raises(RemoteProtocolError) as e:
        irqs.set_irqs(INTX, EVENTFD | TRIGGER, 0, 1, [b], b"")
    assert e.value.errno == errno.EINVAL and not fd_is_open(b) and fd_is_open(a)
    irqs.set_irqs(INTX, NONE | TRIGGER, 0, 0, [], b"")   # disabling an inactive index: no-op
    assert irqs.active is MSIX and fd_is_open(a)


# Every bad SET_IRQS: EINVAL, the fds handed over closed, the state unchanged.
BAD = {
    "index out of range": (5, EVENTFD | TRIGGER, 0, 1, 1, b""),
    "unknown flag": (MSIX, EVENTFD | TRIGGER | 0x40, 0, 1, 1, b""),
    "two data types": (MSIX, EVENTFD | BOOL | TRIGGER, 0, 1, 1, b""),
    "no data type": (MSIX, TRIGGER, 0, 1, 0, b""),
    "two actions": (MSIX, NONE | MASK | UNMASK, 0, 1, 0, b""),
    "no action": (MSIX, NONE, 0, 1, 0, b""),
    "start beyond count": (MSIX, EVENTFD | TRIGGER, 4, 1, 1, b""),
    "start+count beyond": (MSIX, EVENTFD | TRIGGER, 3, 2, 2, b""),
    "negative start": (MSIX, EVENTFD | TRIGGER, -1, 1, 1, b""),
    "index with no vectors": (MSI, EVENTFD | TRIGGER, 0, 1, 1, b""),
    "count 0 with eventfd": (MSIX, EVENTFD | TRIGGER, 0, 0, 0, b""),
    "count 0 with mask": (MSIX, NONE | MASK, 0, 0, 0, b""),
    "too few fds": (MSIX, EVENTFD | TRIGGER, 0, 3, 2, b""),
    "too many fds": (MSIX, EVENTFD | TRIGGER, 0, 1, 2, b""),
    "fds with DATA_NONE": (MSIX, NONE | TRIGGER, 0, 1, 1, b""),
    "fds with DATA_BOOL": (MSIX, BOOL | TRIGGER, 0, 1, 1, b"\x01"),
    "data with DATA_NONE": (MSIX, NONE | TRIGGER, 0, 1, 0, b"\x01"),
    "data with DATA_EVENTFD": (MSIX, EVENTFD | TRIGGER, 0, 1, 1, b"\x01\x00\x00\x00"),
    "short bool data": (MSIX, BOOL | TRIGGER, 0, 2, 0, b"\x01"),
    "ERR mask": (ERR, NONE | MASK, 0, 1, 0, b""),
    "REQ unmask": (REQ, NONE | UNMASK, 0, 1, 0, b""),
    "mask not enabled": (INTX, NONE | MASK, 0, 1, 0, b""),
    "eventfd mask": (MSIX, EVENTFD | MASK, 0, 1, 1, b""),
    "eventfd unmask on MSI-X": (MSIX, EVENTFD | UNMASK, 0, 1, 1, b""),
    "trigger not enabled": (INTX, NONE | TRIGGER, 0, 1, 0, b""),
    "other index active": (INTX, EVENTFD | TRIGGER, 0, 1, 1, b""),
}


NEEDS_MSIX = {"other index active", "eventfd mask", "eventfd unmask on MSI-X"}


@pytest.mark.parametrize("case,setup", [(c, s) for c in sorted(BAD) for s in ("idle", "msix active")
                                        if s == "msix active" or c not in NEEDS_MSIX])
def test_bad_set_irqs_is_einval_closes_fds_and_changes_nothing(case, setup, eventfds):
    index, flags, start, count, nfds, data = BAD[case]
    irqs, _ = make(msi=0)
    held = []
    if setup == "msix active":
        held = eventfds(2)
        irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 2, held, b"")
        irqs.set_irqs(MSIX, BOOL | MASK, 0, 2, [], b"\x01\x00")
        irqs.signal(MSIX, 0)
    before = state(irqs)
    fds = eventfds(nfds)
    with pytest.raises(RemoteProtocolError) as e:
        irqs.set_irqs(index, flags, start, count, fds, data)
    assert e.value.errno == errno.EINVAL
    assert [fd_is_open(fd) for fd in fds] == [False] * nfds
    assert state(irqs) == before
    assert all(fd_is_open(fd) for fd in held)
    irqs.close_all()


def test_bad_fd_values(eventfds):
    irqs, _ = make()
    (held,) = eventfds(1)
    irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 0, 1, [held], b"")
    before = state(irqs)
    for fds in ([-2], ):
        with pytest.raises(RemoteProtocolError):
            irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 1, 1, fds, b"")
    (dup,) = eventfds(1)
    with pytest.raises(RemoteProtocolError):
        irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 1, 2, [dup, dup], b"")
    assert not fd_is_open(dup)
    with pytest.raises(RemoteProtocolError):   # an fd this device already owns
        irqs.set_irqs(MSIX, EVENTFD | TRIGGER, 1, 1, [held], b"")
    assert fd_is_open(held) and state(irqs) == before
    irqs.close_all()


def test_device_side_misuse():
    irqs, _ = make()
    with pytest.raises(LocalProtocolError):
        irqs.signal(INTX)
    with pytest.raises(LocalProtocolError):
        Interrupts(intx=False).intx_assert()
