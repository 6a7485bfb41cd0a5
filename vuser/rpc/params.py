"""Parameter lists of RPC methods: declared, then checked before any call.

A method's parameters come from the Python signature of the function that
implements it (for the model's uAPI, ``IoasidContext``'s own methods): names,
defaults, and the kinds the annotation allows (``int | None`` becomes
``{"int", "none"}``). ``bind`` maps a request's params (an array of
positional or a map of named values) onto them and checks every kind, so a
wrong type is an EINVAL error before anything runs. A parameter of
``names.ENUM_PARAMS`` also takes the uAPI's names for its values.
"""

from __future__ import annotations

import errno
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vuser.errors import RemoteProtocolError

from .names import ENUM_PARAMS, from_names

REQUIRED = inspect.Parameter.empty

#: Annotation heads -> kinds.
_HEADS = {
    "int": "int", "None": "none", "bool": "bool", "bytes": "bytes", "bytearray": "bytes",
    "memoryview": "bytes", "str": "str", "list": "list", "tuple": "list",
    "dict": "dict", "float": "float", "Any": "any",
}


def kinds_of(annotation: Any) -> frozenset[str]:
    """The kinds an annotation (a string, as under postponed evaluation) allows."""
    if annotation is REQUIRED or annotation is Any:
        return frozenset({"any"})
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__",
                                                                   str(annotation))
    kinds: set[str] = set()
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text + "|"):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    for part in parts:
        head = part.split("[", 1)[0].strip().rsplit(".", 1)[-1]
        kinds.add(_HEADS.get(head, "any"))
    return frozenset(kinds)


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "none":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "bytes":
        return isinstance(value, (bytes, bytearray))
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return False


@dataclass(frozen=True)
class Param:
    name: str
    kinds: frozenset[str]
    default: Any = REQUIRED
    names: tuple[Any, str] | None = None  # (enum, uAPI prefix) whose names it takes

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kinds": sorted(self.kinds),
                             "required": self.required}
        if not self.required:
            d["default"] = self.default if isinstance(
                self.default, (int, str, bool, type(None))) else repr(self.default)
        if self.names is not None:
            d["names"] = list(self.names[0].__members__)
            d["values"] = {n: int(m) for n, m in self.names[0].__members__.items()}
        return d


def params_of(fn: Callable[..., Any], *, skip: tuple[str, ...] = (),
              override: dict[str, frozenset[str]] | None = None,
              method: str | None = None) -> tuple[Param, ...]:
    """The parameters of ``fn`` (bound method or function) minus ``skip``;
    with ``method``, those in ``ENUM_PARAMS`` take names too."""
    override = override or {}
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default
        if isinstance(default, int) and not isinstance(default, bool):
            default = int(default)  # IntEnum/IntFlag defaults go out as plain ints
        out.append(Param(p.name, override.get(p.name, kinds_of(p.annotation)), default,
                         ENUM_PARAMS.get((method, p.name)) if method else None))
    return tuple(out)


def _einval(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(errno.EINVAL, msg)


def bind(method: str, params: tuple[Param, ...], args: list[Any] | dict[str, Any]
         ) -> dict[str, Any]:
    """Keyword arguments for a call, every value checked; EINVAL otherwise."""
    if isinstance(args, list):
        if len(args) > len(params):
            raise _einval(f"{method} takes at most {len(params)} params, got {len(args)}")
        given = {p.name: v for p, v in zip(params, args)}
    else:
        names = {p.name for p in params}
        unknown = sorted(set(args) - names)
        if unknown:
            raise _einval(f"{method} has no param(s) {', '.join(unknown)}")
        given = dict(args)
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in given:
            if p.required:
                raise _einval(f"{method}: missing param {p.name!r}")
            continue
        v = given[p.name]
        if p.names is not None and isinstance(v, str):
            v = from_names(method, p.name, p.names, v)
        if not any(_has_kind(v, k) for k in p.kinds):
            raise _einval(f"{method}: param {p.name!r} must be "
                          f"{' or '.join(sorted(p.kinds))}, not {_kind_name(v)}")
        out[p.name] = v
    return out


def _kind_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    return {int: "int", str: "str", bytes: "bytes", list: "list", dict: "dict",
            float: "float"}.get(type(v), type(v).__name__)
