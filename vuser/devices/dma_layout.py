"""``vuser-dma`` layouts, declared once: BAR0 registers, descriptor, completion record.

``docs/vuser-dma.md`` is the prose of this module; the guest library's header
(``guest-tests/lib/vdma_layout.h``) is generated from, or checked against,
these declarations. All values are little-endian.
"""

from __future__ import annotations

import enum

from vuser.wire import BitLayout, Bits, Bytes, Struct, u8, u16, u32, u64

__all__ = [
    "VDMA_DEVICE_ID", "VDMA_ID", "VDMA_VERSION", "Reg", "QueueReg", "QUEUE_BASE",
    "QUEUE_STRIDE", "Cap", "Ctrl", "Status", "DevtlbCtrl", "QCtrl", "QStatus", "QueueError",
    "Opcode", "DescFlags", "DescPasid", "Descriptor", "CompletionStatus", "FaultInfo",
    "CompletionRecord", "MAX_LENGTH", "queue_reg",
]

VDMA_DEVICE_ID = 0x0002
VDMA_ID = 0x5655_0002
VDMA_VERSION = 1

#: The largest length a descriptor may carry (longer: INVALID_DESC).
MAX_LENGTH = 16 << 20


class Reg(enum.IntEnum):
    """Global BAR0 registers (u32)."""

    ID = 0x000           # RO VDMA_ID
    VERSION = 0x004      # RO VDMA_VERSION
    CAP = 0x008          # RO Cap
    LABEL = 0x00C        # RO the device label (stream id)
    CTRL = 0x010         # RW Ctrl
    STATUS = 0x014       # RO Status
    INT_STATUS = 0x018   # RW1C bit q: queue q completed a descriptor with DescFlags.IRQ
    DEVTLB_CTRL = 0x01C  # RW DevtlbCtrl (self-clearing)


QUEUE_BASE = 0x100
QUEUE_STRIDE = 0x40


class QueueReg(enum.IntEnum):
    """Per-queue registers (u32) at ``QUEUE_BASE + QUEUE_STRIDE * q``."""

    RING_LO = 0x00       # RW (ignored while the queue is enabled)
    RING_HI = 0x04       # RW (ignored while the queue is enabled)
    RING_SIZE = 0x08     # RW entries, a power of two (ignored while enabled)
    HEAD = 0x0C          # RO next descriptor the device consumes
    TAIL = 0x10          # RW next free slot (the driver's)
    DOORBELL = 0x14      # WO any write: process HEAD..TAIL
    Q_CTRL = 0x18        # RW QCtrl
    Q_STATUS = 0x1C      # RO QStatus
    Q_ERROR = 0x20       # RO QueueError, 0 while not halted
    COMPLETED = 0x24     # RO descriptors completed since the queue was enabled


def queue_reg(q: int, reg: QueueReg) -> int:
    """BAR0 offset of register ``reg`` of queue ``q``."""
    return QUEUE_BASE + QUEUE_STRIDE * q + reg


class Cap(BitLayout, width=32):
    NQUEUES = Bits(0, 7)
    PASID = Bits(8)
    ATS = Bits(9)
    PRI = Bits(10)
    MAX_RING_LOG2 = Bits(16, 23)


class Ctrl(BitLayout, width=32):
    ENABLE = Bits(0)
    RESET = Bits(1)          # self-clearing


class Status(BitLayout, width=32):
    ENABLED = Bits(0)
    ERROR = Bits(1)          # some queue is halted


class DevtlbCtrl(BitLayout, width=32):
    FLUSH = Bits(0)          # self-clearing: drop every device-TLB entry


class QCtrl(BitLayout, width=32):
    ENABLE = Bits(0)
    VECTOR = Bits(8, 15)     # MSI-X vector of the queue's completions
    IRQ_ENABLE = Bits(16)


class QStatus(BitLayout, width=32):
    ENABLED = Bits(0)
    BUSY = Bits(1)           # a worker is processing descriptors
    HALTED = Bits(2)         # stopped on a QueueError until disabled and enabled


class QueueError(enum.IntEnum):
    """Q_ERROR: why a queue halted."""

    NONE = 0
    TAIL = 1             # TAIL >= RING_SIZE at a doorbell
    RING_FAULT = 2       # the descriptor fetch faulted
    RING_SIZE = 3        # RING_SIZE not a power of two in 1..2^MAX_RING_LOG2 at enable
    COMPLETION_FAULT = 4  # the completion-record write faulted
    BUS_MASTER = 5       # a doorbell while PCI Command.Bus Master Enable is clear
    INTERNAL = 6         # a device-model error (a vuser bug, logged by the server)


class Opcode(enum.IntEnum):
    NOP = 0
    MEMCPY = 1
    FILL = 2
    COMPARE = 3
    DRAIN = 4


class DescFlags(enum.IntFlag):
    IRQ = 0x01             # INT_STATUS bit and MSI-X vector on completion
    COMPLETION = 0x02      # write the completion record
    BLOCK_ON_FAULT = 0x04  # on a stage-1 fault, ask for the page (PRI) and wait
    COMPLETION_RID = 0x08  # the completion record is untagged (the ring's space), not in the PASID's

    @classmethod
    def valid_mask(cls) -> int:
        return int(cls.IRQ | cls.COMPLETION | cls.BLOCK_ON_FAULT | cls.COMPLETION_RID)


class DescPasid(BitLayout, width=32):
    PASID = Bits(0, 19)
    VALID = Bits(31)


_ZERO16 = bytes(16)


class Descriptor(Struct, size=64):
    """One ring entry."""

    opcode: u8
    flags: u8           # DescFlags
    _rsvd0: u16         # must be 0
    pasid: u32          # DescPasid
    src: u64            # MEMCPY, COMPARE
    dst: u64            # MEMCPY, FILL, COMPARE's second operand
    length: u64         # bytes, <= MAX_LENGTH
    completion: u64     # completion-record address (in the descriptor's address space)
    pattern: u64        # FILL: the 8-byte pattern, repeated
    _rsvd1: Bytes(16)   # must be 0

    def reserved_clear(self) -> bool:
        return self._rsvd0 == 0 and self._rsvd1 == _ZERO16


class CompletionStatus(enum.IntEnum):
    NONE = 0
    SUCCESS = 1
    PAGE_FAULT = 2
    INVALID_DESC = 3
    ABORTED = 4


class FaultInfo(enum.IntFlag):
    WRITE = 0x01     # the faulting access was a write
    STAGE2 = 0x02    # the host's stage (2) faulted, not the guest's


class CompletionRecord(Struct, size=32):
    status: u8          # CompletionStatus
    fault_info: u8      # FaultInfo
    _rsvd0: u16
    result: u32         # COMPARE: 0 equal, 1 different
    bytes_done: u64     # bytes done before a fault; COMPARE: offset of the first difference
    fault_addr: u64     # the faulting address (in the descriptor's address space)
    _rsvd1: u64
