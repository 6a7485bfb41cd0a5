"""Declared binary layouts: fixed little-endian structs and bit fields.

Every on-the-wire or in-memory layout in vuser (vfio-user messages, PCI
capabilities, VT-d table entries and descriptors, DMA descriptors) is declared
once with these two tools and never hand-sliced:

``Struct``
    byte layouts. Annotations give the fields in order; ``SIZE`` is computed and
    each subclass may assert it against the spec with ``size=N``::

        class Header(Struct, size=16):
            msg_id: u16
            command: u16
            size: u32
            flags: u32
            error: u32

    ``Header.unpack(buf)`` parses (``ValueError`` if short), ``h.pack()`` builds.
    Fields are plain ints (or ``bytes`` for ``Bytes(n)`` / ``Pad(n)``); default
    values come from class assignments, otherwise 0.

``Bits`` / ``BitLayout``
    bit fields inside one integer (registers, page-table entries)::

        class FlPte(BitLayout, width=64):
            P = Bits(0)
            ADDR = Bits(12, 51)

    ``FlPte.ADDR.get(v)``, ``FlPte.ADDR.put(v, x)``, ``FlPte.ADDR.mask`` are
    the fast path; ``FlPte.unpack(v)`` gives a dict and ``FlPte.pack(P=1, ...)``
    builds a value (``ValueError`` when a field does not fit).
"""

from __future__ import annotations

import dataclasses
import operator
import struct
from typing import Any, ClassVar, Self

__all__ = [
    "u8", "u16", "u32", "u64", "i32", "Bytes", "Pad",
    "Struct", "Bits", "BitLayout",
]


class _Scalar:
    __slots__ = ("code", "bits")

    def __init__(self, code: str, bits: int) -> None:
        self.code, self.bits = code, bits

    def __repr__(self) -> str:
        return f"u{self.bits}"


u8 = _Scalar("B", 8)
u16 = _Scalar("H", 16)
u32 = _Scalar("I", 32)
u64 = _Scalar("Q", 64)
i32 = _Scalar("i", 32)


class Bytes:
    """A fixed-size byte string field."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"byte field size must be >= 0, not {n!r}")
        self.n = n

    @property
    def code(self) -> str:
        return f"{self.n}s"


class Pad(Bytes):
    """Reserved bytes: zero when built, ignored when parsed."""


def _field_type(annotation: Any, owner: type, name: str) -> Any:
    if isinstance(annotation, str):  # from __future__ annotations
        ns = dict(vars(__import__(owner.__module__, fromlist=["*"])))
        ns.update(globals())
        annotation = eval(annotation, ns)  # noqa: S307 - our own source text
    if not isinstance(annotation, (_Scalar, Bytes)):
        raise TypeError(f"{owner.__name__}.{name}: not a wire type: {annotation!r}")
    return annotation


class Struct:
    """Base class of declared little-endian byte layouts (see module doc)."""

    SIZE: ClassVar[int] = 0
    _codec: ClassVar[struct.Struct]
    _kinds: ClassVar[tuple[Any, ...]]
    _names: ClassVar[tuple[str, ...]]
    _bytes_idx: ClassVar[tuple[int, ...]]

    def __init_subclass__(cls, size: int | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("__annotations__", {})
        names: list[str] = list(getattr(cls, "_names", ()))
        kinds: list[Any] = list(getattr(cls, "_kinds", ()))
        for name, ann in own.items():
            if name.startswith("__") or name in ("SIZE",):
                continue
            if isinstance(ann, str) and ann.startswith("ClassVar"):
                continue
            kind = _field_type(ann, cls, name)
            names.append(name)
            kinds.append(kind)
            default = cls.__dict__.get(name, b"\0" * kind.n if isinstance(kind, Bytes) else 0)
            setattr(cls, name, dataclasses.field(default=default))
        cls._names, cls._kinds = tuple(names), tuple(kinds)
        cls._bytes_idx = tuple(i for i, k in enumerate(kinds) if isinstance(k, Bytes))
        getter = operator.attrgetter(*names) if names else (lambda _s: ())
        cls._getter = staticmethod(getter if len(names) != 1 else (lambda s: (getter(s),)))
        cls._codec = struct.Struct("<" + "".join(k.code for k in kinds))
        cls.SIZE = cls._codec.size
        # Annotations of our own types would confuse dataclass: hand it plain ones.
        cls.__annotations__ = {n: Any for n in own if n in names}
        dataclasses.dataclass(cls)
        if size is not None and cls.SIZE != size:
            raise TypeError(f"{cls.__name__} is {cls.SIZE} bytes, the spec says {size}")

    def pack(self) -> bytes:
        values = self._getter(self)
        if self._bytes_idx:
            values = list(values)
            for i in self._bytes_idx:
                kind = self._kinds[i]
                if isinstance(kind, Pad):
                    values[i] = b""  # struct pads "Ns" with zeros
                elif len(values[i]) > kind.n:
                    raise ValueError(f"{type(self).__name__}.{self._names[i]}: "
                                     f"{len(values[i])} bytes > {kind.n}")
        try:
            return self._codec.pack(*values)
        except struct.error:
            raise ValueError(self._explain(values)) from None

    @classmethod
    def pack_values(cls, *values: Any) -> bytes:
        """Pack field values given in declaration order, without building an
        instance (for hot paths; ``struct.error`` if one does not fit)."""
        return cls._codec.pack(*values)

    def _explain(self, values: Any) -> str:
        for name, kind, v in zip(self._names, self._kinds, values):
            if isinstance(kind, Bytes):
                continue
            lo, hi = (0, 1 << kind.bits) if kind.code.isupper() else \
                (-(1 << (kind.bits - 1)), 1 << (kind.bits - 1))
            if not isinstance(v, int) or not lo <= v < hi:
                return f"{type(self).__name__}.{name}={v!r} does not fit {kind!r}"
        return f"{type(self).__name__}: cannot pack {values!r}"

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> Self:
        """Parse ``SIZE`` bytes at ``offset``; ``ValueError`` if ``buf`` is short."""
        if offset < 0 or len(buf) - offset < cls.SIZE:
            raise ValueError(f"{cls.__name__} needs {cls.SIZE} bytes at {offset}, "
                             f"have {max(len(buf) - offset, 0)}")
        return cls(*cls._codec.unpack_from(buf, offset))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return cls._names

    @classmethod
    def offset_of(cls, name: str) -> int:
        """Byte offset of field ``name`` (for docs and layout checks)."""
        off = 0
        for n, k in zip(cls._names, cls._kinds):
            if n == name:
                return off
            off += struct.calcsize("<" + k.code)
        raise KeyError(name)


class Bits:
    """Bits ``lo..hi`` (inclusive) of an integer; ``Bits(n)`` is one bit."""

    __slots__ = ("lo", "hi", "width", "mask", "name")

    def __init__(self, lo: int, hi: int | None = None) -> None:
        hi = lo if hi is None else hi
        if not 0 <= lo <= hi:
            raise ValueError(f"bit range {lo}..{hi} is not ascending")
        self.lo, self.hi, self.width = lo, hi, hi - lo + 1
        self.mask = ((1 << self.width) - 1) << lo
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def get(self, value: int) -> int:
        return (value & self.mask) >> self.lo

    def put(self, value: int, field: int) -> int:
        if not 0 <= field < 1 << self.width:
            raise ValueError(f"{self.name}={field:#x} does not fit {self.width} bits")
        return (value & ~self.mask) | (field << self.lo)

    def __repr__(self) -> str:
        return f"Bits({self.lo}, {self.hi})"


class BitLayout:
    """Base of bit-field layouts over one ``width``-bit integer."""

    WIDTH: ClassVar[int] = 64
    FIELDS: ClassVar[dict[str, Bits]] = {}

    def __init_subclass__(cls, width: int = 64, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for name in ("WIDTH", "FIELDS"):
            if isinstance(cls.__dict__.get(name), Bits):
                raise TypeError(f"{cls.__name__}.{name}: name reserved by BitLayout")
        cls.WIDTH = width
        fields = dict(getattr(cls, "FIELDS", {}))
        for name, v in cls.__dict__.items():
            if isinstance(v, Bits):
                if v.hi >= width:
                    raise TypeError(f"{cls.__name__}.{name} ends at bit {v.hi} >= {width}")
                fields[name] = v
        taken = 0
        for name, f in fields.items():
            if taken & f.mask:
                raise TypeError(f"{cls.__name__}.{name} overlaps another field")
            taken |= f.mask
        cls.FIELDS = fields

    @classmethod
    def pack(cls, **values: int) -> int:
        v = 0
        for name, x in values.items():
            try:
                f = cls.FIELDS[name]
            except KeyError:
                raise ValueError(f"{cls.__name__} has no field {name!r}") from None
            v = f.put(v, x)
        return v

    @classmethod
    def unpack(cls, value: int) -> dict[str, int]:
        return {name: f.get(value) for name, f in cls.FIELDS.items()}

    @classmethod
    def defined_mask(cls) -> int:
        m = 0
        for f in cls.FIELDS.values():
            m |= f.mask
        return m
