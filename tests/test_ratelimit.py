"""Issue 14 defect 6: guest-caused log lines are rate-limited and counted."""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import pytest

from vuser import ratelimit
from vuser.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_suppressed_then_a_new_interval():
    clock = Clock()
    rl = RateLimiter(burst=3, interval=5.0, clock=clock)
    assert [rl.allow("a")[0] for _ in range(5)] == [True, True, True, False, False]
    assert rl.allow("b") == (True, 0)                     # kinds are limited apart
    clock.now += 5.0
    assert rl.allow("a") == (True, 2)                     # says how many it held back
    assert rl.stats() == {"a": {"emitted": 4, "suppressed": 2},
                          "b": {"emitted": 1, "suppressed": 0}}


def test_log_says_how_many_were_suppressed(caplog, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(ratelimit, "_LIMITER", RateLimiter(burst=2, interval=1.0, clock=clock))
    logger = logging.getLogger("vuser.test.flood")
    caplog.set_level(logging.INFO, logger="vuser.test.flood")
    for i in range(1000):
        ratelimit.log(logger, logging.INFO, "bad descriptor %d", i)
    clock.now += 1.0
    ratelimit.log(logger, logging.INFO, "bad descriptor %d", 1000)
    lines = [r.getMessage() for r in caplog.records if r.name == "vuser.test.flood"]
    assert lines == ["bad descriptor 0", "bad descriptor 1",
                     "bad descriptor 1000 (998 similar lines suppressed)"]
    assert ratelimit.stats() == {"vuser.test.flood: bad descriptor %d":
                                 {"emitted": 3, "suppressed": 998}}


async def test_a_guest_flooding_dma_errors_is_limited_and_counted(tmp_path, caplog, monkeypatch):
    # A guest rings the sample device's doorbell for DMA to unmapped memory,
    # 60 times: ratelimit.BURST lines reach the log, the rest are counted, and
    # the control RPC's counters (``vuser ctl stats``) show both.
    sample = pytest.importorskip("vuser.devices.sample", reason="needs the sample device")
    from vuser.rpc import Service, render
    from vuser.transport.client import Client
    from vuser.memory.seals import sealed_memfd
    from vuser.transport.server import DeviceServer

    monkeypatch.setattr(ratelimit, "_LIMITER", RateLimiter())
    caplog.set_level(logging.INFO, logger="vuser.devices.sample")
    device = sample.SampleDevice(label="3")
    server = DeviceServer(device, str(tmp_path / "s.sock"))
    await server.start()
    ram = sealed_memfd("ram", 1 << 20)
    R = sample.SampleReg
    try:
        async with await Client.connect(server.path) as c:
            await c.dma_map(0x1000_0000, 1 << 20, fd=ram)   # binds the device
            for i in range(60):
                for off, v in ((R.DMA_ADDR_LO, 0xdead_0000), (R.DMA_ADDR_HI, 0),
                               (R.DMA_LEN, 64), (R.DOORBELL, 1)):
                    await c.region_write(0, off, struct.pack("<I", v))
                for _ in range(100):
                    if struct.unpack("<I", await c.region_read(0, R.COMPLETIONS, 4))[0] > i:
                        break
                    await asyncio.sleep(0.001)
        lines = [r for r in caplog.records if "DMA to" in r.getMessage()]
        assert len(lines) == ratelimit.BURST
        service = Service.for_platform(device.platform)
        counters = service.counters()
        service.close()
        [(key, counts)] = [(k, v) for k, v in counters["log"].items() if "DMA to" in k]
        assert counts == {"emitted": ratelimit.BURST, "suppressed": 60 - ratelimit.BURST}
        assert "SUPPRESSED" in render.counters(counters) and key in render.counters(counters)
    finally:
        os.close(ram)
        await server.close()
        device.close()
