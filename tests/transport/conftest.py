"""Transport tests share the fake device of tests/protocol (proto_helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "protocol"))

from proto_helpers import FakeBackend  # noqa: E402

from vuser.transport.server import DeviceServer  # noqa: E402


@pytest.fixture
async def served(tmp_path):
    """A ``FakeBackend`` served on a socket: ``(server, backend, path)``."""
    backend = FakeBackend()
    path = str(tmp_path / "fake.sock")
    server = DeviceServer(backend, path, name="fake")
    await server.start()
    yield server, backend, path
    await server.close()
    backend.close()
