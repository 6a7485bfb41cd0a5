"""Issue 14: a client that dies in the middle of a DMA burst (QEMU killed).

Its mappings are dropped and every fd it gave is closed, the other device of
the VM keeps serving, nothing reaches the log at ERROR level, and a new client
gets a clean, working device.
"""

from __future__ import annotations

import asyncio
import logging
import os

from vdma_harness import PAGE, desc, eventually

from vuser.devices.dma_layout import CompletionStatus, Opcode


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_client_killed_during_a_dma_burst(rig, ram, caplog):
    caplog.set_level(logging.INFO)
    await rig.add()
    await rig.add()
    victim, witness = await rig.connect(0, ram), await rig.connect(1, ram)
    # long rings: a worker runs several descriptors per turn of the event loop,
    # and the burst must outlast the turns the server takes to see the death
    await victim.setup(queues=2, ring_size=256)
    await witness.setup()
    baseline = fd_count()
    src, dst = ram.alloc(64 * PAGE), ram.alloc(64 * PAGE)
    ram.write(src, os.urandom(64 * PAGE))
    burst = [desc(Opcode.MEMCPY, src=src + i % 64 * PAGE, dst=dst + i % 64 * PAGE, length=PAGE,
                  completion=victim.completion()) for i in range(400)]
    await victim.submit(0, *burst[:200])
    await victim.submit(1, *burst[200:])
    victim.client.channel.close()   # as a killed QEMU: the socket just closes, mid-burst
    await eventually(lambda: rig.servers[0].session is None, "the server saw the death")
    await asyncio.wait_for(victim.dev.idle(), 10)
    done = sum(victim.record(d.completion).status == CompletionStatus.SUCCESS for d in burst)
    assert done < len(burst)                         # the death did cut the burst short
    assert not victim.dev.iommu.bound                # its mappings and binding are gone
    # every fd it gave is closed: the server's copies of its MSI-X eventfds
    # and both ends of its socket are gone; the rest of the process is as it was
    # (the RAM's fd stays: the witness's connection still maps it)
    assert fd_count() == baseline - len(victim.efds) - 2
    victim.close()                                   # our own copies of the eventfds
    # the other device of the VM never noticed
    s2, d2 = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(s2, b"witness!")
    rec = await witness.memcpy(0, s2, d2, 8)
    assert rec.status == CompletionStatus.SUCCESS and ram.read(d2, 8) == b"witness!"
    # a new client gets a clean device (it resets it, as QEMU does at machine reset)
    again = await rig.connect(0, ram)
    await again.client.reset()
    await again.setup()
    rec = await again.memcpy(0, s2, d2 + 8, 8)
    assert rec.status == CompletionStatus.SUCCESS and ram.read(d2 + 8, 8) == b"witness!"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
