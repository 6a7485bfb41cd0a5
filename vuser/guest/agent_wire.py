"""The guest agent's frames, sans-IO (docs/python-api.md "The agent channel").

The agent (``guest-agent/vuser-agent.c``, layouts in ``guest-agent/vuser_agent.h``)
reads requests from a virtio-serial port and answers each with one reply:

- a 16-byte ``Header`` (magic, kind, flags, id, payload length), little-endian;
- the payload: a fixed request/reply struct, then its variable parts.

``encode_*`` build request frames. ``ReplyDecoder.feed(data)`` returns the
complete replies in ``data`` (bytes may arrive in any pieces) and raises
``AgentProtocolError`` on a frame no agent sends: a wrong magic, a payload
over ``MAX_REPLY``, a reply kind it does not know, a body whose lengths do
not add up. After that error the stream is unusable (no resynchronisation).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from vuser.wire import Struct, i32, u16, u32

__all__ = ["MAGIC_REQ", "MAGIC_REP", "VERSION", "MAX_REQUEST", "MAX_OUTPUT", "MAX_REPLY",
           "PORT_NAME", "Kind", "Header", "ExecRequest", "ExecReply", "WriteRequest",
           "ReadRequest", "ErrorReply", "PingReply", "AgentError", "AgentProtocolError", "Reply", "ExecResult",
           "ReplyDecoder", "encode_ping", "encode_exec", "encode_write", "encode_read",
           "encode_kmsg", "parse_reply"]

MAGIC_REQ = 0x51474156  # "VAGQ"
MAGIC_REP = 0x52474156  # "VAGR"
VERSION = 1
MAX_REQUEST = 64 << 20
MAX_OUTPUT = 16 << 20
#: The largest reply payload: an exec reply with both outputs full.
MAX_REPLY = 2 * MAX_OUTPUT + 64
PORT_NAME = "org.vuser.agent"

EXEC_STDOUT_TRUNCATED = 1
EXEC_STDERR_TRUNCATED = 2
EXEC_TIMED_OUT = 4
WRITE_MKDIRS = 1


class Kind:
    PING = 1
    EXEC = 2
    WRITE_FILE = 3
    READ_KMSG = 4
    READ_FILE = 5
    ERROR = 0x8000


_REPLY_KINDS = {Kind.PING, Kind.EXEC, Kind.WRITE_FILE, Kind.READ_KMSG, Kind.READ_FILE, Kind.ERROR}


class Header(Struct, size=16):
    magic: u32
    kind: u16
    flags: u16
    id: u32
    length: u32


class PingReply(Struct, size=8):
    version: u32
    max_request: u32


class ExecRequest(Struct, size=8):
    timeout_ms: u32
    cmd_len: u32


class ExecReply(Struct, size=24):
    status: i32
    signal: i32
    flags: u32
    stdout_len: u32
    stderr_len: u32
    reserved: u32


class WriteRequest(Struct, size=16):
    mode: u32
    flags: u32
    path_len: u32
    data_len: u32


class ReadRequest(Struct, size=8):
    path_len: u32
    max_len: u32


class ErrorReply(Struct, size=8):
    err: i32
    msg_len: u32


class AgentProtocolError(Exception):
    """The agent's byte stream is not a valid reply stream."""


def _frame(kind: int, rid: int, payload: bytes) -> bytes:
    if len(payload) > MAX_REQUEST:
        raise ValueError(f"request payload of {len(payload)} bytes, the agent takes at most "
                         f"{MAX_REQUEST}")
    return Header(MAGIC_REQ, kind, 0, rid, len(payload)).pack() + payload


def encode_ping(rid: int) -> bytes:
    return _frame(Kind.PING, rid, b"")


def encode_exec(rid: int, command: str, timeout_ms: int = 0) -> bytes:
    cmd = command.encode()
    if b"\0" in cmd:
        raise ValueError("a command cannot hold a NUL byte")
    return _frame(Kind.EXEC, rid, ExecRequest(timeout_ms, len(cmd)).pack() + cmd)


def _guest_path(path: str) -> bytes:
    raw = os.fsencode(path)
    if not raw.startswith(b"/") or b"\0" in raw:
        raise ValueError(f"guest path {path!r} must be absolute and hold no NUL byte")
    return raw


def encode_write(rid: int, path: str, data: bytes, mode: int = 0o644,
                 mkdirs: bool = True) -> bytes:
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {mode:#o} is not in 0..0o7777")
    p = _guest_path(path)
    return _frame(Kind.WRITE_FILE, rid,
                  WriteRequest(mode, WRITE_MKDIRS if mkdirs else 0, len(p), len(data)).pack()
                  + p + data)


def encode_read(rid: int, path: str, max_len: int = MAX_OUTPUT) -> bytes:
    p = _guest_path(path)
    return _frame(Kind.READ_FILE, rid, ReadRequest(len(p), max_len).pack() + p)


def encode_kmsg(rid: int) -> bytes:
    return _frame(Kind.READ_KMSG, rid, b"")


@dataclass(frozen=True)
class Reply:
    """One reply frame: its kind, the request id it answers, its payload."""

    kind: int
    id: int
    payload: bytes


@dataclass(frozen=True)
class ExecResult:
    """A command's outcome. ``status`` is its exit status, or None when a
    signal killed it (``signal``); ``timed_out``: the agent killed it."""

    stdout: bytes
    stderr: bytes
    status: int | None
    signal: int = 0
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def out(self) -> str:
        """``stdout`` decoded (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def describe(self) -> str:
        """'exit status 3', 'killed by SIGKILL (timed out)', ..."""
        if self.status is not None:
            return f"exit status {self.status}"
        import signal as _signal

        try:
            name = _signal.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"killed by {name}" + (" (timed out)" if self.timed_out else "")


class AgentError(OSError):
    """The agent answered a request with an error (an errno and its message)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.errno_name = errno.errorcode.get(err, str(err))


class ReplyDecoder:
    """Reply frames out of a byte stream, in any pieces."""

    def __init__(self, max_reply: int = MAX_REPLY) -> None:
        self._buf = bytearray()
        self._max = max_reply

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        out = []
        while len(self._buf) >= Header.SIZE:
            h = Header.unpack(self._buf)
            if h.magic != MAGIC_REP:
                raise AgentProtocolError(f"bad reply magic {h.magic:#x} (want {MAGIC_REP:#x})")
            if h.kind not in _REPLY_KINDS:
                raise AgentProtocolError(f"unknown reply kind {h.kind:#x}")
            if h.length > self._max:
                raise AgentProtocolError(f"reply of {h.length} bytes, the limit is {self._max}")
            end = Header.SIZE + h.length
            if len(self._buf) < end:
                break
            out.append(Reply(h.kind, h.id, bytes(self._buf[Header.SIZE:end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)


def _fixed(cls: type[Struct], payload: bytes, what: str) -> Struct:
    try:
        return cls.unpack(payload)
    except ValueError:
        raise AgentProtocolError(f"{what} reply of {len(payload)} bytes, needs {cls.SIZE}") from None


def parse_reply(reply: Reply, kind: int):
    """The value of ``reply`` to a request of ``kind``: ``AgentError`` for an
    error reply, ``AgentProtocolError`` for a malformed one or another kind.
    PING: ``PingReply``; EXEC: ``ExecResult``; WRITE_FILE: None; READ_*: bytes."""
    if reply.kind == Kind.ERROR:
        e = _fixed(ErrorReply, reply.payload, "error")
        if ErrorReply.SIZE + e.msg_len != len(reply.payload):
            raise AgentProtocolError(f"error reply says {e.msg_len} message bytes, carries "
                                     f"{len(reply.payload) - ErrorReply.SIZE}")
        raise AgentError(e.err, reply.payload[ErrorReply.SIZE:].decode(errors="replace"))
    if reply.kind != kind:
        raise AgentProtocolError(f"reply kind {reply.kind} to a request of kind {kind}")
    if kind == Kind.PING:
        return _fixed(PingReply, reply.payload, "ping")
    if kind == Kind.EXEC:
        r = _fixed(ExecReply, reply.payload, "exec")
        body = reply.payload[ExecReply.SIZE:]
        if r.stdout_len + r.stderr_len != len(body):
            raise AgentProtocolError(f"exec reply says {r.stdout_len} + {r.stderr_len} output "
                                     f"bytes, carries {len(body)}")
        if (r.status < 0) != (r.signal != 0) or r.signal < 0 or r.status > 255:
            raise AgentProtocolError(f"exec reply with status {r.status} and signal {r.signal}")
        return ExecResult(stdout=body[:r.stdout_len], stderr=body[r.stdout_len:],
                          status=None if r.signal else r.status, signal=r.signal,
                          timed_out=bool(r.flags & EXEC_TIMED_OUT),
                          stdout_truncated=bool(r.flags & EXEC_STDOUT_TRUNCATED),
                          stderr_truncated=bool(r.flags & EXEC_STDERR_TRUNCATED))
    if kind == Kind.WRITE_FILE:
        if reply.payload:
            raise AgentProtocolError(f"write reply carries {len(reply.payload)} bytes, want 0")
        return None
    return reply.payload
