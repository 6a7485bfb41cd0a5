"""``vuser-dma``: a PASID DMA engine with ATS and PRI (docs/vuser-dma.md).

A PCIe endpoint with descriptor rings in guest memory. The layouts are in
``dma_layout``, descriptor execution (translation, device TLB, PRI) in
``dma_engine``; this module holds the function: config space, BAR0
registers, queues and their workers, interrupts.

- A doorbell write returns at once; the queue's worker (an asyncio task)
  fetches descriptors HEAD..TAIL through the model (untagged), runs each,
  writes its completion record, advances HEAD and raises the queue's MSI-X
  vector when the descriptor asks for it.
- Bad guest input never raises: a bad descriptor completes INVALID_DESC; a
  bad TAIL, ring or completion address halts the queue with ``Q_ERROR`` and
  raises the error vector (the last one); the other queues and devices go on.
- The device is model-backed: BAR accesses are refused until it is bound
  (its connection mapped guest RAM with an fd), and it never falls back to
  DMA_READ/DMA_WRITE messages: DMA to memory QEMU mapped without an fd faults
  like any unmapped GPA (stage 2).
- Completion observers (``add_completion_observer``) hear of every descriptor
  that ends, one ``DmaCompletion`` each, synchronously; a failing observer is
  logged and never disturbs the device (docs/vuser-dma.md, "Completion
  observers").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vuser import ratelimit
from vuser.errors import UserError
from vuser.iommu import Fault, IommufdError
from vuser.pci.bar import Bar
from vuser.pci.caps_ext import Ats, Pasid, Pri, PriStatus, Vsec
from vuser.pci.caps_std import PciExpress, PowerManagement, VendorSpecific
from vuser.pci.region import Register, RegisterFile

from .base import PciDevice
from .devtlb import DeviceTlb
from .dma_engine import DmaEngine, Outcome, scatter
from .dma_layout import (
    QUEUE_STRIDE, VDMA_DEVICE_ID, VDMA_ID, VDMA_VERSION, Cap, CompletionStatus, Ctrl,
    DescFlags, DescPasid, Descriptor, DevtlbCtrl, Opcode, QCtrl, QStatus, QueueError,
    QueueReg, Reg, Status, queue_reg,
)
from .introspect import QueueState, flat_counters
from .platform import Platform

log = logging.getLogger(__name__)

__all__ = ["VuserDma", "DmaCompletion", "CompletionObserver"]

BAR0_SIZE = 0x1000
MAX_QUEUES = (BAR0_SIZE - 0x100) // QUEUE_STRIDE
#: x86 interrupt address window: DMA there would be an MSI (IOMMU_RESV_MSI).
X86_MSI_WINDOW = (0xFEE0_0000, 0xFEEF_FFFF)
#: Input addresses the engine can emit (48-bit, the 4-level first stage).
APERTURE = (0, (1 << 48) - 1)
_F_IRQ, _F_COMPLETION = int(DescFlags.IRQ), int(DescFlags.COMPLETION)
_F_BLOCK, _F_RID = int(DescFlags.BLOCK_ON_FAULT), int(DescFlags.COMPLETION_RID)
#: Descriptors a queue's worker runs before it lets the event loop run others.
_STEPS_PER_TURN = 16
_CTRL_ENABLE, _QCTRL_ENABLE = Ctrl.ENABLE.mask, QCtrl.ENABLE.mask


def _int_option(name: str, value: int | str | None, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    try:
        v = int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise UserError(f"vuser-dma: {name}={value!r} is not an integer") from None
    if not lo <= v <= hi:
        raise UserError(f"vuser-dma: {name}={v} is not in {lo}..{hi}")
    return v


@dataclass(frozen=True, slots=True)
class DmaCompletion:
    """One descriptor that ended, as completion observers see it.

    The fields are the completion record's (docs/vuser-dma.md) plus where the
    descriptor came from. ``halted`` is set when the descriptor ended by
    halting its queue: COMPLETION_FAULT (it ran, with ``status``, but its
    record could not be written and HEAD stays on it) or INTERNAL (a vuser
    bug stopped it; ``status`` is NONE).
    """

    label: int                    # the device label (stream id)
    queue: int
    index: int                    # ring slot (HEAD when it was fetched)
    opcode: int                   # the descriptor's opcode byte (maybe unknown: INVALID_DESC)
    pasid: int | None             # the PASID it ran with; None: untagged
    status: CompletionStatus
    result: int                   # COMPARE: 0 equal, 1 different
    bytes_done: int
    fault_addr: int | None        # PAGE_FAULT only: the faulting address
    fault_info: int               # FaultInfo bits (write, stage 2)
    src: int
    dst: int
    length: int
    time: float                   # time.monotonic() when it ended
    halted: QueueError | None = None

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly form: codes as ints, with their names beside them."""
        op = self.opcode
        return {
            "label": self.label, "queue": self.queue, "index": self.index,
            "opcode": op, "opcode_name": Opcode(op).name if op in _OPCODE_VALUES else None,
            "pasid": self.pasid, "status": int(self.status), "status_name": self.status.name,
            "result": self.result, "bytes_done": self.bytes_done, "fault_addr": self.fault_addr,
            "fault_info": self.fault_info, "src": self.src, "dst": self.dst,
            "length": self.length, "time": self.time,
            "halted": self.halted.name if self.halted is not None else None,
        }


CompletionObserver = Callable[[DmaCompletion], None]
_OPCODE_VALUES = frozenset(int(o) for o in Opcode)


class _Queue:
    """One descriptor ring and its worker."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.reset()

    def reset(self) -> None:
        self.ring_lo = self.ring_hi = self.ring_size = 0
        self.head = self.tail = 0
        self.set_ctrl(0)
        self.error = QueueError.NONE
        self.halted = False
        self.completed = 0
        self.task: asyncio.Task[None] | None = None
        #: The descriptor being run and its PASID (for an ABORTED record).
        self.current: tuple[Descriptor, int | None] | None = None
        self.started = self.finished = 0     # descriptors fetched / retired

    def set_ctrl(self, value: int) -> None:
        """Store Q_CTRL; ``enabled`` is its ENABLE bit, a plain attribute that
        changes only here (read by every RING_*/Q_CTRL write)."""
        self.ctrl = value
        self.enabled = bool(QCtrl.ENABLE.get(value))

    @property
    def ring(self) -> int:
        return (self.ring_hi << 32) | self.ring_lo

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def status(self) -> int:
        return QStatus.pack(ENABLED=int(self.enabled), BUSY=int(self.busy),
                            HALTED=int(self.halted))

    def state(self) -> QueueState:
        return QueueState(queue=self.index, ring=self.ring, size=self.ring_size,
                          head=self.head, tail=self.tail, enabled=self.enabled,
                          busy=self.busy, halted=self.halted, error=int(self.error),
                          completed=self.completed)


class VuserDma(PciDevice):
    """vendor 0x5655, device 0x0002. Options: ``label``, ``group``, ``queues``
    (1..60, default 4), ``ring_log2`` (largest ring, 1..15, default 12),
    ``devtlb`` (device-TLB entries, default 64)."""

    DEVICE_ID = VDMA_DEVICE_ID
    CLASS_CODE = 0x088000
    REVISION = 0x01
    INTERRUPT_PIN = 0
    REQUIRE_BIND = True
    MESSAGE_DMA_FALLBACK = False

    def __init__(self, *, platform: Platform | None = None, label: int | str | None = None,
                 group: str | None = None, queues: int | str | None = None,
                 ring_log2: int | str | None = None, devtlb: int | str | None = None) -> None:
        super().__init__()
        self.nqueues = _int_option("queues", queues, 4, 1, MAX_QUEUES)
        self.ring_log2 = _int_option("ring_log2", ring_log2, 12, 0, 15)
        tlb_entries = _int_option("devtlb", devtlb, 64, 1, 1 << 16)
        want_label = None if label is None else _int_option("label", label, 0, 0, (1 << 32) - 1)
        self.add_capability(PowerManagement())
        self.msix = self.add_msix(bar=4, vectors=self.nqueues + 1, table_offset=0,
                                  pba_offset=0x800)
        self.add_capability(PciExpress(ee_tlp_prefix=True))
        self.pasid_cap = Pasid(width=20)
        self.ats_cap = Ats()
        self.pri_cap = Pri()
        for cap in (self.pasid_cap, self.ats_cap, self.pri_cap):
            self.add_capability(cap)
        own = platform is None
        try:
            self.join_platform(platform or Platform(), label=want_label, group=group,
                               name="vuser-dma", aperture=APERTURE, reserved=[X86_MSI_WINDOW])
        except IommufdError as e:
            raise UserError(f"vuser-dma: {e.msg}") from None
        self._own_platform = own
        self.label = self.iommu.label
        self.add_capability(VendorSpecific(self.label))
        self.add_capability(Vsec(self.label))

        self.devtlb = DeviceTlb(tlb_entries)
        self.iommu.devtlb_invalidate = self.devtlb.invalidate
        self.engine = DmaEngine(self.iommu, self.devtlb, pri=_PriPort(self))
        self.queues = [_Queue(q) for q in range(self.nqueues)]
        self.ctrl = 0
        self.int_status = 0
        self._progress: list[asyncio.Future[None]] = []
        self._completion_observers: list[CompletionObserver] = []
        self._failed_observers: list[CompletionObserver] = []   # failure already logged
        #: Exceptions completion observers raised (logged, then swallowed).
        self.observer_errors = 0
        self.regs = RegisterFile(BAR0_SIZE, self._registers())
        self.add_bar(0, Bar.mem32(BAR0_SIZE), self.regs)
        self.config.add_write_hook(self.ats_cap.field_offset("ctl"), 2, self._caps_written)
        self.config.add_write_hook(self.pasid_cap.field_offset("ctl"), 2, self._caps_written)

    # -- capabilities ----------------------------------------------------------

    def _ats_enabled(self) -> bool:
        return self.ats_cap.enabled(self.config)

    def _caps_written(self, _offset: int = 0, _count: int = 0) -> None:
        """PASID or ATS control written (or reset): tell the engine."""
        self.engine.pasid_on = self.pasid_cap.enabled(self.config)
        self.engine.ats_on = self._ats_enabled()
        if not self.engine.ats_on:
            self.devtlb.flush()   # translations die with ATS (PCIe Base 6.0 §10.5.1.3)

    # -- registers -------------------------------------------------------------

    def _registers(self) -> list[Register]:
        cap = Cap.pack(NQUEUES=self.nqueues, PASID=1, ATS=1, PRI=1,
                       MAX_RING_LOG2=self.ring_log2)
        regs = [
            Register(Reg.ID, "ID", VDMA_ID, wmask=0),
            Register(Reg.VERSION, "VERSION", VDMA_VERSION, wmask=0),
            Register(Reg.CAP, "CAP", cap, wmask=0),
            Register(Reg.LABEL, "LABEL", self.label, wmask=0),
            Register(Reg.CTRL, "CTRL", wmask=0, read=lambda: self.ctrl, write=self._ctrl_written),
            Register(Reg.STATUS, "STATUS", wmask=0, read=self._status),
            Register(Reg.INT_STATUS, "INT_STATUS", wmask=0, read=lambda: self.int_status,
                     write=self._int_status_written),
            Register(Reg.DEVTLB_CTRL, "DEVTLB_CTRL", wmask=0, read=lambda: 0,
                     write=self._devtlb_ctrl_written),
        ]
        for q in range(self.nqueues):
            regs += self._queue_registers(q)
        return regs

    def _queue_registers(self, n: int) -> list[Register]:
        def reg(r: QueueReg, read: Any, write: Any = None) -> Register:
            return Register(queue_reg(n, r), f"Q{n}_{r.name}", wmask=0, read=read, write=write)

        q = self.queues[n]

        def ring(attr: str) -> Any:
            def write(v: int) -> None:
                if not q.enabled:
                    setattr(q, attr, v)
            return write

        def tail(v: int) -> None:
            q.tail = v

        return [
            reg(QueueReg.RING_LO, lambda: q.ring_lo, ring("ring_lo")),
            reg(QueueReg.RING_HI, lambda: q.ring_hi, ring("ring_hi")),
            reg(QueueReg.RING_SIZE, lambda: q.ring_size, ring("ring_size")),
            reg(QueueReg.HEAD, lambda: q.head),
            reg(QueueReg.TAIL, lambda: q.tail, tail),
            reg(QueueReg.DOORBELL, lambda: 0, lambda _v: self._kick(q)),
            reg(QueueReg.Q_CTRL, lambda: q.ctrl, lambda v: self._q_ctrl_written(q, v)),
            reg(QueueReg.Q_STATUS, q.status),
            reg(QueueReg.Q_ERROR, lambda: int(q.error)),
            reg(QueueReg.COMPLETED, lambda: q.completed),
        ]

    def _status(self) -> int:
        return Status.pack(ENABLED=int(self.enabled),
                           ERROR=int(any(q.halted for q in self.queues)))

    @property
    def enabled(self) -> bool:
        return bool(Ctrl.ENABLE.get(self.ctrl))

    def _ctrl_written(self, value: int) -> None:
        if Ctrl.RESET.get(value):
            self._device_reset()
            return
        was = self.enabled
        self.ctrl = value & Ctrl.ENABLE.mask
        if was and not self.enabled:
            for q in self.queues:
                self._stop(q, abort=True)
        elif self.enabled and not was:
            for q in self.queues:
                self._kick(q)

    def _int_status_written(self, value: int) -> None:
        self.int_status &= ~value

    def _devtlb_ctrl_written(self, value: int) -> None:
        if DevtlbCtrl.FLUSH.get(value):
            self.devtlb.flush()

    def _q_ctrl_written(self, q: _Queue, value: int) -> None:
        was = q.enabled
        q.set_ctrl(value & (QCtrl.ENABLE.mask | QCtrl.VECTOR.mask | QCtrl.IRQ_ENABLE.mask))
        if was and not q.enabled:
            self._stop(q, abort=True)
            q.halted = False
        elif q.enabled and not was:
            q.head = q.tail = q.completed = 0
            q.error, q.halted = QueueError.NONE, False
            size = q.ring_size
            if size < 1 or size > 1 << self.ring_log2 or size & (size - 1):
                self._halt(q, QueueError.RING_SIZE)

    # -- queues ------------------------------------------------------------------

    def _kick(self, q: _Queue) -> None:
        """A doorbell: start the queue's worker unless it runs or may not run."""
        if not (self.enabled and q.enabled) or q.halted or q.busy:
            return
        q.task = self.spawn(self._worker(q), name=f"vuser-dma-{self.label:#x}-q{q.index}")

    def _halt(self, q: _Queue, error: QueueError) -> None:
        q.halted, q.error = True, error
        ratelimit.log(log, logging.INFO, "vuser-dma %#x: queue %d halted: %s", self.label,
                      q.index, error.name)
        self._notify_progress()
        self.raise_irq(self.nqueues)   # the error vector

    def _stop(self, q: _Queue, *, abort: bool) -> None:
        """Cancel the worker; with ``abort`` the running descriptor completes ABORTED."""
        task, q.task = q.task, None
        if task is not None and not task.done():
            task.cancel()
        cur, q.current = q.current, None
        if cur is not None and abort:
            d, pasid = cur
            out = Outcome(CompletionStatus.ABORTED)
            if d.flags & DescFlags.COMPLETION:
                v = self.engine.translate(self._completion_space(d, pasid), d.completion, 32, 2)
                if v.__class__ is not Fault:
                    scatter(v, out.record())  # type: ignore[arg-type]
            index = q.head
            self._retire(q)
            self._completed(q, index, d, pasid, out)
        self._notify_progress()

    def _retire(self, q: _Queue) -> None:
        q.head = (q.head + 1) % max(q.ring_size, 1)
        q.completed = (q.completed + 1) & 0xFFFF_FFFF
        q.finished += 1

    async def _worker(self, q: _Queue) -> None:
        try:
            ran = 0
            while self.ctrl & _CTRL_ENABLE and q.ctrl & _QCTRL_ENABLE and not q.halted \
                    and q.head != q.tail:
                r = self._step(q)
                if r.__class__ is not bool:
                    r = await r  # type: ignore[misc]
                if not r:
                    return
                ran += 1
                if ran >= _STEPS_PER_TURN:
                    ran = 0
                    await asyncio.sleep(0)   # other queues, devices and messages get a turn
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("vuser-dma %#x: queue %d failed", self.label, q.index)
            cur, q.current = q.current, None
            self._halt(q, QueueError.INTERNAL)
            if cur is not None:
                self._completed(q, q.head, cur[0], cur[1], Outcome(CompletionStatus.NONE),
                                QueueError.INTERNAL)
        finally:
            if q.task is asyncio.current_task():
                q.task = None

    def _step(self, q: _Queue) -> bool | Awaitable[bool]:
        """Run the descriptor at HEAD; False when the queue halted.

        Everything that needs no waiting happens here, synchronously; a
        descriptor that must wait (DRAIN, a page request) returns an
        awaitable that finishes the step.
        """
        if not self.bus_master:
            self._halt(q, QueueError.BUS_MASTER)
            return False
        if q.tail >= q.ring_size:
            self._halt(q, QueueError.TAIL)
            return False
        d = self.engine.fetch((q.ring_hi << 32 | q.ring_lo) + q.head * Descriptor.SIZE)
        if d.__class__ is Fault:
            self._halt(q, QueueError.RING_FAULT)
            return False
        assert isinstance(d, Descriptor)
        checked = self.engine.check(d)
        if checked.__class__ is Outcome:
            out, pasid = checked, self._record_pasid(d)
        else:
            pasid = checked  # type: ignore[assignment]
        q.current = (d, pasid)
        q.started += 1
        if checked.__class__ is not Outcome:
            out = self.engine.start(d, pasid, lambda: self._drain(q))  # type: ignore[assignment]
            if out.__class__ is not Outcome:
                return self._step_later(q, d, pasid, out)  # type: ignore[arg-type]
        return self._step_end(q, d, pasid, out)  # type: ignore[arg-type]

    async def _step_later(self, q: _Queue, d: Descriptor, pasid: int | None,
                          running: Awaitable[Outcome]) -> bool:
        r = self._step_end(q, d, pasid, await running)
        return r if r.__class__ is bool else await r  # type: ignore[return-value, misc]

    def _step_end(self, q: _Queue, d: Descriptor, pasid: int | None,
                  out: Outcome) -> bool | Awaitable[bool]:
        """Write the completion record, retire the descriptor, interrupt."""
        flags = d.flags
        if flags & _F_COMPLETION:
            f = self.engine.store_record(None if flags & _F_RID else pasid, d.completion, out,
                                         bool(flags & _F_BLOCK))
            if f is not None and f.__class__ is not Fault:
                return self._record_later(q, d, pasid, out, f)  # type: ignore[arg-type]
            if f is not None:
                return self._record_fault(q, d, pasid, out)
        return self._retired(q, d, pasid, out)

    async def _record_later(self, q: _Queue, d: Descriptor, pasid: int | None, out: Outcome,
                            storing: Awaitable[Fault | None]) -> bool:
        if await storing is not None:
            return self._record_fault(q, d, pasid, out)
        return self._retired(q, d, pasid, out)

    def _record_fault(self, q: _Queue, d: Descriptor, pasid: int | None, out: Outcome) -> bool:
        q.current = None
        self._halt(q, QueueError.COMPLETION_FAULT)
        self._completed(q, q.head, d, pasid, out, QueueError.COMPLETION_FAULT)
        return False

    def _retired(self, q: _Queue, d: Descriptor, pasid: int | None, out: Outcome) -> bool:
        q.current = None
        index = q.head
        q.head = (index + 1) % max(q.ring_size, 1)     # _retire, inline on this hot path
        q.completed = (q.completed + 1) & 0xFFFF_FFFF
        q.finished += 1
        if self._completion_observers:
            self._completed(q, index, d, pasid, out)
        if d.flags & _F_IRQ:
            self.int_status |= 1 << q.index
            if QCtrl.IRQ_ENABLE.get(q.ctrl):
                self.raise_irq(QCtrl.VECTOR.get(q.ctrl))
        if self._progress:
            self._notify_progress()
        return True

    @staticmethod
    def _completion_space(d: Descriptor, pasid: int | None) -> int | None:
        return None if d.flags & _F_RID else pasid

    def _record_pasid(self, d: Descriptor) -> int | None:
        """The address space of an invalid descriptor's completion record."""
        if DescPasid.VALID.get(d.pasid) and self.pasid_cap.enabled(self.config) \
                and not d.pasid & ~(DescPasid.VALID.mask | DescPasid.PASID.mask):
            return DescPasid.PASID.get(d.pasid)
        return None

    # -- completion observers -------------------------------------------------------

    def add_completion_observer(self, cb: CompletionObserver) -> None:
        """Call ``cb(DmaCompletion)`` once for every descriptor that ends from now on.

        Synchronous, from the queue's worker; an exception in ``cb`` is logged
        (the first one of each observer with its traceback) and counted in
        ``observer_errors``, and the descriptor and queue go on.
        """
        if cb not in self._completion_observers:
            self._completion_observers.append(cb)

    def remove_completion_observer(self, cb: CompletionObserver) -> None:
        """Stop calling ``cb`` (nothing happens if it was not added)."""
        if cb in self._completion_observers:
            self._completion_observers.remove(cb)
        if cb in self._failed_observers:
            self._failed_observers.remove(cb)

    def _completed(self, q: _Queue, index: int, d: Descriptor, pasid: int | None,
                   out: Outcome, halted: QueueError | None = None) -> None:
        """Tell the completion observers that descriptor ``index`` of ``q`` ended."""
        if not self._completion_observers:
            return
        failed = out.status == CompletionStatus.PAGE_FAULT
        rec = DmaCompletion(self.label, q.index, index, d.opcode, pasid, out.status, out.result,
                            out.bytes_done, out.fault_addr if failed else None, out.fault_info,
                            d.src, d.dst, d.length, time.monotonic(), halted)
        for cb in list(self._completion_observers):
            try:
                cb(rec)
            except Exception:
                self.observer_errors += 1
                if cb in self._failed_observers:
                    log.debug("vuser-dma %#x: completion observer %r failed again",
                              self.label, cb)
                else:
                    self._failed_observers.append(cb)
                    log.exception("vuser-dma %#x: completion observer %r failed "
                                  "(ignored; later failures are counted)", self.label, cb)

    # -- DRAIN ------------------------------------------------------------------

    def _notify_progress(self) -> None:
        waiters, self._progress = self._progress, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _drain(self, me: _Queue) -> None:
        """Wait for the non-DRAIN descriptors other queues have in flight now."""
        targets = [(q, q.started) for q in self.queues
                   if q is not me and q.current is not None
                   and q.current[0].opcode != Opcode.DRAIN]
        loop = asyncio.get_running_loop()
        while True:
            pending = [q for q, seq in targets
                       if q.finished < seq and q.busy and not q.halted]
            if not pending:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._progress.append(fut)
            await fut

    # -- lifetimes ----------------------------------------------------------------

    def _device_reset(self) -> None:
        for q in self.queues:
            self._stop(q, abort=False)
            q.reset()
        self.ctrl = self.int_status = 0
        self.devtlb.flush()

    def on_reset(self) -> None:
        """DEVICE_RESET: queues stopped without records, registers to defaults."""
        self._device_reset()
        self._caps_written()

    def client_disconnected(self) -> None:
        super().client_disconnected()
        for q in self.queues:
            self._stop(q, abort=False)
        self.devtlb.flush()

    def close(self) -> None:
        self._completion_observers.clear()
        super().close()

    # -- introspection (``DeviceIntrospection``) --------------------------------------
    def describe(self) -> dict[str, Any]:
        """For the control RPC: queues, device TLB, PRI counters."""
        return {"label": self.label, "enabled": self.enabled, "int_status": self.int_status,
                "queues": [q.state().to_dict() for q in self.queues],
                "ats": self._ats_enabled(), "engine": self.engine.stats(),
                "completion_observers": len(self._completion_observers),
                "observer_errors": self.observer_errors}

    def counters(self) -> dict[str, int]:
        """The engine's PRI and device-TLB counters, and each queue's completions."""
        out = flat_counters("", self.engine.stats())
        out.update({f"queue{q.index}_completed": q.completed for q in self.queues})
        return out

    def dma_queues(self) -> list[QueueState]:
        return [q.state() for q in self.queues]

    def completions(self) -> VuserDma:
        return self


class _PriPort:
    """The PRI capability of a ``VuserDma``, for the engine."""

    def __init__(self, dev: VuserDma) -> None:
        self.dev = dev

    def enabled(self) -> bool:
        return self.dev.pri_cap.enabled(self.dev.config)

    def allocation(self) -> int:
        return self.dev.pri_cap.read_field(self.dev.config, "allocation")

    def response_failure(self) -> None:
        cap, config = self.dev.pri_cap, self.dev.config
        cap.poke_field(config, "status",
                       PriStatus.RESPONSE_FAILURE.put(cap.read_field(config, "status"), 1))

