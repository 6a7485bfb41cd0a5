"""Address types of the model's public API.

A DMA names three kinds of address that are all Python ints at run time:

- ``Iova``: what the device emits, the input of stage 1 (or of stage 2 when
  nothing is nested);
- ``Gpa``: guest-physical, the output of stage 1 and the input of stage 2 (an
  IOAS's IOVA space, as QEMU maps guest RAM into it);
- ``HostOffset``: a byte offset into host memory (a mapped file or buffer).

They are ``typing.NewType``s: a type checker keeps them apart, and the DMA path
pays nothing (a NewType is the identity at run time, and the hot loop builds
plain ints).
"""

from __future__ import annotations

from typing import NewType

Iova = NewType("Iova", int)
Gpa = NewType("Gpa", int)
HostOffset = NewType("HostOffset", int)

__all__ = ["Gpa", "HostOffset", "Iova"]
