"""vuser.guest.image, offline: the initramfs it writes, its cache key and cache checks.

``vuser.debian.fetch`` is replaced by a fake package tree (a real one is
downloaded by the guest boot tests); everything else is the real builder.
"""

from __future__ import annotations

import shutil
import stat

import pytest

from guest_helpers import fake_debian_tree, fake_module, need_gcc, read_newc
from vuser.errors import UserError
from vuser.guest import image, kmod, paths, programs
from vuser.guest.image import build_image, load_recipe, status


@pytest.fixture(scope="session")
def built_programs(tmp_path_factory):
    """The guest programs built once, to copy into each test's cache."""
    need_gcc()
    cache = tmp_path_factory.mktemp("programs")
    programs.build_programs(cache=cache)
    return cache / "programs"


@pytest.fixture
def offline(tmp_path, monkeypatch, built_programs):
    """A cache folder and a fake Debian tree that ``debian.fetch`` hands out."""
    cache = tmp_path / "cache"
    shutil.copytree(built_programs, cache / "programs", symlinks=True)
    recipe = load_recipe()
    tree = fake_debian_tree(cache / f"debian-{recipe.suite}", recipe)
    calls = []

    def fake_fetch(suite, packages, root, **kw):
        calls.append((suite, list(packages), root))
        assert root == cache / f"debian-{recipe.suite}"
        return tree

    monkeypatch.setattr(image.debian, "fetch", fake_fetch)
    # Our own kernel module: a stand-in object (the real build needs the
    # kernel headers; tests/guest/test_guest_kmod.py builds it for real).
    work = tmp_path / "kmod-work"
    work.mkdir()
    ko = work / "vuser_dma.ko"
    ko.write_bytes(fake_module(work, "vuser_dma", "", "6.1.0-99-cloud-amd64"))
    monkeypatch.setattr(image.kmod, "build_modules",
                        lambda tree, suite, **kw: kmod.KmodSet("k" * 64, {"vuser_dma": ko}))
    monkeypatch.setattr(image.kmod, "kmod_digest", lambda tree, *a, **kw: "k" * 64)
    return cache, calls


def entries(img):
    return {e.name: e for e in read_newc(img.initrd.read_bytes())}


def test_image_contents(offline):
    cache, calls = offline
    img = build_image(progress=False, cache=cache)
    assert calls and calls[0][1] == ["linux-image-cloud-amd64", "busybox-static"]
    assert img.kernel.read_bytes().startswith(b"MZ")
    assert img.kernel_release == "6.1.0-99-cloud-amd64"
    names = entries(img)
    console = names["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert names["init"].data == (paths.IMAGES / "init.sh").read_bytes()
    assert names["init"].mode & 0o111
    assert names["bin/busybox"].data.startswith(b"\x7fELF")
    assert names["bin/sh"].data == b"busybox"
    conf = names["etc/vuser/image.conf"].data.decode()
    assert "VUSER_MODULES='uio uio_pci_generic'" in conf  # dependencies first
    assert {"lib/modules/uio.ko", "lib/modules/uio_pci_generic.ko"} <= set(names)
    assert "VUSER_OWN_MODULES=vuser_dma" in conf  # packed, loaded by the tests that use it
    assert kmod.vermagic(names["lib/modules/vuser_dma.ko"].data).startswith("6.1.0-99-cloud-amd64")
    assert "sbin/vuser-debug-exit" in names
    # The programs are not in the image: they come with each run, in its overlay.
    assert not [n for n in names if n.startswith("tests/")]
    files = img.overlays[0].files
    for name, cases in img.tests.items():
        data, mode = files[f"tests/{name}"]
        assert data.startswith(b"\x7fELF") and mode == 0o755 and cases
    assert "enumerate" in img.tests and "find_device" in img.tests["enumerate"]
    assert img.append.startswith("console=ttyS0")
    assert f"vuser.tests={','.join(img.tests)}" in img.append.split()


def test_selection_and_shell(offline):
    cache, _ = offline
    img = build_image(tests=["enumerate"], progress=False, cache=cache)
    assert list(img.tests) == ["enumerate"] and "vuser.tests=enumerate" in img.append.split()
    assert "vuser.shell=1" not in img.append
    assert "vuser.shell=1" in build_image(tests=["enumerate"], progress=False, cache=cache,
                                          shell=True).append.split()
    with pytest.raises(UserError, match="no guest test nope; there are: .*enumerate"):
        build_image(tests=["nope"], progress=False, cache=cache)
    with pytest.raises(UserError, match="list of names"):
        build_image(tests="enumerate", progress=False, cache=cache)


def test_cached_image_is_reused_and_a_damaged_one_rebuilt(offline):
    cache, _ = offline
    first = build_image(progress=False, cache=cache)
    stamp = first.initrd.stat().st_mtime_ns
    again = build_image(progress=False, cache=cache)
    assert again.key == first.key and again.initrd.stat().st_mtime_ns == stamp
    first.initrd.write_bytes(first.initrd.read_bytes()[:-100])  # a truncated cache file
    fixed = build_image(progress=False, cache=cache)
    assert fixed.key == first.key and read_newc(fixed.initrd.read_bytes())
    (fixed.initrd.parent / image.MANIFEST).write_text("{not json")
    assert build_image(progress=False, cache=cache).initrd.is_file()


def test_cache_key_follows_the_inputs(offline, tmp_path):
    cache, _ = offline
    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    recipe_dir = tmp_path / "images"
    shutil.copytree(paths.IMAGES, recipe_dir)
    base = build_image(progress=False, cache=cache, guest_tests=src, images=recipe_dir)

    # The image holds no test program: a changed library changes the programs, not the image.
    header = src / "lib" / "vuser.h"
    header.write_text(header.read_text() + "\n/* changed */\n")
    same = build_image(progress=False, cache=cache, guest_tests=src, images=recipe_dir)
    assert same.key == base.key
    assert same.overlays[0].files["tests/enumerate"] == base.overlays[0].files["tests/enumerate"]
    tool = src / "tools" / "debug-exit.c"
    tool.write_text(tool.read_text() + "\n/* changed */\n")
    changed_lib = build_image(progress=False, cache=cache, guest_tests=src, images=recipe_dir)
    assert changed_lib.key != base.key

    init = recipe_dir / "init.sh"
    init.write_text(init.read_text() + "\n# changed\n")
    changed_init = build_image(progress=False, cache=cache, guest_tests=src, images=recipe_dir)
    assert changed_init.key not in (base.key, changed_lib.key)
    assert entries(changed_init)["init"].data.endswith(b"# changed\n")


def test_each_program_is_keyed_by_its_own_inputs(tmp_path):
    need_gcc()
    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)

    def digests():
        b = programs._Builder(src, tmp_path / "cache")
        return {n: b.program_digest(n) for n in programs.program_names(src)}, b.tools_digest

    one, tools = digests()
    (src / "enumerate.c").write_text((src / "enumerate.c").read_text() + "\n/* changed */\n")
    two, _ = digests()
    assert two["enumerate"] != one["enumerate"]
    assert {n: d for n, d in two.items() if n != "enumerate"} == \
        {n: d for n, d in one.items() if n != "enumerate"}
    # A top-level file included by another program is one of its inputs.
    (src / "kernel_lazy.c").write_text((src / "kernel_lazy.c").read_text() + "\n/* x */\n")
    three, _ = digests()
    assert three["kernel_strict"] != two["kernel_strict"] and three["demo"] == two["demo"]
    # The library and its headers are every program's input, not the tools'.
    (src / "lib" / "vuser.h").write_text((src / "lib" / "vuser.h").read_text() + "\n/* y */\n")
    four, tools4 = digests()
    assert all(four[n] != three[n] for n in four) and tools4 == tools
    (src / "tools" / "debug-exit.c").write_text("int main(void) { return 0; }\n")
    assert digests()[1] != tools


BROKEN = "#include \"lib/vuser.h\"\nint main(void) { return undeclared_thing; }\n"


def test_a_broken_program_fails_alone(tmp_path):
    """One guest-tests/*.c that does not compile stops neither the others nor an image."""
    need_gcc()
    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    (src / "broken.c").write_text(BROKEN)
    cache = tmp_path / "cache"
    built = programs.build_programs(["broken", "environment"], src, cache)
    assert list(built.tests) == ["environment"] and list(built.failed) == ["broken"]
    why = built.failed["broken"]
    assert why.startswith("building guest test broken.c failed:")
    assert "guest-tests/broken.c" in why and "undeclared_thing" in why and "error" in why
    assert str(src) not in why  # the compiler's paths, shown relative to guest-tests
    with pytest.raises(programs.BuildFailed, match="undeclared_thing"):
        programs.build_program("broken", src, cache)
    assert programs.build_program("environment", src, cache).cases


def test_image_of_a_tree_with_a_broken_program(offline, tmp_path):
    cache, _ = offline
    src = tmp_path / "guest-tests"
    shutil.copytree(paths.GUEST_TESTS, src)
    (src / "broken.c").write_text(BROKEN)
    img = build_image(tests=["environment"], progress=False, cache=cache, guest_tests=src)
    assert list(img.tests) == ["environment"] and set(img.overlays[0].files) == {
        "tests/environment"}
    with pytest.raises(programs.BuildFailed, match="broken.c failed:(.|\n)*undeclared_thing"):
        build_image(tests=["broken"], progress=False, cache=cache, guest_tests=src)
    everything = build_image(progress=False, cache=cache, guest_tests=src)  # all: left out
    assert "broken" not in everything.tests and "environment" in everything.tests


def test_kernel_without_what_the_guest_needs(offline, monkeypatch):
    cache, _ = offline
    recipe = load_recipe()
    config = next((cache / f"debian-{recipe.suite}" / "boot").glob("config-*"))
    config.write_text(config.read_text().replace("CONFIG_HUGETLBFS=y\n", ""))
    with pytest.raises(UserError, match="CONFIG_HUGETLBFS=n"):
        build_image(progress=False, cache=cache)


def test_bad_recipe(tmp_path):
    (tmp_path / "guest.toml").write_text("[debian]\nsuite = 'bookworm'\n")
    (tmp_path / "init.sh").write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match="guest image recipe .*KeyError"):
        load_recipe(tmp_path)
    with pytest.raises(UserError, match="No such file"):
        load_recipe(tmp_path / "missing")


def test_status_before_and_after_a_build(offline):
    cache, _ = offline
    before = status(cache)
    assert before["image"] is False and before["problem"]
    assert before["kernel"] == "6.1.0-99-cloud-amd64"  # the fetched tree is there
    build_image(progress=False, cache=cache)
    after = status(cache)
    assert after["image"] is True and after["tests_built"] is True and after["problem"] is None
    assert after["tests"]["enumerate"] >= 1 and after["kernel"] == "6.1.0-99-cloud-amd64"
    assert after["kernel_package"] == "linux-image-6.1.0-99-cloud-amd64 6.1.999-1"


def test_damaged_programs_cache_is_rebuilt(tmp_path, built_programs):
    cache = tmp_path / "cache"
    shutil.copytree(built_programs, cache / "programs")
    progs = programs.build_programs(cache=cache)
    victim = progs.tests["enumerate"].path
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: no longer a readable ELF
    cached = programs.cached_programs(cache=cache)
    assert "enumerate" not in cached.tests and "environment" in cached.tests
    again = programs.build_programs(cache=cache)
    assert again.tests["enumerate"].cases == progs.tests["enumerate"].cases
    assert again.tests["enumerate"].path.stat().st_size > 200


def test_cache_key_follows_the_kernel_modules(offline, monkeypatch):
    cache, _ = offline
    base = build_image(progress=False, cache=cache)
    ko = next(iter(kmod.build_modules(None, "").modules.values()))
    monkeypatch.setattr(image.kmod, "build_modules",
                        lambda tree, suite, **kw: kmod.KmodSet("m" * 64, {"vuser_dma": ko}))
    assert build_image(progress=False, cache=cache).key != base.key
