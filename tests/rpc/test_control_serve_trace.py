"""`vuser serve --trace FILE --control PATH`: the trace started with the server is the
control service's trace (status shows it, a second one is EBUSY) and is closed with
its footer when the server stops."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from vuser.commands.serve import DeviceSpec, serve
from vuser.rpc import Client
from vuser.rpc.client import RpcCallError
from vuser.rpc.tracing import read_trace


async def test_serve_trace_is_the_control_services_trace(sockdir: str) -> None:
    dev, ctl = os.path.join(sockdir, "dma.sock"), os.path.join(sockdir, "ctl.sock")
    path = os.path.join(sockdir, "serve.trace")
    stop = asyncio.Event()
    task = asyncio.create_task(serve([DeviceSpec("vuser-dma", dev, {"label": "0x42"})],
                                     control=ctl, trace_file=path, stop=stop))
    for _ in range(200):
        if os.path.exists(ctl) or task.done():
            break
        await asyncio.sleep(0.01)
    c = await Client.connect(ctl)
    try:
        status = await c.trace_status()
        assert status["path"] == path and status["recording"]
        with pytest.raises(RpcCallError) as ei:
            await c.trace_start(os.path.join(sockdir, "other.trace"))
        assert ei.value.errno == errno.EBUSY
    finally:
        await c.close()
    stop.set()
    assert await asyncio.wait_for(task, 20) == 0
    trace = read_trace(path)
    assert not trace.truncated and trace.header["from"] == "vuser serve --trace"
