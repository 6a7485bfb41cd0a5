"""Traces: recorded during nested DMA, decoded, counts equal to the model's."""

from __future__ import annotations

import os

import msgpack
import pytest

from rpc_helpers import DATA_IOVA, DATA_PAGES, PASID, P, Harness
from vuser.rpc import Client
from vuser.rpc.tracing import (
    FIELDS, TraceFormatError, TraceRecorder, read_trace, summarize,
)


def nested_dma_run(h: Harness) -> None:
    """Reads, writes, repeats (hits), faults and invalidations on the nested PASID."""
    ctx = h.ctx
    for rep in range(3):
        for i in range(DATA_PAGES):
            h.dev.read(PASID, DATA_IOVA + i * P + 8, 64)
        h.dev.write(PASID, DATA_IOVA + rep * P, b"w" * 100)
        h.dev.read(PASID, DATA_IOVA + P - 8, 16)          # spans two pages
        h.dev.read(PASID, DATA_IOVA + 0x200_0000, 8)      # stage-1 fault
        ctx.hwpt_invalidate(h.s1, [{"addr": DATA_IOVA, "npages": 4, "flags": 0}])
    h.dev.read(None, 0x40_0000, 8)                        # the RID (stage 2 only)
    ctx.iotlb_invalidate(h.dev_id, PASID)
    ctx.iotlb_invalidate()


async def test_trace_of_a_nested_run_matches_the_counters(harness: Harness, client: Client,
                                                          sockdir: str) -> None:
    path = os.path.join(sockdir, "run.trace")
    await client.stats_reset()
    await client.trace_start(path)
    nested_dma_run(harness)
    status = await client.trace_stop()
    stats = await client.stats()

    trace = read_trace(path)
    assert not trace.truncated and trace.footer["events"] == status["events"]
    assert trace.header["fields"] == list(FIELDS)
    s = summarize(trace.events)
    assert s["hits"] == stats["hits"]
    assert s["faults"] == stats["faults"] == 3
    assert s["walks_ok"] == stats["misses"] - stats["faults"]
    assert s["invalidations"] == stats["invalidations"]
    assert s["invalidated_entries"] == stats["invalidated_entries"]
    assert s["stages"]["S1"] + s["stages"]["S2"] == s["walks_ok"]
    assert s["stages"]["S2"] == 1
    # Every translate event carries what answered and the GPA it produced.
    ev = next(e for e in trace.events if e["kind"] == "translate" and not e["hit"]
              and e["pasid"] == PASID)
    assert ev["label"] == 0x10 and ev["gpa"] is not None and ev["stage"] == 1
    times = [e["time"] for e in trace.events]
    assert times == sorted(times)
    # Recording stopped: the model has no trace hook any more.
    assert harness.ctx._trace is None


def test_recorder_memory_is_bounded(harness: Harness, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "b.trace")
    rec = TraceRecorder(path, flush_every=16)
    harness.ctx.set_trace(rec.hook)
    for i in range(1000):
        harness.dev.read(PASID, DATA_IOVA + (i % DATA_PAGES) * P, 8)
        assert len(rec._buf) < 16  # never more than one batch in memory
    harness.ctx.set_trace(None)
    rec.stop()
    assert len(read_trace(path).events) == 1000


def test_limits_count_dropped_events(harness: Harness, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "l.trace")
    rec = TraceRecorder(path, max_events=100, flush_every=32)
    harness.ctx.set_trace(rec.hook)
    for i in range(500):
        harness.dev.read(PASID, DATA_IOVA, 8)
    harness.ctx.set_trace(None)
    st = rec.stop()
    t = read_trace(path)
    assert len(t.events) == st["events"] == 100
    assert st["dropped"] == 400 and t.footer["dropped"] == 400


def test_cut_short_trace_still_reads(harness: Harness, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "c.trace")
    rec = TraceRecorder(path, flush_every=8)
    harness.ctx.set_trace(rec.hook)
    for _ in range(50):
        harness.dev.read(PASID, DATA_IOVA, 8)
    harness.ctx.set_trace(None)
    rec.stop()
    data = open(path, "rb").read()
    cut = os.path.join(str(tmp_path), "cut.trace")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    t = read_trace(cut)
    assert t.truncated and 0 < len(t.events) < 50


def test_not_a_trace(tmp_path: object) -> None:
    p = os.path.join(str(tmp_path), "x")
    with open(p, "wb") as f:
        f.write(msgpack.packb({"format": "other"}))
    with pytest.raises(TraceFormatError):
        read_trace(p)
    with open(p, "wb") as f:
        f.write(b"\xc1garbage")
    with pytest.raises(TraceFormatError):
        read_trace(p)
    with open(p, "wb") as f:
        f.write(b"")
    with pytest.raises(TraceFormatError):
        read_trace(p)


async def test_one_trace_at_a_time_and_unwritable_path(client: Client, sockdir: str) -> None:
    from vuser.rpc import RpcCallError

    await client.trace_start(os.path.join(sockdir, "a.trace"))
    with pytest.raises(RpcCallError) as ei:
        await client.trace_start(os.path.join(sockdir, "b.trace"))
    assert ei.value.errno_name == "EBUSY"
    await client.trace_stop()
    with pytest.raises(RpcCallError) as ei:
        await client.trace_start("/nonexistent-dir/t.trace")
    assert ei.value.errno_name == "ENOENT"
