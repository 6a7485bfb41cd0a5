"""The uAPI's flag and enum names as parameter values (``vuser.rpc.names``)."""

from __future__ import annotations

import errno

import pytest

from rpc_helpers import DATA_IOVA, PASID, Harness
from vuser.iommu.uapi import HwptAllocFlags, IoasMapFlags
from vuser.rpc import Client, ControlServer, RpcCallError
from vuser.rpc.names import ENUM_PARAMS


async def test_every_table_entry_is_a_parameter_that_lists_its_names(
        server: ControlServer, client: Client) -> None:
    methods = {m["name"]: m for m in await client.call("rpc_methods")}
    for (method, param), (kind, _prefix) in ENUM_PARAMS.items():
        p = {p["name"]: p for p in methods[method]["params"]}[param]
        assert p["names"] == list(kind.__members__), (method, param)
    assert "names" not in methods["ioas_unmap"]["params"][0]


async def test_flag_and_enum_names_in_calls(harness: Harness, server: ControlServer,
                                            client: Client) -> None:
    h, ctx = harness, harness.ctx
    ioas = await client.call("ioas_alloc")
    iova = await client.call("ioas_map", ioas, None, 0x1000, iova=0x40000,
                             flags="readable|IOMMU_IOAS_MAP_FIXED_IOVA")
    assert iova == 0x40000
    assert [a["prot"] for a in ctx.ioas_areas(ioas)] == [int(IoasMapFlags.READABLE)]
    dev2 = await client.call("device_bind", h.other.label)
    hwpt = await client.call("hwpt_alloc", dev2, ioas, flags="NEST_PARENT|PASID")
    same = await client.call("hwpt_alloc", dev2, ioas,
                             int(HwptAllocFlags.NEST_PARENT | HwptAllocFlags.PASID))
    shown = {k: v for k, v in ctx.object_info(hwpt).items() if k != "id"}
    assert shown == {k: v for k, v in ctx.object_info(same).items() if k != "id"}
    viommu = await client.call("viommu_alloc", dev2, hwpt, viommu_type="VUSER_VTD")
    assert ctx.object_info(viommu)["type"] == "viommu"
    # access: the DMA request's attributes (pagetable.Access), by name
    tr = await client.call("translate", h.dev_id, PASID, DATA_IOVA, 8, access="write")
    assert tr["fault"] is None
    assert await client.call("translate", h.dev_id, PASID, DATA_IOVA, 8, "READ|WRITE") == tr


@pytest.mark.parametrize("method, args, message", [
    ("hwpt_alloc", {"dev_id": 1, "pt_id": 2, "flags": "NEST_PARENT|NESTED"},
     "hwpt_alloc: param 'flags' has no flag 'NESTED' (valid: NEST_PARENT, DIRTY_TRACKING, "
     "FAULT_ID_VALID, PASID, |-joined, or a number)"),
    ("viommu_alloc", {"dev_id": 1, "hwpt_id": 2, "viommu_type": "VTD"},
     "viommu_alloc: param 'viommu_type' has no name 'VTD' (valid: DEFAULT, ARM_SMMUV3, "
     "TEGRA241_CMDQV, VUSER_VTD, or a number)"),
    ("ioas_option", {"option_id": "HUGE_PAGES", "op": "GET|SET", "object_id": 1},
     "ioas_option: param 'op' takes one name, not 'GET|SET'"),
    ("translate", {"dev_id": 1, "pasid": None, "iova": 0, "length": 8, "access": "rw"},
     "translate: param 'access' has no flag 'rw' (valid: READ, WRITE, EXEC, PRIV, |-joined, "
     "or a number)"),
    ("ioas_unmap", {"ioas_id": "READABLE", "iova": 0, "length": 1},
     "ioas_unmap: param 'ioas_id' must be int, not str"),  # not a named parameter
])
async def test_a_bad_name_is_einval_naming_the_valid_ones(
        server: ControlServer, client: Client, method: str, args: dict, message: str) -> None:
    with pytest.raises(RpcCallError) as ei:
        await client.call(method, **args)
    assert ei.value.errno == errno.EINVAL
    assert ei.value.strerror.endswith(message), ei.value.strerror
    assert await client.call("ioas_alloc") > 0  # still serving
