"""The connection state machine: everything that moves it lives in this table.

Spec "VFIO_USER_VERSION": the VERSION exchange comes first; only after a
successful reply may other commands flow. A failed negotiation leaves the
connection where it was, so the client may try again (libvfio-user would
rather hang up; QEMU fails realize either way).
"""

from __future__ import annotations

from enum import Enum

from vuser.errors import LocalProtocolError


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnState(Enum):
    AWAIT_VERSION = "await-version"   # nothing but VERSION may be sent
    NEGOTIATING = "negotiating"       # VERSION sent (client) or received (server)
    READY = "ready"
    CLOSED = "closed"                 # the peer closed the stream


class Trigger(Enum):
    SEND_VERSION = "send VERSION request"
    RECV_VERSION = "receive VERSION request"
    SEND_VERSION_REPLY = "send VERSION reply"
    SEND_VERSION_ERROR = "send VERSION error"
    RECV_VERSION_REPLY = "receive VERSION reply"
    RECV_VERSION_ERROR = "receive VERSION error"


C, S = Role.CLIENT, Role.SERVER
TRANSITIONS: dict[tuple[Role, ConnState, Trigger], ConnState] = {
    (C, ConnState.AWAIT_VERSION, Trigger.SEND_VERSION): ConnState.NEGOTIATING,
    (C, ConnState.NEGOTIATING, Trigger.RECV_VERSION_REPLY): ConnState.READY,
    (C, ConnState.NEGOTIATING, Trigger.RECV_VERSION_ERROR): ConnState.AWAIT_VERSION,
    (S, ConnState.AWAIT_VERSION, Trigger.RECV_VERSION): ConnState.NEGOTIATING,
    (S, ConnState.NEGOTIATING, Trigger.SEND_VERSION_REPLY): ConnState.READY,
    (S, ConnState.NEGOTIATING, Trigger.SEND_VERSION_ERROR): ConnState.AWAIT_VERSION,
}


def can(role: Role, state: ConnState, trigger: Trigger) -> bool:
    return (role, state, trigger) in TRANSITIONS


def advance(role: Role, state: ConnState, trigger: Trigger) -> ConnState:
    try:
        return TRANSITIONS[role, state, trigger]
    except KeyError:
        raise LocalProtocolError(f"{role.value} cannot {trigger.value} in state "
                                 f"{state.value}") from None
