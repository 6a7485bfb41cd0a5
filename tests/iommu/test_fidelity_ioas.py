"""Fidelity rows I1-I24 (docs/iommufd-fidelity.md): IOAS commands and IOMMU_OPTION.

One scenario per row, iommufd-selftest style: the errno (or the state) the
kernel gives, checked against the model.
"""

from __future__ import annotations

import errno
import os
import tempfile

from iommu_helpers import P, Rig, expect_errno
from vuser.iommu.uapi import U64_MAX, IoasMapFlags, OptionId, OptionOp

R, W = int(IoasMapFlags.READABLE), int(IoasMapFlags.WRITEABLE)
RW = R | W
HP, RL = int(OptionId.HUGE_PAGES), int(OptionId.RLIMIT_MODE)
GET, SET = int(OptionOp.GET), int(OptionOp.SET)


def test_I1_ioas_alloc_ids_are_not_reused(rig: Rig) -> None:
    a = rig.ctx.ioas_alloc()
    rig.ctx.destroy(a)
    assert rig.ctx.ioas_alloc() != a
    expect_errno(errno.ENOENT, rig.ctx.destroy, a)


def test_I2_map_flags_are_checked_before_the_ioas(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_map, 999, bytearray(P), P, 0, RW | 1 << 5)


def test_I3_map_overflow_before_permission(rig: Rig) -> None:
    expect_errno(errno.EOVERFLOW, rig.ctx.ioas_map, rig.ioas, bytearray(P), U64_MAX, 0, 0)


def test_I4_map_permission_before_the_ioas(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, 999, bytearray(P), P, 0, 0)


def test_I5_map_without_a_domain_is_byte_granular(rig: Rig) -> None:
    assert rig.ctx.ioas_map(rig.ioas, bytearray(P), 100, 0x1001) == 0x1001


def test_I6_map_with_a_domain_needs_4k(rig: Rig) -> None:
    rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), P + 1, 0)
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), P, P + 1)


def test_I7_fixed_map_checks_reserved_then_existing(rig: Rig) -> None:
    d = rig.ctx.device_bind(rig.reg.register("resv", reserved=[(0x10000, 0x10FFF)]))
    rig.ctx.device_attach(d, rig.ioas)
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, rig.ioas, bytearray(P), P, 0x10000)
    rig.map(P, iova=0)
    expect_errno(errno.EEXIST, rig.ctx.ioas_map, rig.ioas, bytearray(P), P, 0)
    expect_errno(errno.EOVERFLOW, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), 2 * P,
                 U64_MAX + 1 - P)


def test_I8_auto_iova_is_aligned_to_the_rounded_length(rig: Rig) -> None:
    assert rig.map(P)[1] == P  # never IOVA 0
    assert rig.map(3 * P)[1] == 4 * P             # 3 pages: 16 KiB aligned
    assert rig.map(1024 * P)[1] % (2 << 20) == 0  # capped at 2 MiB
    rig.ctx.ioas_allow_iovas(rig.ioas, [(1 << 40, (1 << 40) + P - 1)])
    expect_errno(errno.ENOSPC, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), 2 * P)


def test_I9_bad_buffer_is_efault_at_map(rig: Rig) -> None:
    expect_errno(errno.EFAULT, rig.ctx.ioas_map, rig.ioas, bytearray(P), 2 * P, 0)
    expect_errno(errno.EFAULT, rig.ctx.ioas_map, rig.ioas, bytes(P), P, 0, RW)


def test_I10_map_file_order(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_map_file, 999, -1, 0, P, 0, 1 << 6)
    expect_errno(errno.ENOENT, rig.ctx.ioas_map_file, 999, -1, 0, P, 0)
    expect_errno(errno.EBADF, rig.ctx.ioas_map_file, rig.ioas, -1, 0, P, 0)
    with tempfile.TemporaryFile() as f:
        f.write(bytes(P))
        f.flush()
        expect_errno(errno.EINVAL, rig.ctx.ioas_map_file, rig.ioas, f.fileno(), 0, 2 * P, 0)
        assert rig.ctx.ioas_map_file(rig.ioas, f.fileno(), 0, P, 0) == 0
        assert os.fstat(f.fileno())  # the caller still owns the fd


def test_I11_unmap_all_on_empty_is_zero(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, 999, 0, U64_MAX)
    assert rig.ctx.ioas_unmap(rig.ioas, 0, U64_MAX) == 0


def test_I12_unmap_overflow_and_empty(rig: Rig) -> None:
    expect_errno(errno.EOVERFLOW, rig.ctx.ioas_unmap, rig.ioas, P, U64_MAX)
    expect_errno(errno.EINVAL, rig.ctx.ioas_unmap, rig.ioas, P, 0)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, P, P)


def test_I13_unmap_stops_at_an_area_that_sticks_out(rig: Rig) -> None:
    for i in range(3):
        rig.map(2 * P, iova=i * 4 * P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 0, 9 * P)
    assert [a["iova"] for a in rig.ctx.ioas_areas(rig.ioas)] == [8 * P]


def test_I14_copy_order(rig: Rig) -> None:
    rig.ctx.ioas_map(rig.ioas, bytes(P), P, 0, R)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_copy, 999, 998, 0, P, None, RW | 1 << 7)
    expect_errno(errno.EINVAL, rig.ctx.ioas_copy, 999, 998, 0, P, None, 0)
    expect_errno(errno.ENOENT, rig.ctx.ioas_copy, 999, 998, 0, P)       # source IOAS
    expect_errno(errno.ENOENT, rig.ctx.ioas_copy, 999, rig.ioas, P, P)  # source range
    expect_errno(errno.ENOENT, rig.ctx.ioas_copy, 999, rig.ioas, 0, P)  # destination IOAS
    dst = rig.ctx.ioas_alloc()
    expect_errno(errno.EPERM, rig.ctx.ioas_copy, dst, rig.ioas, 0, P, 0, RW)


def test_I15_copy_alignment_is_the_destinations(rig: Rig) -> None:
    rig.map(2 * P, iova=0)
    dst = rig.ctx.ioas_alloc()
    assert rig.ctx.ioas_copy(dst, rig.ioas, 3, 5, 7) == 7


def test_I16_iova_ranges_alignment_follows_domains(rig: Rig) -> None:
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == 1
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == P
    rig.ctx.destroy(h)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == 1
    rig.ctx.ioas_allow_iovas(rig.ioas, [(0, P - 1)])  # allowed ranges are not reported
    assert [(r.start, r.last) for r in rig.ctx.ioas_iova_ranges(rig.ioas).ranges] == \
        [(0, U64_MAX)]


def test_I17_iova_ranges_returns_the_whole_list(rig: Rig) -> None:
    r = rig.ctx.ioas_iova_ranges(rig.ioas).to_dict()
    assert r == {"ranges": [[0, U64_MAX]], "alignment": 1}


def test_I18_allow_iovas_refuses_one_byte_ranges(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.ioas_allow_iovas, rig.ioas, [(P, P)])


def test_I19_allow_iovas_overlap_and_reserved(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.ioas_allow_iovas, rig.ioas, [(0, 2 * P), (P, 3 * P)])
    rig.ctx.ioas_allow_iovas(rig.ioas, [(0, 0xFFFFF)])
    dev = rig.reg.register("resv", reserved=[(0xFEE00000, 0xFEEFFFFF)])
    d = rig.ctx.device_bind(dev)
    rig.ctx.ioas_allow_iovas(rig.ioas, [])
    rig.ctx.device_attach(d, rig.ioas)
    expect_errno(errno.EADDRINUSE, rig.ctx.ioas_allow_iovas, rig.ioas, [(0xFEE00000, 0xFEEFFFFF)])
    assert rig.ctx.ioas_map(rig.ioas, bytearray(P), P) is not None  # the old (empty) list stays


def test_I20_huge_pages_option(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.ioas_option, HP, GET, 0)
    assert rig.ctx.ioas_option(HP, GET, rig.ioas) == 1
    expect_errno(errno.EINVAL, rig.ctx.ioas_option, HP, SET, rig.ioas, 2)
    rig.ctx.ioas_map(rig.ioas, bytearray(P), 100, 0x1001)
    expect_errno(errno.EADDRINUSE, rig.ctx.ioas_option, HP, SET, rig.ioas, 0)
    assert rig.ctx.ioas_option(HP, GET, rig.ioas) == 1  # unchanged on failure
    rig.ctx.ioas_unmap(rig.ioas, 0x1001, 100)
    assert rig.ctx.ioas_option(HP, SET, rig.ioas, 0) == 0
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == P
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, rig.ioas, bytearray(P), 100, 0)
    rig.ctx.ioas_option(HP, SET, rig.ioas, 1)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == 1


def test_I21_rlimit_mode_option(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_option, RL, GET, rig.ioas)
    assert rig.ctx.ioas_option(RL, GET) == 0
    expect_errno(errno.EBUSY, rig.ctx.ioas_option, RL, SET, 0, 1)  # objects exist


def test_I22_unknown_option_or_op(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_option, 7, GET, rig.ioas)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_option, HP, 5, rig.ioas)


def test_I23_domain_add_needs_aligned_areas(rig: Rig) -> None:
    rig.ctx.ioas_map(rig.ioas, bytearray(P), 100, 0x1001)
    expect_errno(errno.EADDRINUSE, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas)
    expect_errno(errno.EADDRINUSE, rig.ctx.device_attach, rig.dev_id, rig.ioas)
    assert [o["type"] for o in rig.ctx.objects()] == ["device", "ioas"]


def test_I24_ioas_areas_is_an_extension(rig: Rig) -> None:
    rig.map(P, iova=0)
    assert rig.ctx.ioas_areas(rig.ioas)[0]["iova"] == 0
    expect_errno(errno.ENOENT, rig.ctx.ioas_areas, 999)
