"""Fixtures for the host-side vuser-dma scenarios (see vdma_harness)."""

from __future__ import annotations

import pytest
from vdma_harness import GuestRam, Rig


@pytest.fixture
def ram():
    r = GuestRam()
    yield r
    r.close()


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    await r.close()
