"""MMIO over vfio-user, host only: vuser-dma's BAR0 against servers with no vuser code.

Every server runs in its own process (``vuser serve``, or ``mmio_peers.py``),
so the client's cost is not counted: the server-side cost of a message is the
CPU time the server process spent (``/proc/PID/task/*/schedstat``) divided by
the messages it answered.

1. Server-side cost of a 4-byte REGION_READ of vuser-dma's ID register,
   driven by our ``Client`` (``vuser.transport.client``), against the floor:
   ``mmio_peers.py floor``, a minimal asyncio server on a raw socket that
   parses the header with ``struct`` and answers REGION_READ. Target: vuser's
   cost <= 1.2x the floor's. The round trip as the client sees it is reported
   beside it.
2. REGION_READ/WRITE rate with 1 and 8 devices (one ``vuser serve`` process,
   one socket each), driven by a raw blocking client that alternates a 4-byte
   read of ID and a 4-byte non-posted write of queue 0's RING_LO (stored, no
   side effect while the queue is disabled) on every socket in turn, against
   ``mmio_peers.py echo`` (a bare asyncio UNIX-socket echo) driven the same
   way. Target: >= 0.8x the echo's rate.
3. With ``--uvloop``: figure 1 again with the vuser server on uvloop
   (reported only; uvloop is not a runtime dependency).

The machine is shared: each figure alternates the two servers ``--rounds``
times and keeps each one's best round.
``--profile FILE`` instead runs the vuser server of figure 1 under
pyinstrument and writes its text report to FILE.

Run: ``.venv/bin/python bench/bench_mmio.py [--n N] [--rounds R] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vuser.devices.dma_layout import VDMA_ID, QueueReg, Reg, queue_reg
from vuser.memory.seals import sealed_memfd
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import Command
from vuser.protocol.events import NEED_DATA, Reply
from vuser.protocol.messages import Header, Version, VfioUserDmaMap, VfioUserRegionAccess
from vuser.protocol.state import Role
from vuser.transport.client import Client

HERE = Path(__file__).resolve().parent
RAM = 2 << 20
ID_BYTES = VDMA_ID.to_bytes(4, "little")
RING_LO = queue_reg(0, QueueReg.RING_LO)


# --- servers in their own process -------------------------------------------------

def server_cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of ``pid`` has run (schedstat's first field)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(Path(path).read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


@contextmanager
def server(kind: str, n: int, *, uvloop: bool = False,
           profile: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """``kind`` "vuser", "floor" or "echo" serving ``n`` sockets: (pid, paths)."""
    tmp = tempfile.mkdtemp(prefix="vuser-bench-")
    paths = [os.path.join(tmp, f"d{i}.sock") for i in range(n)]
    if kind == "vuser":
        boot = "from vuser.cli import main; import sys; sys.exit(main())"
        if uvloop:
            boot = "import uvloop; uvloop.install(); " + boot
        argv = [sys.executable, "-c", boot]
        if profile:
            argv = [sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all",
                    "-o", profile, "-c", boot]
        argv += ["serve", *[a for p in paths for a in ("--device", f"vuser-dma@{p}")]]
        ready = n
    else:
        argv, ready = [sys.executable, str(HERE / "mmio_peers.py"), kind, *paths], 1
    log = open(os.path.join(tmp, "stderr"), "w+")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        for _ in range(ready):
            line = proc.stdout.readline()
            if not line:
                log.seek(0)
                raise RuntimeError(f"{kind} server exited before it was ready:\n{log.read()}")
        yield proc.pid, paths
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for p in [*paths, log.name]:
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(tmp)


# --- figure 1: our client, server-side cost -------------------------------------

async def cost_per_read(kind: str, n: int, uvloop: bool = False,
                        profile: str | None = None) -> tuple[float, float]:
    """(server CPU µs, client round trip µs) per 4-byte REGION_READ."""
    with server(kind, 1, uvloop=uvloop, profile=profile) as (pid, (path,)):
        client = await Client.connect(path)
        fd = sealed_memfd("bench-ram", RAM)
        try:
            await client.dma_map(0, RAM, fd=fd)   # vuser-dma serves BAR0 once bound
            for _ in range(200):
                data = await client.region_read(0, Reg.ID, 4)
            if kind == "vuser" and data != ID_BYTES:
                raise RuntimeError(f"ID read {data.hex()}")
            cpu, t = server_cpu_ns(pid), time.perf_counter()
            for _ in range(n):
                await client.region_read(0, Reg.ID, 4)
            rtt = (time.perf_counter() - t) / n * 1e6
            cpu = (server_cpu_ns(pid) - cpu) / n / 1e3
        finally:
            await client.close()
            os.close(fd)
    return cpu, rtt


# --- figure 2: a raw client, message rate -----------------------------------------

def _exchange(sock: socket.socket, conn: Connection, req) -> Reply:
    data, fds = conn.send(req)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)
    while (event := conn.next_event()) is NEED_DATA:
        conn.receive_data(sock.recv(conn.bytes_needed()))
    if not isinstance(event, Reply):
        raise RuntimeError(f"{req.command.name}: {event}")
    return event


def raw_vuser_socket(path: str, ram_fd: int) -> socket.socket:
    """A blocking socket past VERSION and a DMA_MAP of ``ram_fd`` (so vuser-dma is bound)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    conn = Connection(Role.CLIENT)
    _exchange(sock, conn, conn.request(Command.VERSION,
                                       Version(caps=Capabilities().to_json())))
    _exchange(sock, conn, conn.request(
        Command.DMA_MAP, VfioUserDmaMap(flags=3, offset=0, addr=0, size=RAM), (ram_fd,)))
    return sock


def raw_messages() -> tuple[bytes, int, bytes, int]:
    """REGION_READ of ID and REGION_WRITE of RING_LO: (request, reply size) each."""
    read = (Header(msg_id=0x7000, command=Command.REGION_READ, size=32, flags=0).pack()
            + VfioUserRegionAccess(offset=Reg.ID, region=0, count=4).pack())
    write = (Header(msg_id=0x7001, command=Command.REGION_WRITE, size=36, flags=0).pack()
             + VfioUserRegionAccess(offset=RING_LO, region=0, count=4).pack() + b"\0\x10\0\0")
    return read, 36, write, 32


def drive(socks: list[socket.socket], msgs: list[tuple[bytes, int]], rounds: int) -> float:
    """Messages per second: each round sends one message on every socket, then
    reads every reply, for each message kind in turn."""
    t = time.perf_counter()
    for _ in range(rounds):
        for req, size in msgs:
            for s in socks:
                s.send(req)
            for s in socks:
                got = s.recv(size, socket.MSG_WAITALL)
                if len(got) != size:
                    raise RuntimeError(f"short reply: {len(got)} of {size} bytes")
    return rounds * len(msgs) * len(socks) / (time.perf_counter() - t)


def rate(kind: str, devices: int, rounds: int) -> tuple[float, float]:
    """(messages/s, server CPU µs per message) for ``kind`` "vuser" or "echo"."""
    read, rsize, write, wsize = raw_messages()
    with server(kind, devices) as (pid, paths):
        fd = sealed_memfd("bench-ram", RAM)
        socks = []
        try:
            for p in paths:
                if kind == "vuser":
                    socks.append(raw_vuser_socket(p, fd))
                else:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(p)
                    socks.append(s)
            msgs = [(read, rsize), (write, wsize)] if kind == "vuser" else \
                [(read, len(read)), (write, len(write))]
            drive(socks, msgs, 100)
            cpu = server_cpu_ns(pid)
            r = drive(socks, msgs, rounds)
            cpu = (server_cpu_ns(pid) - cpu) / (rounds * 2 * devices) / 1e3
        finally:
            for s in socks:
                s.close()
            os.close(fd)
    return r, cpu


# --- the figures --------------------------------------------------------------------

def best(pairs: list[tuple[float, ...]], key: int, low: bool) -> tuple[float, ...]:
    return (min if low else max)(pairs, key=lambda p: p[key])


def figures(n: int, rounds: int, with_uvloop: bool) -> list[dict]:
    out = []
    ours, floor = [], []
    for _ in range(rounds):        # alternate: a busy moment hits both alike
        ours.append(asyncio.run(cost_per_read("vuser", n)))
        floor.append(asyncio.run(cost_per_read("floor", n)))
    (cpu, rtt), (fcpu, frtt) = best(ours, 0, True), best(floor, 0, True)
    vuser_cpu = cpu
    out.append({
        "name": "guest MMIO read round trip: vuser server cost/msg, host only",
        "value": round(cpu, 2), "unit": "µs/msg",
        "reference": "host-only floor: minimal asyncio REGION_READ server",
        "reference_value": round(fcpu, 2), "ratio": round(cpu / fcpu, 2),
        "target": "<= 1.2x", "met": cpu / fcpu <= 1.2,
        "extra": {"client round trip µs": round(rtt, 1), "floor round trip µs": round(frtt, 1),
                  "rounds": rounds, "messages per round": n,
                  "all rounds (vuser, floor) server µs": [
                      [round(a[0], 2), round(b[0], 2)] for a, b in zip(ours, floor)]},
    })
    for devices in (1, 8):
        k = max(200, n // (2 * devices))
        ours, echo = [], []
        for _ in range(rounds):
            ours.append(rate("vuser", devices, k))
            echo.append(rate("echo", devices, k))
        (r, cpu), (er, ecpu) = best(ours, 0, False), best(echo, 0, False)
        out.append({
            "name": f"host-only REGION_READ/WRITE rate, {devices} device{'s' * (devices > 1)}",
            "value": round(r), "unit": "msg/s",
            "reference": "bare Python UNIX-socket echo", "reference_value": round(er),
            "ratio": round(r / er, 2), "target": ">= 0.8x", "met": r / er >= 0.8,
            "extra": {"server µs/msg": round(cpu, 2), "echo server µs/msg": round(ecpu, 2)},
        })
    if with_uvloop:
        uv = [asyncio.run(cost_per_read("vuser", n, uvloop=True)) for _ in range(rounds)]
        ucpu, urtt = best(uv, 0, True)
        out.append({
            "name": "guest MMIO read round trip: the same on uvloop (report only)",
            "value": round(ucpu, 2), "unit": "µs/msg",
            "reference": "vuser on asyncio's default loop",
            "reference_value": round(vuser_cpu, 2), "ratio": round(ucpu / vuser_cpu, 2), "target": None, "met": None,
            "extra": {"client round trip µs": round(urtt, 1)},
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per figure")
    parser.add_argument("--uvloop", action="store_true", help="also measure vuser on uvloop")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile the vuser server (pyinstrument) instead")
    args = parser.parse_args()
    if args.profile:
        cpu, rtt = asyncio.run(cost_per_read("vuser", args.n, profile=args.profile))
        print(f"profiled {args.n} reads: server {cpu:.2f} µs/msg, round trip {rtt:.1f} µs; "
              f"report in {args.profile}")
        return
    if args.uvloop:
        import uvloop  # noqa: F401  (fail now, not inside a server)
    figs = figures(args.n, args.rounds, args.uvloop)
    if args.json:
        Path(args.json).write_text(json.dumps({"script": "bench_mmio.py", "figures": figs},
                                              indent=1, ensure_ascii=False))
    print(f"{'figure':58} {'vuser':>10} {'reference':>10} {'ratio':>6}  target")
    for f in figs:
        print(f"{f['name']:58} {f['value']:>10} {f['reference_value']:>10} {f['ratio']:>6}  "
              f"{f['target'] or '-'} ({f['unit']})")


if __name__ == "__main__":
    main()
