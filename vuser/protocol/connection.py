"""One vfio-user connection, sans-IO (h11 style): bytes and fds in, events out.

``receive_data(data, fds)`` feeds what the socket gave (``b""`` = EOF);
``next_event()`` returns one event or ``NEED_DATA``; ``send(event)`` returns
``(bytes, fds)`` to write. The connection never touches a socket; it may close
fds it rejects (``os.close`` schedules no I/O).

What it checks (spec "Header"; QEMU 11's checks in ``hw/vfio-user/proxy.c``):
- framing: a header's size below 16 consumes just the header and is answered
  EINVAL; above ``max_msg_size`` the message is skipped and answered E2BIG; the
  stream stays in sync either way;
- the message type; commands this role does not handle (ENOSYS, as QEMU
  answers unknown server requests); VERSION first (EINVAL otherwise);
- fds: only DMA_MAP (one) and SET_IRQS (up to our ``max_msg_fds``) carry fds to
  a server, only a GET_REGION_INFO reply (one) carries an fd back; fds anywhere
  else are closed and the message answered EINVAL;
- payload structure (``messages.decode``);
- replies: matched to our pending request by id and command; never answered
  (an unexpected reply is dropped: answering replies can ping-pong forever);
- what *we* send: a reply must match a pending request, fit the peer's receive
  buffer (the request's size, or 16+argsz for GET_REGION_INFO and 32+count
  for REGION_READ/DMA_READ, as QEMU sizes it), VERSION replies carry major 0 and
  minor 0, error replies are header-only with a positive errno. Violations are
  our bugs: ``LocalProtocolError``.

Fds travel with the bytes they arrived with: fds received together with a
chunk belong to the message that contains the chunk's first byte.

REGION_READ/WRITE, the messages of every guest MMIO access, have a fast path
each way (``_region_request``, ``_region_reply``): one precompiled struct for
header and access head, no payload copy for a read, no codec table. It takes
only messages that the general path would accept, with the same results;
anything else (fds, a bad size or count, a state or role that does not
serve them) falls through to the general path and its errno.

``serve_region(access)`` goes one step further for a server that answers
at once: it takes the same messages, has ``access`` (``ServerCore.region_access``)
run them with plain values, and returns the reply's bytes, with no event
object and no pending-reply entry (the request is answered before it
returns). The reply bytes are those the general path would send.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.protocol.caps import Capabilities
from vuser.protocol.consts import (
    CLIENT_TO_SERVER, HEADER_SIZE, MAX_MSG_SIZE, SERVER_TO_CLIENT, VFIO_USER_F_ERROR,
    VFIO_USER_F_NO_REPLY, VFIO_USER_F_TYPE_COMMAND, VFIO_USER_F_TYPE_MASK,
    VFIO_USER_F_TYPE_REPLY, VFIO_USER_MAJOR, VFIO_USER_MINOR, Command,
)
from vuser.protocol.events import (
    NEED_DATA, BadMessage, ConnectionClosed, ErrorReply, Event, NeedData, Reply, Request,
)
from vuser.protocol.messages import (
    HEADER_CODEC, REGION_HEAD_CODEC, Header, Kind, RegionData, Version, VfioUserRegionAccess,
    decode, encode,
)
from vuser.protocol.state import ConnState, Role, Trigger, advance, can

__all__ = ["Connection", "Role", "ConnState", "close_fds"]


def close_fds(fds: Any) -> None:
    """Close every fd in ``fds``, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_REGION_HEAD = REGION_HEAD_CODEC.size
_REGION_READ, _REGION_WRITE = Command.REGION_READ, Command.REGION_WRITE
_ERROR_REPLY = VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR

#: ``access(msg_id, command, region, offset, count, data, no_reply)`` of
#: ``Connection.serve_region``: the bytes read (REGION_READ, ``data`` None) or
#: None (REGION_WRITE); ``RemoteProtocolError`` for an errno reply.
RegionAccess = Callable[[int, int, int, int, int, "bytes | None", bool], "bytes | None"]


@dataclass(slots=True)
class _Pending:
    """A request waiting for its reply (ours or the peer's)."""

    command: int
    size: int            # the whole request message
    reply_limit: int     # the largest whole reply the requester accepts
    negotiates: bool = False  # the VERSION exchange that moves the state


def reply_limit(command: int, size: int, body: Any) -> int:
    """The largest reply message the requester accepts (QEMU ``rsize``)."""
    argsz = getattr(body, "argsz", None)
    if command == Command.DEVICE_GET_REGION_INFO and argsz is not None:
        return HEADER_SIZE + argsz
    if command in (Command.REGION_READ, Command.DMA_READ) and hasattr(body, "count"):
        return HEADER_SIZE + 16 + body.count
    if command in (Command.DEVICE_GET_REGION_IO_FDS, Command.MIG_DATA_READ):
        return max(size, HEADER_SIZE + (argsz or 0))
    if command == Command.DEVICE_FEATURE:
        return max(size, HEADER_SIZE + body.feature.argsz)
    return size


def _xfer_count(command: Command, body: Any) -> int:
    """Data bytes a REGION/DMA read or write request moves (0 for others)."""
    if command in (Command.REGION_READ, Command.DMA_READ):
        return body.count
    if command is Command.REGION_WRITE:
        return body.access.count
    if command is Command.DMA_WRITE:
        return body.rw.count
    return 0


class Connection:
    """A vfio-user connection in the ``role`` of client or server.

    ``caps`` is what we offer in VERSION (and accept: ``max_msg_fds`` and
    ``max_data_xfer_size`` bound incoming messages); ``peer_caps`` is set once
    VERSION has been exchanged.
    """

    def __init__(self, role: Role, caps: Capabilities | None = None, *,
                 max_msg_size: int = MAX_MSG_SIZE) -> None:
        self.role = role
        self.caps = caps or Capabilities()
        self.peer_caps: Capabilities | None = None
        self.state = ConnState.AWAIT_VERSION
        self.max_msg_size = max(max_msg_size, HEADER_SIZE + 16 + self.caps.max_data_xfer_size)
        self._buf = bytearray()
        self._base = 0                       # stream offset of _buf[0]
        self._fd_marks: deque[tuple[int, list[int]]] = deque()
        self._discard = 0                    # bytes of an oversized message to skip
        self._eof = False
        #: True while part of a message (or of one being skipped) is buffered:
        #: ``bool(_buf or _discard)``, a plain attribute (read after every region
        #: access the channel serves) set wherever either of them changes.
        self.mid_message = False
        self._pending_in: dict[int, deque[_Pending]] = {}
        self._pending_out: dict[int, _Pending] = {}
        self._proposed: Capabilities | None = None   # server: the client's VERSION caps
        self._next_id = 0
        self._serves_regions = role is Role.SERVER

    # --- input ---------------------------------------------------------------

    def receive_data(self, data: bytes, fds: Any = ()) -> None:
        """Feed bytes (and the fds that came with them); ``b""`` means EOF."""
        if self._eof:
            close_fds(fds)
            raise LocalProtocolError("data received after EOF")
        if not data:
            close_fds(fds)
            self._eof = True
            return
        if fds:
            self._fd_marks.append((self._base + len(self._buf), list(fds)))
        self._buf += data
        self.mid_message = True

    def bytes_needed(self) -> int:
        """How many bytes complete the message being received (at least 1).

        A transport that passes fds should read no more than this at a time.
        On a stream socket the kernel hands the fds of one sendmsg() together
        with whatever bytes a recvmsg() gathers, including the tail of an
        earlier message without fds; reading one message at a time is what
        lets ``receive_data`` tie fds to the message that carried them.
        """
        if self._discard:
            return self._discard
        if len(self._buf) < HEADER_SIZE:
            return HEADER_SIZE - len(self._buf)
        size = Header.unpack(self._buf).size
        if size < HEADER_SIZE or size > self.max_msg_size:
            return 1  # next_event() rejects it without reading more
        return max(size - len(self._buf), 1)

    def next_event(self) -> Event | NeedData:
        if self.state is ConnState.CLOSED:
            return ConnectionClosed()
        if not self._buf and not self._discard and not self._eof:
            return NEED_DATA
        if self._serves_regions and self.state is ConnState.READY and not self._fd_marks \
                and not self._discard:
            event = self._region_request()
            if event is not None:
                return event
        if self._discard:
            n = min(self._discard, len(self._buf))
            close_fds(self._consume(n)[1])
            self._discard -= n
            self.mid_message = bool(self._buf or self._discard)
            if self._discard:
                return self._closed(partial=True) if self._eof else NEED_DATA
        if len(self._buf) < HEADER_SIZE:
            return self._closed(partial=bool(self._buf)) if self._eof else NEED_DATA
        hdr = Header.unpack(self._buf)
        if hdr.size < HEADER_SIZE:
            _, fds = self._consume(HEADER_SIZE)
            return self._reject(hdr, fds, errno.EINVAL,
                                f"message size {hdr.size} is under the header's 16")
        if hdr.size > self.max_msg_size:
            n = min(hdr.size, len(self._buf))
            _, fds = self._consume(n)
            self._discard = hdr.size - n
            self.mid_message = bool(self._buf or self._discard)
            return self._reject(hdr, fds, errno.E2BIG,
                                f"message size {hdr.size} exceeds {self.max_msg_size}")
        if len(self._buf) < hdr.size:
            return self._closed(partial=True) if self._eof else NEED_DATA
        raw, fds = self._consume(hdr.size)
        payload = bytes(raw[HEADER_SIZE:])
        if hdr.flags & VFIO_USER_F_TYPE_MASK == VFIO_USER_F_TYPE_REPLY:
            return self._receive_reply(hdr, payload, fds)
        return self._receive_request(hdr, payload, fds)

    def _take_region(self) -> tuple | None:
        """Take a complete, valid REGION_READ/WRITE command off the head of the
        buffer: ``(msg_id, command, size, flags, offset, region, count, data)``
        (``command`` the ``Command`` member, ``data`` None for a read), or None (nothing taken) when the general
        path must decide. The caller has checked the state (server, READY, no
        fds buffered, nothing to discard)."""
        buf = self._buf
        if len(buf) < _REGION_HEAD:
            return None
        msg_id, command, size, flags, _, offset, region, count = \
            REGION_HEAD_CODEC.unpack_from(buf)
        if flags & VFIO_USER_F_TYPE_MASK != VFIO_USER_F_TYPE_COMMAND or len(buf) < size:
            return None
        if command == _REGION_READ:
            if size != _REGION_HEAD:
                return None
            command, data = _REGION_READ, None
        elif command == _REGION_WRITE:
            if size - _REGION_HEAD != count or size > self.max_msg_size:
                return None
            command, data = _REGION_WRITE, bytes(buf[_REGION_HEAD:size])
        else:
            return None
        del buf[:size]
        self._base += size
        self.mid_message = bool(buf)         # taken only with nothing to discard
        return msg_id, command, size, flags, offset, region, count, data

    def _region_request(self) -> Request | None:
        """A REGION_READ/WRITE request event from ``_take_region``, or None."""
        taken = self._take_region()
        if taken is None:
            return None
        msg_id, command, size, flags, offset, region, count, data = taken
        access = VfioUserRegionAccess(offset, region, count)
        body: Any = access if data is None else RegionData(access, data)
        no_reply = bool(flags & VFIO_USER_F_NO_REPLY)
        if not no_reply:
            limit = _REGION_HEAD + count if data is None else size
            queue = self._pending_in.get(msg_id)
            if queue is None:
                queue = self._pending_in[msg_id] = deque()
            queue.append(_Pending(command, size, limit))
        return Request(msg_id, command, body, (), no_reply, size)

    def serve_region(self, access: RegionAccess, received: bytes | None = None) -> bytes | None:
        """Answer a REGION_READ/WRITE at the head of the buffer at once (module
        doc): the reply's bytes (``b""`` when NO_REPLY), or None when the
        buffer holds no such request that the fast path takes; then
        ``next_event()`` has what there is. ``access`` raising
        ``RemoteProtocolError`` gets the error reply the general path sends.
        ``received`` (bytes without fds), when given, is fed first, as
        ``receive_data(received)`` would: a read and its answer in one call."""
        if received is not None:
            if received and not self._eof:
                self._buf += received
                self.mid_message = True
            else:
                self.receive_data(received)     # EOF, or its error after EOF
        if not self._serves_regions or self._fd_marks or self._discard \
                or self.state is not ConnState.READY:
            return None
        taken = self._take_region()
        if taken is None:
            return None
        msg_id, command, _, flags, offset, region, count, data = taken
        no_reply = bool(flags & VFIO_USER_F_NO_REPLY)
        try:
            out = access(msg_id, command, region, offset, count, data, no_reply)
        except RemoteProtocolError as e:
            if e.errno <= 0:
                raise LocalProtocolError(f"an error reply needs a positive errno, "
                                         f"not {e.errno}") from e
            return b"" if no_reply else HEADER_CODEC.pack(msg_id, command, HEADER_SIZE,
                                                           _ERROR_REPLY, e.errno)
        if no_reply:
            return b""
        if data is not None:
            return REGION_HEAD_CODEC.pack(msg_id, command, _REGION_HEAD, VFIO_USER_F_TYPE_REPLY,
                                          0, offset, region, count)
        if out is None or len(out) != count:
            raise LocalProtocolError(f"region {region} read gave "
                                     f"{None if out is None else len(out)} bytes, not {count}")
        return REGION_HEAD_CODEC.pack(msg_id, command, _REGION_HEAD + count,
                                      VFIO_USER_F_TYPE_REPLY, 0, offset, region, count) + out

    def _consume(self, n: int) -> tuple[bytearray, list[int]]:
        raw = self._buf[:n]
        del self._buf[:n]
        self._base += n
        self.mid_message = bool(self._buf or self._discard)
        fds: list[int] = []
        while self._fd_marks and self._fd_marks[0][0] < self._base:
            fds += self._fd_marks.popleft()[1]
        return raw, fds

    def _closed(self, partial: bool) -> ConnectionClosed:
        pending = tuple(self._pending_out)
        self.abort()
        return ConnectionClosed(partial=partial, pending=pending)

    def abort(self) -> None:
        """Forget the stream: close buffered fds and every pending exchange."""
        while self._fd_marks:
            close_fds(self._fd_marks.popleft()[1])
        self._buf.clear()
        self.mid_message = bool(self._discard)
        self._pending_in.clear()
        self._pending_out.clear()
        self._eof = True
        self.state = ConnState.CLOSED

    def _reject(self, hdr: Header, fds: list[int], err: int, why: str) -> BadMessage:
        """A bad message: close its fds; a bad command expects an error reply
        unless NO_REPLY, a bad reply fails our request with that id (if any)."""
        close_fds(fds)
        if hdr.flags & VFIO_USER_F_TYPE_MASK == VFIO_USER_F_TYPE_REPLY:
            self._pending_out.pop(hdr.msg_id, None)
            return BadMessage(hdr.msg_id, hdr.command, err, why, is_reply=True)
        wants_reply = not hdr.flags & VFIO_USER_F_NO_REPLY
        if wants_reply:
            self._pending_in.setdefault(hdr.msg_id, deque()).append(
                _Pending(hdr.command, HEADER_SIZE, HEADER_SIZE))
        return BadMessage(hdr.msg_id, hdr.command, err, why, reply_expected=wants_reply)

    def _receive_request(self, hdr: Header, payload: bytes, fds: list[int]) -> Event:
        if hdr.flags & VFIO_USER_F_TYPE_MASK != VFIO_USER_F_TYPE_COMMAND:
            return self._reject(hdr, fds, errno.EINVAL,
                                f"unknown message type {hdr.flags & VFIO_USER_F_TYPE_MASK}")
        try:
            command = Command(hdr.command)
        except ValueError:
            return self._reject(hdr, fds, errno.ENOSYS, f"unknown command {hdr.command}")
        handled = CLIENT_TO_SERVER if self.role is Role.SERVER else SERVER_TO_CLIENT
        if command not in handled:
            return self._reject(hdr, fds, errno.ENOSYS,
                                f"a {self.role.value} does not handle {command.name}")
        negotiates = command is Command.VERSION
        if negotiates and not can(self.role, self.state, Trigger.RECV_VERSION):
            return self._reject(hdr, fds, errno.EINVAL, f"VERSION in state {self.state.value}")
        if negotiates and hdr.flags & VFIO_USER_F_NO_REPLY:
            return self._reject(hdr, fds, errno.EINVAL, "VERSION without a reply negotiates nothing")
        if not negotiates and self.state is not ConnState.READY:
            return self._reject(hdr, fds, errno.EINVAL,
                                f"{command.name} before VERSION negotiation")
        if len(fds) > self._request_fds_allowed(command):
            return self._reject(hdr, fds, errno.EINVAL,
                                f"{len(fds)} fds with {command.name}, at most "
                                f"{self._request_fds_allowed(command)} allowed")
        try:
            body = decode(command, Kind.REQUEST, payload)
            if negotiates:
                if body.major != VFIO_USER_MAJOR:
                    raise RemoteProtocolError(errno.EINVAL, f"major version {body.major}")
                self._proposed = Capabilities.from_json(body.caps)
        except RemoteProtocolError as e:
            return self._reject(hdr, fds, e.errno, f"{command.name}: {e.msg}")
        no_reply = bool(hdr.flags & VFIO_USER_F_NO_REPLY)
        if negotiates:
            self.state = advance(self.role, self.state, Trigger.RECV_VERSION)
        if not no_reply:
            self._pending_in.setdefault(hdr.msg_id, deque()).append(
                _Pending(command, hdr.size, reply_limit(command, hdr.size, body), negotiates))
        return Request(hdr.msg_id, command, body, tuple(fds), no_reply, hdr.size)

    def _request_fds_allowed(self, command: Command) -> int:
        if self.role is Role.SERVER:
            if command is Command.DMA_MAP:
                return 1
            if command is Command.DEVICE_SET_IRQS:
                return self.caps.max_msg_fds
        return 0

    def _receive_reply(self, hdr: Header, payload: bytes, fds: list[int]) -> Event:
        pending = self._pending_out.get(hdr.msg_id)
        if pending is None:
            return self._reject(hdr, fds, errno.EINVAL, f"unexpected reply {hdr.msg_id}")
        del self._pending_out[hdr.msg_id]
        command = Command(pending.command)
        try:
            if hdr.command != command:
                raise RemoteProtocolError(errno.EPROTO,
                                          f"reply for command {hdr.command}, sent {command.name}")
            if hdr.flags & VFIO_USER_F_ERROR:
                close_fds(fds)
                if pending.negotiates:
                    self.state = advance(self.role, self.state, Trigger.RECV_VERSION_ERROR)
                return ErrorReply(hdr.msg_id, command, hdr.error)
            if hdr.size > pending.reply_limit:
                raise RemoteProtocolError(errno.EPROTO, f"reply of {hdr.size} bytes, "
                                          f"at most {pending.reply_limit} expected")
            allowed = 1 if command is Command.DEVICE_GET_REGION_INFO else 0
            if command is Command.DEVICE_GET_REGION_IO_FDS:
                allowed = self.caps.max_msg_fds
            if len(fds) > allowed:
                raise RemoteProtocolError(errno.EPROTO, f"{len(fds)} fds in a {command.name} reply")
            body = decode(command, Kind.REPLY, payload)
            if pending.negotiates:
                if body.major != VFIO_USER_MAJOR or body.minor != VFIO_USER_MINOR:
                    raise RemoteProtocolError(errno.EPROTO,
                                              f"server version {body.major}.{body.minor}")
                self.peer_caps = Capabilities.from_json(body.caps)
                self.state = advance(self.role, self.state, Trigger.RECV_VERSION_REPLY)
        except RemoteProtocolError as e:
            close_fds(fds)
            if pending.negotiates:
                self.state = advance(self.role, self.state, Trigger.RECV_VERSION_ERROR)
            return BadMessage(hdr.msg_id, hdr.command, errno.EPROTO, e.msg, is_reply=True)
        return Reply(hdr.msg_id, command, body, tuple(fds))

    # --- output --------------------------------------------------------------

    def request(self, command: Command, body: Any = None, fds: Any = (), *,
                no_reply: bool = False) -> Request:
        """A new request with a fresh message id (pass it to ``send``)."""
        for _ in range(1 << 16):
            msg_id, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFF
            if msg_id not in self._pending_out:
                return Request(msg_id, command, body, tuple(fds), no_reply)
        raise LocalProtocolError("all 65536 message ids are waiting for replies")

    def send(self, event: Request | Reply | ErrorReply) -> tuple[bytes, list[int]]:
        """The bytes and fds that carry ``event``; ``LocalProtocolError`` on misuse.
        The fds stay owned by the caller (close them once they are sent)."""
        if self.state is ConnState.CLOSED:
            raise LocalProtocolError("send on a closed connection")
        if isinstance(event, Request):
            return self._send_request(event)
        if isinstance(event, Reply):
            return self._send_reply(event)
        if isinstance(event, ErrorReply):
            return self._send_error(event)
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _send_request(self, req: Request) -> tuple[bytes, list[int]]:
        command = Command(req.command)
        sent_by_us = CLIENT_TO_SERVER if self.role is Role.CLIENT else SERVER_TO_CLIENT
        if command not in sent_by_us:
            raise LocalProtocolError(f"a {self.role.value} does not send {command.name}")
        negotiates = command is Command.VERSION
        if negotiates:
            next_state = advance(self.role, self.state, Trigger.SEND_VERSION)
        elif self.state is not ConnState.READY:
            raise LocalProtocolError(f"{command.name} before VERSION negotiation")
        if req.msg_id in self._pending_out:
            raise LocalProtocolError(f"message id {req.msg_id} is still waiting for a reply")
        payload = encode(command, Kind.REQUEST, req.body)
        self._check_request_limits(command, req, payload)
        size = HEADER_SIZE + len(payload)
        flags = VFIO_USER_F_TYPE_COMMAND | (VFIO_USER_F_NO_REPLY if req.no_reply else 0)
        hdr = Header(msg_id=req.msg_id, command=command, size=size, flags=flags)
        if negotiates:
            self.state = next_state
        if not req.no_reply:
            self._pending_out[req.msg_id] = _Pending(
                command, size, reply_limit(command, size, req.body), negotiates)
        return hdr.pack() + payload, list(req.fds)

    def _check_request_limits(self, command: Command, req: Request, payload: bytes) -> None:
        peer = self.peer_caps or Capabilities.from_json(None)
        max_fds = 0
        if command is Command.DMA_MAP:
            max_fds = 1
        elif command is Command.DEVICE_SET_IRQS:
            max_fds = peer.max_msg_fds
        if len(req.fds) > max_fds:
            raise LocalProtocolError(f"{command.name} with {len(req.fds)} fds, "
                                     f"the peer takes {max_fds}")
        xfer = min(peer.max_data_xfer_size, self.caps.max_data_xfer_size)
        count = _xfer_count(command, req.body)
        if count > xfer:
            raise LocalProtocolError(f"{command.name} of {count} bytes exceeds "
                                     f"max_data_xfer_size {xfer}")
        if HEADER_SIZE + len(payload) > HEADER_SIZE + 16 + peer.max_data_xfer_size:
            raise LocalProtocolError(f"{command.name} message of {len(payload)} bytes "
                                     f"is larger than the peer accepts")

    def _take_pending(self, msg_id: int, command: int) -> _Pending:
        queue = self._pending_in.get(msg_id)
        if not queue or queue[0].command != command:
            raise LocalProtocolError(f"no pending {command!r} request with id {msg_id}")
        pending = queue.popleft()
        if not queue:
            del self._pending_in[msg_id]
        return pending

    def _region_reply(self, rep: Reply) -> bytes | None:
        """The REGION_READ/WRITE reply built in one pack, or None for the
        general path (which raises ``LocalProtocolError`` on what it rejects)."""
        queue = self._pending_in.get(rep.msg_id)
        if not queue or rep.fds or queue[0].command != rep.command:
            return None
        body, pending = rep.body, queue[0]
        try:
            if rep.command == _REGION_READ and body.__class__ is RegionData:
                a, data = body.access, body.data
                size = _REGION_HEAD + len(data)
                if a.count != len(data) or size > pending.reply_limit:
                    return None
                out = REGION_HEAD_CODEC.pack(rep.msg_id, _REGION_READ, size,
                                             VFIO_USER_F_TYPE_REPLY, 0, a.offset, a.region,
                                             a.count) + data
            elif rep.command == _REGION_WRITE and body.__class__ is VfioUserRegionAccess:
                if _REGION_HEAD > pending.reply_limit:
                    return None
                out = REGION_HEAD_CODEC.pack(rep.msg_id, _REGION_WRITE, _REGION_HEAD,
                                             VFIO_USER_F_TYPE_REPLY, 0, body.offset,
                                             body.region, body.count)
            else:
                return None
        except struct.error:
            return None
        queue.popleft()
        if not queue:
            del self._pending_in[rep.msg_id]
        return out

    def _send_reply(self, rep: Reply) -> tuple[bytes, list[int]]:
        if rep.command == _REGION_READ or rep.command == _REGION_WRITE:
            out = self._region_reply(rep)
            if out is not None:
                return out, []
        command = Command(rep.command)
        queue = self._pending_in.get(rep.msg_id)
        if not queue or queue[0].command != command:
            raise LocalProtocolError(f"no pending {command.name} request with id {rep.msg_id}")
        pending = queue[0]
        payload = encode(command, Kind.REPLY, rep.body)
        size = HEADER_SIZE + len(payload)
        if size > pending.reply_limit:
            raise LocalProtocolError(f"{command.name} reply of {size} bytes exceeds the "
                                     f"requester's {pending.reply_limit}")
        allowed = 1 if command is Command.DEVICE_GET_REGION_INFO else 0
        if command is Command.DEVICE_GET_REGION_IO_FDS and self.peer_caps:
            allowed = self.peer_caps.max_msg_fds
        if len(rep.fds) > allowed:
            raise LocalProtocolError(f"{command.name} reply with {len(rep.fds)} fds")
        if pending.negotiates:
            if not isinstance(rep.body, Version) or (rep.body.major, rep.body.minor) != (
                    VFIO_USER_MAJOR, VFIO_USER_MINOR):
                raise LocalProtocolError("a VERSION reply must say 0.0 (QEMU 11 checks minor == 0)")
            self.state = advance(self.role, self.state, Trigger.SEND_VERSION_REPLY)
            self.peer_caps = self._proposed
        self._take_pending(rep.msg_id, command)
        hdr = Header(msg_id=rep.msg_id, command=command, size=size,
                     flags=VFIO_USER_F_TYPE_REPLY)
        return hdr.pack() + payload, list(rep.fds)

    def _send_error(self, rep: ErrorReply) -> tuple[bytes, list[int]]:
        if rep.errno <= 0:
            raise LocalProtocolError(f"an error reply needs a positive errno, not {rep.errno}")
        pending = self._take_pending(rep.msg_id, rep.command)
        if pending.negotiates:
            self.state = advance(self.role, self.state, Trigger.SEND_VERSION_ERROR)
        hdr = Header(msg_id=rep.msg_id, command=rep.command, size=HEADER_SIZE,
                     flags=VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, error=rep.errno)
        return hdr.pack(), []

    # --- introspection -------------------------------------------------------

    @property
    def awaiting_replies(self) -> tuple[int, ...]:
        """Ids of our requests still waiting for a reply."""
        return tuple(self._pending_out)

    @property
    def owed_replies(self) -> int:
        """How many of the peer's requests we have not answered yet."""
        return sum(len(q) for q in self._pending_in.values())
