"""Fixtures of the control-RPC suite: a live server over a nested model."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from rpc_helpers import Harness
from vuser.rpc import Client, ControlServer


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="vuser-rpc-", dir="/tmp")  # sun_path is short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


@pytest.fixture
async def server(harness: Harness, sockdir: str) -> AsyncIterator[ControlServer]:
    srv = ControlServer(harness.service, os.path.join(sockdir, "ctl.sock"))
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: ControlServer) -> AsyncIterator[Client]:
    c = await Client.connect(server.path)
    yield c
    await c.close()
