"""Fidelity row N1 (docs/iommufd-fidelity.md): ``fail_nth``, as the kernel's
``iommufd_fail_nth`` selftest: fail the n-th internal allocation of a command,
for every n until the command succeeds, and check that each injected failure
leaves the context's observable state exactly as it was before the call."""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from iommu_helpers import P, PASID, NestedRig
from vuser.iommu import IommufdError
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType, VeventqType, ViommuType

NEST = int(HwptAllocFlags.NEST_PARENT)
PASIDF = int(HwptAllocFlags.PASID)
S1 = {"flags": 0, "pgtbl_addr": 0x100000, "addr_width": 48}


def snapshot(n: NestedRig) -> Any:
    ctx = n.ctx
    objs = ctx.objects()
    state: list[Any] = [objs]
    for o in objs:
        if o["type"] == "ioas":
            state.append(("areas", o["id"], ctx.ioas_areas(o["id"]),
                          ctx.ioas_iova_ranges(o["id"]).to_dict()))
        if o["type"] == "device":
            state.append(("dev", ctx.device_info(o["id"])))
    return state


def _viommu(n: NestedRig) -> int:
    return n.ctx.viommu_alloc(n.dev_id, n.parent, int(ViommuType.VUSER_VTD))


def _map_file(n: NestedRig) -> Any:
    f = tempfile.TemporaryFile()
    f.write(bytes(4 * P))
    f.flush()
    try:
        return n.ctx.ioas_map_file(n.ioas, f.fileno(), 0, 4 * P, 1 << 40)
    finally:
        f.close()


OPS: dict[str, tuple[Callable[[NestedRig], Any], Callable[[NestedRig], Any]]] = {
    # name: (prepare (no injection), the command under injection)
    "ioas_alloc": (lambda n: None, lambda n, _: n.ctx.ioas_alloc()),
    "map": (lambda n: bytearray(2 * P), lambda n, b: n.ctx.ioas_map(n.ioas, b, 2 * P)),
    "map_file": (lambda n: None, lambda n, _: _map_file(n)),
    "copy": (lambda n: n.ctx.ioas_alloc(),
             lambda n, dst: n.ctx.ioas_copy(dst, n.ioas, 0x100000, 2 * P)),
    "hwpt_alloc_paging": (lambda n: None, lambda n, _: n.ctx.hwpt_alloc(n.dev_id, n.ioas)),
    "hwpt_alloc_nested": (lambda n: None, lambda n, _: n.ctx.hwpt_alloc(
        n.dev_id, n.parent, PASIDF, int(HwptDataType.VTD_S1), S1)),
    "attach_auto": (lambda n: n.ctx.device_bind(n.reg.register("d2")),
                    lambda n, d: n.ctx.device_attach(d, n.ioas)),
    "attach": (lambda n: None, lambda n, _: n.ctx.device_attach(n.dev_id, n.parent)),
    "replace": (lambda n: n.ctx.hwpt_alloc(n.dev_id, n.parent, PASIDF,
                                           int(HwptDataType.VTD_S1), S1),
                lambda n, h: n.ctx.device_replace(n.dev_id, h, PASID)),
    "pasid_attach": (lambda n: None, lambda n, _: n.ctx.device_attach(n.dev_id, n.s1, 200)),
    "fault_queue_alloc": (lambda n: None, lambda n, _: n.ctx.fault_queue_alloc(4)),
    "viommu_alloc": (lambda n: None, lambda n, _: _viommu(n)),
    "vdevice_alloc": (lambda n: _viommu(n), lambda n, v: n.ctx.vdevice_alloc(v, n.dev_id, 9)),
    "veventq_alloc": (lambda n: _viommu(n),
                      lambda n, v: n.ctx.veventq_alloc(v, int(VeventqType.VUSER_VTD), 4)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_N1_fail_nth_leaves_the_state_unchanged(name: str) -> None:
    prepare, op = OPS[name]
    injected = 0
    for nth in range(1, 20):
        n = NestedRig(fault=True)
        try:
            arg = prepare(n)
            before = snapshot(n)
            n.ctx.fail_nth(nth)
            try:
                op(n, arg)
            except IommufdError as e:
                assert e.errno == errno.ENOMEM, e
                assert snapshot(n) == before, f"{name}: step {nth} changed the state"
                injected += 1
                continue
            finally:
                n.ctx.fail_nth(0)
            break  # the command succeeded: nth is past its last step
        finally:
            n.ctx.close()
    else:
        pytest.fail(f"{name} never succeeded")
    assert injected >= 1, f"{name} has no injectable step"
