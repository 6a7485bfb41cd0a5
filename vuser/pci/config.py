"""PCI configuration space: bytes plus per-byte write and write-1-to-clear masks.

The model is QEMU's ``PCIDevice`` ``config``/``wmask``/``w1cmask``: a write of
``val`` to a byte holding ``old`` stores::

    new = ((old & ~wmask) | (val & wmask)) & ~(w1cmask & val)

so RO bits keep their value, RW bits take the written value and RW1C bits
clear where a 1 is written (PCI Local Bus 3.0 §6.1, PCIe Base 6.0 §7.4 register
attributes RO/RW/RW1C). ``define`` sets a byte range's reset value and masks
(device construction); ``poke`` changes bytes from the device side (a status
bit), ignoring the masks; ``reset`` returns to the defined values.

Accesses come from the peer through region 7 (VFIO_PCI_CONFIG_REGION_INDEX):
any width at any offset inside the space; outside it, ``RemoteProtocolError``
(EINVAL, as libvfio-user answers an out-of-bounds region access).

Also here: the type 0 header layout (PCI Local Bus 3.0 §6.1) and the Command
and Status register bits.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.wire import BitLayout, Bits, Pad, Struct, u8, u16, u32

__all__ = [
    "PCI_CONFIG_SPACE_SIZE", "PCIE_CONFIG_SPACE_SIZE",
    "Type0Header", "Command", "Status", "ConfigSpace", "WriteHook",
]

PCI_CONFIG_SPACE_SIZE = 256
PCIE_CONFIG_SPACE_SIZE = 4096


class Type0Header(Struct, size=64):
    """Type 0 configuration space header (PCI Local Bus 3.0 §6.1, Figure 6-1)."""

    vendor_id: u16          # RO
    device_id: u16          # RO
    command: u16            # RW (see Command)
    status: u16             # RO / RW1C (see Status)
    revision_id: u8         # RO
    class_code_lo: u8       # RO: programming interface
    class_code_mid: u8      # RO: sub-class
    class_code_hi: u8       # RO: base class
    cache_line_size: u8     # RW
    latency_timer: u8       # RO 0 on PCIe
    header_type: u8         # RO
    bist: u8                # RO 0
    bar0: u32               # BAR sizing through wmask (bar.py)
    bar1: u32
    bar2: u32
    bar3: u32
    bar4: u32
    bar5: u32
    cardbus_cis: u32        # RO 0
    subsystem_vendor_id: u16  # RO
    subsystem_id: u16       # RO
    rom_address: u32        # expansion ROM BAR (bar.py)
    capabilities_ptr: u8    # RO
    _reserved: Pad(7)
    interrupt_line: u8      # RW
    interrupt_pin: u8       # RO
    min_gnt: u8             # RO 0
    max_lat: u8             # RO 0


class Command(BitLayout, width=16):
    """Command register (PCI Local Bus 3.0 §6.2.2; PCIe Base 6.0 §7.5.1.1.3)."""

    IO = Bits(0)
    MEMORY = Bits(1)
    MASTER = Bits(2)
    SPECIAL = Bits(3)
    INVALIDATE = Bits(4)
    VGA_PALETTE = Bits(5)
    PARITY = Bits(6)
    WAIT = Bits(7)
    SERR = Bits(8)
    FAST_BACK = Bits(9)
    INTX_DISABLE = Bits(10)


class Status(BitLayout, width=16):
    """Status register (PCI Local Bus 3.0 §6.2.3; PCIe Base 6.0 §7.5.1.1.4)."""

    IMM_READINESS = Bits(0)
    INTERRUPT = Bits(3)             # RO: the function's INTx is asserted
    CAP_LIST = Bits(4)              # RO 1: capabilities pointer is valid
    MHZ66 = Bits(5)
    FAST_BACK = Bits(7)
    PARITY = Bits(8)                # RW1C master data parity error
    DEVSEL = Bits(9, 10)
    SIG_TARGET_ABORT = Bits(11)     # RW1C
    REC_TARGET_ABORT = Bits(12)     # RW1C
    REC_MASTER_ABORT = Bits(13)     # RW1C
    SIG_SYSTEM_ERROR = Bits(14)     # RW1C
    DETECTED_PARITY = Bits(15)      # RW1C

    W1C = (PARITY.mask | SIG_TARGET_ABORT.mask | REC_TARGET_ABORT.mask
           | REC_MASTER_ABORT.mask | SIG_SYSTEM_ERROR.mask | DETECTED_PARITY.mask)


WriteHook = Callable[[int, int], None]
"""Called as ``hook(offset, count)`` after a peer write overlapping its range."""


class ConfigSpace:
    """``size`` bytes of configuration space with write and W1C masks."""

    def __init__(self, size: int = PCIE_CONFIG_SPACE_SIZE) -> None:
        if size not in (PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE):
            raise LocalProtocolError(f"config space is 256 or 4096 bytes, not {size}")
        self.size = size
        self.config = bytearray(size)
        self.defaults = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._hooks: list[tuple[int, int, WriteHook]] = []

    @property
    def is_express(self) -> bool:
        return self.size == PCIE_CONFIG_SPACE_SIZE

    # -- the peer's view (region 7) ---------------------------------------

    def check_access(self, offset: int, count: int) -> None:
        """``RemoteProtocolError(EINVAL)`` unless ``[offset, offset+count)`` is inside."""
        if offset < 0 or count < 0 or offset + count > self.size:
            raise RemoteProtocolError(
                errno.EINVAL, f"config access {offset:#x}+{count} beyond {self.size:#x}")

    def read(self, offset: int, count: int) -> bytes:
        self.check_access(offset, count)
        return bytes(self.config[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        """A peer write: masks applied, then the hooks of the ranges it touched."""
        n = len(data)
        self.check_access(offset, n)
        if n == 0:
            return
        end = offset + n
        old = int.from_bytes(self.config[offset:end], "little")
        wm = int.from_bytes(self.wmask[offset:end], "little")
        w1c = int.from_bytes(self.w1cmask[offset:end], "little")
        val = int.from_bytes(data, "little")
        new = ((old & ~wm) | (val & wm)) & ~(w1c & val)
        self.config[offset:end] = new.to_bytes(n, "little")
        for start, stop, hook in self._hooks:
            if start < end and offset < stop:
                hook(offset, n)

    # -- the device's view ----------------------------------------------

    def define(self, offset: int, value: bytes, wmask: bytes | None = None,
               w1cmask: bytes | None = None) -> None:
        """Set the reset value (and current value) and masks of a byte range."""
        end = offset + len(value)
        if offset < 0 or end > self.size:
            raise LocalProtocolError(f"define {offset:#x}+{len(value)} beyond {self.size:#x}")
        for mask in (wmask, w1cmask):
            if mask is not None and len(mask) != len(value):
                raise LocalProtocolError("mask and value lengths differ")
        self.config[offset:end] = value
        self.defaults[offset:end] = value
        if wmask is not None:
            self.wmask[offset:end] = wmask
        if w1cmask is not None:
            self.w1cmask[offset:end] = w1cmask

    def define_int(self, offset: int, size: int, value: int, wmask: int | None = None,
                   w1cmask: int | None = None) -> None:
        """``define`` for one little-endian integer register of ``size`` bytes."""
        def b(v: int | None) -> bytes | None:
            return None if v is None else v.to_bytes(size, "little")
        self.define(offset, b(value), b(wmask), b(w1cmask))  # type: ignore[arg-type]

    def peek(self, offset: int, size: int) -> int:
        """Current little-endian value of ``size`` bytes at ``offset``."""
        if offset < 0 or offset + size > self.size:
            raise LocalProtocolError(f"peek {offset:#x}+{size} beyond {self.size:#x}")
        return int.from_bytes(self.config[offset:offset + size], "little")

    def poke(self, offset: int, size: int, value: int) -> None:
        """Device-side store of a little-endian value, masks ignored, defaults kept."""
        if offset < 0 or offset + size > self.size:
            raise LocalProtocolError(f"poke {offset:#x}+{size} beyond {self.size:#x}")
        self.config[offset:offset + size] = value.to_bytes(size, "little")

    def add_write_hook(self, offset: int, size: int, hook: WriteHook) -> None:
        """Call ``hook(offset, count)`` after peer writes overlapping ``[offset, offset+size)``."""
        self._hooks.append((offset, offset + size, hook))

    def reset(self) -> None:
        """Back to the defined values (DEVICE_RESET, PCIe Base 6.0 §6.6 function reset)."""
        self.config[:] = self.defaults
