"""vuser.guest.manifest: the per-program device lists and the boot groups built from them."""

from __future__ import annotations

import pytest

from vuser.errors import UserError
from vuser.guest import manifest, programs
from vuser.guest.manifest import BootPlan, ProgramSpec, boot_groups, load_manifest


def spec(name, devices=("vuser-dma",), timeout=100.0, alone=False, iommu="user", append=()):
    return ProgramSpec(name, tuple(devices), timeout, alone, iommu, tuple(append))


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


def test_guests_are_shared_only_with_equal_devices_iommu_and_append():
    devs = ("vuser-iommu", "vuser-dma")
    specs = {s.name: s for s in (
        spec("u1", devs), spec("k1", devs, iommu="kernel"), spec("u2", devs),
        spec("k2", devs, iommu="kernel"), spec("ks", devs, iommu="kernel", append=["iommu.strict=1"]),
        spec("ks2", devs, iommu="kernel", append=["iommu.strict=1"]))}
    assert boot_groups(specs, list(specs)) == [
        BootPlan(devs, ("u1", "u2"), 200.0, "user", ()),
        BootPlan(devs, ("k1", "k2"), 200.0, "kernel", ()),
        BootPlan(devs, ("ks", "ks2"), 200.0, "kernel", ("iommu.strict=1",)),
    ]
    assert [p.kernel_iommu for p in boot_groups(specs, ["u1", "k1"])] == [False, True]


def test_new_keys_parse_and_demo_keeps_manifest_order(tmp_path):
    path = tmp_path / "guest_tests.toml"
    path.write_text('[b]\ndemo = true\n[a]\niommu = "kernel"\nappend = ["iommu.strict=1"]\n'
                    'demo = true\n[c]\n')
    specs = load_manifest(path)
    assert (specs["a"].iommu, specs["a"].append, specs["a"].demo) == ("kernel", ("iommu.strict=1",),
                                                                      True)
    assert (specs["c"].iommu, specs["c"].append, specs["c"].demo) == ("user", (), False)
    assert manifest.demo_programs(specs) == ["b", "a"]


def test_kernel_and_program_keys(tmp_path):
    """A table may run another table's program on another kernel; it boots its own guest."""
    path = tmp_path / "guest_tests.toml"
    path.write_text('[k]\niommu = "kernel"\n[k_sid]\niommu = "kernel"\nprogram = "k"\n'
                    'kernel = "debian:sid"\n[k2]\niommu = "kernel"\n')
    specs = load_manifest(path)
    assert (specs["k_sid"].program_name, specs["k_sid"].kernel) == ("k", "debian:sid")
    assert (specs["k"].program_name, specs["k"].kernel) == ("k", None)
    assert boot_groups(specs, ["k", "k_sid", "k2"]) == [
        BootPlan((), ("k", "k2"), 600.0, "kernel", ()),
        BootPlan((), ("k",), 300.0, "kernel", (), "debian:sid"),
    ]


def test_unlisted_program_is_a_clear_error():
    with pytest.raises(UserError, match=r"has no \[ghost\]: which devices does its guest need"):
        boot_groups({"a": spec("a")}, ["a", "ghost"])


@pytest.mark.parametrize("text, message", [
    ('[a]\ndevices = "sample"\n', "devices must be a list"),
    ("[a]\ntimeout = 0\n", "timeout must be a positive number"),
    ("[a]\ntimeout = true\n", "timeout must be a positive number"),
    ('[a]\nalone = "yes"\n', "alone must be true or false"),
    ("[a]\nopt_in = 1\n", "opt_in must be true or false"),
    ("[a]\nboots = 2\n", "unknown keys \\['boots'\\]"),
    ('[a]\niommu = "guest"\n', 'iommu must be "user" or "kernel", not \'guest\''),
    ('[a]\nappend = "iommu.strict=1"\n', "append must be a list of kernel command line words"),
    ('[a]\nappend = ["a b"]\n', "append must be a list of kernel command line words"),
    ('[a]\nappend = [""]\n', "append must be a list of kernel command line words"),
    ('[a]\nappend = ["vuser.iommu=user"]\n', "append must not set vuser"),
    ('[a]\ndemo = 1\n', "demo must be true or false"),
    ('[a]\nkernel = "sid"\n', r"\[a\] guest kernel 'sid': expected debian:<suite>"),
    ('[a]\nkernel = 7\n', "expected debian:<suite>"),
    ('[a]\nprogram = "../x"\n', "program must be the name of a guest-tests program"),
    ('[a]\nprogram = 1\n', "program must be the name of a guest-tests program"),
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
    # Each program has its own table; other tables run one of them again (program = ...).
    assert {n for n, sp in specs.items() if not sp.program} == names
    assert {sp.program_name for sp in specs.values()} == names
    assert manifest.MANIFEST_PATH.name == "guest_tests.toml"
    # The nested-translation programs share one guest.
    plans = boot_groups(specs, sorted(specs))
    nested = next(p for p in plans if "dma_nested" in p.programs)
    assert {"invalidation", "page_fault", "isolation", "kmod_dma"} <= set(nested.programs)
    assert set(nested.devices) == {"vuser-iommu", "vuser-dma"}
