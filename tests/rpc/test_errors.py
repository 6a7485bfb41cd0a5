"""Errors come back as errno responses and the connection stays usable."""

from __future__ import annotations

import errno

import pytest

from rpc_helpers import PASID, Harness, raw_connect, read_msg, request
from vuser.rpc import Client, ControlServer, RpcCallError


async def expect(client: Client, err: int, method: str, *args: object, **kw: object
                 ) -> RpcCallError:
    with pytest.raises(RpcCallError) as ei:
        await client.call(method, *args, **kw)
    e = ei.value
    assert (e.errno, e.errno_name) == (err, errno.errorcode[err]), e
    # ... and the same connection still answers.
    assert isinstance(await client.call("ioas_alloc"), int)
    return e


async def test_unknown_method(client: Client) -> None:
    e = await expect(client, errno.ENOSYS, "no_such_method")
    assert "no_such_method" in e.message


@pytest.mark.parametrize("method, args", [
    ("ioas_map", ["one", None, 4096]),               # str for an int
    ("ioas_map", [1, 5, 4096]),                      # int for bytes
    ("destroy", [True]),                             # bool is not an int
    ("translate", [1, 7, 0, 8, 1.5]),                # float access
    ("ioas_allow_iovas", [1, 5]),                    # int for a list
    ("subscribe", ["fault"]),                        # str for a list
    ("ioas_alloc", [1]),                             # too many params
    ("destroy", []),                                 # missing param
    ("pasid_table", [None]),                         # nil for an int
])
async def test_wrong_param_types(client: Client, method: str, args: list[object]) -> None:
    e = await expect(client, errno.EINVAL, method, *args)
    assert e.message


async def test_unknown_named_param(client: Client) -> None:
    e = await expect(client, errno.EINVAL, "destroy", obj_id=1, bogus=2)
    assert "bogus" in e.message


@pytest.mark.parametrize("method, args", [
    ("destroy", [999]),
    ("object_info", [12345]),
    ("ioas_map", [999, None, 4096]),
    ("hwpt_invalidate", [999, []]),
    ("fault_read", [999]),
    ("device_info", [999]),
    ("pasid_table", [0xdead]),
    ("inject_remove", [42]),
    ("s2_restore", [42]),
    ("trace_stop", []),
])
async def test_missing_object_ids(client: Client, method: str, args: list[object]) -> None:
    await expect(client, errno.ENOENT, method, *args)


async def test_model_errno_and_processed(harness: Harness, client: Client) -> None:
    await expect(client, errno.EBUSY, "destroy", harness.ioas)
    e = await expect(client, errno.EOPNOTSUPP, "hwpt_invalidate", harness.s1,
                     [{"addr": 0, "npages": 1, "flags": 0}, {"addr": 0, "npages": 1, "flags": 8}])
    assert e.extra["processed"] == 1
    await expect(client, errno.EEXIST, "ioas_map", harness.ioas, None, 4096, 0)
    await expect(client, errno.EINVAL, "subscribe", ["nonsense"])
    await expect(client, errno.EINVAL, "trace_start", "relative/path")
    await expect(client, errno.ENOMEM, "ioas_map", harness.ioas, None, 1 << 40)
    await expect(client, errno.ENOENT, "ioas_map_file", harness.ioas, "/nonexistent/x", 0, 4096)


async def test_model_state_unchanged_after_errors(harness: Harness, client: Client) -> None:
    before = harness.ctx.objects()
    for args in (["x"], [999]):
        with pytest.raises(RpcCallError):
            await client.call("destroy", *args)
    assert harness.ctx.objects() == before
    r = await client.translate(harness.dev_id, PASID, 0x7000_0000, 8, 1)
    assert r["fault"] is None


async def test_raw_error_response_shape(server: ControlServer) -> None:
    reader, writer = await raw_connect(server.path)
    writer.write(request(77, "destroy", [424242]))
    msg = await read_msg(reader)
    assert msg[0] == 1 and msg[1] == 77 and msg[3] is None
    assert msg[2]["errno"] == "ENOENT" and msg[2]["code"] == errno.ENOENT
    assert "424242" in msg[2]["message"]
    writer.write(request(78, "ioas_alloc", []))
    assert (await read_msg(reader))[:3] == [1, 78, None]
    writer.close()
