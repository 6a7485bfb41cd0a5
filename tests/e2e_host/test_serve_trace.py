"""`vuser serve --trace FILE`: a model trace from the first message to the end,
closed with its footer on SIGTERM; the vIOMMU's invalidation descriptors are in
it, and `vuser ctl trace show` says what each was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vuser.rpc.tracing import read_trace
from vuser.transport.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "devices"))
from viommu_guest import GuestRam, VtdDriver, pasid_cache, piotlb  # noqa: E402

VUSER = [sys.executable, "-m", "vuser"]


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vuser-strace-", dir="/tmp")   # sun_path is short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(VUSER + ["serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def test_trace_from_the_start_until_sigterm(sockdir):
    sock, path = os.path.join(sockdir, "viommu.sock"), os.path.join(sockdir, "run.trace")
    proc = start("--device", f"vuser-iommu@{sock},cm=0", "--trace", path)
    ram = GuestRam()
    try:
        assert proc.stdout.readline() == f"vuser-iommu ready on {sock}\n"
        async with await Client.connect(sock) as c:
            await ram.map_into(c)
            drv = VtdDriver(c, ram)
            await drv.init()
            await drv.enable_translation()
            await drv.submit(pasid_cache(5, did=2), piotlb(5, did=2, addr=0x1000_0000, am=2))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        ram.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    trace = read_trace(path)
    assert not trace.truncated and trace.header["from"] == "vuser serve --trace"
    kinds = [e["kind"] for e in trace.events]
    assert kinds.count("inv-pasid-cache") == 1 and kinds.count("inv-piotlb") == 1
    pi = next(e for e in trace.events if e["kind"] == "inv-piotlb")
    assert (pi["pasid"], pi["iova"], pi["length"], pi["info"]) == (
        5, 0x1000_0000, 4 * 4096, {"g": 3, "did": 2})
    r = subprocess.run(VUSER + ["ctl", "trace", "show", path, "--kind", "inv-piotlb"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "PASID-IOTLB invalidation (pages) did 2, 0x10000000+4 pages" in r.stdout
    r = subprocess.run(VUSER + ["ctl", "trace", "summary", path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "PASID-IOTLB invalidation descriptors" in r.stdout


async def test_unwritable_trace_file_is_one_error_line(sockdir):
    sock = os.path.join(sockdir, "viommu.sock")
    proc = start("--device", f"vuser-iommu@{sock}", "--trace",
                 os.path.join(sockdir, "no-such-dir", "t.trace"))
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and out == ""
    assert err.count("\n") == 1 and "cannot write trace" in err
    assert not os.path.exists(sock)
