"""Fixtures of the ioasid-model suite."""

from __future__ import annotations

import pytest

from iommu_helpers import NestedRig, Rig


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    yield r
    r.ctx.close()


@pytest.fixture
def nested() -> NestedRig:
    r = NestedRig()
    yield r
    r.ctx.close()


@pytest.fixture
def nested_fault() -> NestedRig:
    r = NestedRig(fault=True)
    yield r
    r.ctx.close()
