"""The initramfs "newc" cpio format, written without ``cpio`` or root.

Documentation/driver-api/early-userspace/buffer-format.rst: each entry is a
110-byte header (magic ``070701`` and 13 fields of 8 ASCII hex digits), the
NUL-terminated name padded to a multiple of 4, then the data padded to a
multiple of 4. The archive ends with an entry named ``TRAILER!!!``.

Every entry gets a unique inode number and ``nlink`` 1, or the kernel's
hard-link logic would merge files. Device nodes (``/dev/console``) are plain
headers here, so building the archive needs neither ``mknod`` nor root.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import BinaryIO

from vuser.wire import Bytes, Struct

__all__ = ["NewcHeader", "NewcWriter", "NEWC_MAGIC", "TRAILER", "write_gzip"]

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _hex8() -> Bytes:
    return Bytes(8)


class NewcHeader(Struct, size=110):
    """The newc header; every field but ``magic`` is 8 ASCII hex digits."""

    magic: Bytes(6) = NEWC_MAGIC
    ino: _hex8()
    mode: _hex8()
    uid: _hex8()
    gid: _hex8()
    nlink: _hex8()
    mtime: _hex8()
    filesize: _hex8()
    devmajor: _hex8()
    devminor: _hex8()
    rdevmajor: _hex8()
    rdevminor: _hex8()
    namesize: _hex8()  # including the terminating NUL
    check: _hex8()

    NUMERIC = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor",
               "devminor", "rdevmajor", "rdevminor", "namesize", "check")

    @classmethod
    def build(cls, **values: int) -> NewcHeader:
        fields = {}
        for name in cls.NUMERIC:
            v = values.pop(name, 0)
            if not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"newc {name}={v!r} does not fit 32 bits")
            fields[name] = b"%08X" % v
        if values:
            raise ValueError(f"unknown newc fields: {sorted(values)}")
        return cls(**fields)

    def value(self, name: str) -> int:
        """A numeric field as an int (``ValueError`` if it is not hex)."""
        if name not in self.NUMERIC:
            raise KeyError(name)
        return int(getattr(self, name), 16)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class NewcWriter:
    """Append entries to a newc archive on ``out``; ``close()`` writes the trailer.

    Names are archive-relative (``dev/console``); missing parent directories
    are added (mode 0755) before their first child. A name given twice is a
    ``ValueError``. ``mtime`` is the same for every entry, so the same input
    gives the same bytes.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._next_ino = 1
        self._names: set[str] = set()
        self._dirs: set[str] = {"."}
        self._closed = False

    @staticmethod
    def _normalise(name: str) -> str:
        p = PurePosixPath(name.lstrip("/"))
        if not p.parts or ".." in p.parts:
            raise ValueError(f"bad archive name {name!r}")
        return str(p)

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = self._normalise(name) if name != TRAILER else name
        if name in self._names:
            raise ValueError(f"{name!r} is already in the archive")
        parent = str(PurePosixPath(name).parent)
        if name != TRAILER and parent not in self._dirs:
            self.add_dir(parent)
        encoded = name.encode() + b"\0"
        hdr = NewcHeader.build(
            ino=0 if name == TRAILER else self._next_ino,
            mode=mode, nlink=1, mtime=self._mtime if name != TRAILER else 0,
            filesize=len(data), rdevmajor=rdev[0], rdevminor=rdev[1],
            namesize=len(encoded),
        )
        if name != TRAILER:
            self._next_ino += 1
            self._names.add(name)
        raw = hdr.pack() + encoded
        self._out.write(raw + _pad4(len(raw)) + data + _pad4(len(data)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        name = self._normalise(name)
        if name in self._dirs:
            return
        self._entry(name, stat.S_IFDIR | mode)
        self._dirs.add(name)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        """A symlink carries its target as data."""
        if not target:
            raise ValueError(f"symlink {name!r} has an empty target")
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character (``kind='c'``) or block (``'b'``) device node."""
        fmt = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(kind)
        if fmt is None:
            raise ValueError(f"device kind must be 'c' or 'b', not {kind!r}")
        self._entry(name, fmt | mode, rdev=(major, minor))

    def close(self) -> None:
        if not self._closed:
            self._entry(TRAILER, 0)
            self._closed = True


def write_gzip(build: Callable[[NewcWriter], None], mtime: int = 0, level: int = 6) -> bytes:
    """Run ``build(writer)`` on a fresh archive and return it gzip-compressed."""
    raw = io.BytesIO()
    writer = NewcWriter(raw, mtime=mtime)
    build(writer)
    writer.close()
    return gzip.compress(raw.getvalue(), compresslevel=level, mtime=mtime)
