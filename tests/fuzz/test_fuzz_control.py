"""Fuzz the control socket (msgpack-RPC) over the nested model of tests/rpc.

Three targets: requests to every method with hostile params (the two that
open server-side paths, ``ioas_map_file`` and ``trace_start``, get only
paths under a temporary directory), msgpack objects of any shape, and raw
bytes, each sent whole, cut short, or followed by a disconnect. After every
example: a fresh client's ``server_info`` is answered, nothing reached the
log at ERROR level, and the fd count is back to its baseline (``run_example``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import msgpack
import pytest
from fuzz_kit import COUNTS, EXAMPLES, open_fd_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rpc"))
from rpc_helpers import Harness  # noqa: E402

from vuser.rpc import Client, ControlServer  # noqa: E402

TIMEOUT = 10
PATH_METHODS = {"ioas_map_file", "trace_start"}


@pytest.fixture(scope="module")
def ctl(loop, watch, tmp_path_factory):
    d = tmp_path_factory.mktemp("ctl")
    harness = Harness()
    server = ControlServer(harness.service, str(d / "ctl.sock"))
    loop.run_until_complete(server.start())
    loop.run_until_complete(answered(server))
    yield server, harness, d
    loop.run_until_complete(server.close())
    harness.close()


async def answered(server: ControlServer) -> None:
    async with await Client.connect(server.path) as c:
        info = await asyncio.wait_for(c.server_info(), TIMEOUT)
        assert info["pid"] == os.getpid()
    for _ in range(200):                  # until the server has seen the close
        if server.clients == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{server.clients} control clients still connected")


ints = st.one_of(st.sampled_from([0, 1, -1, 7, 4096, 2**32 - 1, 2**63 - 1, 2**64 - 1, -2**63]),
                 st.integers(-2**63, 2**64 - 1))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=12),
                    st.binary(max_size=64))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), ints),
                                                 inner, max_size=5)), max_leaves=16)


@st.composite
def method_request(draw, methods: list[str], tmp: str) -> bytes:
    method = draw(st.sampled_from(methods) | st.text(max_size=16))
    if draw(st.booleans()):
        params = draw(st.lists(values, max_size=6))
    else:
        params = draw(st.dictionaries(st.text(max_size=10), values, max_size=6))
    if method in PATH_METHODS:  # never a path outside our directory
        path = os.path.join(tmp, draw(st.sampled_from(["t", "missing/x", "ram"])))
        if isinstance(params, list):
            params = ([draw(ints), path] if method == "ioas_map_file" else [path]) + params[2:]
        else:
            params["path"] = path
    rid = draw(ints | st.sampled_from([None, "x"]))
    return msgpack.packb([0, rid, method, params], use_bin_type=True)


frames = st.one_of(
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.lists(values, max_size=5).map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.binary(min_size=1, max_size=120),
    # the unhashable map key of issue 14, and a map inside a key
    st.just(b"\x94\x00\x01\xa1m\x81\x91\x01\x02"), st.just(b"\x81\x81\x01\x02\x03"),
)


async def hostile(server: ControlServer, chunks: list[bytes], end: str, cut: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, server.path)
    try:
        data = b"".join(chunks)
        if end == "cut" and len(data) > 1:
            data = data[:cut % (len(data) - 1) + 1]
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, data), TIMEOUT)
            if end == "read":                 # read what comes back, until quiet or EOF
                while True:
                    got = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 0.05)
                    if not got:
                        break
        except (BrokenPipeError, ConnectionResetError, asyncio.TimeoutError):
            pass
    finally:
        sock.close()


def run_example(loop, ctl, watch, baseline, chunks, end, cut):
    server = ctl[0]
    loop.run_until_complete(hostile(server, chunks, end, cut))
    loop.run_until_complete(answered(server))
    assert watch.take() == []
    assert open_fd_count() == baseline


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
ENDS = st.sampled_from(["read", "close", "cut"])


def test_fuzz_control_methods(loop, watch, ctl):
    server, harness, tmp = ctl
    methods = sorted(harness.service.methods)
    baseline = open_fd_count()

    @SETTINGS
    @given(reqs=st.lists(method_request(methods, str(tmp)), min_size=1, max_size=4),
           end=ENDS, cut=st.integers(0, 1 << 16))
    def run(reqs, end, cut):
        COUNTS["control: method requests"] += 1
        run_example(loop, ctl, watch, baseline, reqs, end, cut)

    run()


def test_fuzz_control_frames(loop, watch, ctl):
    baseline = open_fd_count()

    @SETTINGS
    @given(chunks=st.lists(frames, min_size=1, max_size=4), end=ENDS,
           cut=st.integers(0, 1 << 16))
    def run(chunks, end, cut):
        COUNTS["control: msgpack frames and bytes"] += 1
        run_example(loop, ctl, watch, baseline, chunks, end, cut)

    run()
