"""Kernel-owned vIOMMU guests seen from the host: what the model did while the
guest kernel's own intel_iommu drove vuser-iommu.

Each test boots guest programs of ``guest-tests/`` (``kernel_dma_api``,
``kernel_lazy``, ``kernel_strict``, and ``kernel_sva`` on Debian sid's kernel,
the one that allows SVA) with ``launch(kernel_iommu=True)``, the
server recording a trace (``vuser serve --trace FILE``) and a control socket
that is polled during the run (the RPC behind ``vuser ctl pasids LABEL``),
then checks the model's side of what the guest reported:

- the DMA API's copies went through a nested first-stage HWPT the kernel
  built for the vuser-dma's RID (label = its BDF), and every IOVA the guest
  printed was translated by the model to the guest physical address the
  guest printed for it;
- strict and lazy invalidation differ in the VT-d invalidation descriptors
  the kernel queued: page-selective PASID-IOTLB (and device-TLB)
  invalidations per unmap when strict, a few whole-PASID flushes when lazy;
- the fault the guest kernel's handler logged (reason 0x71) is the one fault
  the model recorded for the device: the same IOVA page, no PASID, a
  first-stage entry not present;
- SVA: the process's PASID was attached to a first-stage HWPT whose root is
  the process's page table, and the copy into untouched pages went through
  page requests that the guest kernel answered with successful page group
  responses.

Marked ``guest``; skipped only when no QEMU with vfio-user-pci is found.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vuser.errors import UserError

pytestmark = [pytest.mark.guest, pytest.mark.timeout(1500)]

DEVICES = ["vuser-iommu", "vuser-dma"]
DMA_LABEL = 0x200  # the vuser-dma behind the second root port: bus 2, 00.0
PAGE = 4096
LOOP_UNMAPS = 128  # kernel_lazy.c: LOOP copies, two dma_unmap_single each


@dataclass
class KernelRun:
    result: Any
    events: list[dict[str, Any]]
    pasid_tables: list[dict[str, Any]] = field(default_factory=list)
    poll_errors: list[str] = field(default_factory=list)

    @property
    def console(self) -> str:
        return self.result.console

    def diag(self, prefix: str) -> list[str]:
        """The guest's KTAP diagnostic lines that start with ``prefix``."""
        out = []
        for line in self.console.splitlines():
            text = line.strip()
            if text.startswith("# ") and text[2:].startswith(prefix):
                out.append(text[2:])
        return out


@pytest.fixture(scope="module")
def qemu():
    from vuser.qemu.find import find_qemu
    try:
        return find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci: {e}")


def _poller(control: Path, label: int, run: KernelRun, stop: threading.Event):
    """Poll the model's PASID table of ``label`` until ``stop`` (or the server goes)."""
    from vuser.rpc.client import SyncClient

    def loop() -> None:
        deadline = time.monotonic() + 30
        while not control.exists() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        try:
            client = SyncClient(str(control))
        except OSError as e:
            run.poll_errors.append(f"connect: {e}")
            return
        try:
            while not stop.is_set():
                try:
                    run.pasid_tables.append(client.pasid_table(label))
                except OSError as e:  # not bound yet (ENOENT), or the server went
                    run.poll_errors.append(str(e))
                    if "Connection" in type(e).__name__ or "closed" in str(e).lower():
                        return
                # The SVA PASID's entry lives from its first DMA to its unbind
                # (CM=0 fetches and drops it): a short window on a busy machine.
                time.sleep(0.02)
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
    return threading.Thread(target=loop, name="pasid-poller", daemon=True)


def boot(qemu, tmp_path: Path, tests: list[str], append: tuple[str, ...] = (),
         poll: bool = False, kernel: str | None = None) -> KernelRun:
    from vuser.guest.image import build_image
    from vuser.qemu.launcher import launch
    from vuser.rpc.tracing import read_trace

    image = build_image(tests=tests, progress=False, kernel=kernel)
    tmp_path.mkdir(parents=True, exist_ok=True)
    trace = tmp_path / f"{tests[0]}.trace"
    control = tmp_path / "ctl.sock"
    server_args = ["--trace", str(trace)]
    stop = threading.Event()
    run = KernelRun(result=None, events=[])
    threads: list[threading.Thread] = []
    if poll:
        server_args += ["--control", str(control)]

    def on_ready(_info: Any) -> None:
        if poll:
            t = _poller(control, DMA_LABEL, run, stop)
            threads.append(t)
            t.start()

    try:
        run.result = launch(image, devices=DEVICES, timeout=300, kernel_iommu=True, qemu=qemu,
                            kernel_args=[f"vuser.tests={','.join(tests)}", *append],
                            extra_server_args=server_args, on_ready=on_ready)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    r = run.result
    assert r.error is None and r.exit_status == 0, (
        f"guest {tests}: {r.error or f'exit status {r.exit_status}'}\n{r.console_tail(40)}")
    run.events = read_trace(trace).events
    return run


# -- the DMA API through a first-stage table the kernel built ------------------------------

DMA_LINE = re.compile(r"dma: (\S+) src iova (0x[0-9a-f]+) phys (0x[0-9a-f]+) "
                      r"dst iova (0x[0-9a-f]+) phys (0x[0-9a-f]+) len (\d+)")


def test_dma_api_copies_go_through_the_kernels_first_stage_table(qemu, tmp_path):
    run = boot(qemu, tmp_path, ["kernel_dma_api"], poll=True)

    # The RID of the vuser-dma (requests without PASID: the DMA API's) was
    # attached to a nested HWPT: first-stage tables at a GPA the kernel chose.
    rid = [e for t in run.pasid_tables for e in t["entries"] if e["pasid"] is None]
    assert rid, f"the poller never saw the RID attached: {run.poll_errors[-3:]}"
    nested = [e for e in rid if e["stage"] == "nested"]
    assert nested, f"the RID was never on a nested HWPT: {rid[-1]}"
    last = nested[-1]
    assert last["type"] == "hwpt_nested" and last["kind"] == "first-stage", last
    assert last["pgtbl_addr"], last
    assert last["levels"] in (4, 5), last

    # Every IOVA the guest's DMA API handed out was translated by the model,
    # for label 0x200 without a PASID, to the physical page the guest printed.
    copies = [DMA_LINE.search(line) for line in run.diag("dma: ")]
    assert copies and all(copies), run.diag("dma: ")
    seen: dict[int, set[int]] = {}
    for e in run.events:
        if e["kind"] == "translate" and e["label"] == DMA_LABEL and e["pasid"] is None \
                and e["gpa"] is not None:
            seen.setdefault(e["iova"] >> 12, set()).add(e["gpa"] >> 12)
    assert seen, "the trace has no translation of label 0x200"
    checked = 0
    for m in copies:
        for iova, phys in ((int(m[2], 16), int(m[3], 16)), (int(m[4], 16), int(m[5], 16))):
            assert iova != phys, m[0]
            pages = seen.get(iova >> 12)
            assert pages is not None, f"{m[0]}: IOVA {iova:#x} never translated by the model"
            # IOVAs are reused by later mappings; the page the guest printed is among them.
            assert (phys >> 12) in pages, (
                f"{m[0]}: IOVA {iova:#x} -> {[hex(p << 12) for p in pages]}, guest says {phys:#x}")
            checked += 1
    assert checked >= 2 * len(copies)
    print(f"RID of {DMA_LABEL:#x}: {last}; {checked} IOVAs found translated to their pages")
    # No fault while the copies ran.
    assert not [e for e in run.events if e["kind"] == "fault" and e["label"] == DMA_LABEL]


# -- strict and lazy invalidation -------------------------------------------------------------

def _invalidations(run: KernelRun) -> Counter:
    """PASID-IOTLB invalidation descriptors by granularity (VT-d 6.5.2.4:
    g=2 all of a PASID, g=3 page-selective), and device-TLB ones."""
    c: Counter = Counter()
    for e in run.events:
        if e["kind"] == "inv-piotlb":
            c[f"piotlb g={e['info']['g']}"] += 1
        elif e["kind"] == "inv-devtlb" and e["label"] == DMA_LABEL:
            c["devtlb"] += 1
    return c


def test_strict_invalidates_every_unmap_lazy_batches_them(qemu, tmp_path):
    strict = boot(qemu, tmp_path / "strict", ["kernel_strict"], ("iommu.strict=1",))
    lazy = boot(qemu, tmp_path / "lazy", ["kernel_lazy"])
    for run in (strict, lazy):
        assert run.diag("loop: end"), run.console

    s, z = _invalidations(strict), _invalidations(lazy)
    print(f"strict: {dict(s)}; lazy: {dict(z)}")
    # Strict: each dma_unmap_single of the loop invalidates its page before
    # returning (page-selective PASID-IOTLB, then the device TLB: ATS is on).
    assert s["piotlb g=3"] >= LOOP_UNMAPS, s
    assert s["devtlb"] >= LOOP_UNMAPS, s
    # Lazy: unmaps are queued; the flush queue's timer flushes everything of
    # the PASID at once, a handful of times in the whole run.
    assert z["piotlb g=3"] == 0, z
    assert 1 <= z["piotlb g=2"] < LOOP_UNMAPS // 8, z
    assert z["devtlb"] < LOOP_UNMAPS // 8, z
    # And the guest saw the consequence: the stale window in lazy mode only.
    assert any("lazy mode accepts" in line for line in lazy.diag("lazy:")), lazy.console
    assert any("PAGE_FAULT, 0 of 4096" in line for line in strict.diag("IOVA ")), strict.console


# -- SVA: the process's page table, page requests answered by the guest kernel -----------------

SVA_COPY_PAGES = 64  # kernel_sva.c: LEN / 4096, the untouched destination


def test_sva_copy_uses_the_process_page_table_and_kernel_answered_page_requests(qemu, tmp_path):
    run = boot(qemu, tmp_path, ["kernel_sva"], poll=True, kernel="debian:sid")
    bound = [re.search(r"mm bound: PASID (0x[0-9a-f]+)", line) for line in run.diag("pid ")]
    assert bound and bound[0], run.console
    pasid = int(bound[0][1], 16)

    # While the mm was bound, the model had that PASID attached to a nested
    # first-stage HWPT: the kernel pointed the PASID entry at the process's
    # page table (5 levels when the guest runs with LA57).
    entries = [e for t in run.pasid_tables for e in t["entries"] if e["vpasid"] == pasid]
    assert entries, f"PASID {pasid:#x} never seen attached: {run.poll_errors[-3:]}"
    e = entries[-1]
    assert e["stage"] == "nested" and e["kind"] == "first-stage" and e["pgtbl_addr"], e
    levels = [re.search(r"process page tables: (\d) levels", line)
              for line in run.diag("process page tables")]
    assert levels and levels[0], run.console
    assert e["levels"] == int(levels[0][1]), (e["levels"], levels[0][0])
    rid = [x for t in run.pasid_tables for x in t["entries"]
           if x["pasid"] is None and x["stage"] == "nested"]
    assert rid and all(x["pgtbl_addr"] != e["pgtbl_addr"] for x in rid), (
        "the SVA PASID shares the DMA domain's table")

    # The first copy wrote 64 untouched pages: a page request each, tagged
    # with the PASID, and the guest kernel's page group response (Success).
    reqs = [x for x in run.events if x["kind"] == "page-request" and x["label"] == DMA_LABEL
            and x["pasid"] == pasid]
    resps = [x for x in run.events if x["kind"] == "page-response" and x["pasid"] == pasid
             and x["info"]["code"] == 0 and x["info"]["matched"]]
    print(f"PASID {pasid:#x}: {e}; {len(reqs)} page requests, {len(resps)} success responses")
    assert len(reqs) >= SVA_COPY_PAGES, len(reqs)
    assert len(resps) >= SVA_COPY_PAGES, len(resps)
    assert {x["info"]["prgi"] for x in resps} >= {x["info"]["prgi"] for x in reqs[:SVA_COPY_PAGES]}
    # And the copies themselves were translated with that PASID.
    assert any(x["kind"] == "translate" and x["label"] == DMA_LABEL and x["pasid"] == pasid
               for x in run.events)


# -- the fault the guest kernel logged is the one the model recorded -----------------------------

def test_the_fault_the_kernel_logged_is_the_models(qemu, tmp_path):
    from vuser.iommu.pagetable.results import FaultKind, Stage

    run = boot(qemu, tmp_path, ["kernel_isolation"])
    logged = [re.search(r"\[DMA Write NO_PASID\] Request device \[(?:0000:)?02:00\.0\] "
                        r"fault addr (0x[0-9a-f]+) \[fault reason 0x71\]", line)
              for line in run.diag("kernel log: ")]
    assert logged and logged[0], run.diag("kernel log: ")
    addr = int(logged[0][1], 16)
    faults = [e for e in run.events if e["kind"] == "fault" and e["label"] == DMA_LABEL]
    print(f"kernel: fault at {addr:#x}; model: {faults}")
    # One model fault: that IOVA's page, no PASID, a first-stage entry not
    # present, which vuser-iommu reported as SM reason 0x71.
    assert len(faults) == 1, faults
    f = faults[0]
    assert f["iova"] >> 12 == addr >> 12 and f["pasid"] is None, f
    assert f["stage"] == Stage.S1 and f["fault"] == FaultKind.PAGING_ENTRY_INV, f
