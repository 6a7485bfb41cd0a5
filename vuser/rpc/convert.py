"""Model results -> msgpack values (and the few results that need a shape).

The model returns dataclasses with ``to_dict()``, enums, tuples and sets;
``to_wire`` turns them into msgpack-native values. The DMA-path results carry
host memory (memoryviews), which never leaves the process: ``translate``
becomes the list of ``{iova, gpa, length}`` segments, ``read`` the bytes.
Every DMA result has a ``fault`` key: nil, or the fault as a dict.
"""

from __future__ import annotations

import enum
from typing import Any

from vuser.iommu import AtsTranslation, Fault


def to_wire(obj: Any) -> Any:
    """A msgpack-native copy of ``obj``; ``TypeError`` for what has no form."""
    if obj is None or isinstance(obj, (bool, str, bytes, float)):
        return obj
    if isinstance(obj, enum.Enum):
        return obj.value if not isinstance(obj, int) else int(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is not None:
        return to_wire(to_dict())
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): to_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        try:
            items = sorted(obj)
        except TypeError:
            items = list(obj)
        return [to_wire(v) for v in items]
    raise TypeError(f"no msgpack form for {type(obj).__name__}")


def fault_or_none(r: Any) -> dict[str, Any] | None:
    return r.to_dict() if isinstance(r, Fault) else None


def translate_result(r: Any) -> dict[str, Any]:
    if isinstance(r, Fault):
        return {"segments": None, "fault": r.to_dict()}
    return {"segments": [{"iova": s.iova, "gpa": s.gpa, "length": len(s.mem)} for s in r],
            "fault": None}


def read_result(r: Any) -> dict[str, Any]:
    if isinstance(r, Fault):
        return {"data": None, "fault": r.to_dict()}
    return {"data": bytes(r), "fault": None}


def write_result(r: Any) -> dict[str, Any]:
    return {"fault": fault_or_none(r)}


def ats_result(r: Any) -> dict[str, Any]:
    if isinstance(r, Fault):
        return {"fault": r.to_dict()}
    assert isinstance(r, AtsTranslation)
    return {"iova": r.iova, "size": r.size, "gpa": r.gpa, "read": r.read, "write": r.write,
            "fault": None}


#: Methods whose results need a shape of their own.
RESULT_SHAPES = {
    "translate": translate_result,
    "read": read_result,
    "write": write_result,
    "ats_translate": ats_result,
}
