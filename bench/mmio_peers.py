"""Reference servers for ``bench_mmio.py``: no vuser code, each in its own process.

- ``floor PATH...``: the host-only floor of a vfio-user server. A minimal
  asyncio server on raw non-blocking UNIX sockets (``loop.add_reader``, one
  ``recv`` and one ``send`` per message) that parses the 16-byte header with
  ``struct`` and answers: VERSION with a bare 0.0 head (peer defaults),
  REGION_READ with the 16-byte access head and ``count`` bytes of a fixed
  register file, REGION_WRITE (not posted) with the access head, anything
  else header-only. No bounds, no permissions, no state machine: what any
  server must at least do to answer a register read.
- ``echo PATH...``: a bare asyncio UNIX-socket echo (``recv`` then ``send``
  of the same bytes).

Each prints ``ready`` once every socket listens, and serves until SIGTERM.
Run by ``bench_mmio.py``; not a part of vuser.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import sys

HDR = struct.Struct("<HHIII")
ACCESS = struct.Struct("<QII")
REGS = bytes(range(256)) * 16          # a 4 KiB "BAR0"


def floor_reply(buf: bytes) -> bytes:
    msg_id, command, size, flags, _ = HDR.unpack_from(buf)
    if command == 9:                                 # REGION_READ
        offset, region, count = ACCESS.unpack_from(buf, 16)
        return (HDR.pack(msg_id, 9, 32 + count, 1, 0) + ACCESS.pack(offset, region, count)
                + REGS[offset:offset + count])
    if flags & 0x10:                                 # NO_REPLY: a posted write
        return b""
    if command == 10:                                # REGION_WRITE
        return HDR.pack(msg_id, 10, 32, 1, 0) + buf[16:32]
    if command == 1:                                 # VERSION: 0.0, no JSON
        return HDR.pack(msg_id, 1, 20, 1, 0) + b"\0\0\0\0"
    return HDR.pack(msg_id, command, 16, 1, 0)


def serve(kind: str, paths: list[str]) -> None:
    loop = asyncio.new_event_loop()
    listeners = []

    def on_client(sock: socket.socket) -> None:
        buf = bytearray()

        def readable() -> None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(sock.fileno())
                sock.close()
                return
            if kind == "echo":
                sock.send(data)
                return
            buf.extend(data)
            out = []
            while len(buf) >= 16:
                size = HDR.unpack_from(buf)[2]
                if len(buf) < size:
                    break
                out.append(floor_reply(bytes(buf[:size])))
                del buf[:size]
            if out:
                sock.send(b"".join(out))

        sock.setblocking(False)
        loop.add_reader(sock.fileno(), readable)

    def accept(lsock: socket.socket) -> None:
        sock, _ = lsock.accept()
        on_client(sock)

    for path in paths:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(8)
        lsock.setblocking(False)
        loop.add_reader(lsock.fileno(), accept, lsock)
        listeners.append(lsock)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print("ready", flush=True)
    loop.run_forever()
    for lsock in listeners:
        lsock.close()
    for path in paths:
        os.unlink(path)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
