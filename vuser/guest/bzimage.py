"""An x86 bzImage: its kernel release and its embedded config (IKCONFIG).

The real-mode setup header sits at offset 0x1f1 of the file (Linux
``Documentation/arch/x86/boot.rst``, "The Real-Mode Kernel Header"). From it:

- ``kernel_version`` (protocol 2.00+): a pointer, minus 0x200, to the NUL-ended
  version string (``6.1.0-50-cloud-amd64 (debian-kernel@...) #1 SMP ...``);
  the release is its first word.
- ``payload_offset``/``payload_length`` (protocol 2.08+): where the compressed
  vmlinux lies, counted from the protected-mode code, which starts after
  ``setup_sects`` 512-byte sectors plus the boot sector (``setup_sects`` 0
  means 4).

The payload's format is told by its magic bytes, as ``scripts/extract-ikconfig``
does. Python's standard library decompresses gzip, xz, lzma and bzip2; zstd
only from Python 3.14 (``compression.zstd``); lz4 and lzo not at all. In the
decompressed vmlinux, ``CONFIG_IKCONFIG`` puts the gzipped ``.config`` between
the markers ``IKCFG_ST`` and ``IKCFG_ED`` (``kernel/configs.c``).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from dataclasses import dataclass
from pathlib import Path

from vuser.errors import UserError
from vuser.wire import Struct, u8, u16, u32, u64

__all__ = ["BzImageError", "SetupHeader", "BzImage", "SETUP_HEADER_OFFSET", "decompressors"]

SETUP_HEADER_OFFSET = 0x1F1
BOOT_FLAG = 0xAA55
HDRS = 0x53726448  # "HdrS"
IKCFG_ST, IKCFG_ED = b"IKCFG_ST", b"IKCFG_ED"
_MAX_VMLINUX = 512 << 20  # a decompressed vmlinux larger than this is refused


class BzImageError(UserError):
    """The file is not a bzImage vuser can read."""


class SetupHeader(Struct, size=0x26C - SETUP_HEADER_OFFSET):
    """``struct setup_header`` (arch/x86/include/uapi/asm/bootparam.h), 0x1f1..0x26b."""

    setup_sects: u8
    root_flags: u16
    syssize: u32
    ram_size: u16
    vid_mode: u16
    root_dev: u16
    boot_flag: u16          # 0x1fe: 0xAA55
    jump: u16
    header: u32             # 0x202: "HdrS"
    version: u16            # 0x206: boot protocol, major << 8 | minor
    realmode_swtch: u32
    start_sys_seg: u16
    kernel_version: u16     # 0x20e: pointer to the version string, minus 0x200
    type_of_loader: u8
    loadflags: u8
    setup_move_size: u16
    code32_start: u32
    ramdisk_image: u32
    ramdisk_size: u32
    bootsect_kludge: u32
    heap_end_ptr: u16
    ext_loader_ver: u8
    ext_loader_type: u8
    cmd_line_ptr: u32
    initrd_addr_max: u32
    kernel_alignment: u32
    relocatable_kernel: u8
    min_alignment: u8
    xloadflags: u16
    cmdline_size: u32
    hardware_subarch: u32
    hardware_subarch_data: u64
    payload_offset: u32     # 0x248
    payload_length: u32
    setup_data: u64
    pref_address: u64
    init_size: u32
    handover_offset: u32
    kernel_info_offset: u32


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # trailing bytes after the stream are ignored
    out = d.decompress(data, _MAX_VMLINUX)
    if not d.eof:
        raise ValueError("truncated gzip stream" if not d.unconsumed_tail else "too large")
    return out


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data, _MAX_VMLINUX)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data, _MAX_VMLINUX)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data, _MAX_VMLINUX)


def _zstd(data: bytes) -> bytes:
    from compression import zstd  # Python 3.14+ (decompressors() checks first)

    return zstd.ZstdDecompressor().decompress(data, _MAX_VMLINUX)


#: Payload magic -> (name, decompressor or None when the standard library has none).
_FORMATS: tuple[tuple[bytes, str, object], ...] = (
    (b"\x1f\x8b\x08", "gzip", _gunzip),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (b"\x5d\x00\x00", "lzma", _lzma),
    (b"BZh", "bzip2", _bzip2),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
    (b"\x02\x21\x4c\x18", "lz4", None),
    (b"\x89LZO", "lzo", None),
)


def decompressors() -> dict[str, bool]:
    """Each payload format and whether this Python can decompress it."""
    out = {}
    for _, name, fn in _FORMATS:
        ok = fn is not None
        if name == "zstd":
            try:
                import compression.zstd  # noqa: F401
            except ImportError:
                ok = False
        out[name] = ok
    return out


@dataclass(frozen=True)
class BzImage:
    """A bzImage read from disk: its header, version string and release."""

    path: Path
    header: SetupHeader
    version: str  # the whole version string
    data: bytes

    @property
    def release(self) -> str:
        return self.version.split()[0]

    @classmethod
    def read(cls, path: str | Path) -> BzImage:
        """Read and check the setup header; ``BzImageError`` (one line) otherwise."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BzImageError(f"kernel {path} does not exist") from None
        except IsADirectoryError:
            raise BzImageError(f"kernel {path} is a directory, not a bzImage") from None
        except OSError as e:
            raise BzImageError(f"kernel {path}: {e.strerror}") from None
        try:
            hdr = SetupHeader.unpack(data, SETUP_HEADER_OFFSET)
        except ValueError:
            raise BzImageError(f"kernel {path} is not a bzImage ({len(data)} bytes, too short "
                               "for the x86 setup header)") from None
        if hdr.boot_flag != BOOT_FLAG or hdr.header != HDRS:
            raise BzImageError(f"kernel {path} is not an x86 bzImage (no 0xAA55/HdrS setup "
                               "header; a vmlinux ELF or another architecture's image?)")
        if hdr.version < 0x0208:
            raise BzImageError(f"kernel {path}: boot protocol {hdr.version >> 8}."
                               f"{hdr.version & 0xff} is older than 2.08")
        start = hdr.kernel_version + 0x200
        end = data.find(b"\0", start, start + 512)
        if hdr.kernel_version == 0 or end < 0 or end == start:
            raise BzImageError(f"kernel {path}: the setup header has no kernel version string")
        version = data[start:end].decode("ascii", errors="replace")
        return cls(path=path, header=hdr, version=version, data=data)

    def payload(self) -> bytes:
        """The compressed vmlinux (boot protocol 2.08 ``payload_offset``/``_length``)."""
        sects = self.header.setup_sects or 4
        start = (sects + 1) * 512 + self.header.payload_offset
        end = start + self.header.payload_length
        if self.header.payload_length == 0 or end > len(self.data):
            raise BzImageError(f"kernel {self.path}: payload {start:#x}+"
                               f"{self.header.payload_length:#x} lies outside the file")
        return self.data[start:end]

    def compression(self) -> str:
        """The payload's format (``gzip``, ``xz``, ``zstd``, ...), or ``unknown``."""
        head = self.payload()[:8]
        return next((name for magic, name, _ in _FORMATS if head.startswith(magic)), "unknown")

    def vmlinux(self) -> bytes:
        """The decompressed kernel; ``BzImageError`` naming the format if it cannot be."""
        payload = self.payload()
        for magic, name, fn in _FORMATS:
            if payload.startswith(magic):
                if not decompressors()[name]:
                    raise BzImageError(f"kernel {self.path}: {name}-compressed payload, which "
                                       "this Python's standard library cannot decompress")
                try:
                    return fn(payload)
                except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
                    raise BzImageError(f"kernel {self.path}: corrupt {name} payload ({e})") from None
        raise BzImageError(f"kernel {self.path}: unknown payload format {payload[:4].hex()}")

    def ikconfig(self) -> str | None:
        """The embedded ``.config`` (``CONFIG_IKCONFIG``), or None when there is none.
        ``BzImageError`` when the payload cannot be decompressed."""
        vmlinux = self.vmlinux()
        start = vmlinux.find(IKCFG_ST)
        if start < 0:
            return None
        end = vmlinux.find(IKCFG_ED, start)
        blob = vmlinux[start + len(IKCFG_ST): end if end > 0 else None]
        try:
            return _gunzip(blob).decode(errors="replace")
        except (ValueError, zlib.error) as e:
            raise BzImageError(f"kernel {self.path}: corrupt embedded config ({e})") from None
