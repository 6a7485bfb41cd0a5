"""The server's handling of one 4-byte REGION_READ of vuser-dma's ID and one
REGION_WRITE of queue 0's RING_LO, in process, with no socket and no event
loop: ``Connection.serve_region`` fed the message's bytes, calling
``ServerCore.region_access`` on a bound vuser-dma. The best of 40 batches of
10,000, in µs per message. No target: it shows what the handler itself costs,
apart from the system calls and the loop, which dominate ``bench_mmio.py``.

Run it against another tree with ``cd /tmp && PYTHONPATH=TREE python
bench/mmio_handler.py`` (from the worktree, ``''`` on ``sys.path`` wins).
"""

from __future__ import annotations

import inspect
import struct
import time

import vuser
from vuser.devices.dma_layout import QueueReg, queue_reg
from vuser.devices.platform import Platform
from vuser.devices.vuser_dma import VuserDma
from vuser.memory.seals import sealed_memfd
from vuser.protocol.connection import Connection
from vuser.protocol.consts import Command
from vuser.protocol.events import Reply
from vuser.protocol.messages import Version
from vuser.protocol.server import ServerCore
from vuser.protocol.state import Role

HEAD = struct.Struct("<HHIHHIQII")
# serve_region(access, data) feeds the bytes itself; older trees need receive_data first
FED = len(inspect.signature(Connection.serve_region).parameters) > 2


def main() -> None:
    platform = Platform()
    dev = VuserDma(platform=platform)
    fd = sealed_memfd("ram", 2 << 20)
    sink = dev.dma_sink()
    sink.map(0x1000_0000, 2 << 20, fd, 0, readable=True, writable=True)   # bound
    core = ServerCore(dev, sink)
    conn = Connection(Role.SERVER)
    ver = Version(caps={}).encode()
    conn.receive_data(struct.pack("<HHIHHI", 1, Command.VERSION, 16 + len(ver), 0, 0, 0) + ver)
    req = conn.next_event()
    conn.send(Reply(req.msg_id, Command.VERSION, Version()))
    read = HEAD.pack(2, Command.REGION_READ, 32, 0, 0, 0, 0, 0, 4)
    write = HEAD.pack(3, Command.REGION_WRITE, 36, 0, 0, 0,
                      queue_reg(0, QueueReg.RING_LO), 0, 4) + b"\0\x10\0\0"
    access = core.region_access
    for name, msg in (("REGION_READ", read), ("REGION_WRITE", write)):
        best = float("inf")
        for _ in range(40):
            t = time.perf_counter()
            for _ in range(10_000):
                if FED:
                    conn.serve_region(access, msg)
                else:
                    conn.receive_data(msg)
                    conn.serve_region(access)
                conn.mid_message
            best = min(best, time.perf_counter() - t)
        print(f"{name} 4 B handled in {best / 10_000 * 1e6:.3f} µs "
              f"({vuser.__file__.rsplit('/vuser/', 1)[0]})")


if __name__ == "__main__":
    main()
