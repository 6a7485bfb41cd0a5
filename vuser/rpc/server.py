"""The control socket: msgpack-RPC over a UNIX socket, asyncio (docs/architecture.md "Control").

``ControlServer(service, path)`` listens on ``path`` (created mode 0600: the
socket gives full control of the model) and serves any number of clients at
once, each with its own ``Decoder``. Requests are answered in order; the
model is synchronous, so a method runs to completion inside the read
callback. Notifications for a subscriber are written as events happen.

Bad input never reaches the model and never stops the server:

- a well-formed message of the wrong shape gets an error response (with its
  id when it had one) and the connection goes on;
- a broken stream (bytes that are no msgpack, an announced length over the
  limits) gets one error response with id nil, then the connection closes;
- a client that stops reading is not buffered for without bound: past
  ``HIGH_WATER`` bytes of unsent output the server stops reading its
  requests, and past its share of ``TOTAL_HIGH_WATER`` it drops (and counts)
  its notifications; the next notification that fits says how many were
  lost (``lost``);
- a client that disconnects mid-request loses its subscriptions and its
  trace (unless started with ``keep``); nothing else changes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Any

from .codec import (
    Decoder, Invalid, Limits, Notification, Request, Response, StreamError, encode_notification,
    encode_response, error_value,
)
from .service import RpcError, Service

log = logging.getLogger(__name__)

#: Unsent bytes to one client beyond which its notifications are dropped.
HIGH_WATER = 8 << 20
#: Unsent notification bytes for all clients together: each client's share is
#: this divided by the number of clients (at most HIGH_WATER, at least
#: SHARE_FLOOR), so many subscribers that stop reading cannot make the server
#: buffer many times HIGH_WATER (issue 14: 40 such subscribers peaked at 320 MiB).
TOTAL_HIGH_WATER = 32 << 20
SHARE_FLOOR = 256 << 10


class _Connection(asyncio.Protocol):
    """One client."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.decoder = Decoder(server.limits)
        self.transport: asyncio.Transport | None = None
        self.lost_notifications = 0
        self._paused = False
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        self.server._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.decoder.feed(data)
        except StreamError as e:
            log.info("control client: %s; closing", e.msg)
            self._send(encode_response(None, error_value(e.errno, e.msg), None))
            self.close()
            return
        for ev in events:
            if self.closed:
                return
            if isinstance(ev, Request):
                self._request(ev)
            elif isinstance(ev, Invalid):
                self._send(encode_response(ev.id, error_value(ev.errno, ev.msg), None))
            elif isinstance(ev, (Notification, Response)):
                pass  # the server takes no notifications and sends no requests

    def eof_received(self) -> bool:
        if self.decoder.pending:
            log.info("control client closed in the middle of a message")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        self.server.service.disconnected(self)

    def pause_writing(self) -> None:
        # The client does not read: stop taking its requests until it does.
        self._paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- requests and notifications ---------------------------------------------------
    def _request(self, req: Request) -> None:
        try:
            result = self.server.service.call(self, req.method, req.params)
        except RpcError as e:
            self._send(encode_response(req.id, error_value(e.errno, e.msg, **e.extra), None))
            return
        try:
            data = encode_response(req.id, None, result)
        except (TypeError, ValueError, OverflowError) as e:  # a result msgpack cannot carry
            log.exception("control method %s: unencodable result", req.method)
            data = encode_response(req.id, error_value(errno.EIO, f"unencodable result: {e}"),
                                   None)
        self._send(data)

    def notify(self, topic: str, payload: Any) -> None:
        """Send a notification, or drop it (and count) while the client lags."""
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return
        share = max(SHARE_FLOOR, TOTAL_HIGH_WATER // max(1, len(self.server._conns)))
        if t.get_write_buffer_size() >= min(HIGH_WATER, share):
            self.lost_notifications += 1
            return
        if self.lost_notifications:
            t.write(encode_notification("lost", {"count": self.lost_notifications}))
            self.lost_notifications = 0
        t.write(encode_notification(topic, payload))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # connection_lost follows


class ControlServer:
    """Listens on ``path`` for control clients of ``service``."""

    def __init__(self, service: Service, path: str, *, limits: Limits | None = None) -> None:
        self.service = service
        self.path = path
        self.limits = limits or Limits()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()

    @property
    def clients(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        """Bind ``path`` mode 0600 and listen. ``OSError`` if that fails."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # no window where the socket is group/world accessible
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening, drop every client, remove the socket file."""
        if self._server is not None:
            self._server.close()
            for c in list(self._conns):
                c.close()
            await self._server.wait_closed()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        # Let connection_lost callbacks run before the caller closes the service.
        await asyncio.sleep(0)
