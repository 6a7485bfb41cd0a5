"""vfio-user protocol cost, as ratios to references measured in the same run.

1. sans-IO: one REGION_READ of 4 bytes through client Connection -> server
   Connection + ServerCore -> back, against packing and unpacking the same
   header and access struct with ``struct`` (the floor of any Python codec).
2. socket: ``Client.region_read`` to a ``DeviceServer`` over a UNIX socket in
   one process, against a bare asyncio ping-pong of 32-byte messages on a
   socketpair (the floor of an asyncio round trip).
3. DMA: 1 MiB device ``dma_write`` into a memfd mapping, against
   ``os.pwrite`` of 1 MiB into the same memfd.

No targets of their own (report only): the issue's MMIO targets are in
``bench_mmio.py``; these isolate the protocol core and the in-process path.

Run: ``.venv/bin/python bench/bench_protocol.py [--n N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import tempfile
import time

from vuser.backend import DeviceInfo, IrqInfo, RegionInfo
from vuser.protocol.connection import Connection
from vuser.protocol.consts import Command
from vuser.protocol.events import NEED_DATA
from vuser.protocol.messages import Version, VfioUserRegionAccess
from vuser.protocol.server import ServerCore
from vuser.protocol.state import Role
from vuser.transport.client import Client
from vuser.transport.dma import DmaSpace
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd


class Registers:
    """The smallest ServerBackend: region 0 is 4 KiB of bytes."""

    def __init__(self) -> None:
        self.mem = bytearray(4096)

    def device_info(self): return DeviceInfo()
    def region_info(self, i): return RegionInfo(flags=3, size=4096 if i == 0 else 0)
    def irq_info(self, i): return IrqInfo(flags=1, count=1)
    def region_read(self, i, off, n): return bytes(self.mem[off:off + n])
    def region_write(self, i, off, data): self.mem[off:off + len(data)] = data
    def set_irqs(self, *a): pass
    def reset(self): pass
    def client_connected(self, dma): self.dma = dma
    def client_disconnected(self): pass


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)


def bench_sans_io(n: int) -> tuple[float, float]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    core = ServerCore(Registers(), DmaSpace())

    def exchange(req):
        data, _ = client.send(req)
        server.receive_data(data)
        event = server.next_event()
        out, _ = server.send(core.handle(event))
        client.receive_data(out)
        reply = client.next_event()
        assert server.next_event() is NEED_DATA
        return reply

    exchange(client.request(Command.VERSION, Version(caps={"capabilities": {}})))
    body = VfioUserRegionAccess(offset=8, region=0, count=4)

    def ours(k):
        for _ in range(k):
            exchange(client.request(Command.REGION_READ, body))

    hdr, acc = struct.Struct("<HHIII"), struct.Struct("<QII")

    def reference(k):
        for i in range(k):
            req = hdr.pack(i & 0xFFFF, 9, 32, 0, 0) + acc.pack(8, 0, 4)
            hdr.unpack_from(req)
            acc.unpack_from(req, 16)
            rep = hdr.pack(i & 0xFFFF, 9, 36, 1, 0) + acc.pack(8, 0, 4) + b"\0" * 4
            hdr.unpack_from(rep)
            acc.unpack_from(rep, 16)

    return rate(ours, n), rate(reference, n)


async def bench_socket(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = DeviceServer(Registers(), os.path.join(tmp, "b.sock"))
        await server.start()
        client = await Client.connect(server.path)
        t = time.perf_counter()
        for _ in range(n):
            await client.region_read(0, 8, 4)
        ours = n / (time.perf_counter() - t)
        await client.close()
        await server.close()

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def echo():
        for _ in range(n):
            await loop.sock_sendall(b, await loop.sock_recv(b, 64))

    task = asyncio.create_task(echo())
    t = time.perf_counter()
    for _ in range(n):
        await loop.sock_sendall(a, b"x" * 32)
        await loop.sock_recv(a, 64)
    reference = n / (time.perf_counter() - t)
    await task
    a.close()
    b.close()
    return ours, reference


async def bench_dma(rounds: int) -> tuple[float, float]:
    fd = sealed_memfd("bench", 2 << 20)   # sealed, as QEMU's: DMA through the mmap
    space = DmaSpace()
    space.map(0, 2 << 20, 3, os.dup(fd), 0)
    data = bytes(1 << 20)
    t = time.perf_counter()
    for _ in range(rounds):
        await space.dma_write(0x1000, data)
    ours = rounds / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(rounds):
        os.pwrite(fd, data, 0x1000)
    reference = rounds / (time.perf_counter() - t)
    space.close()
    os.close(fd)
    return ours, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="round trips per measurement")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args()
    rows = [("sans-IO REGION_READ 4 B, both ends in one process", *bench_sans_io(args.n),
             "msg/s", "struct pack/unpack of the same messages"),
            ("in-process socket REGION_READ 4 B, Client to DeviceServer",
             *asyncio.run(bench_socket(args.n // 4)), "msg/s", "asyncio 32-byte ping-pong"),
            ("DMA write 1 MiB into a memfd mapping", *asyncio.run(bench_dma(200)), "MiB/s",
             "os.pwrite")]
    if args.json:
        figs = [{"name": name, "value": round(ours), "unit": unit, "reference": ref_name,
                 "reference_value": round(ref), "ratio": round(ours / ref, 3),
                 "target": None, "met": None} for name, ours, ref, unit, ref_name in rows]
        with open(args.json, "w") as fp:
            json.dump({"script": "bench_protocol.py", "figures": figs}, fp, indent=1)
    print(f"{'measurement':28} {'vuser':>12} {'reference':>12} {'ratio':>7}")
    for name, ours, ref, unit, _ in rows:
        print(f"{name[:28]:28} {ours:12.0f} {ref:12.0f} {ours / ref:7.2f}  ({unit})")


if __name__ == "__main__":
    main()
