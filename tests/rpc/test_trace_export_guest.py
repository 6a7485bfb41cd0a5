"""A whole `vuser run --trace` exported for a trace viewer and plotted (one guest boot).

dma_nested records no faults (its last case checks that the vIOMMU recorded
none), so page_fault runs in the same guest (same devices): its stage-1 faults,
page requests and responses land on the same trace."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from chrome_trace_check import problems
from vuser.errors import UserError
from vuser.rpc.timeline import Lane
from vuser.rpc.tracing import read_trace, summarize

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def qemu_available() -> object:
    from vuser.qemu.find import find_qemu

    try:
        return find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci: {e}")


def vuser(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_dma_nested_run_exports_and_plots_its_faults_and_invalidations(
        qemu_available: object, tmp_path: object) -> None:
    d = str(tmp_path)
    trace_file, out = os.path.join(d, "run.trace"), os.path.join(d, "run.json")
    p = vuser("run", "-q", "--test", "dma_nested", "--test", "page_fault", "--trace", trace_file)
    assert p.returncode == 0, p.stderr[-2000:]
    trace = read_trace(trace_file)
    assert not trace.truncated
    s = summarize(trace.events)
    assert s["faults"] > 0 and s["invalidations"] > 0 and s["page_requests"] > 0

    p = vuser("ctl", "trace", "export", trace_file, "--format", "perfetto", "-o", out)
    assert p.returncode == 0, p.stderr
    with open(out) as f:
        doc = json.load(f)
    assert problems(doc) == []
    events = doc["traceEvents"]
    pname = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    tname = {(e["pid"], e["tid"]): f"{pname[e['pid']]} / {e['args']['name']}"
             for e in events if e["name"] == "thread_name"}
    marks = [e for e in events if e["ph"] == "i"]
    assert len(marks) == s["events"]
    # Each fault is on the lane of the label and PASID the trace gives it.
    faults = [e for e in trace.events if e["kind"] == "fault"]
    fault_marks = [e for e in marks if e["cat"] == "fault"]
    assert len(fault_marks) == s["faults"]
    assert sorted(tname[(e["pid"], e["tid"])] for e in fault_marks) == sorted(
        f"label {f['label']:#x} / {'RID' if f['pasid'] is None else 'PASID %d' % f['pasid']}"
        for f in faults)
    inval = [e for e in marks if e["cat"] == "invalidate"]
    assert len(inval) == s["invalidations"] + sum(s["invalidation_descriptors"].values())
    # The vIOMMU's PASID-selective PASID-IOTLB descriptors are on that PASID's lane.
    piotlb = [e for e in inval if e["args"]["kind"] == "inv-piotlb"]
    piotlb_pasids = [t["pasid"] for t in trace.events if t["kind"] == "inv-piotlb"]
    assert piotlb_pasids and [tname[(e["pid"], e["tid"])] for e in piotlb] == [
        f"vIOMMU (no device named) / PASID {p}" for p in piotlb_pasids]
    assert sum(e["cat"] == "page-request" for e in marks) == s["page_requests"]
    assert sum(e["cat"] == "page-response" for e in marks) == s["page_responses"]

    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("prerequisite missing: matplotlib (vuser[plot]) for the PNG")
    from vuser.rpc.plot import plot_trace

    png = os.path.join(d, "run.png")
    p = vuser("ctl", "trace", "plot", trace_file, "-o", png)
    assert p.returncode == 0 and os.path.getsize(png) > 0, p.stderr
    data = plot_trace(trace.events, os.path.join(d, "again.png"), t0=trace.header["t0"])
    drawn_faults = {lane: len(m.get("fault", [])) for lane, m in data.marks.items()
                    if m.get("fault")}
    assert sum(drawn_faults.values()) == s["faults"]
    assert set(drawn_faults) == {Lane(f["label"], f["pasid"]) for f in faults}
    assert sum(len(m.get("invalidate", [])) for m in data.marks.values()) == len(inval)
