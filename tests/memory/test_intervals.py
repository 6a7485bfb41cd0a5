"""``IntervalMap``: the one range table, checked against a byte-set model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vuser.memory.intervals import IntervalMap, merge_spans, overlaps


def test_find_span_gaps_and_deletes():
    m: IntervalMap[str] = IntervalMap()
    m.insert(0x3000, 0x3FFF, "b")
    m.insert(0x1000, 0x1FFF, "a")
    m.insert(0x5000, 0x7FFF, "c")
    assert m.values() == ["a", "b", "c"] and len(m) == 3
    assert (m.find(0x0FFF), m.find(0x1000), m.find(0x1FFF), m.find(0x2000)) == (
        None, "a", "a", None)
    assert m.find(0x7FFF) == "c" and m.find(0x8000) is None
    assert m.overlapping(0x1800, 0x5000) == ["a", "b", "c"]
    assert m.overlapping(0x2000, 0x2FFF) == []
    assert m.gaps(0, 0x8FFF) == [(0, 0xFFF), (0x2000, 0x2FFF), (0x4000, 0x4FFF),
                                 (0x8000, 0x8FFF)]
    assert m.covers(0x3000, 0x3FFF) and not m.covers(0x3000, 0x4000)
    assert m.find_entry(0x6000) == (0x5000, 0x7FFF, "c")
    assert m.delete_at(0x3000) == "b"
    i, j = m.span(0, 0x1_0000)
    assert m.delete_span(i, j) == ["a", "c"] and len(m) == 0


def test_delete_at_needs_an_entry_start():
    m: IntervalMap[int] = IntervalMap()
    m.insert(0x1000, 0x1FFF, 1)
    for bad in (0x1001, 0x2000):
        try:
            m.delete_at(bad)
        except KeyError:
            continue
        raise AssertionError(f"delete_at({bad:#x}) removed something")
    assert m.values() == [1]


def test_span_helpers():
    assert overlaps(0, 9, 9, 20) and not overlaps(0, 9, 10, 20)
    assert merge_spans([(0, 4), (5, 9), (7, 8), (20, 30)]) == [(0, 9), (20, 30)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63), st.integers(1, 8)), max_size=40),
       st.integers(0, 70))
def test_matches_a_byte_model(ops, probe):
    """Insert where free, delete what overlaps: lookups agree with a dict of bytes."""
    m: IntervalMap[int] = IntervalMap()
    owner: dict[int, int] = {}
    for n, (add, first, size) in enumerate(ops):
        last = first + size - 1
        if add:
            if m.overlapping(first, last):
                assert any(b in owner for b in range(first, last + 1))
                continue
            m.insert(first, last, n)
            owner.update((b, n) for b in range(first, last + 1))
        else:
            i, j = m.span(first, last)
            for v in m.delete_span(i, j):
                owner = {b: o for b, o in owner.items() if o != v}
    assert m.find(probe) == owner.get(probe)
    assert m.gaps(0, 70) == merge_spans([(b, b) for b in range(71) if b not in owner])
    firsts = [f for f, _, _ in m.entries()]
    assert firsts == sorted(firsts)
