"""One-line descriptions of vfio-user events for ``-v`` tracing."""

from __future__ import annotations

import dataclasses
import errno as _errno
from typing import Any

from vuser.protocol.events import BadMessage, ConnectionClosed, ErrorReply, Reply, Request
from vuser.wire import Struct

_DATA_SHOWN = 16


def _value(name: str, v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        head = bytes(v[:_DATA_SHOWN]).hex()
        return f"{len(v)}B:{head}{'…' if len(v) > _DATA_SHOWN else ''}"
    if isinstance(v, int) and not isinstance(v, bool) and name in (
            "addr", "offset", "flags", "size", "cap_offset", "datamatch"):
        return hex(v)
    return summary(v)


def summary(body: Any) -> str:
    """``field=value`` pairs of a message body, data shortened."""
    if body is None:
        return ""
    if isinstance(body, Struct):
        return " ".join(f"{n}={_value(n, getattr(body, n))}" for n in body.fields()
                        if not n.startswith("_"))
    if dataclasses.is_dataclass(body):
        parts = []
        for f in dataclasses.fields(body):
            v = getattr(body, f.name)
            if v is not None:
                parts.append(summary(v) if isinstance(v, Struct) else f"{f.name}={_value(f.name, v)}")
        return " ".join(parts)
    if isinstance(body, (tuple, list)):
        return "[" + ", ".join(summary(x) for x in body) + "]"
    return repr(body)


def _name(command: Any) -> str:
    return getattr(command, "name", str(command))


def describe(event: Any) -> str:
    if isinstance(event, Request):
        flags = " (no reply)" if event.no_reply else ""
        fds = f" fds={list(event.fds)}" if event.fds else ""
        return f"#{event.msg_id} {_name(event.command)}{flags} {summary(event.body)}{fds}"
    if isinstance(event, Reply):
        fds = f" fds={list(event.fds)}" if event.fds else ""
        return f"#{event.msg_id} {_name(event.command)} reply {summary(event.body)}{fds}"
    if isinstance(event, ErrorReply):
        return (f"#{event.msg_id} {_name(event.command)} error "
                f"{_errno.errorcode.get(event.errno, event.errno)}")
    if isinstance(event, BadMessage):
        what = "reply" if event.is_reply else "request"
        return (f"#{event.msg_id} bad {what} (command {event.command}): {event.reason} "
                f"[{_errno.errorcode.get(event.errno, event.errno)}]")
    if isinstance(event, ConnectionClosed):
        return "closed" + (" mid-message" if event.partial else "")
    return repr(event)
