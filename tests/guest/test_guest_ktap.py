"""vuser.guest.ktap: nested subtests, directives, unfinished programs, garbage."""

from __future__ import annotations

import textwrap

from vuser.guest.ktap import Status, parse

CONSOLE = textwrap.dedent("""\
    [    0.000000] Linux version 6.1.0-50-cloud-amd64
    KTAP version 1
    1..2
    # insmod foo: failed
        KTAP version 1
        # Subtest: enumerate
        1..4
        ok 1 find_device
        # STATUS 0x4
        # check failed: status & DONE (enumerate.c:12)
        not ok 2 dma_to_guest
        ok 3 intx_interrupt # SKIP no uio device
        not ok 4 later # TODO not written yet
        # enumerate: 1 of 4 cases failed
    not ok 1 enumerate # exit status 1
        KTAP version 1
        # Subtest: environment
        1..1
            KTAP version 1
            1..2
            ok 1 deep_a
            ok 2 - deep_b
        ok 1 nested
    ok 2 environment
    """)


def test_nested_results_and_directives():
    doc = parse(CONSOLE)
    assert doc.version == 1 and doc.plan == 2
    assert [r.name for r in doc.results] == ["enumerate", "environment"]
    en = doc.find("enumerate")
    assert en.status is Status.FAIL and en.reason == "exit status 1" and en.plan == 4
    assert en.diagnostics == ["insmod foo: failed", "enumerate: 1 of 4 cases failed"]
    cases = {c.name: c for c in en.subtests}
    assert cases["find_device"].status is Status.PASS and cases["find_device"].number == 1
    dma = cases["dma_to_guest"]
    assert dma.status is Status.FAIL
    assert dma.diagnostics == ["STATUS 0x4", "check failed: status & DONE (enumerate.c:12)"]
    assert cases["intx_interrupt"].status is Status.SKIP
    assert cases["intx_interrupt"].reason == "no uio device"
    assert cases["later"].status is Status.XFAIL and cases["later"].reason == "not written yet"
    env = doc.find("environment")
    assert env.status is Status.PASS
    nested = env.find("nested")
    assert [s.name for s in nested.subtests] == ["deep_a", "deep_b"]
    assert all(s.status is Status.PASS for s in nested.subtests)
    assert doc.garbage == ["[    0.000000] Linux version 6.1.0-50-cloud-amd64"]


def test_program_that_died_is_unfinished_with_its_reported_cases():
    doc = parse(textwrap.dedent("""\
        KTAP version 1
        1..1
            KTAP version 1
            # Subtest: enumerate
            1..3
            ok 1 find_device
        [   12.5] BUG: kernel NULL pointer dereference
        [   12.6] Kernel panic - not syncing: Fatal exception
        """))
    en = doc.find("enumerate")
    assert en is not None and not en.complete and en.status is None
    assert en.plan == 3
    assert [c.name for c in en.subtests] == ["find_device"]
    assert en.find("dma") is None
    assert any("Kernel panic" in line for line in en.output)
    assert any("Kernel panic" in line for line in doc.garbage)


def test_program_that_crashed_before_its_parent_line_then_next_program():
    # A shallower KTAP line closes the unfinished subtest; the next program parses.
    doc = parse(textwrap.dedent("""\
        KTAP version 1
        1..2
            KTAP version 1
            # Subtest: a
            1..2
            ok 1 one
        # init: program a died
            KTAP version 1
            # Subtest: b
            1..1
            ok 1 only
        ok 2 b
        """))
    a, b = doc.results
    assert a.name == "a" and not a.complete and [c.name for c in a.subtests] == ["one"]
    assert b.name == "b" and b.status is Status.PASS and b.subtests[0].name == "only"


def test_garbage_never_breaks_the_parse():
    doc = parse("\r\n".join([
        "KTAP version 1",
        "\x1b[0m random escape",
        "  two-space indent",
        "\tok 9 tabbed",
        "ok",
        "not ok x bad number",
        "1..1",
        "ok 1 fine # plain comment",
        "",
        "KTAP version 1",  # a second version line at the top: kept as garbage
    ]))
    assert [(r.name, r.status, r.reason) for r in doc.results] == [
        ("fine", Status.PASS, "plain comment")]
    assert "  two-space indent" in doc.garbage and "\tok 9 tabbed" in doc.garbage
    assert "not ok x bad number" in doc.garbage and "KTAP version 1" in doc.garbage
    assert doc.plan == 1


def test_empty_and_lines_input():
    assert parse("").results == [] and parse("").version is None
    doc = parse(iter(["TAP version 14", "1..1", "ok 1"]))
    assert doc.version == 14 and doc.results[0].name == "" and doc.results[0].number == 1


def test_diagnostics_between_cases_and_the_programs_result_keep_one_program():
    """/init prints the kernel log's tail (``# dmesg:``) after a failed
    program's cases and before its result line: still one program."""
    doc = parse(textwrap.dedent("""\
        KTAP version 1
        1..1
            KTAP version 1
            # Subtest: interrupts
            1..2
            ok 1 module_loads
            not ok 2 vector_per_queue
        # dmesg: [    4.16] vuser_dma: loading out-of-tree module taints kernel.
        # dmesg: [    4.59] vuser_dma 0000:01:00.0: error interrupt
        not ok 1 interrupts # exit status 1
        """))
    [prog] = doc.results
    assert prog.name == "interrupts" and prog.complete and prog.status is Status.FAIL
    assert [c.name for c in prog.subtests] == ["module_loads", "vector_per_queue"]
    assert any("error interrupt" in d for d in prog.diagnostics)
