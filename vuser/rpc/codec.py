"""msgpack-RPC framing, sans-IO (docs/architecture.md "Control").

Messages are msgpack arrays, one after another on a byte stream:

- request ``[0, id, method, params]`` (``id`` a u32, ``params`` an array of
  positional or a map of named arguments);
- response ``[1, id, error, result]`` (``error`` nil, or
  ``{"errno": "ENOENT", "code": 2, "message": "..."}``);
- notification ``[2, method, params]``.

``Decoder.feed(data)`` returns the events that ``data`` completes. Lengths
are checked *before* the bytes behind them arrive (``LengthGuard``): a peer
announcing a 200 MiB string, or a map of 2^31 entries, is refused at its
header, so nothing ever buffers more than ``Limits.max_buffer`` bytes. A
stream that cannot be resynchronised raises ``StreamError`` (the peer gets
one error response with id nil, then the connection closes); a well-formed
object that is not a valid message becomes an ``Invalid`` event (an error
response, and the connection goes on).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_ID = (1 << 32) - 1


@dataclass(frozen=True)
class Limits:
    """What one peer may send; everything beyond is refused at the header."""

    max_str: int = 1 << 20
    max_bin: int = 32 << 20
    max_array: int = 1 << 20
    max_map: int = 4096
    max_depth: int = 32
    #: msgpack objects in one message (each costs a Python object).
    max_items: int = 1 << 21
    #: Bytes buffered while a message is incomplete.
    max_buffer: int = 48 << 20


DEFAULT_LIMITS = Limits()


class StreamError(Exception):
    """The byte stream is broken beyond repair; ``errno`` says why."""

    def __init__(self, err: int, msg: str) -> None:
        super().__init__(msg)
        self.errno = err
        self.msg = msg


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Response:
    id: int
    error: Any
    result: Any


@dataclass(frozen=True)
class Notification:
    method: str
    params: Any


@dataclass(frozen=True)
class Invalid:
    """A well-formed msgpack object that is not a valid message.

    ``id`` is the request id when one could be read (else None).
    """

    id: int | None
    errno: int
    msg: str


Event = Request | Response | Notification | Invalid

# -- the length guard ----------------------------------------------------------------
# For each leading byte: (header bytes after it, kind). Kinds: "" scalar,
# "str"/"bin"/"ext" payload of the length in the header (or fixed for
# fixext), "array"/"map" a container of that many items (maps: 2 per entry).
_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4,
          0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}
_SIZED = {0xc4: (1, "bin"), 0xc5: (2, "bin"), 0xc6: (4, "bin"),
          0xc7: (1, "ext"), 0xc8: (2, "ext"), 0xc9: (4, "ext"),
          0xd9: (1, "str"), 0xda: (2, "str"), 0xdb: (4, "str"),
          0xdc: (2, "array"), 0xdd: (4, "array"), 0xde: (2, "map"), 0xdf: (4, "map")}
_FIXEXT = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
_LEN = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


class LengthGuard:
    """Walks msgpack headers as bytes arrive and refuses oversized ones early.

    It parses only headers (no values), keeping a stack of the items each open
    container still expects, so it knows where messages end (to count items
    per message) and how deep they nest. Ext types are refused: the RPC has
    none.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._hdr = b""        # a header split across feeds
        self._skip = 0         # payload bytes still to pass over
        self._stack: list[int] = []
        self._items = 0

    def scan(self, data: bytes) -> None:
        buf = self._hdr + data if self._hdr else data
        self._hdr = b""
        i, n = 0, len(buf)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                if not self._skip:
                    self._end_item()
                continue
            b = buf[i]
            if b <= 0x7f or b >= 0xe0:
                i += 1
                self._item()
                self._end_item()
                continue
            if 0x80 <= b <= 0x9f:
                count = b & 0x0f
                kind = "map" if b < 0x90 else "array"
                i += 1
                self._open(kind, count)
                continue
            if 0xa0 <= b <= 0xbf:
                i += 1
                self._payload("str", b & 0x1f)
                continue
            if b in _FIXED:
                need = 1 + _FIXED[b]
                if n - i < need:
                    break
                i += need
                self._item()
                self._end_item()
                continue
            if b in _FIXEXT:
                raise StreamError(errno.EPROTO, "msgpack ext types are not accepted")
            if b not in _SIZED:
                raise StreamError(errno.EPROTO, f"byte {b:#04x} starts no msgpack object")
            width, kind = _SIZED[b]
            if n - i < 1 + width:
                break
            (length,) = _LEN[width].unpack_from(buf, i + 1)
            i += 1 + width
            if kind == "ext":
                raise StreamError(errno.EPROTO, "msgpack ext types are not accepted")
            if kind in ("array", "map"):
                self._open(kind, length)
            else:
                self._payload(kind, length)
        self._hdr = bytes(buf[i:])

    def _item(self) -> None:
        self._items += 1
        if self._items > self.limits.max_items:
            raise StreamError(errno.EMSGSIZE, f"more than {self.limits.max_items} objects "
                                              "in one message")

    def _payload(self, kind: str, length: int) -> None:
        limit = self.limits.max_str if kind == "str" else self.limits.max_bin
        if length > limit:
            raise StreamError(errno.EMSGSIZE, f"{kind} of {length} bytes exceeds {limit}")
        self._item()
        self._skip = length
        if not length:
            self._end_item()

    def _open(self, kind: str, count: int) -> None:
        limit = self.limits.max_map if kind == "map" else self.limits.max_array
        if count > limit:
            raise StreamError(errno.EMSGSIZE, f"{kind} of {count} entries exceeds {limit}")
        self._item()
        if len(self._stack) >= self.limits.max_depth:
            raise StreamError(errno.EMSGSIZE, f"nesting deeper than {self.limits.max_depth}")
        items = count * 2 if kind == "map" else count
        if items:
            self._stack.append(items)
        else:
            self._end_item()

    def _end_item(self) -> None:
        """One complete object: close the containers it completes."""
        stack = self._stack
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                return
            stack.pop()
        self._items = 0  # a top-level object (a message) ended


# -- decoding -----------------------------------------------------------------------
def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID


def classify(obj: Any) -> Event:
    """Turn one decoded object into an event (never raises)."""
    if not isinstance(obj, list) or not obj:
        return Invalid(None, errno.EPROTO, "a message is a non-empty array")
    kind = obj[0]
    if kind == REQUEST and not isinstance(kind, bool):
        rid = obj[1] if len(obj) > 1 and _is_id(obj[1]) else None
        if len(obj) != 4 or rid is None:
            return Invalid(rid, errno.EPROTO, "a request is [0, id, method, params]")
        method, params = obj[2], obj[3]
        if not isinstance(method, str):
            return Invalid(rid, errno.EINVAL, "the method name must be a string")
        if not isinstance(params, (list, dict)):
            return Invalid(rid, errno.EINVAL, "params must be an array or a map")
        if isinstance(params, dict) and not all(isinstance(k, str) for k in params):
            return Invalid(rid, errno.EINVAL, "named params must have string keys")
        return Request(rid, method, params)
    if kind == RESPONSE and not isinstance(kind, bool):
        if len(obj) != 4 or not (obj[1] is None or _is_id(obj[1])):
            return Invalid(None, errno.EPROTO, "a response is [1, id, error, result]")
        return Response(obj[1], obj[2], obj[3])
    if kind == NOTIFICATION and not isinstance(kind, bool):
        if len(obj) != 3 or not isinstance(obj[1], str):
            return Invalid(None, errno.EPROTO, "a notification is [2, method, params]")
        return Notification(obj[1], obj[2])
    return Invalid(None, errno.EPROTO, f"unknown message type {kind!r}")


class Decoder:
    """Bytes in, events out; one per connection."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._guard = LengthGuard(limits)
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogateescape",
            use_list=True, max_buffer_size=limits.max_buffer,
            max_str_len=limits.max_str, max_bin_len=limits.max_bin,
            max_array_len=limits.max_array, max_map_len=limits.max_map, max_ext_len=0)
        self.broken: StreamError | None = None

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes; ``StreamError`` when the stream is broken."""
        if self.broken is not None:
            raise self.broken
        try:
            self._guard.scan(data)
            self._unpacker.feed(data)
            return [classify(obj) for obj in self._unpacker]
        except StreamError as e:
            self.broken = e
        except msgpack.BufferFull:
            self.broken = StreamError(errno.EMSGSIZE, "message larger than the buffer limit")
        except (ValueError, msgpack.FormatError, msgpack.StackError) as e:
            self.broken = StreamError(errno.EPROTO, f"undecodable msgpack: {e}")
        except TypeError as e:  # a map key Python cannot hash (an array or a map)
            self.broken = StreamError(errno.EPROTO, f"unusable msgpack map key: {e}")
        raise self.broken

    @property
    def pending(self) -> bool:
        """True while a message is partly received (a truncated frame at EOF)."""
        return bool(self._guard._hdr or self._guard._skip or self._guard._stack)


# -- encoding -----------------------------------------------------------------------
def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_request(rid: int, method: str, params: list[Any] | dict[str, Any]) -> bytes:
    return _pack([REQUEST, rid, method, params])


def encode_response(rid: int | None, error: Any, result: Any) -> bytes:
    return _pack([RESPONSE, rid, error, result])


def encode_notification(method: str, params: Any) -> bytes:
    return _pack([NOTIFICATION, method, params])


def error_value(err: int, msg: str, **extra: Any) -> dict[str, Any]:
    """The ``error`` of a response: errno name, number and message."""
    d = {"errno": errno.errorcode.get(err, str(err)), "code": err, "message": msg}
    d.update(extra)
    return d
