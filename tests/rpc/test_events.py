"""Subscriptions: faults, page requests and invalidations arrive as notifications."""

from __future__ import annotations

import asyncio

from rpc_helpers import DATA_IOVA, PASID, Harness
from vuser.iommu import Fault
from vuser.rpc import Client, ControlServer


async def test_fault_notification_caused_by_a_dma(harness: Harness, client: Client) -> None:
    assert await client.subscribe(["fault"]) == ["fault"]
    # The device DMAs to an IOVA its stage-1 tables do not map.
    r = harness.dma_read(DATA_IOVA + 0x100_0000)
    assert isinstance(r, Fault)
    topic, payload = await client.next_notification(timeout=5)
    assert topic == "fault"
    assert (payload["label"], payload["pasid"], payload["iova"]) == (0x10, PASID,
                                                                     DATA_IOVA + 0x100_0000)
    assert payload["stage"] == 1 and payload["reason"] == 0x07
    # A DMA that translates sends nothing.
    assert not isinstance(harness.dma_read(DATA_IOVA), Fault)
    await client.unsubscribe()
    harness.dma_read(DATA_IOVA + 0x100_0000)
    await asyncio.sleep(0.05)
    assert client._notes.empty()


async def test_only_subscribers_are_notified(harness: Harness, server: ControlServer,
                                             client: Client) -> None:
    async with await Client.connect(server.path) as quiet:
        await client.subscribe(["fault"])
        harness.dma_read(DATA_IOVA + 0x100_0000)
        assert (await client.next_notification(timeout=5))[0] == "fault"
        await asyncio.sleep(0.05)
        assert quiet._notes.empty()


async def test_page_request_notifications(harness: Harness, client: Client) -> None:
    await client.subscribe(["page_request"])
    answers: list[int] = []
    assert harness.dev.page_request(PASID, DATA_IOVA + 0x100_0000, 1, 5, True, answers.append)
    topic, ev = await client.next_notification(timeout=5)
    assert topic == "page_request" and ev["event"] == "queued"
    [rec] = ev["records"]
    assert (rec["label"], rec["pasid"], rec["grpid"]) == (0x10, PASID, 5)
    await client.fault_respond(harness.fault_q, rec["cookie"], 0)
    topic, ev = await client.next_notification(timeout=5)
    assert ev["event"] == "response" and ev["code"] == 0 and answers == [0]
    # A PASID without an IOPF-capable HWPT: refused at once.
    harness.dev.page_request(None, 0x1000, 1, 1, True)
    assert (await client.next_notification(timeout=5))[1]["event"] == "refused"


async def test_invalidation_notifications(harness: Harness, client: Client) -> None:
    await client.subscribe(["invalidate"])
    harness.dma_read(DATA_IOVA)  # cache one entry
    n = await client.hwpt_invalidate(harness.s1, [{"addr": DATA_IOVA, "npages": 1, "flags": 0}])
    assert n == 1
    topic, ev = await client.next_notification(timeout=5)
    assert topic == "invalidate" and ev["kind"] == "invalidate"
    assert ev["iova"] == DATA_IOVA and ev["count"] == 1 and ev["length"] == 4096
    # Unsubscribing removes the trace hook again (it costs every translation).
    await client.unsubscribe(["invalidate"])
    assert harness.ctx._trace is None
