"""A few-hundred-byte multiboot guest, for probing QEMU without a Linux image.

QEMU's ``-kernel`` loads a Multiboot (v1) image when it finds the header in the
first 8 KiB (Multiboot spec 0.6.96 §3.1); with flag bit 16 the load addresses
come from the header (the "a.out kludge"), so the image is flat code. The CPU
starts in 32-bit protected mode at ``entry_addr``.

The guest prints text on COM1 (port 0x3f8), then either writes a value to
``isa-debug-exit`` (port 0xf4; QEMU exits with ``(val << 1) | 1``) or halts
forever with interrupts off. Used by ``vuser doctor``'s KVM probe and by the
launcher tests (a guest that hangs, a guest that exits with a given status).
"""

from __future__ import annotations

from pathlib import Path

from vuser.wire import Struct, u32

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
LOAD_ADDR = 0x100000
COM1 = 0x3F8
DEBUG_EXIT_PORT = 0xF4


class MultibootHeader(Struct, size=32):
    """Multiboot v1 header with the address fields (spec §3.1.1)."""

    magic: u32
    flags: u32
    checksum: u32
    header_addr: u32
    load_addr: u32
    load_end_addr: u32
    bss_end_addr: u32
    entry_addr: u32


def _out_dx_al(port: int, byte: int) -> bytes:
    # mov dx, imm16 ; mov al, imm8 ; out dx, al
    return b"\x66\xba" + port.to_bytes(2, "little") + b"\xb0" + bytes([byte]) + b"\xee"


def _code(text: bytes, exit_value: int | None) -> bytes:
    code = b"".join(_out_dx_al(COM1, c) for c in text)
    if exit_value is not None:
        # mov dx, 0xf4 ; mov eax, imm32 ; out dx, eax
        code += b"\x66\xba" + DEBUG_EXIT_PORT.to_bytes(2, "little")
        code += b"\xb8" + (exit_value & 0xFFFFFFFF).to_bytes(4, "little") + b"\xef"
    # cli ; hlt ; jmp back to hlt
    return code + b"\xfa\xf4\xeb\xfd"


def image(text: str = "", exit_value: int | None = None) -> bytes:
    """The bytes of a multiboot kernel that prints ``text`` and exits or hangs."""
    hdr_size = MultibootHeader.SIZE
    flags = MULTIBOOT_AOUT_KLUDGE
    hdr = MultibootHeader(
        magic=MULTIBOOT_MAGIC, flags=flags, checksum=(-(MULTIBOOT_MAGIC + flags)) & 0xFFFFFFFF,
        header_addr=LOAD_ADDR, load_addr=LOAD_ADDR, load_end_addr=0, bss_end_addr=0,
        entry_addr=LOAD_ADDR + hdr_size)
    return hdr.pack() + _code(text.encode(), exit_value)


def write(path: Path, text: str = "", exit_value: int | None = None) -> Path:
    path.write_bytes(image(text, exit_value))
    return path
