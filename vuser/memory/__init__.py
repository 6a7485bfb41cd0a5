"""Guest memory: the page size, the one interval map, and a VM's guest RAM.

The lowest package besides ``vuser.errors`` and ``vuser.wire``: it imports
nothing else from vuser, so the transport, the IOMMU model and the devices
can all build on it without an upward import.

- ``intervals``: ``IntervalMap`` (disjoint inclusive ranges, bisected) and
  the span helpers; every range table of the server is one of these.
- ``guest``: ``GuestMemory``, a VM's guest RAM as the newest of its
  connections' fd-backed DMA_MAPs, mirrored into an IOAS through an
  ``IoasPort`` (see its module doc for who owns which fd and mmap).
- ``seals``: when a client's memory fd is safe to mmap (``F_SEAL_SHRINK``).
"""

from __future__ import annotations

#: The page: the IOAS granule, the mmap offset granule, the VT-d 4 KiB page.
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


def page_aligned(*values: int) -> bool:
    """True when every value is a multiple of ``PAGE_SIZE``."""
    return not any(v % PAGE_SIZE for v in values)


__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "page_aligned"]
