"""vuser.guest.manifest: the per-program device lists and the boot groups built from them."""

from __future__ import annotations

import pytest

from vuser.errors import UserError
from vuser.guest import manifest, programs
from vuser.guest.manifest import BootPlan, ProgramSpec, boot_groups, load_manifest


def spec(name, devices=("vuser-dma",), timeout=100.0, alone=False):
    return ProgramSpec(name, tuple(devices), timeout, alone)


def test_same_devices_share_a_guest_in_first_seen_order():
    specs = {s.name: s for s in (spec("a"), spec("b", ("sample",)), spec("c"), spec("d", ()))}
    assert boot_groups(specs, ["c", "b", "a", "d", "c"]) == [
        BootPlan(("vuser-dma",), ("c", "a"), 200.0),
        BootPlan(("sample",), ("b",), 100.0),
        BootPlan((), ("d",), 100.0),
    ]


def test_alone_programs_get_their_own_guest():
    specs = {s.name: s for s in (spec("a"), spec("b", alone=True), spec("c"))}
    plans = boot_groups(specs, ["a", "b", "c"])
    assert [p.programs for p in plans] == [("a", "c"), ("b",)]


def test_unlisted_program_is_a_clear_error():
    with pytest.raises(UserError, match=r"has no \[ghost\]: which devices does its guest need"):
        boot_groups({"a": spec("a")}, ["a", "ghost"])


@pytest.mark.parametrize("text, message", [
    ('[a]\ndevices = "sample"\n', "devices must be a list"),
    ("[a]\ntimeout = 0\n", "timeout must be a positive number"),
    ("[a]\ntimeout = true\n", "timeout must be a positive number"),
    ('[a]\nalone = "yes"\n', "alone must be true or false"),
    ("[a]\nboots = 2\n", "unknown keys \\['boots'\\]"),
    ("a = 1\n", "must be a table"),
    ("[a\n", "guest_tests.toml"),
])
def test_bad_manifest_entries(tmp_path, text, message):
    path = tmp_path / "guest_tests.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_manifest(path)


def test_the_real_manifest_lists_every_program_once():
    specs = load_manifest()
    names = {p.stem for p in programs.sources()["tests"]}
    assert set(specs) == names
    assert manifest.MANIFEST_PATH.name == "guest_tests.toml"
    # The nested-translation programs share one guest.
    plans = boot_groups(specs, sorted(specs))
    nested = next(p for p in plans if "dma_nested" in p.programs)
    assert {"invalidation", "page_fault", "isolation", "kmod_dma"} <= set(nested.programs)
    assert set(nested.devices) == {"vuser-iommu", "vuser-dma"}
