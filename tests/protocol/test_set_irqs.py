"""DEVICE_SET_IRQS (libvfio-user test_device_set_irqs in spirit): every
validation rule gives EINVAL, closes the fds, and leaves the server serving."""

import errno
import os

import pytest

from proto_helpers import Pair, is_open, message
from vuser.backend import (
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
)
from vuser.protocol.consts import Command
from vuser.protocol.messages import SetIrqs, VfioIrqSet

EVENTFD_TRIGGER = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
NONE_TRIGGER = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


@pytest.fixture
def eventfds():
    fds = [os.eventfd(0) for _ in range(4)]
    yield fds
    for fd in fds:
        os.close(fd)


def irq_set(flags, index, start, count, data=b"", argsz=None):
    argsz = 20 + len(data) if argsz is None else argsz
    return SetIrqs(VfioIrqSet(argsz=argsz, flags=flags, index=index, start=start,
                              count=count), data)


def test_eventfds_reach_the_backend_and_fire(pair, eventfds):
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 0, 4), eventfds)
    assert pair.backend.calls[-1] == ("set_irqs", 2, EVENTFD_TRIGGER, 0, 4, 4, b"")
    # The backend holds the server's copies; writing one wakes the client's fd.
    os.eventfd_write(pair.backend.irq_fds[2, 3], 1)
    assert os.eventfd_read(eventfds[3]) == 1


def test_qemu_msix_sequence(pair, eventfds):
    # Enable with no vector, then one vector at a time, then disable (notes §3 #10).
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 0, 1))
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 0, 1), eventfds[:1])
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 3, 1), eventfds[3:])
    assert set(pair.backend.irq_fds) == {(2, 0), (2, 3)}
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(NONE_TRIGGER, 2, 0, 0))
    assert pair.backend.irq_fds == {}


def test_qemu_intx_kvm_resample_sequence(pair, eventfds):
    for body, fds in [
        (irq_set(EVENTFD_TRIGGER, 0, 0, 1), eventfds[:1]),
        (irq_set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1), []),
        (irq_set(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, 0, 0, 1), eventfds[1:2]),
        (irq_set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 0, 1), []),
        (irq_set(NONE_TRIGGER, 0, 0, 0), []),
    ]:
        pair.ok(Command.DEVICE_SET_IRQS, body, fds)


def test_data_bool(pair):
    pair.ok(Command.DEVICE_SET_IRQS,
            irq_set(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 1, 2, b"\1\0"))
    assert pair.backend.calls[-1][-1] == b"\1\0"


@pytest.mark.parametrize("body,nfds,why", [
    (irq_set(EVENTFD_TRIGGER, 2, 0, 1, argsz=24), 1, "argsz covers absent data"),
    (irq_set(EVENTFD_TRIGGER, 2, 0, 1, argsz=16), 1, "argsz below the struct"),
    (irq_set(EVENTFD_TRIGGER, 5, 0, 1), 1, "index == num_irqs"),
    (irq_set(EVENTFD_TRIGGER, 1, 0, 1), 1, "MSI has 0 vectors here"),
    (irq_set(EVENTFD_TRIGGER | 1 << 6, 2, 0, 1), 1, "unknown flag"),
    (irq_set(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_DATA_BOOL
             | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, 1, b"\1"), 1, "two data types"),
    (irq_set(VFIO_IRQ_SET_DATA_EVENTFD, 2, 0, 1), 1, "no action"),
    (irq_set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK
             | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, 1), 0, "two actions"),
    (irq_set(EVENTFD_TRIGGER, 2, 4, 1), 1, "start beyond the vectors"),
    (irq_set(EVENTFD_TRIGGER, 2, 3, 2), 2, "start + count beyond the vectors"),
    (irq_set(EVENTFD_TRIGGER, 2, 0, 3), 2, "neither count fds nor none"),
    (irq_set(EVENTFD_TRIGGER, 2, 0, 1), 2, "more fds than count"),
    (irq_set(NONE_TRIGGER, 2, 0, 1), 1, "fds without DATA_EVENTFD"),
    (irq_set(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, 2, b"\1"), 0,
     "bool data shorter than count"),
    (irq_set(NONE_TRIGGER, 2, 0, 1, b"\1"), 0, "data with DATA_NONE"),
    (irq_set(EVENTFD_TRIGGER, 2, 0, 0), 0, "count 0 with EVENTFD"),
    (irq_set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, 2, 0, 0), 0,
     "count 0 with MASK"),
    (irq_set(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_ERR_IRQ_INDEX, 0, 1),
     0, "ERR takes only TRIGGER"),
])
def test_invalid_set_irqs_is_einval_and_closes_fds(pair, eventfds, body, nfds, why):
    raw = message(Command.DEVICE_SET_IRQS, body.encode())
    assert pair.raw_error(raw, eventfds[:nfds]) == errno.EINVAL, why
    assert not any(is_open(fd) for fd in pair.server_fds), why
    assert not any(c[0] == "set_irqs" for c in pair.backend.calls), "backend reached"
    pair.still_serves()


def test_too_many_fds_for_one_message(pair):
    fds = [os.eventfd(0) for _ in range(17)]
    raw = message(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 0, 17).encode())
    assert pair.raw_error(raw, fds) == errno.EINVAL
    assert not any(is_open(fd) for fd in pair.server_fds)
    for fd in fds:
        os.close(fd)
    pair.still_serves()


def test_backend_refusal_is_its_errno_and_the_fds_are_closed_by_it(pair, eventfds):
    from vuser.errors import RemoteProtocolError
    pair.backend.fail_with = RemoteProtocolError(errno.ENOTSUP, "no")
    assert pair.error(Command.DEVICE_SET_IRQS, irq_set(EVENTFD_TRIGGER, 2, 0, 2),
                      eventfds[:2]) == errno.ENOTSUP
    assert not any(is_open(fd) for fd in pair.server_fds)


def test_intx_disable_with_count_0(pair):
    pair.ok(Command.DEVICE_SET_IRQS, irq_set(NONE_TRIGGER, VFIO_PCI_INTX_IRQ_INDEX, 0, 0))
    assert pair.backend.calls[-1][:5] == ("set_irqs", 0, NONE_TRIGGER, 0, 0)

