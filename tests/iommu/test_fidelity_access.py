"""Fidelity rows A1-A5 (docs/iommufd-fidelity.md): access objects, as the
kernel selftest's access_pin, access_pin_unmap and access_rw."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import P, Rig, expect_errno
from vuser.iommu.uapi import IoasMapFlags

R = int(IoasMapFlags.READABLE)


def test_A1_pin_needs_an_unmap_callback_and_a_mapped_range(rig: Rig) -> None:
    rig.map(2 * P, iova=0)
    rw_only = rig.ctx.access_create(rig.ioas)
    expect_errno(errno.EINVAL, rig.ctx.access_pin_pages, rw_only, 0, P)
    acc = rig.ctx.access_create(rig.ioas, lambda i, n: None)
    expect_errno(errno.EINVAL, rig.ctx.access_pin_pages, acc, 0, 0)
    expect_errno(errno.ENOENT, rig.ctx.access_pin_pages, acc, 0, 4 * P)
    expect_errno(errno.EOVERFLOW, rig.ctx.access_pin_pages, acc, P, (1 << 64) - 1)
    [mem] = rig.ctx.access_pin_pages(acc, 0, 2 * P)
    assert len(mem) == 2 * P


def test_A2_pinning_access_raises_the_alignment(rig: Rig) -> None:
    rig.ctx.ioas_map(rig.ioas, bytearray(P), 100, 0x1001)
    expect_errno(errno.EADDRINUSE, rig.ctx.access_create, rig.ioas, lambda i, n: None)
    rw_only = rig.ctx.access_create(rig.ioas)  # byte alignment is enough to copy
    assert rig.ctx.access_rw(rw_only, 0x1001, 4) == bytes(4)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == 1


def test_A3_unmap_calls_back_and_waits_for_the_unpin(rig: Rig) -> None:
    rig.map(2 * P, iova=0)
    calls: list[tuple[int, int]] = []
    acc = 0

    def unmap(iova: int, length: int) -> None:
        calls.append((iova, length))
        rig.ctx.access_unpin_pages(acc, 0, P)

    acc = rig.ctx.access_create(rig.ioas, unmap)
    rig.ctx.access_pin_pages(acc, 0, P)
    assert rig.ctx.ioas_unmap(rig.ioas, 0, 2 * P) == 2 * P
    assert calls == [(0, 2 * P)]


def test_A4_an_access_that_holds_on_is_edeadlock(rig: Rig) -> None:
    rig.map(P, iova=0)
    calls: list[int] = []
    acc = rig.ctx.access_create(rig.ioas, lambda i, n: calls.append(i))
    rig.ctx.access_pin_pages(acc, 0, P)
    expect_errno(errno.EDEADLOCK, rig.ctx.ioas_unmap, rig.ioas, 0, P)
    assert len(calls) == 100
    expect_errno(errno.EINVAL, rig.ctx.access_pin_pages, acc, 0, P)  # area being unmapped
    rig.ctx.destroy(acc)  # destroying the access unpins
    assert rig.ctx.ioas_unmap(rig.ioas, 0, P) == P


def test_A5_access_rw(rig: Rig) -> None:
    buf, _ = rig.map(2 * P, iova=0)
    rig.ctx.ioas_map(rig.ioas, bytes(P), P, 4 * P, R)
    acc = rig.ctx.access_create(rig.ioas)
    rig.ctx.access_rw(acc, P - 2, b"abcd", write=True)
    assert bytes(buf[P - 2:P + 2]) == b"abcd"
    assert rig.ctx.access_rw(acc, P - 2, 4) == b"abcd"
    expect_errno(errno.EPERM, rig.ctx.access_rw, acc, 4 * P, b"x", write=True)
    expect_errno(errno.ENOENT, rig.ctx.access_rw, acc, 2 * P, 8)
    expect_errno(errno.EINVAL, rig.ctx.access_rw, acc, 0, 0)
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.ioas)


@pytest.mark.parametrize("nth", [1])
def test_N1_access_create_fail_nth(rig: Rig, nth: int) -> None:
    before = rig.ctx.objects()
    rig.ctx.fail_nth(nth)
    expect_errno(errno.ENOMEM, rig.ctx.access_create, rig.ioas, lambda i, n: None)
    assert rig.ctx.objects() == before and rig.ctx.ioas_iova_ranges(rig.ioas).alignment == 1
