"""IOAS scenarios (iommufd selftest ``iommufd_ioas``): one test per rule."""

from __future__ import annotations

import errno
import os

import pytest

from iommu_helpers import MB, P, Rig, expect_errno
from vuser.iommu import Access, Fault
from vuser.iommu.ioas import get_ioas
from vuser.iommu.uapi import U64_MAX, IoasMapFlags

R, W = int(IoasMapFlags.READABLE), int(IoasMapFlags.WRITEABLE)


def test_destroy_ioas_with_attached_device_is_ebusy(rig: Rig) -> None:
    rig.map(4 * P, iova=16 * P)
    hwpt = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.ioas)
    rig.ctx.device_detach(rig.dev_id)
    expect_errno(errno.ENOENT, rig.ctx.destroy, hwpt)  # the automatic HWPT went with it
    rig.ctx.destroy(rig.ioas)


def test_destroy_ioas_without_devices_ok_even_with_areas(rig: Rig) -> None:
    buf, _ = rig.map(8 * P, iova=0)
    rig.map(2 * P, iova=64 * P)
    rig.ctx.destroy(rig.ioas)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 0, P)
    buf.extend(b"x")  # a pinned bytearray cannot be resized: the pin is gone


def test_mapped_buffer_is_pinned(rig: Rig) -> None:
    buf, iova = rig.map(4 * P)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    rig.ctx.ioas_unmap(rig.ioas, iova, 4 * P)
    buf.extend(b"x")


def test_unmap_unmapped_page_is_enoent(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 16 * P, P)
    rig.map(P, iova=32 * P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 16 * P, P)


def test_ten_single_page_maps_and_unmaps(rig: Rig) -> None:
    bufs = [rig.map(P, iova=(16 + 2 * i) * P) for i in range(10)]
    assert len(rig.ctx.ioas_areas(rig.ioas)) == 10
    for i in range(10):
        assert rig.ctx.ioas_unmap(rig.ioas, (16 + 2 * i) * P, P) == P
    assert rig.ctx.ioas_areas(rig.ioas) == []
    assert len(bufs) == 10


@pytest.mark.parametrize("page", [16, 17])
def test_unmap_that_would_split_an_area_is_enoent(rig: Rig, page: int) -> None:
    rig.map(2 * P, iova=16 * P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, page * P, P)
    assert rig.ctx.ioas_areas(rig.ioas)[0]["iova"] == 16 * P  # nothing was unmapped


@pytest.mark.parametrize("iova, length", [
    (16 * P, 2 * P), (15 * P, 2 * P), (17 * P, P), (17 * P, 4 * P), (8 * P, 16 * P),
])
def test_fixed_map_overlapping_an_area_is_eexist(rig: Rig, iova: int, length: int) -> None:
    rig.map(2 * P, iova=16 * P)
    expect_errno(errno.EEXIST, rig.ctx.ioas_map, rig.ioas, bytearray(length), length, iova)


def test_unmap_must_cover_whole_areas(rig: Rig) -> None:
    for i in range(4):
        rig.map(8 * P, iova=i * 16 * P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 4 * P, 32 * P)      # starts inside
    assert len(rig.ctx.ioas_areas(rig.ioas)) == 4  # the first area sticks out: nothing went
    expect_errno(errno.ENOENT, rig.ctx.ioas_unmap, rig.ioas, 0, 16 * 3 * P + 4 * P)  # ends inside
    # iopt_unmap_iova_range: the three areas before the one that sticks out are gone
    assert [a["iova"] for a in rig.ctx.ioas_areas(rig.ioas)] == [48 * P]
    assert rig.ctx.ioas_unmap(rig.ioas, 0, 64 * P) == 8 * P
    assert rig.ctx.ioas_areas(rig.ioas) == []


def test_unmap_zero_to_u64_max_unmaps_everything(rig: Rig) -> None:
    assert rig.ctx.ioas_unmap(rig.ioas, 0, U64_MAX) == 0  # empty is fine
    rig.map(P, iova=0)
    rig.map(3 * P, iova=1 << 40)
    assert rig.ctx.ioas_unmap(rig.ioas, 0, U64_MAX) == 4 * P
    assert rig.ctx.ioas_areas(rig.ioas) == []


def test_ranges_are_inclusive_and_overflow_checked(rig: Rig) -> None:
    top = U64_MAX + 1 - P
    rig.map(P, iova=top)  # the very last page: last == U64_MAX
    assert rig.ctx.ioas_areas(rig.ioas)[0]["last"] == U64_MAX
    expect_errno(errno.EOVERFLOW, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), 2 * P, top)
    expect_errno(errno.EOVERFLOW, rig.ctx.ioas_unmap, rig.ioas, top, 2 * P)
    assert rig.ctx.ioas_unmap(rig.ioas, top, P) == P


@pytest.mark.parametrize("iova, length, flags, err", [
    (P, 0, R | W, errno.EINVAL),               # empty
    (P, P, 0, errno.EINVAL),                   # no permission
    (P, P, 1 << 5, errno.EOPNOTSUPP),          # unknown flag
    (None, P, R | int(IoasMapFlags.FIXED_IOVA), errno.EINVAL),  # FIXED without iova
])
def test_map_rejects_bad_arguments(rig: Rig, iova, length, flags, err) -> None:
    expect_errno(err, rig.ctx.ioas_map, rig.ioas, bytearray(2 * P), length, iova, flags)
    assert rig.ctx.ioas_areas(rig.ioas) == []


def test_map_needs_a_writable_buffer_of_the_length(rig: Rig) -> None:
    expect_errno(errno.EFAULT, rig.ctx.ioas_map, rig.ioas, bytes(P), P, 0, R | W)
    expect_errno(errno.EFAULT, rig.ctx.ioas_map, rig.ioas, bytearray(P), 2 * P, 0)
    expect_errno(errno.EFAULT, rig.ctx.ioas_map, rig.ioas, "not a buffer", P, 0)
    assert rig.ctx.ioas_map(rig.ioas, bytes(P), P, 0, R) == 0  # read-only is fine read-only


def test_object_of_wrong_type_is_enoent(rig: Rig) -> None:
    hwpt = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.ENOENT, rig.ctx.ioas_map, hwpt, bytearray(P), P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_map, 999, bytearray(P), P)


def test_auto_iova_is_aligned_to_lowest_set_bit_of_length(rig: Rig) -> None:
    rig.map(P, iova=0)
    for length in (P, 2 * P, 3 * P, 8 * P, 24 * P, 2 * MB):
        _, iova = rig.map(length)
        assert iova % (length & -length) == 0, (length, iova)
    areas = rig.ctx.ioas_areas(rig.ioas)
    for a, b in zip(areas, areas[1:]):
        assert a["last"] < b["iova"]


def test_auto_iova_stays_in_allowed_ranges(rig: Rig) -> None:
    rig.ctx.ioas_allow_iovas(rig.ioas, [(1 << 32, (1 << 32) + 4 * P - 1)])
    _, a = rig.map(2 * P)
    _, b = rig.map(2 * P)
    assert {a, b} == {1 << 32, (1 << 32) + 2 * P}
    expect_errno(errno.ENOSPC, rig.ctx.ioas_map, rig.ioas, bytearray(P), P)
    rig.map(P, iova=0)  # allowed ranges do not restrict fixed maps


def test_copy_from_unmapped_source_is_enoent(rig: Rig) -> None:
    dst = rig.ctx.ioas_alloc()
    expect_errno(errno.ENOENT, rig.ctx.ioas_copy, dst, rig.ioas, 0, P)
    rig.map(P, iova=0)
    rig.map(P, iova=2 * P)
    expect_errno(errno.ENOENT, rig.ctx.ioas_copy, dst, rig.ioas, 0, 3 * P)  # hole at 1P
    assert rig.ctx.ioas_areas(dst) == []


def test_copy_within_and_between_ioas_shares_the_pages(rig: Rig) -> None:
    buf, src = rig.map(4 * P, iova=0)
    other = rig.ctx.ioas_alloc()
    same = rig.ctx.ioas_copy(rig.ioas, rig.ioas, P, 2 * P, 64 * P)
    between = rig.ctx.ioas_copy(other, rig.ioas, 0, 4 * P)
    assert same == 64 * P
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.dev.write(None, 64 * P + 8, b"shared") is None
    assert bytes(buf[P + 8:P + 14]) == b"shared"
    rig.ctx.device_detach(rig.dev_id)
    rig.ctx.device_attach(rig.dev_id, other)
    assert rig.dev.read(None, between + P + 8, 6) == b"shared"


def test_copy_follows_the_destination_alignment(rig: Rig) -> None:
    rig.map(4 * P, iova=0)
    dst = rig.ctx.ioas_alloc()
    rig.ctx.hwpt_alloc(rig.dev_id, dst)  # a domain: dst needs 4 KiB alignment
    expect_errno(errno.EINVAL, rig.ctx.ioas_copy, dst, rig.ioas, 0, P + 8)
    expect_errno(errno.EINVAL, rig.ctx.ioas_copy, dst, rig.ioas, 0, P, 8)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ioas_copy, dst, rig.ioas, 0, P, None, 1 << 9)
    assert rig.ctx.ioas_areas(dst) == []
    nodom = rig.ctx.ioas_alloc()  # no domain: bytes are fine
    assert rig.ctx.ioas_copy(nodom, rig.ioas, 8, P, 8) == 8


def test_copy_keeps_pages_pinned_after_source_unmap(rig: Rig) -> None:
    buf, src = rig.map(2 * P, iova=0)
    buf[:4] = b"keep"
    dst = rig.ctx.ioas_alloc()
    at = rig.ctx.ioas_copy(dst, rig.ioas, 0, 2 * P)
    rig.ctx.ioas_unmap(rig.ioas, 0, 2 * P)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # still pinned by the copy
    rig.ctx.device_attach(rig.dev_id, dst)
    assert rig.dev.read(None, at, 4) == b"keep"


def test_copy_writeable_from_read_only_pages_is_eperm(rig: Rig) -> None:
    rig.ctx.ioas_map(rig.ioas, bytes(P), P, 0, R)
    dst = rig.ctx.ioas_alloc()
    expect_errno(errno.EPERM, rig.ctx.ioas_copy, dst, rig.ioas, 0, P, None, R | W)
    rig.ctx.ioas_copy(dst, rig.ioas, 0, P, None, R)


def test_iova_ranges_are_narrowed_by_attached_devices() -> None:
    rig = Rig(aperture=(P, (1 << 48) - 1), reserved=[(0xFEE00000, 0xFEEFFFFF)])
    assert rig.ctx.ioas_iova_ranges(rig.ioas).to_dict() == {
        "ranges": [[0, U64_MAX]], "alignment": 1}  # no domain: byte granular
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).alignment == P
    got = [(r.start, r.last) for r in rig.ctx.ioas_iova_ranges(rig.ioas).ranges]
    assert got == [(P, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    expect_errno(errno.EINVAL, rig.ctx.ioas_map, rig.ioas, bytearray(P), P, 0xFEE00000)
    rig.ctx.device_detach(rig.dev_id)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).ranges[0].last == U64_MAX


def test_attach_that_would_narrow_mapped_or_allowed_iovas_is_eaddrinuse() -> None:
    rig = Rig(reserved=[(0xFEE00000, 0xFEEFFFFF)])
    rig.map(P, iova=0xFEE00000)
    expect_errno(errno.EADDRINUSE, rig.ctx.device_attach, rig.dev_id, rig.ioas)
    assert rig.ctx.objects()[-1]["type"] == "ioas"  # no automatic HWPT was left behind
    rig.ctx.ioas_unmap(rig.ioas, 0xFEE00000, P)
    rig.ctx.ioas_allow_iovas(rig.ioas, [(0xFE000000, 0xFEFFFFFF)])
    expect_errno(errno.EADDRINUSE, rig.ctx.device_attach, rig.dev_id, rig.ioas)
    rig.ctx.ioas_allow_iovas(rig.ioas, [])
    rig.ctx.device_attach(rig.dev_id, rig.ioas)


def test_allow_iovas_rules() -> None:
    rig = Rig(reserved=[(0xFEE00000, 0xFEEFFFFF)])
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    expect_errno(errno.EADDRINUSE, rig.ctx.ioas_allow_iovas, rig.ioas, [(0xFEE00000, 0xFEE00FFF)])
    expect_errno(errno.EINVAL, rig.ctx.ioas_allow_iovas, rig.ioas, [(0, 10 * P), (5 * P, 20 * P)])
    expect_errno(errno.EINVAL, rig.ctx.ioas_allow_iovas, rig.ioas, [(10, 5)])
    rig.ctx.ioas_allow_iovas(rig.ioas, [{"start": 0, "last": P - 1}])


def test_map_file_maps_a_shared_file_region(rig: Rig) -> None:
    fd = os.memfd_create("guest-ram")
    try:
        os.ftruncate(fd, 16 * P)
        os.pwrite(fd, b"from-the-file", 4 * P)
        iova = rig.ctx.ioas_map_file(rig.ioas, fd, 4 * P, 8 * P, iova=1 * MB)
        rig.ctx.device_attach(rig.dev_id, rig.ioas)
        assert rig.dev.read(None, 1 * MB, 13) == b"from-the-file"
        assert rig.dev.write(None, 1 * MB + P, b"device") is None
        assert os.pread(fd, 6, 5 * P) == b"device"  # MAP_SHARED: the file sees it
        area = rig.ctx.ioas_areas(rig.ioas)[0]
        st = os.fstat(fd)
        assert area["file_id"] == [st.st_dev, st.st_ino] and iova == 1 * MB
    finally:
        os.close(fd)  # the model keeps its own mapping
    assert rig.dev.read(None, 1 * MB, 4) == b"from"


def test_map_file_rejects_bad_fd_and_range(rig: Rig) -> None:
    fd = os.memfd_create("small")
    try:
        os.ftruncate(fd, 4 * P)
        expect_errno(errno.EINVAL, rig.ctx.ioas_map_file, rig.ioas, fd, 0, 8 * P)
        expect_errno(errno.EINVAL, rig.ctx.ioas_map_file, rig.ioas, fd, 100, P)
        expect_errno(errno.EBADF, rig.ctx.ioas_map_file, rig.ioas, -1, 0, P)
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            expect_errno(errno.EACCES, rig.ctx.ioas_map_file, rig.ioas, ro, 0, P)
            rig.ctx.ioas_map_file(rig.ioas, ro, 0, P, flags=R)
        finally:
            os.close(ro)
    finally:
        os.close(fd)
    assert len(rig.ctx.ioas_areas(rig.ioas)) == 1


def test_lookups_find_every_area_among_many(rig: Rig) -> None:
    buf = bytearray(P)
    n = 5000
    for i in range(n):
        rig.ctx.ioas_map(rig.ioas, buf, P, (2 * i + 1) * P, R)
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    for i in range(0, n, 97):
        segs = rig.ctx.translate(rig.dev_id, None, (2 * i + 1) * P + 5, 1, Access.READ)
        assert not isinstance(segs, Fault) and segs[0].gpa == (2 * i + 1) * P + 5
        hole = rig.ctx.translate(rig.dev_id, None, 2 * i * P, 1, Access.READ)
        assert isinstance(hole, Fault)


def test_unmap_of_a_file_area_closes_its_mapping_even_with_a_warm_iotlb(rig: Rig) -> None:
    fd = os.memfd_create("ram")
    try:
        os.ftruncate(fd, 4 * P)
        iova = rig.ctx.ioas_map_file(rig.ioas, fd, 0, 4 * P)
    finally:
        os.close(fd)
    mm = get_ioas(rig.ctx, rig.ioas).iopt.find(iova).pages._owner
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.dev.read(None, iova, 4) == b"\0" * 4  # an IOTLB entry now views the mmap
    assert rig.ctx.ioas_unmap(rig.ioas, iova, 4 * P) == 4 * P
    assert mm.closed
