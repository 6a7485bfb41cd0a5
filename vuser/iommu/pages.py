"""Pinned host memory behind IOAS areas (iommufd ``pages.c``, much simplified).

A ``Pages`` is one buffer handed to IOAS_MAP (a Python buffer: the analogue of
``user_va``) or one MAP_SHARED mmap made by IOAS_MAP_FILE. It stays pinned,
that is referenced, while any area uses it; IOAS_COPY shares it between areas.
The last unpin drops the buffer (and closes the mmap when no memoryview of it
is still alive; otherwise the mapping goes when the last view does).
"""

from __future__ import annotations

import mmap
from typing import Any


class Pages:
    """A pinned, byte-addressed host buffer shared by areas."""

    __slots__ = ("mem", "writable", "users", "file_id", "_owner", "released")

    def __init__(self, mem: memoryview, *, owner: Any = None,
                 file_id: tuple[int, int] | None = None) -> None:
        self.mem = mem
        self.writable = not mem.readonly
        self.users = 0
        #: ``(st_dev, st_ino)`` of the file behind an IOAS_MAP_FILE, else None.
        self.file_id = file_id
        self._owner = owner
        self.released = False

    @classmethod
    def from_buffer(cls, buffer: Any) -> Pages:
        """Pin a Python buffer; ``TypeError`` if it is not one."""
        mem = memoryview(buffer)
        if not mem.contiguous:
            raise TypeError("buffer is not contiguous")
        return cls(mem.cast("B") if mem.format != "B" or mem.ndim != 1 else mem)

    def pin(self) -> None:
        self.users += 1

    def unpin(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._release()

    def _release(self) -> None:
        self.released = True
        try:
            self.mem.release()
        except BufferError:
            pass  # a slice still lives: the buffer goes when it does
        if isinstance(self._owner, mmap.mmap):
            try:
                self._owner.close()
            except BufferError:
                pass
        self._owner = None

    def __len__(self) -> int:
        return self.mem.nbytes
