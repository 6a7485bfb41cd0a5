"""Subscriptions: model and device events fanned out to RPC clients.

Topics (notifications ``[2, topic, payload]``):

- ``fault``: every fault the DMA path returns (``Fault.to_dict()`` plus time);
- ``page_request``: page requests queued, refused or dropped, and responses
  (the model's page-request observer);
- ``invalidate``: every IOTLB invalidation (the trace event as a dict);
- ``dma_completion``: one per descriptor a DMA device ended (its completion
  observer: the ``completions()`` of ``vuser.devices.introspect``), a map:

  ``label``, ``queue``, ``index`` (ring slot), ``opcode`` and ``opcode_name``
  (nil for an unknown opcode), ``pasid`` (nil: untagged), ``status`` and
  ``status_name`` (1 SUCCESS, 2 PAGE_FAULT, 3 INVALID_DESC, 4 ABORTED; 0 NONE
  with ``halted`` INTERNAL), ``result``, ``bytes_done``, ``fault_addr`` (nil
  unless PAGE_FAULT), ``fault_info`` (bit 0 write, bit 1 stage 2), ``src``,
  ``dst``, ``length``, ``time`` (the server's monotonic clock) and
  ``halted`` (nil, or the queue error the descriptor halted its queue with:
  COMPLETION_FAULT, its record not written, or INTERNAL).

A subscriber that stops reading has its notifications dropped and counted,
then gets ``[2, "lost", {"count": N}]`` (``server``).

The hub owns the model's single trace hook: it installs it only while a
trace records or someone listens to ``invalidate`` (a trace hook costs every
translation), and hands each event to the recorder and to the subscribers.
Likewise it observes the devices' completions only while someone listens to
``dma_completion``; the devices it asks are those ``devices()`` lists at
each subscribe call. It also keeps the last ``RECENT`` faults for ``vuser
ctl faults``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from vuser.devices.introspect import CompletionSource, DeviceIntrospection
from vuser.iommu import Fault, IoasidContext, TraceEvent

TOPICS = ("fault", "page_request", "invalidate", "dma_completion")
RECENT = 256


class Subscriber(Protocol):
    def notify(self, topic: str, payload: Any) -> None: ...


class Hub:
    """Per-server event fan-out and the trace-hook owner."""

    def __init__(self, ctx: IoasidContext,
                 devices: Callable[[], Iterable[DeviceIntrospection]] | None = None) -> None:
        self.ctx = ctx
        self._devices = devices or (lambda: ())
        #: Devices whose completion observer is ours (while ``dma_completion`` has listeners).
        self._completion_sources: list[CompletionSource] = []
        self._subs: dict[str, list[Subscriber]] = {t: [] for t in TOPICS}
        self.recent_faults: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.recent_page_requests: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.fault_count = 0
        self._recorder: Callable[[TraceEvent], None] | None = None
        ctx.add_fault_observer(self._on_fault)
        ctx.add_page_request_observer(self._on_page_request)

    def close(self) -> None:
        self.ctx.remove_fault_observer(self._on_fault)
        self.ctx.remove_page_request_observer(self._on_page_request)
        self._recorder = None
        for subs in self._subs.values():
            subs.clear()
        self._sync_hook()
        self._sync_completions()

    # -- subscriptions -----------------------------------------------------------
    def subscribe(self, sub: Subscriber, topics: list[str]) -> list[str]:
        for t in topics:
            if sub not in self._subs[t]:
                self._subs[t].append(sub)
        self._sync_hook()
        self._sync_completions()
        return self.topics_of(sub)

    def unsubscribe(self, sub: Subscriber, topics: list[str] | None = None) -> list[str]:
        for t in topics if topics is not None else TOPICS:
            if sub in self._subs[t]:
                self._subs[t].remove(sub)
        self._sync_hook()
        self._sync_completions()
        return self.topics_of(sub)

    def topics_of(self, sub: Subscriber) -> list[str]:
        return [t for t in TOPICS if sub in self._subs[t]]

    def publish(self, topic: str, payload: Any) -> None:
        for sub in list(self._subs[topic]):
            sub.notify(topic, payload)

    def listening(self, topic: str) -> bool:
        return bool(self._subs[topic])

    # -- the trace hook ---------------------------------------------------------------
    def set_recorder(self, hook: Callable[[TraceEvent], None] | None) -> None:
        self._recorder = hook
        self._sync_hook()

    def _sync_hook(self) -> None:
        rec = self._recorder
        if self._subs["invalidate"]:
            self.ctx.set_trace(self._on_trace)
        else:
            self.ctx.set_trace(rec)  # the recorder directly: no extra call per event

    def _on_trace(self, ev: TraceEvent) -> None:
        if self._recorder is not None:
            self._recorder(ev)
        if ev.kind == "invalidate":
            self.publish("invalidate", ev.to_dict())

    # -- DMA completions -----------------------------------------------------------
    def _sync_completions(self) -> None:
        """Observe every device's completions while someone listens, none otherwise."""
        if self._subs["dma_completion"]:
            for dev in self._devices():
                src = dev.completions()
                if src is None or any(s is src for s in self._completion_sources):
                    continue
                src.add_completion_observer(self._on_completion)
                self._completion_sources.append(src)
        else:
            for src in self._completion_sources:
                src.remove_completion_observer(self._on_completion)
            self._completion_sources.clear()

    def _on_completion(self, rec: Any) -> None:
        if self._subs["dma_completion"]:
            self.publish("dma_completion", rec.to_dict())

    # -- observers --------------------------------------------------------------------
    def _on_fault(self, f: Fault) -> None:
        self.fault_count += 1
        d = f.to_dict()
        d["time"] = time.monotonic()
        self.recent_faults.append(d)
        if self._subs["fault"]:
            self.publish("fault", d)

    def _on_page_request(self, event: dict[str, Any]) -> None:
        d = dict(event)
        d["time"] = time.monotonic()
        self.recent_page_requests.append(d)
        if self._subs["page_request"]:
            self.publish("page_request", d)
