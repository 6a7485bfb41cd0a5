"""``dma_completion`` notifications: one per descriptor, from the devices'
completion observers (no polling), through our vfio-user client acting as
QEMU (``tests/e2e_host/vdma_harness.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e_host"))

from rpc_helpers import raw_connect, read_msg, request  # noqa: E402
from vdma_harness import (  # noqa: E402
    COMP, DST, PAGE, SRC, GuestRam, Rig, attach_s1, desc, eventually,
)

from vuser.cli import main  # noqa: E402
from vuser.devices.dma_layout import Opcode  # noqa: E402
from vuser.rpc import Client, ControlServer, Service  # noqa: E402
from vuser.rpc import server as server_mod  # noqa: E402

LABEL = 0x61


@pytest.fixture
async def stage(tmp_path, sockdir: str) -> AsyncIterator[SimpleNamespace]:
    """vuser-dma 0x61 with PASID 1 (SRC, DST, COMP mapped in its first stage),
    a control server over the platform, and a connected control client."""
    ram = GuestRam()
    rig = Rig(tmp_path)
    dev = await rig.add(label=LABEL)
    drv = await rig.connect(0, ram)
    await drv.setup()
    await drv.enable_pasid()
    pt = ram.page_tables()
    src, dst, comp = ram.alloc(PAGE), ram.alloc(PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, PAGE)
    pt.map(DST, dst, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, os.urandom(PAGE))
    attach_s1(rig.platform, dev, pt.root, 1)
    service = Service.for_platform(rig.platform)
    server = ControlServer(service, os.path.join(sockdir, "ctl.sock"))
    await server.start()
    ctl = await Client.connect(server.path)
    try:
        yield SimpleNamespace(ram=ram, rig=rig, dev=dev, drv=drv, pt=pt, src=src, dst=dst,
                              comp=comp, service=service, server=server, ctl=ctl)
    finally:
        await ctl.close()
        await server.close()
        service.close()
        await rig.close()
        ram.close()


def memcpy(src: int, dst: int, n: int, comp: int = COMP, pasid: int | None = 1):
    return desc(Opcode.MEMCPY, src=src, dst=dst, length=n, pasid=pasid, completion=comp)


async def completions(c: Client, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        topic, payload = await c.next_notification(timeout=5)
        assert topic == "dma_completion", (topic, payload)
        out.append(payload)
    return out


async def test_one_notification_per_descriptor(stage) -> None:
    st = stage
    assert await st.ctl.subscribe(["dma_completion"]) == ["dma_completion"]
    assert st.dev.describe()["completion_observers"] == 1
    await st.drv.run(0, memcpy(SRC, DST, 0x200),
                     memcpy(SRC, DST + 0x10_0000, 0x40),              # not in stage 1
                     desc(Opcode.NOP, completion=st.drv.completion()))  # untagged
    ok, fault, nop = await completions(st.ctl, 3)
    assert st.ram.read(st.dst, 0x200) == st.ram.read(st.src, 0x200)
    assert [(c["label"], c["queue"], c["index"]) for c in (ok, fault, nop)] == [
        (LABEL, 0, 0), (LABEL, 0, 1), (LABEL, 0, 2)]
    assert (ok["status"], ok["status_name"], ok["opcode_name"], ok["pasid"]) == (
        1, "SUCCESS", "MEMCPY", 1)
    assert (ok["src"], ok["dst"], ok["length"], ok["bytes_done"], ok["fault_addr"]) == (
        SRC, DST, 0x200, 0x200, None)
    assert (fault["status"], fault["status_name"]) == (2, "PAGE_FAULT")
    assert (fault["fault_addr"], fault["bytes_done"], fault["fault_info"]) == (
        DST + 0x10_0000, 0, 1)                   # a write, stage 1
    assert (nop["opcode_name"], nop["pasid"], nop["status_name"]) == ("NOP", None, "SUCCESS")
    assert ok["time"] <= fault["time"] <= nop["time"]
    assert all(c["halted"] is None for c in (ok, fault, nop))
    # One per descriptor: nothing more arrives.
    await asyncio.sleep(0.05)
    assert st.ctl._notes.empty()


async def test_unsubscribe_stops_delivery_and_the_observer(stage) -> None:
    st = stage
    async with await Client.connect(st.server.path) as other:
        await st.ctl.subscribe(["dma_completion", "fault"])
        await other.subscribe(["dma_completion"])
        await st.drv.run(0, memcpy(SRC, DST, 8))
        assert len(await completions(st.ctl, 1)) == len(await completions(other, 1)) == 1
        assert await st.ctl.unsubscribe(["dma_completion"]) == ["fault"]
        await st.drv.run(0, memcpy(SRC, DST, 8))
        [c] = await completions(other, 1)
        assert c["index"] == 1
        await asyncio.sleep(0.05)
        assert st.ctl._notes.empty()
        assert st.dev.describe()["completion_observers"] == 1   # other still listens
    # The other client went away: nobody listens, the device has no observer.
    await eventually(lambda: st.dev.describe()["completion_observers"] == 0,
                     "the last listener's observer removed")
    await st.drv.run(0, memcpy(SRC, DST, 8))
    await asyncio.sleep(0.05)
    assert st.ctl._notes.empty()


async def test_no_polling_task(tmp_path, sockdir: str) -> None:
    """Notifications come from observers: the server runs no task of its own,
    and nothing is sent while no descriptor ends."""
    before = asyncio.all_tasks()
    rig = Rig(tmp_path)
    await rig.add(label=LABEL)
    service = Service.for_platform(rig.platform)
    server = ControlServer(service, os.path.join(sockdir, "ctl.sock"))
    await server.start()
    try:
        assert asyncio.all_tasks() - before == set()
        async with await Client.connect(server.path) as c:
            await c.subscribe(["dma_completion"])
            await asyncio.sleep(0.1)
            assert asyncio.all_tasks() - before == {c._task}   # the client's reader only
            assert c._notes.empty()
    finally:
        await server.close()
        service.close()
        await rig.close()


async def test_a_lagging_subscriber_loses_notifications_and_is_told(stage, monkeypatch) -> None:
    """A subscriber that stops reading has notifications dropped and counted
    (the server's HIGH_WATER, made small here); the count arrives with the next
    notification that fits. A reading subscriber meanwhile loses none."""
    st = stage
    monkeypatch.setattr(server_mod, "HIGH_WATER", 4096)
    reader, writer = await raw_connect(st.server.path)
    writer.write(request(1, "subscribe", [["dma_completion"]]))
    assert await read_msg(reader) == [1, 1, None, ["dma_completion"]]
    reading = await Client.connect(st.server.path)
    got: list[dict] = []
    reading.on_notification = lambda topic, payload: got.append(payload)
    await reading.subscribe(["dma_completion"])
    # Run NOPs until the lagging subscriber has lost some.
    total = 0
    nop = desc(Opcode.NOP, completion=st.drv.completion())
    for _ in range(200):
        await st.drv.run(0, *[nop] * 60)
        total += 60
        if any(c.lost_notifications for c in st.server._conns):
            break
    else:
        raise AssertionError("no notification was ever dropped")
    assert st.dev.observer_errors == 0
    # Read what was buffered, then one more descriptor carries the loss count.
    delivered = lost = 0
    while True:
        try:
            msg = await read_msg(reader, timeout=0.3)
        except asyncio.TimeoutError:
            break
        assert msg[:2] == [2, "dma_completion"]
        delivered += 1
    await st.drv.run(0, nop)
    total += 1
    while delivered + lost < total:
        msg = await read_msg(reader)
        assert msg[0] == 2
        if msg[1] == "lost":
            lost += msg[2]["count"]
        else:
            delivered += 1
    assert lost > 0 and delivered + lost == total
    await eventually(lambda: len(got) == total, "the reading client saw every descriptor")
    assert [c["index"] for c in got] == [i % 64 for i in range(total)]   # in ring order
    writer.close()
    await reading.close()


async def test_a_device_added_later_is_observed_from_the_next_subscribe(stage) -> None:
    st = stage
    await st.ctl.subscribe(["dma_completion"])
    dev2 = await st.rig.add(label=0x62)
    drv2 = await st.rig.connect(1, st.ram)
    await drv2.setup()
    await st.ctl.subscribe(["dma_completion"])    # the device list is read at subscribe
    await drv2.run(0, desc(Opcode.NOP, completion=drv2.completion()))
    [c] = await completions(st.ctl, 1)
    assert (c["label"], c["status_name"]) == (0x62, "SUCCESS")
    assert dev2.describe()["completion_observers"] == 1


async def test_ctl_completions_follow(stage, capsys) -> None:
    st = stage
    dev2 = await st.rig.add(label=0x62)
    drv2 = await st.rig.connect(1, st.ram)
    await drv2.setup()
    follow = asyncio.ensure_future(asyncio.to_thread(
        main, ["ctl", "--socket", st.server.path, "completions", "--follow", "--count", "2",
               "--label", hex(LABEL)]))
    await eventually(lambda: st.service.hub.listening("dma_completion"), "ctl subscribed")
    await drv2.run(0, desc(Opcode.NOP, completion=drv2.completion()))  # another label
    await st.drv.run(0, memcpy(SRC, DST, 0x100), memcpy(SRC, DST + 0x10_0000, 0x40))
    assert await asyncio.wait_for(follow, 10) == 0
    captured = capsys.readouterr()
    assert "following DMA completions of label 0x61" in captured.err
    lines = captured.out.splitlines()
    assert lines == [
        f"label 0x61 q0[0] pasid 1 MEMCPY src {SRC:#x} dst {DST:#x} len 0x100: SUCCESS",
        f"label 0x61 q0[1] pasid 1 MEMCPY src {SRC:#x} dst {DST + 0x10_0000:#x} len 0x40: "
        f"PAGE_FAULT at {DST + 0x10_0000:#x} (stage 1, write) after 0x0 bytes"]
    assert dev2.describe()["completion_observers"] == 0   # ctl left: observers removed

    rc = await asyncio.to_thread(main, ["ctl", "--socket", st.server.path, "completions"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("LABEL  QUEUE")
    row = next(r for r in map(str.split, out.splitlines()) if r[:2] == ["0x61", "0"])
    assert row[6] == "2"                         # COMPLETED of queue 0
    rc = await asyncio.to_thread(main, ["ctl", "--socket", st.server.path, "--json",
                                        "completions", "--label", "0x62"])
    qs = json.loads(capsys.readouterr().out)
    assert rc == 0 and {q["label"] for q in qs} == {0x62}
    assert qs[0]["completed"] == 1
