"""Fault injection: make the next N translations of (label, PASID, range) fault.

An experimenter's tool (docs/architecture.md "Control"): ``FaultInjector`` is a rule set
that ``IoasidContext.set_inject`` installs as the DMA path's inject hook. Each
rule names a device by its label, a PASID as the guest knows it (a vPASID;
``None`` for the RID, ``ALL_PASIDS`` for any), an inclusive IOVA range, a count
and the VT-d fault reason and stage to report. A translation that overlaps a
live rule consumes one count and returns the ``Fault`` instead of walking; the
model then reports it like any other fault (counters, fault observers, trace).
The IOTLB is not consulted and not changed, so a cached page faults too.

Stage 1 (the default) is what the guest's tables would say, so a PRI-capable
device may turn it into a page request; stage 2 is a host-side fault.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import fail
from .pagetable.reasons import parse_reason
from .pagetable.results import Fault, FaultKind, Stage
from .uapi import ALL_PASIDS, U64_MAX

if TYPE_CHECKING:
    from .context import IoasidContext


@dataclass
class InjectRule:
    """One rule; ``remaining`` counts down to 0, when the rule is dropped."""

    id: int
    label: int
    pasid: int | None
    first: int
    last: int
    remaining: int
    reason: int
    stage: int
    fired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    """The rules of one context, callable as its inject hook."""

    def __init__(self, ctx: IoasidContext) -> None:
        self._ctx = ctx
        self._rules: dict[int, InjectRule] = {}
        self._next_id = 1
        #: Rules that ran out, by id: what they did (for inspection).
        self.spent = 0

    def add(self, label: int, pasid: int | None, iova: int, length: int, count: int = 1,
            reason: int | str = FaultKind.PAGING_ENTRY_INV, stage: int = Stage.S1) -> int:
        """Add a rule; returns its id. ENOENT for an unknown label, EINVAL otherwise.

        ``reason`` is a ``FaultKind`` or a VT-d scalable-mode reason, by name or
        code (``reasons.parse_reason``): 0x71, "FS_P", 7 and "PAGING_ENTRY_INV"
        are the same not-present fault."""
        self._ctx.registry.by_label(label)
        for name, v in (("iova", iova), ("length", length), ("count", count)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise fail(errno.EINVAL, f"{name} {v!r} is not a non-negative integer")
        if length == 0 or iova + length - 1 > U64_MAX:
            raise fail(errno.EINVAL, f"bad range iova={iova:#x} length={length:#x}")
        if count == 0:
            raise fail(errno.EINVAL, "count is 0")
        if pasid is not None and (not isinstance(pasid, int) or isinstance(pasid, bool)
                                  or not (pasid == ALL_PASIDS or 0 < pasid < 1 << 20)):
            raise fail(errno.EINVAL, f"PASID {pasid!r} is not 1..2^20-1, None or -1 (any)")
        if isinstance(reason, bool) or not isinstance(reason, (int, str)):
            raise fail(errno.EINVAL, f"fault reason {reason!r} is not a name or a code")
        try:
            reason = parse_reason(reason)
        except ValueError as e:
            raise fail(errno.EINVAL, str(e)) from None
        if stage not in (Stage.S1, Stage.S2):
            raise fail(errno.EINVAL, f"stage {stage!r} is not 1 or 2")
        rule = InjectRule(self._next_id, label, pasid, iova, iova + length - 1, count,
                          int(reason), int(stage))
        self._next_id += 1
        self._rules[rule.id] = rule
        self._ctx.set_inject(self)
        return rule.id

    def remove(self, rule_id: int) -> None:
        if self._rules.pop(rule_id, None) is None:
            raise fail(errno.ENOENT, f"no injection rule {rule_id!r}")
        self._sync()

    def clear(self) -> int:
        n = len(self._rules)
        self._rules.clear()
        self._sync()
        return n

    def rules(self) -> list[InjectRule]:
        return list(self._rules.values())

    def _sync(self) -> None:
        """Keep the hook installed only while rules exist (no cost otherwise)."""
        self._ctx.set_inject(self if self._rules else None)

    def __call__(self, dev_id: int, pasid: int | None, iova: int, length: int,
                 access: int) -> Fault | None:
        last = iova + length - 1
        for rule in list(self._rules.values()):
            if rule.first > last or iova > rule.last:
                continue
            try:
                dev = self._ctx.registry.by_label(rule.label)
            except Exception:  # the device went away: the rule can never match
                continue
            if dev.ctx is not self._ctx or dev.dev_id != dev_id:
                continue
            if rule.pasid is None:
                if pasid is not None:
                    continue
            elif rule.pasid != ALL_PASIDS:
                if pasid is None or self._ctx.device_ppasid(dev_id, rule.pasid) != pasid:
                    continue
            rule.remaining -= 1
            rule.fired += 1
            if rule.remaining == 0:
                del self._rules[rule.id]
                self.spent += 1
                self._sync()
            at = max(iova, rule.first)
            return Fault(rule.reason, Stage(rule.stage), at, access)
        return None
