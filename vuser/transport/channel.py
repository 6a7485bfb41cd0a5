"""A ``Connection`` on a non-blocking UNIX socket, driven by the asyncio loop.

Plain asyncio streams drop SCM_RIGHTS fds, so the channel reads with
``recvmsg`` from a ``loop.add_reader`` callback and writes with ``sendmsg``,
queuing what the socket does not take (fds go with the first byte only).
It never reads past the end of the message being received
(``Connection.bytes_needed``), except between messages, where it reads up to
``BOUNDARY_READ`` (36) bytes, so that a REGION_READ request (32 bytes) or a
4-byte REGION_WRITE (36) costs one ``recvmsg``. Linux hands fds out with the
bytes of the ``sendmsg`` that carried them and ends that read there, gluing
any earlier fd-less bytes in front. No message shorter than 36 bytes may
carry fds (SET_IRQS is the shortest that may), so in such a read every
message but the last one that starts in it is fd-less, and fds that came
with the read belong to that last one: the channel feeds them with it. A
longer read could hold two messages that may carry fds, and is never made.
Every complete message is handed to ``on_event`` from the reader callback, in
order, before the next one is parsed: a server answers synchronous requests
without ever awaiting, so requests are processed strictly in order and a
reply can never wait on anything the client has yet to send.
With ``serve_region`` (a server's ``ServerCore.region_access``), REGION_READ
and REGION_WRITE are answered inside the read by ``Connection.serve_region``,
with no event and the reply sent at once; tracing turns that off, so that a
trace shows every message as an event.

``Timeouts`` bound how long a peer may hold the channel without progress
(issue 14: a client sending one byte a second, or announcing 4 GiB and
stalling, held a device socket forever): VERSION must arrive within
``handshake`` seconds of the start; a message, once its first byte is in,
must be complete within ``message`` seconds, and queued output must drain
within as long; with ``idle`` set, a negotiated peer that sends nothing for
that long is dropped too (off by default: QEMU is silent while the guest
leaves the device alone). A dropped peer gets one warning line in the log.
Every channel runs in the reader callbacks of one event loop and none of them
waits for its peer, so a slow peer never delays another channel.
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vuser.protocol.connection import Connection, RegionAccess, close_fds
from vuser.protocol.consts import HEADER_SIZE, SCM_MAX_FD
from vuser.protocol.events import NEED_DATA, ConnectionClosed, ErrorReply, Event, Reply, Request
from vuser.protocol.messages import HEADER_CODEC, VfioIrqSet
from vuser.protocol.state import ConnState
from vuser.transport.trace import describe

log = logging.getLogger(__name__)
trace_log = logging.getLogger("vuser.trace")

RECV_SIZE = 256 << 10
#: recvmsg calls one readable callback may make (see ``_readable``).
READS_PER_WAKEUP = 4
#: The most read between messages (module doc): the shortest message that
#: may carry fds, SET_IRQS (header and ``vfio_irq_set``).
BOUNDARY_READ = HEADER_SIZE + VfioIrqSet.SIZE
_CMSG_SPACE = socket.CMSG_SPACE(SCM_MAX_FD * array.array("i").itemsize)
# Plain ints: socket's IntFlag members cost an enum operation per message.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
#: Stop reading while this much output is queued (a peer that does not read
#: its replies must not make us buffer without bound).
OUT_HIGH_WATER = 8 << 20


@dataclass(frozen=True)
class Timeouts:
    """Seconds a peer may go without progress (None: no limit); module doc."""

    handshake: float | None = 10.0
    message: float | None = 10.0
    idle: float | None = None


#: A channel with no limits (our own client side).
NO_TIMEOUTS = Timeouts(None, None, None)


def fds_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % fds.itemsize
            fds.frombytes(data[:usable])
    return list(fds)


def _last_message_start(data: bytes) -> int:
    """Offset of the last message that starts in ``data``, read between
    messages (a size under 16 counts as 16, as ``Connection`` consumes it)."""
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        end = pos + max(HEADER_CODEC.unpack_from(data, pos)[2], HEADER_SIZE)
        if end >= len(data):
            break
        pos = end
    return pos


class Channel:
    """Pumps one socket through one ``Connection``.

    ``on_event(event)`` gets every event, ``ConnectionClosed`` last; after it
    the channel is closed (socket shut, buffered fds closed).
    """

    def __init__(self, sock: socket.socket, conn: Connection,
                 on_event: Callable[[Event], None], *, name: str = "vfio-user",
                 trace: int = 0, timeouts: Timeouts = NO_TIMEOUTS,
                 serve_region: RegionAccess | None = None) -> None:
        sock.setblocking(False)
        self.sock, self.conn, self.on_event = sock, conn, on_event
        self.name, self.trace = name, trace
        self.timeouts = timeouts
        self._serve_region = None if trace else serve_region
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._out: deque[tuple[memoryview, list[int]]] = deque()
        self._out_bytes = 0
        self._reading = False
        self._mid = False       # conn.mid_message after the last read
        self._fd = sock.fileno()
        now = self._loop.time()
        self._started = self._last_message = now
        self._msg_since: float | None = None   # first byte of the message in progress
        self._out_since: float | None = None   # output queued and not yet drained
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._resume_reading()
        self._arm()

    # --- timeouts ----------------------------------------------------------------

    def _deadline(self) -> tuple[float, str, float] | None:
        """The earliest (time, why, limit) at which the peer is dropped, if any."""
        t, found = self.timeouts, []
        if t.handshake is not None and self.conn.state is not ConnState.READY:
            found.append((self._started + t.handshake, "no VERSION", t.handshake))
        if t.message is not None and self._msg_since is not None:
            found.append((self._msg_since + t.message, "a message left incomplete", t.message))
        if t.message is not None and self._out_since is not None:
            found.append((self._out_since + t.message, "replies left unread", t.message))
        if t.idle is not None and self._msg_since is None and self._out_since is None:
            found.append((self._last_message + t.idle, "idle", t.idle))
        return min(found) if found else None

    def _arm(self) -> None:
        """(Re)start the timer for the earliest deadline; a later one is
        re-checked when the current timer fires."""
        if self.closed:
            return
        if (self._msg_since is None and self._out_since is None and self.timeouts.idle is None
                and self.conn.state is ConnState.READY):
            self._disarm()
            return  # the common case between messages: no deadline applies
        deadline = self._deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer.when() <= deadline[0]:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline[0], self._expired)

    def _disarm(self) -> None:
        """Drop the timer when no deadline applies: a pending one (the
        handshake's, 10 s) costs the event loop a clock read on every turn."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if self.closed or deadline is None:
            return
        when, why, limit = deadline
        if when > self._loop.time():
            self._arm()
            return
        log.warning("%s: dropping the client: %s for %.1f s", self.name, why, limit)
        self._finish(ConnectionClosed(partial=self.conn.mid_message,
                                      pending=self.conn.awaiting_replies))

    # --- output ------------------------------------------------------------------

    def send(self, event: Request | Reply | ErrorReply) -> None:
        """Send an event now, or queue it; a closed channel drops it."""
        if self.closed:
            return
        data, fds = self.conn.send(event)
        if self.trace:
            trace_log.debug("%s → %s", self.name, describe(event))
            if self.trace > 1:
                trace_log.debug("%s → %s", self.name, data[:64].hex())
        self._write(memoryview(data), fds)

    def _write(self, view: memoryview, fds: list[int]) -> None:
        if not self._out:
            sent = self._send_now(view, fds)
            if sent is None or sent == len(view):
                return
            view, fds = view[sent:], (fds if sent == 0 else [])
            self._loop.add_writer(self._fd, self._writable)
            self._out_since = self._loop.time()
            self._arm()
        self._out.append((view, fds))
        self._out_bytes += len(view)
        if self._out_bytes > OUT_HIGH_WATER:
            self._pause_reading()

    def _send_now(self, view: memoryview, fds: list[int]) -> int | None:
        """Bytes sent (0 if the socket is full); None if the peer is gone."""
        try:
            if fds:
                return self.sock.sendmsg(
                    [view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            return self.sock.send(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            # The peer went away; the reader sees EOF and closes the channel.
            log.debug("%s: send failed: %s", self.name, e)
            self._drop_output()
            self._resume_reading()
            return None

    def _writable(self) -> None:
        while self._out:
            view, fds = self._out[0]
            sent = self._send_now(view, fds)
            if sent is None:
                return
            self._out_bytes -= sent
            if sent < len(view):
                self._out[0] = (view[sent:], [] if sent else fds)
                return
            self._out.popleft()
        self._loop.remove_writer(self._fd)
        self._out_since = None
        self._resume_reading()

    def _drop_output(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        self._out_since = None
        if not self.closed:
            self._loop.remove_writer(self._fd)

    # --- input -------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _readable(self) -> None:
        """The reader callback: one recvmsg of at most the message in progress
        (``BOUNDARY_READ`` between messages), its events handed out or its
        region accesses answered; then the deadlines. One function, as the
        path every guest MMIO access takes: a call per message costs more here
        than the whole floor's parsing (bench/RESULTS.md)."""
        conn = self.conn
        # Read on while a message is incomplete and the socket has more: the
        # header and the rest of a message cost one wakeup, not two. Bounded,
        # so that a peer streaming a huge message does not starve the others.
        for _ in range(READS_PER_WAKEUP):
            try:
                # CLOEXEC: received fds must not leak into processes we start.
                boundary = not self._mid
                want = BOUNDARY_READ if boundary else min(conn.bytes_needed(), RECV_SIZE)
                data, ancdata, msg_flags, _ = self.sock.recvmsg(want, _CMSG_SPACE,
                                                                _MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno not in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE):
                    log.warning("%s: receive failed: %s", self.name, e)
                data, ancdata, msg_flags = b"", [], 0
            fds = fds_from_ancdata(ancdata) if ancdata else []
            if msg_flags & _MSG_CTRUNC:
                # The kernel dropped fds it had no room for: the message is unusable
                # and we cannot tell where it ends with any certainty. Hang up.
                close_fds(fds)
                log.warning("%s: control data truncated; closing the connection", self.name)
                self._finish(ConnectionClosed(partial=True, pending=conn.awaiting_replies))
                return
            if self.trace > 1 and data:
                trace_log.debug("%s ← %d bytes %s fds=%s", self.name, len(data),
                                data[:64].hex(), fds)
            serve, mid, feed = self._serve_region, None, None
            if fds:
                last = _last_message_start(data) if boundary else 0
                if last:            # the fds came with a later message (module doc)
                    conn.receive_data(data[:last])
                    conn.receive_data(data[last:], fds)
                else:
                    conn.receive_data(data, fds)
            elif serve is None:
                conn.receive_data(data)
            else:
                feed = data         # fed by serve_region's first call
            while not self.closed:
                try:
                    if serve is not None:
                        out = conn.serve_region(serve, feed)
                        feed = None
                        if out is not None:     # answered (module doc)
                            if out:             # sent now if nothing is queued (``_write``)
                                if self._out:
                                    self._write(memoryview(out), [])
                                else:
                                    try:
                                        sent = self.sock.send(out)
                                    except OSError:     # full, or the peer is gone:
                                        sent = 0        # _write tries again, handles it
                                    if sent != len(out):
                                        self._write(memoryview(out)[sent:], [])
                            if self.timeouts.idle is not None:
                                self._last_message = self._loop.time()
                            if not (mid := conn.mid_message):
                                break       # all answered: no need to ask next_event
                            mid = None
                            continue
                    event = conn.next_event()
                except Exception:  # a bug of ours: never leave the peer hanging
                    log.exception("%s: cannot parse the input; closing the connection",
                                  self.name)
                    self._finish(ConnectionClosed(partial=True, pending=conn.awaiting_replies))
                    return
                if event is NEED_DATA:
                    break
                if self.timeouts.idle is not None:   # only the idle deadline reads it
                    self._last_message = self._loop.time()
                if self.trace:
                    trace_log.debug("%s ← %s", self.name, describe(event))
                if isinstance(event, ConnectionClosed):
                    self._finish(event)
                    break
                self.on_event(event)
            if self.closed:
                return
            self._mid = conn.mid_message if mid is None else mid
            if not data or not self._mid:
                break
        if not self._mid:
            self._msg_since = None
            if self._out_since is None and self.timeouts.idle is None \
                    and conn.state is ConnState.READY:
                if self._timer is not None:
                    self._disarm()
                return      # no deadline applies (``_arm``'s common case)
        elif self._msg_since is None:
            self._msg_since = self._loop.time()
        self._arm()

    def _finish(self, event: ConnectionClosed) -> None:
        self.close()
        self.on_event(event)

    def close(self) -> None:
        """Shut the socket and close every fd still buffered. Idempotent."""
        if self.closed:
            return
        self._pause_reading()
        self._drop_output()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closed = True
        self.conn.abort()
        self.sock.close()
