"""vuser.guest.bzimage: the release from the setup header, the embedded config (IKCONFIG)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from vuser.guest.kernel import KernelTree

import pytest

from vuser import debian
from vuser.guest import image
from vuser.guest.bzimage import (IKCFG_ED, IKCFG_ST, SETUP_HEADER_OFFSET, BzImage, BzImageError,
                                 SetupHeader, decompressors)

VERSION = b"6.9.0-vuser-test (me@host) #1 SMP PREEMPT_DYNAMIC Sat Dec  5 10:00:00 UTC 2026"
CONFIG = "CONFIG_UIO=m\nCONFIG_UIO_PCI_GENERIC=y\n# CONFIG_IOMMUFD is not set\n"


def vmlinux(config: str | None = CONFIG) -> bytes:
    """Stand-in for a vmlinux: some code, then (with IKCONFIG) the config blob."""
    body = b"\x90" * 4096
    if config is not None:
        body += IKCFG_ST + gzip.compress(config.encode()) + IKCFG_ED
    return body + b"\xcc" * 1024


def bzimage(payload: bytes, *, version: bytes = VERSION, setup_sects: int = 1,
            boot_flag: int = 0xAA55, protocol: int = 0x020F) -> bytes:
    """A file laid out as the x86 boot protocol says (setup, header, payload)."""
    setup = ((setup_sects or 4) + 1) * 512  # 0 means 4
    data = bytearray(setup)
    vstr = 0x300
    data[vstr:vstr + len(version) + 1] = version + b"\0"
    hdr = SetupHeader(setup_sects=setup_sects, boot_flag=boot_flag, header=0x53726448,
                      version=protocol, kernel_version=vstr - 0x200, payload_offset=0x40,
                      payload_length=len(payload))
    data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + SetupHeader.SIZE] = hdr.pack()
    return bytes(data) + b"\0" * 0x40 + payload + b"\0" * 16


def write(tmp_path: Path, data: bytes, name: str = "bzImage") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_header_layout_matches_the_boot_protocol():
    assert SetupHeader.offset_of("boot_flag") + SETUP_HEADER_OFFSET == 0x1FE
    assert SetupHeader.offset_of("header") + SETUP_HEADER_OFFSET == 0x202
    assert SetupHeader.offset_of("kernel_version") + SETUP_HEADER_OFFSET == 0x20E
    assert SetupHeader.offset_of("payload_offset") + SETUP_HEADER_OFFSET == 0x248
    assert SetupHeader.offset_of("kernel_info_offset") + SETUP_HEADER_OFFSET == 0x268


@pytest.mark.parametrize("name,compress", [
    ("gzip", gzip.compress), ("xz", lambda b: lzma.compress(b, lzma.FORMAT_XZ)),
    ("lzma", lambda b: lzma.compress(b, lzma.FORMAT_ALONE)), ("bzip2", bz2.compress)])
def test_release_and_embedded_config(tmp_path, name, compress):
    bz = BzImage.read(write(tmp_path, bzimage(compress(vmlinux()))))
    assert bz.release == "6.9.0-vuser-test"
    assert bz.version == VERSION.decode()
    assert bz.compression() == name
    assert bz.ikconfig() == CONFIG


def test_no_embedded_config_is_none(tmp_path):
    assert BzImage.read(write(tmp_path, bzimage(gzip.compress(vmlinux(None))))).ikconfig() is None


def test_setup_sects_zero_means_four(tmp_path):
    bz = BzImage.read(write(tmp_path, bzimage(gzip.compress(vmlinux()), setup_sects=0)))
    assert bz.header.setup_sects == 0 and bz.ikconfig() == CONFIG


@pytest.mark.parametrize("magic,name", [(b"\x02\x21\x4c\x18", "lz4"), (b"\x89LZO", "lzo")])
def test_formats_without_a_stdlib_decompressor_are_named(tmp_path, magic, name):
    bz = BzImage.read(write(tmp_path, bzimage(magic + b"\0" * 64)))
    assert bz.compression() == name and not decompressors()[name]
    with pytest.raises(BzImageError, match=f"{name}-compressed payload, which this Python"):
        bz.ikconfig()


def test_zstd_is_named_when_python_lacks_it(tmp_path):
    bz = BzImage.read(write(tmp_path, bzimage(b"\x28\xb5\x2f\xfd" + b"\0" * 64)))
    assert bz.compression() == "zstd"
    if decompressors()["zstd"]:
        with pytest.raises(BzImageError, match="corrupt zstd"):
            bz.ikconfig()
    else:
        with pytest.raises(BzImageError, match="zstd-compressed payload, which this Python"):
            bz.ikconfig()


def test_corrupt_payload_and_config(tmp_path):
    bad = gzip.compress(vmlinux())[:-100]
    with pytest.raises(BzImageError, match="corrupt gzip payload"):
        BzImage.read(write(tmp_path, bzimage(bad))).ikconfig()
    broken = b"\x90" * 64 + IKCFG_ST + b"not gzip" + IKCFG_ED
    with pytest.raises(BzImageError, match="corrupt embedded config"):
        BzImage.read(write(tmp_path, bzimage(gzip.compress(broken)))).ikconfig()


def test_not_a_bzimage_is_one_line(tmp_path):
    with pytest.raises(BzImageError, match=r"kernel .*/missing does not exist"):
        BzImage.read(tmp_path / "missing")
    with pytest.raises(BzImageError, match="is a directory"):
        BzImage.read(tmp_path)
    with pytest.raises(BzImageError, match="too short"):
        BzImage.read(write(tmp_path, b"\x7fELF" + b"\0" * 100))
    with pytest.raises(BzImageError, match="not an x86 bzImage"):
        BzImage.read(write(tmp_path, bzimage(b"\x1f\x8b\x08", boot_flag=0)))
    with pytest.raises(BzImageError, match="older than 2.08"):
        BzImage.read(write(tmp_path, bzimage(b"\x1f\x8b\x08", protocol=0x0204)))
    with pytest.raises(BzImageError, match="no kernel version string"):
        BzImage.read(write(tmp_path, bzimage(b"\x1f\x8b\x08", version=b"")))


def test_debian_kernels_release(debian_kernel_files):
    """The release in each cached Debian kernel's header is the package's."""
    for release, vmlinuz in debian_kernel_files:
        bz = BzImage.read(vmlinuz)
        assert bz.release == release
        assert bz.compression() in ("lz4", "zstd", "gzip", "xz")  # bookworm lz4; trixie, sid zstd


@pytest.fixture(scope="module")
def debian_kernel_files() -> list[tuple[str, Path]]:
    """(release, vmlinuz) of the Debian kernels in the cache (bookworm's is fetched)."""
    out = []
    recipe = image.load_recipe()
    for suite in ("bookworm", "trixie", "sid"):
        r = recipe.for_kernel(f"debian:{suite}")
        tree = debian.Tree.load(image._tree_dir(r, image.paths.cache_root()))
        if tree is None and suite == recipe.suite:
            tree = debian.fetch(r.suite, [r.kernel_package, r.busybox_package],
                                image._tree_dir(r, image.paths.cache_root()),
                                show_progress=False, keep=r.keep)
        if tree is not None:
            k = KernelTree.find(tree.root)
            out.append((k.release, k.vmlinuz))
    return out
