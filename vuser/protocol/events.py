"""What a ``Connection`` hands out and takes in (h11-style events; slotted, since
one or two are built per message).

Received events own the file descriptors they carry: whoever takes a
``Request`` or ``Reply`` from ``next_event()`` must pass its ``fds`` on or close
them. The connection closes the fds of everything it rejects itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from vuser.protocol.consts import Command


class NeedData(Enum):
    """``next_event()``: no complete message is buffered yet."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Request:
    """A command message. ``body`` is the decoded payload (see ``messages``);
    ``no_reply`` is the header's NO_REPLY flag (a posted write); ``size`` is
    the whole message as received (0 for one we build)."""

    msg_id: int
    command: Command
    body: Any = None
    fds: tuple[int, ...] = ()
    no_reply: bool = False
    size: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful reply to the request with the same ``msg_id``."""

    msg_id: int
    command: Command
    body: Any = None
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A header-only reply with the ERROR flag and a positive errno. A peer may
    send errno 0 (spec: "may be zero"); we never do."""

    msg_id: int
    command: Command
    errno: int


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message with intact framing but invalid content, already consumed and
    its fds closed. ``errno`` is what to answer when ``reply_expected``; for a
    bad reply (``is_reply``) it fails the waiting request instead."""

    msg_id: int
    command: int            # raw: may be no known Command
    errno: int
    reason: str
    is_reply: bool = False
    reply_expected: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream; ``partial`` if it stopped inside a message."""

    partial: bool = False
    pending: tuple[int, ...] = field(default=())  # our requests left unanswered


Event = Request | Reply | ErrorReply | BadMessage | ConnectionClosed
