"""Dirty tracking on stage 2 (selftest ``iommufd_dirty_tracking``)."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import DATA_GPA, MB, P, PASID, TABLES_GPA, NestedRig, Rig, expect_errno
from vuser.iommu import Access
from vuser.iommu.uapi import DirtyBitmapFlags, HwptAllocFlags

DIRTY = int(HwptAllocFlags.DIRTY_TRACKING)
NO_CLEAR = int(DirtyBitmapFlags.NO_CLEAR)


def _bits(bitmap: bytes) -> list[int]:
    v = int.from_bytes(bitmap, "little")
    return [i for i in range(len(bitmap) * 8) if v >> i & 1]


@pytest.fixture
def tracked() -> tuple[Rig, int]:
    rig = Rig()
    rig.map(64 * P, iova=0)
    hwpt = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, DIRTY)
    rig.ctx.device_attach(rig.dev_id, hwpt)
    return rig, hwpt


def test_dirty_tracking_needs_the_allocation_flag(rig: Rig) -> None:
    hwpt = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_set_dirty_tracking, hwpt, True)
    expect_errno(errno.ENOENT, rig.ctx.hwpt_set_dirty_tracking, rig.ioas, True)


def test_enable_read_bitmap_with_and_without_clear(tracked) -> None:
    rig, hwpt = tracked
    rig.dev.write(None, 3 * P + 5, b"x")
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == []  # not yet enabled
    rig.ctx.hwpt_set_dirty_tracking(hwpt, True)
    rig.dev.write(None, 3 * P + 5, b"x")            # warm IOTLB entry: still logged
    rig.dev.write(None, 9 * P - 2, b"span")          # crosses pages 8 and 9
    rig.dev.read(None, 20 * P, 16)                   # reads are not dirty
    bm = rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P, NO_CLEAR)
    assert len(bm) == 8 and _bits(bm) == [3, 8, 9]
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == [3, 8, 9]
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == []  # cleared


def test_disable_stops_logging(tracked) -> None:
    rig, hwpt = tracked
    rig.ctx.hwpt_set_dirty_tracking(hwpt, True)
    rig.dev.write(None, 0, b"a")
    rig.ctx.hwpt_set_dirty_tracking(hwpt, False)
    rig.dev.write(None, P, b"b")
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == [0]
    rig.ctx.hwpt_set_dirty_tracking(hwpt, True)   # enabling starts from clean
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == []


@pytest.mark.parametrize("page_size, iova, length, bits", [
    (2 * P, 0, 64 * P, [1, 4]),       # pages 3 and 9 -> 8 KiB pages 1 and 4
    (P // 2, 2 * P, 2 * P, [2, 3]),   # smaller than 4 KiB: every half of page 3
    (2 * MB, 0, 2 * MB, [0]),
])
def test_bitmap_page_sizes(tracked, page_size: int, iova: int, length: int, bits) -> None:
    rig, hwpt = tracked
    rig.ctx.hwpt_set_dirty_tracking(hwpt, True)
    rig.dev.write(None, 3 * P, b"x")
    rig.dev.write(None, 9 * P, b"y")
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, iova, length, page_size, NO_CLEAR)) == bits


@pytest.mark.parametrize("args, err", [
    ((0, 64 * P, 3 * P), errno.EINVAL),          # not a power of two
    ((P // 2, 64 * P, P), errno.EINVAL),         # unaligned range
    ((0, 0, P), errno.EINVAL),                   # empty
    ((P, (1 << 64) - 1, P), errno.EOVERFLOW),
])
def test_bitmap_arguments(tracked, args, err) -> None:
    rig, hwpt = tracked
    expect_errno(err, rig.ctx.hwpt_get_dirty_bitmap, hwpt, *args)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_get_dirty_bitmap, hwpt, 0, P, P, 4)


def test_unmap_drops_the_dirty_record(tracked) -> None:
    rig, hwpt = tracked
    rig.ctx.hwpt_set_dirty_tracking(hwpt, True)
    rig.dev.write(None, 3 * P, b"x")
    rig.ctx.device_detach(rig.dev_id)
    rig.ctx.ioas_unmap(rig.ioas, 0, 64 * P)
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(hwpt, 0, 64 * P, P)) == []


def test_nested_writes_and_table_updates_dirty_the_parent() -> None:
    rig = NestedRig(dirty=True)
    rig.pt.map(0, DATA_GPA + 5 * P, P)
    rig.ctx.hwpt_set_dirty_tracking(rig.parent, True)
    assert rig.ctx.write(rig.dev_id, PASID, 8, b"nested") is None
    data = _bits(rig.ctx.hwpt_get_dirty_bitmap(rig.parent, DATA_GPA, 4 * MB, P))
    tables = _bits(rig.ctx.hwpt_get_dirty_bitmap(rig.parent, TABLES_GPA, MB, P))
    assert data == [5]
    # the walk set A (and D) in four table pages: the root and three below it
    assert len(tables) == 4 and 0 in tables
    rig.ctx.translate(rig.dev_id, PASID, 8, 1, Access.READ)  # no new table writes
    assert _bits(rig.ctx.hwpt_get_dirty_bitmap(rig.parent, TABLES_GPA, MB, P)) == []
