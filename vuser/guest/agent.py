"""The host side of the guest agent: its binary and a blocking client.

The agent (``guest-agent/vuser-agent.c``) is a small static C program that
``/init`` starts in a guest booted for commands (``vuser.guest.runsetup``).
It serves requests on a virtio-serial port named ``org.vuser.agent``, which
QEMU exposes as a UNIX socket on the host (``qemu_args``), so command output
never shares the serial console with kernel messages. Frames are declared in
``vuser.guest.agent_wire``.

``build_agent()`` compiles it like the guest test programs (host gcc,
``-static``), cached by its sources and the compiler.
``AgentClient`` sends one request at a time and waits for its reply with a
timeout: a silent or dead agent raises ``AgentTimeout`` or ``AgentGone``,
never hangs.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from vuser.errors import UserError
from vuser.guest import paths
from vuser.guest.agent_wire import (
    AgentError, AgentProtocolError, ExecResult, Kind, PingReply, ReplyDecoder, encode_exec,
    encode_kmsg, encode_ping, encode_read, encode_write, parse_reply,
)

__all__ = ["AGENT_SOURCES", "AgentClient", "AgentError", "AgentGone", "AgentProtocolError",
           "AgentTimeout", "ExecResult", "build_agent", "qemu_args"]

AGENT_DIR = paths.SOURCE_ROOT / "guest-agent"
AGENT_SOURCES = (AGENT_DIR / "vuser-agent.c", AGENT_DIR / "vuser_agent.h")
GUEST_PATH = "sbin/vuser-agent"
CFLAGS = ("-static", "-O2", "-g0", "-Wall", "-Wextra", "-std=gnu11")
#: How much longer than a command's timeout its reply is awaited (the agent
#: kills the command at its timeout, then collects and sends what it printed).
EXEC_REPLY_SLACK_S = 10.0


class AgentTimeout(TimeoutError):
    """The agent did not answer in time."""


class AgentGone(ConnectionError):
    """The agent's channel closed (the guest or QEMU ended)."""


def qemu_args(socket_path: Path, chardev: str = "vagent0") -> list[str]:
    """QEMU options for the agent's port: a virtio-serial controller with one
    port named ``org.vuser.agent`` on a UNIX socket that QEMU listens on."""
    return ["-chardev", f"socket,id={chardev},path={socket_path},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vagent-serial",
            "-device", f"virtserialport,bus=vagent-serial.0,chardev={chardev},"
                       "name=org.vuser.agent"]


def build_agent(cache: Path | None = None, sources: tuple[Path, ...] = AGENT_SOURCES) -> Path:
    """The static agent binary, built with the host's gcc if not cached."""
    gcc = os.environ.get("CC") or shutil.which("gcc")
    if not gcc:
        raise UserError("gcc not found: the guest agent is built with the host's gcc "
                        "(apt-get install gcc libc6-dev)")
    h = hashlib.sha256(f"{gcc}\0{' '.join(CFLAGS)}\0".encode())
    version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True)
    h.update(version.stdout.encode())
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    out = (cache or paths.cache_root()) / "agent" / h.hexdigest()[:20] / "vuser-agent"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".vuser-agent.")
    os.close(fd)
    try:
        p = subprocess.run([gcc, *CFLAGS, "-I", str(sources[0].parent), "-o", tmp,
                            str(sources[0])], capture_output=True, text=True)
        if p.returncode != 0:
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            raise UserError(f"building the guest agent failed:\n{tail}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class AgentClient:
    """Requests to one agent over a connected stream socket (blocking, one at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(True)
        self._decoder = ReplyDecoder()
        self._ids = itertools.count(1)
        self._broken: str | None = None

    @classmethod
    def connect(cls, path: Path | str, timeout: float = 10.0) -> AgentClient:
        """Connect to QEMU's socket for the port (retrying until it exists)."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return cls(s)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                if time.monotonic() > deadline:
                    raise AgentGone(f"no agent socket at {path}: {e.strerror}") from None
                time.sleep(0.05)

    def close(self) -> None:
        self._broken = self._broken or "closed"
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------
    def ping(self, timeout: float = 5.0) -> PingReply:
        return self._request(Kind.PING, encode_ping, (), timeout)

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run ``/bin/sh -c command`` in the guest. With ``timeout`` the agent
        kills it after that long (``result.timed_out``); the reply is awaited
        a little longer than that."""
        ms = 0 if timeout is None else max(1, int(timeout * 1000))
        wait = None if timeout is None else timeout + EXEC_REPLY_SLACK_S
        return self._request(Kind.EXEC, encode_exec, (command, ms), wait)

    def write_file(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 60.0) -> None:
        self._request(Kind.WRITE_FILE, encode_write, (path, data, mode), timeout)

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        return self._request(Kind.READ_FILE, encode_read, (path,), timeout)

    def kmsg(self, timeout: float = 30.0) -> bytes:
        return self._request(Kind.READ_KMSG, encode_kmsg, (), timeout)

    # -- the exchange ----------------------------------------------------------------
    def _request(self, kind: int, encode, args: tuple, timeout: float | None):
        if self._broken:
            raise AgentGone(f"the agent channel is unusable: {self._broken}")
        rid = next(self._ids) & 0xFFFFFFFF
        frame = encode(rid, *args)
        try:
            self._sock.sendall(frame)
        except OSError as e:
            self._broken = f"send failed: {e}"
            raise AgentGone(self._broken) from None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.id == rid:
                    return parse_reply(reply, kind)
                if reply.id == 0 and reply.kind == Kind.ERROR:
                    # a frame the agent could not read at all: ours
                    return parse_reply(reply, kind)
                # an answer to an earlier request we gave up on: skip it

    def _read(self, deadline: float | None) -> list:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AgentTimeout("the guest agent did not answer in time")
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 20)
            except OSError as e:
                self._broken = f"receive failed: {e}"
                raise AgentGone(self._broken) from None
            if not data:
                self._broken = "the agent's channel closed (did the guest stop?)"
                raise AgentGone(self._broken)
            try:
                replies = self._decoder.feed(data)
            except AgentProtocolError as e:
                self._broken = str(e)
                raise
            if replies:
                return replies

