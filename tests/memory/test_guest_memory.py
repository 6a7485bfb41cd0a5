"""``GuestMemory`` over a real ioasid context (``devices.gpa_space.GpaSpace``):
newest map wins across connections, who holds which fd, and nothing changes
when the IOAS refuses an area."""

from __future__ import annotations

import errno
import os

import pytest

from vuser.devices.gpa_space import GpaSpace
from vuser.errors import RemoteProtocolError
from vuser.iommu import IoasidContext, IommuRegistry
from vuser.memory import PAGE_SIZE
from vuser.memory.guest import READABLE, WRITEABLE
from vuser.memory.seals import sealed_memfd
from vuser.backend import DmaError

MiB = 1 << 20
RW = READABLE | WRITEABLE
A, B = "connection A", "connection B"


def ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def ram():
    ctx = IoasidContext(IommuRegistry())
    ioas = ctx.ioas_alloc()
    gpa = GpaSpace(ctx, ioas)
    x, y = sealed_memfd("x", 4 * MiB), sealed_memfd("y", 4 * MiB)
    yield ctx, ioas, gpa, x, y
    gpa.clear()
    os.close(x)
    os.close(y)
    ctx.close()


def areas(ctx, ioas):
    return [(a["iova"], a["last"]) for a in ctx.ioas_areas(ioas)]


def test_a_stale_claim_keeps_its_file_and_comes_back_when_the_newer_map_goes(ram):
    ctx, ioas, gpa, x, y = ram
    os.pwrite(x, b"old", 0)
    os.pwrite(y, b"new", 0)
    base = open_fds()
    gpa.add(B, 0, MiB - 1, ident(x), x, 0, RW)        # B's map, soon stale
    gpa.add(A, 0, MiB - 1, ident(y), y, 0, RW)        # A's newer map of the range
    # One duplicate per file held here, plus the one area's mmap (CPython's
    # mmap keeps its own duplicate of the fd).
    assert open_fds() == base + 3
    assert gpa.read(0, 3) == b"new" and [s.refs for s in gpa.segments()] == [2]
    gpa.remove(A, 0, MiB - 1)                         # A's map goes: B's is the view again
    assert gpa.read(0, 3) == b"old" and gpa.files() == [ident(x)]
    assert open_fds() == base + 2 and areas(ctx, ioas) == [(0, MiB - 1)]
    gpa.remove(B, 0, MiB - 1)
    assert gpa.segments() == [] and areas(ctx, ioas) == [] and open_fds() == base


def test_a_stale_unmap_does_not_remove_the_newer_map(ram):
    ctx, ioas, gpa, x, _ = ram
    gpa.add(A, 0, 2 * MiB - 1, ident(x), x, 0, READABLE)
    gpa.add(B, 0, 2 * MiB - 1, ident(x), x, 0, READABLE)
    gpa.remove(A, 0, 2 * MiB - 1)
    gpa.add(A, MiB, 3 * MiB - 1, ident(x), x, MiB, RW)  # A's new layout
    gpa.remove(B, 0, 2 * MiB - 1)                     # B catches up late
    assert [(s.first, s.last, s.prot, s.refs) for s in gpa.segments()] == [
        (MiB, 2 * MiB - 1, RW, 1), (2 * MiB, 3 * MiB - 1, RW, 1)]
    gpa.write(MiB, b"ok")                             # writable: A's map, not B's
    assert os.pread(x, 2, MiB) == b"ok"
    with pytest.raises(DmaError) as e:
        gpa.read(0, 8)
    assert e.value.errno == errno.EFAULT


def test_a_refused_area_changes_nothing(ram):
    ctx, ioas, gpa, x, y = ram
    gpa.add(A, 0, 2 * MiB - 1, ident(x), x, 0, RW)
    before = ([(s.first, s.last, s.ident, s.offset, s.refs) for s in gpa.segments()],
              areas(ctx, ioas), gpa.files())
    fds, refused = open_fds(), 0
    for n in (1, 2, 3, 4, 5):                               # each IOAS step of the replacement
        ctx.fail_nth(n)
        try:
            gpa.add(B, MiB, 2 * MiB - 1, ident(y), y, 0, RW)
        except RemoteProtocolError as e:
            ctx.fail_nth(0)
            assert e.errno == errno.ENOMEM
            refused += 1
        else:
            ctx.fail_nth(0)                           # the map needed fewer than n steps
            gpa.remove(B, MiB, 2 * MiB - 1)
            continue
        after = ([(s.first, s.last, s.ident, s.offset, s.refs) for s in gpa.segments()],
                 areas(ctx, ioas), gpa.files())
        assert after == before and open_fds() == fds
    assert refused >= 2                               # the replacement has several steps
    os.pwrite(x, b"still", MiB)
    assert gpa.read(MiB, 5) == b"still"


def test_own_overlap_unaligned_and_unsealed_are_refused(ram):
    _, _, gpa, x, _ = ram
    gpa.add(A, 0, MiB - 1, ident(x), x, 0, RW)
    with pytest.raises(RemoteProtocolError) as e:
        gpa.add(A, MiB - PAGE_SIZE, 2 * MiB - 1, ident(x), x, MiB - PAGE_SIZE, RW)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(RemoteProtocolError) as e:
        gpa.add(B, 0x800, MiB - 1, ident(x), x, 0x800, RW)
    assert e.value.errno == errno.EINVAL
    plain = os.memfd_create("unsealed")
    try:
        os.ftruncate(plain, MiB)
        with pytest.raises(RemoteProtocolError) as e:
            gpa.add(B, 2 * MiB, 3 * MiB - 1, ident(plain), plain, 0, RW)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(plain)
    assert [(s.first, s.refs) for s in gpa.segments()] == [(0, 1)] and len(gpa.files()) == 1


def test_host_access_goes_through_one_access_object_on_the_ioas(ram):
    ctx, ioas, gpa, x, _ = ram
    gpa.add(A, 0, MiB - 1, ident(x), x, 0, RW)
    assert gpa.read(0, 0) == b""
    gpa.write(16, b"abc")
    assert gpa.read(16, 3) == b"abc" and os.pread(x, 3, 16) == b"abc"
    [acc] = [o for o in ctx.objects() if o["type"] == "access"]
    assert acc["ioas"] == ioas
    gpa.clear()
    assert not [o for o in ctx.objects() if o["type"] == "access"]
    ctx.destroy(ioas)                                 # nothing holds the IOAS any more


def test_forget_drops_what_a_gone_connection_still_claims(ram):
    ctx, ioas, gpa, x, y = ram
    os.pwrite(x, b"x", 0)
    os.pwrite(y, b"y", 0)
    gpa.add(B, 0, 2 * MiB - 1, ident(x), x, 0, RW)
    gpa.add(A, 0, MiB - 1, ident(y), y, 0, RW)
    gpa.add(A, 2 * MiB, 3 * MiB - 1, ident(y), y, MiB, RW)
    gpa.forget(A)
    assert [(s.first, s.last, s.ident) for s in gpa.segments()] == [
        (0, MiB - 1, ident(x)), (MiB, 2 * MiB - 1, ident(x))]
    assert gpa.read(0, 1) == b"x" and gpa.files() == [ident(x)]
    assert areas(ctx, ioas) == [(0, MiB - 1), (MiB, 2 * MiB - 1)]
