"""Property tests: the model against brute-force reference models."""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iommu_helpers import DATA_GPA, MB, P, NestedRig
from vuser.iommu import Access, Fault, IoasidContext, IommufdError, IommuRegistry

SPACE = 32  # pages of IOVA space the operations touch
TAG = 8

op = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 1), st.integers(0, SPACE - 1), st.integers(1, 8),
              st.booleans()),
    st.tuples(st.just("unmap"), st.integers(0, 1), st.integers(0, SPACE - 1),
              st.integers(1, 24)),
    st.tuples(st.just("copy"), st.integers(0, 1), st.integers(0, SPACE - 1), st.integers(1, 8),
              st.integers(0, 1), st.one_of(st.none(), st.integers(0, SPACE - 1))),
)


class RefIoas:
    """Areas as a list of ``[first_page, last_page, buffer_id, page_offset]``."""

    def __init__(self) -> None:
        self.areas: list[tuple[int, int, int, int]] = []

    def overlapping(self, a: int, b: int) -> list[tuple[int, int, int, int]]:
        return sorted(x for x in self.areas if x[0] <= b and a <= x[1])

    def place(self, npages: int, at: int | None) -> int:
        if at is not None:
            if self.overlapping(at, at + npages - 1):
                raise IommufdError(errno.EEXIST)
            return at
        # iopt_alloc_iova: length rounded up to a power of two, at most 2 MiB.
        align = min(1 << (npages - 1).bit_length(), 512)
        start = align  # never IOVA 0: the search starts at 4 KiB
        while self.overlapping(start, start + npages - 1):
            start += align
        return start

    def lookup(self, page: int) -> tuple[int, int] | None:
        for f, l, buf, off in self.areas:
            if f <= page <= l:
                return buf, off + page - f
        return None


def _tagged(buf_id: int, npages: int) -> bytearray:
    b = bytearray(npages * P)
    for i in range(npages):
        b[i * P:i * P + TAG] = buf_id.to_bytes(4, "little") + i.to_bytes(4, "little")
    return b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=40))
@example([("map", 0, 4, 2, True), ("unmap", 0, 5, 1)])                       # split
@example([("map", 0, 4, 2, True), ("map", 0, 6, 2, True), ("copy", 0, 4, 4, 1, None),
          ("unmap", 1, 0, 2), ("unmap", 1, 0, 4)])                            # copy pieces
@example([("map", 0, 0, 3, False), ("map", 0, 0, 2, False)])                 # auto alignment
def test_map_unmap_copy_match_the_reference_and_never_overlap(ops) -> None:
    reg = IommuRegistry()
    dev = reg.register("dma0")
    ctx = IoasidContext(reg)
    dev_id = ctx.device_bind(dev)
    ioas = [ctx.ioas_alloc(), ctx.ioas_alloc()]
    ref = [RefIoas(), RefIoas()]
    buffers = []
    for o in ops:
        want: int | None = None
        try:  # the reference first
            if o[0] == "map":
                _, i, page, n, fixed = o
                at = ref[i].place(n, page if fixed else None)
                ref[i].areas.append((at, at + n - 1, len(buffers), 0))
            elif o[0] == "unmap":
                _, i, page, n = o
                hit = ref[i].overlapping(page, page + n - 1)
                # iopt_unmap_iova_range: areas go in order until one sticks out.
                for x in hit:
                    if x[0] < page or x[1] > page + n - 1:
                        raise IommufdError(errno.ENOENT)
                    ref[i].areas.remove(x)
                if not hit:
                    raise IommufdError(errno.ENOENT)
            else:
                _, s, page, n, d, dst = o
                hit = ref[s].overlapping(page, page + n - 1)
                if (not hit or hit[0][0] > page or hit[-1][1] < page + n - 1
                        or any(b[0] != a[1] + 1 for a, b in zip(hit, hit[1:]))):
                    raise IommufdError(errno.ENOENT)
                at = ref[d].place(n, dst)
                for f, l, buf, off in hit:
                    lo, hi = max(f, page), min(l, page + n - 1)
                    ref[d].areas.append((at + lo - page, at + hi - page, buf, off + lo - f))
        except IommufdError as e:
            want = e.errno
        try:  # then the model
            if o[0] == "map":
                _, i, page, n, fixed = o
                buf = _tagged(len(buffers), n)
                ctx.ioas_map(ioas[i], buf, n * P, page * P if fixed else None)
                buffers.append(buf)
            elif o[0] == "unmap":
                _, i, page, n = o
                ctx.ioas_unmap(ioas[i], page * P, n * P)
            else:
                _, s, page, n, d, dst = o
                ctx.ioas_copy(ioas[d], ioas[s], page * P, n * P,
                              None if dst is None else dst * P)
            got = None
        except IommufdError as e:
            got = e.errno
        assert got == want, o
        if o[0] == "map" and want is not None:
            buffers.append(None)  # keep buffer ids in step with the reference
        for i in (0, 1):
            areas = ctx.ioas_areas(ioas[i])
            assert all(a["last"] < b["iova"] for a, b in zip(areas, areas[1:]))
            assert [(a["iova"] // P, (a["last"] + 1) // P - 1) for a in areas] == \
                sorted((f, l) for f, l, _b, _o in ref[i].areas)
    for i in (0, 1):  # translation agrees with the reference, page by page
        ctx.device_attach(dev_id, ioas[i]) if i == 0 else ctx.device_replace(dev_id, ioas[i])
        top = max([l for _f, l, _b, _o in ref[i].areas], default=0) + 2
        for page in range(top):
            r = ctx.read(dev_id, None, page * P, TAG)
            exp = ref[i].lookup(page)
            if exp is None:
                assert isinstance(r, Fault)
            else:
                assert r == exp[0].to_bytes(4, "little") + exp[1].to_bytes(4, "little")
    ctx.close()


two_m = 2 * MB
s1_map = st.tuples(st.integers(0, 7), st.booleans(), st.integers(0, 1), st.integers(0, 511),
                   st.booleans())


probe = st.one_of(
    st.tuples(st.integers(0, 16 * MB - 1), st.booleans()),                 # anywhere
    st.tuples(st.integers(0, 7).map(lambda s: s * two_m), st.booleans()),  # a slot's start
    st.tuples(st.integers(0, 7).flatmap(                                   # near a 4K page
        lambda s: st.integers(0, 511).map(lambda p: s * two_m + p * P + 5)), st.booleans()),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(s1_map, max_size=12), st.lists(probe, min_size=1, max_size=40))
@example([(0, False, 0, 3, False)], [(3 * P + 5, True), (3 * P + 5, False)])
@example([(1, True, 1, 0, False)], [(two_m + 77, False), (two_m + 77, True)])
def test_nested_translation_matches_a_brute_force_walk(maps, probes) -> None:
    """Random 4K/2M stage-1 mappings over the data window; every probe's GPA
    (or fault) equals a lookup in the list of mappings."""
    rig = NestedRig()
    ref: list[tuple[int, int, int, bool]] = []  # (iova, size, gpa, writable)
    for slot, large, half, page, writable in maps:
        iova = slot * two_m + (0 if large else page * P)
        size = two_m if large else P
        gpa = DATA_GPA + half * two_m + (0 if large else page * P)
        if any(i <= iova + size - 1 and iova <= i + s - 1 for i, s, _g, _w in ref) or \
                any(i // two_m == slot for i, s, _g, _w in ref if (s == two_m) != large):
            continue  # keep the reference simple: no page under or over another size
        rig.pt.map(iova, gpa, size, page_size=size, write=writable)
        ref.append((iova, size, gpa, writable))
    for addr, write in probes:
        access = Access.WRITE if write else Access.READ
        got = rig.translate(addr, 1, access)
        hit = [(i, s, g, w) for i, s, g, w in ref if i <= addr < i + s]
        if not hit or (write and not hit[0][3]):
            assert isinstance(got, Fault)
        else:
            i, _s, g, _w = hit[0]
            assert not isinstance(got, Fault) and got[0].gpa == g + addr - i
    assert rig.ctx.stats()["hits"] + rig.ctx.stats()["misses"] >= len(probes)
    rig.ctx.close()
