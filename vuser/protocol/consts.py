"""vfio-user vocabulary: command numbers, header flags and limits.

Spec: QEMU ``docs/interop/vfio-user.rst`` ("Commands", "Header"); QEMU
``hw/vfio-user/protocol.h``. Every limit carries the reason for its value
(the spec, or QEMU's client where it is stricter).
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    """vfio-user command numbers (spec "Commands"); 14 is obsolete but reserved."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


#: Commands a client sends and a server answers.
CLIENT_TO_SERVER = frozenset({
    Command.VERSION, Command.DMA_MAP, Command.DMA_UNMAP, Command.DEVICE_GET_INFO,
    Command.DEVICE_GET_REGION_INFO, Command.DEVICE_GET_REGION_IO_FDS,
    Command.DEVICE_GET_IRQ_INFO, Command.DEVICE_SET_IRQS, Command.REGION_READ,
    Command.REGION_WRITE, Command.DEVICE_RESET, Command.REGION_WRITE_MULTI,
    Command.DEVICE_FEATURE, Command.MIG_DATA_READ, Command.MIG_DATA_WRITE,
})
#: Commands a server sends and a client answers (without twin-socket mode
#: they share the one socket: spec "VFIO_USER_DMA_READ").
SERVER_TO_CLIENT = frozenset({Command.DMA_READ, Command.DMA_WRITE})

# Header (spec "Header"): 16 bytes, then the command's payload.
HEADER_SIZE = 16
VFIO_USER_F_TYPE_MASK = 0xF       # flags bits 0-3: message type
VFIO_USER_F_TYPE_COMMAND = 0x0
VFIO_USER_F_TYPE_REPLY = 0x1
VFIO_USER_F_NO_REPLY = 0x10       # a command the sender wants no reply for
VFIO_USER_F_ERROR = 0x20          # a reply whose error field is valid

# Protocol version we speak. QEMU 11 rejects a reply whose minor is not 0.
VFIO_USER_MAJOR = 0
VFIO_USER_MINOR = 0

# File descriptors per message.
#: QEMU's VFIO_USER_MAX_MAX_FDS: the most a peer may advertise; what we
#: accept per message (lets one SET_IRQS carry 16 MSI-X eventfds).
MAX_MSG_FDS = 16
#: QEMU's VFIO_USER_DEF_MAX_FDS: what QEMU assumes when a peer omits
#: ``max_msg_fds``. The spec says 1; we follow the spec when reading a peer's
#: capabilities (the safer of the two), see ``caps.py``.
DEF_MAX_FDS = 8
SPEC_DEF_MAX_FDS = 1
#: SCM_MAX_FD in Linux: the most fds one SCM_RIGHTS message can carry, so the
#: most a receive buffer ever needs room for.
SCM_MAX_FD = 253

# Data transfer.
#: QEMU's VFIO_USER_DEF_MAX_XFER: what we advertise and accept as ``count`` of
#: REGION_READ/WRITE, and what a peer that omits the key is assumed to accept.
MAX_DATA_XFER_SIZE = 1 << 20
#: QEMU's VFIO_USER_MAX_MAX_XFER: the most any peer may advertise.
MAX_DATA_XFER_SIZE_LIMIT = 64 << 20
#: Largest message we accept: header, a 16-byte access struct (REGION_WRITE,
#: DMA_WRITE, REGION_READ and DMA_READ replies) and a full data transfer.
MAX_MSG_SIZE = HEADER_SIZE + 16 + MAX_DATA_XFER_SIZE

# DMA.
#: QEMU's VFIO_USER_DEF_MAP_MAX (and the spec's default ``max_dma_maps``).
MAX_DMA_MAPS = 65535
#: The only DMA page size we support (``pgsizes``); QEMU requires multiples.
PGSIZE_4K = 4096

# REGION_WRITE_MULTI (QEMU VFIO_USER_MULTI_MAX / VFIO_USER_MULTI_DATA).
MAX_WRITE_MULTI = 200
WRITE_MULTI_DATA = 8

# DMA_MAP / DMA_UNMAP flags (spec; linux/vfio.h VFIO_DMA_MAP_FLAG_*).
VFIO_USER_F_DMA_REGION_READ = 1 << 0
VFIO_USER_F_DMA_REGION_WRITE = 1 << 1
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1

# Region info capability chain (linux/vfio.h).
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1

# DEVICE_FEATURE flags (spec "VFIO_USER_DEVICE_FEATURE").
VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
