"""Python calls the vuser server makes per REGION_READ/WRITE, counted in process.

A ``DeviceServer`` for vuser-dma runs on this thread's event loop; a raw
blocking client on another thread negotiates, maps RAM (so the device is
bound) and then sends ``--n`` 4-byte REGION_READs of ID, or non-posted
4-byte REGION_WRITEs of queue 0's RING_LO, one at a time.
``sys.setprofile`` on the server thread only counts, over those messages,
the Python function calls and the C function calls (builtins and methods)
the server makes, event loop included, and prints them per message.

``--floor`` counts the same for ``mmio_peers.py floor`` (REGION_READ only:
the floor has no device to write to).

Run: ``.venv/bin/python bench/mmio_calls.py [--n N] [--floor]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import threading
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_mmio import RAM, raw_messages, raw_vuser_socket  # noqa: E402
from vuser.devices.vuser_dma import VuserDma  # noqa: E402
from vuser.memory.seals import sealed_memfd  # noqa: E402
from vuser.transport.server import DeviceServer  # noqa: E402


def count(n: int, which: str, top: int) -> tuple[float, float, list]:
    read, rsize, write, wsize = raw_messages()
    req, size = (read, rsize) if which == "read" else (write, wsize)
    counts = {"call": 0, "c_call": 0}
    where: Counter = Counter()
    start = threading.Event()

    def prof(frame, event, arg):
        if event == "call":
            counts["call"] += 1
            if top:
                where[f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)})"] += 1
        elif event == "c_call":
            counts["c_call"] += 1
            if top:
                where[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    async def main() -> None:
        tmp = tempfile.mkdtemp(prefix="vuser-calls-")
        path = os.path.join(tmp, "d.sock")
        dev = VuserDma()
        srv = DeviceServer(dev, path)
        await srv.start()
        loop = asyncio.get_running_loop()
        finished = loop.create_future()   # no polling timer while counting

        def client() -> None:
            fd = sealed_memfd("calls-ram", RAM)
            sock = raw_vuser_socket(path, fd)
            for _ in range(200):
                sock.send(req)
                sock.recv(size, socket.MSG_WAITALL)
            loop.call_soon_threadsafe(sys.setprofile, prof)
            start.wait()
            for _ in range(n):
                sock.send(req)
                if len(sock.recv(size, socket.MSG_WAITALL)) != size:
                    raise RuntimeError("short reply")
            loop.call_soon_threadsafe(sys.setprofile, None)
            loop.call_soon_threadsafe(finished.set_result, None)
            sock.close()
            os.close(fd)

        def started() -> None:
            start.set()

        t = threading.Thread(target=client)
        t.start()
        while sys.getprofile() is None:
            await asyncio.sleep(0.001)
        counts["call"] = counts["c_call"] = 0
        where.clear()
        started()
        await finished
        t.join()
        await srv.close()
        dev.close()
        os.rmdir(tmp)

    asyncio.run(main())
    return counts["call"] / n, counts["c_call"] / n, where.most_common(top)


def count_floor(n: int) -> tuple[float, float]:
    """Calls per REGION_READ of ``mmio_peers.floor`` (same client, same counting)."""
    import signal

    import mmio_peers
    read, rsize, _, _ = raw_messages()
    counts = {"call": 0, "c_call": 0}
    counting = [False]

    def prof(frame, event, arg):
        if counting[0] and event in counts:
            counts[event] += 1

    tmp = tempfile.mkdtemp(prefix="vuser-calls-")
    path = os.path.join(tmp, "floor.sock")

    def client() -> None:
        while not os.path.exists(path):
            threading.Event().wait(0.01)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        for _ in range(200):
            sock.send(read)
            sock.recv(rsize, socket.MSG_WAITALL)
        counting[0] = True
        for _ in range(n):
            sock.send(read)
            sock.recv(rsize, socket.MSG_WAITALL)
        counting[0] = False
        sock.close()
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=client)
    t.start()
    sys.setprofile(prof)
    try:
        mmio_peers.serve("floor", [path])
    finally:
        sys.setprofile(None)
    t.join()
    os.rmdir(tmp)
    return counts["call"] / n, counts["c_call"] / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--top", type=int, default=0, help="also list the N most called")
    p.add_argument("--floor", action="store_true", help="count mmio_peers.py floor instead")
    args = p.parse_args()
    if args.floor:
        py, c = count_floor(args.n)
        print(f"floor REGION_READ 4 B: {py:.1f} Python calls, {c:.1f} C calls per message")
        return
    for which in ("read", "write"):
        py, c, top = count(args.n, which, args.top)
        print(f"REGION_{which.upper()} 4 B: {py:.1f} Python calls, {c:.1f} C calls per message")
        for name, k in top:
            print(f"    {k / args.n:6.2f}  {name}")


if __name__ == "__main__":
    main()
