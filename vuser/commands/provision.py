"""``vuser provision``: fetch or build what guests need, with progress; idempotent."""

from __future__ import annotations

import argparse

HELP = "provision QEMU (with vfio-user-pci) and the guest image into the cache"
DESCRIPTION = """\
Provision what `vuser run` and the guest tests need, into the cache
($VUSER_CACHE, default ~/.cache/vuser):

  --qemu   a QEMU >= 10.1 with vfio-user-pci: $VUSER_QEMU, a system QEMU that
           has it, or Debian's qemu-system-x86 unpacked into the cache
  --image  the guest image: a Debian kernel, busybox and the guest tests

Without options, both. A second run downloads and builds nothing.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qemu", action="store_true", help="provision QEMU only (with --image: both)")
    parser.add_argument("--image", action="store_true", help="build the guest image only")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no summary; progress only when something is downloaded or built")


def run(args: argparse.Namespace) -> int:
    from vuser.qemu.find import find_qemu

    both = not args.qemu and not args.image
    if args.qemu or both:
        qemu = find_qemu(show_progress=True)
        if not args.quiet:
            print(f"qemu: QEMU {qemu.version} ({qemu.source}) {qemu.path}")
    if args.image or both:
        from vuser.guest.image import build_image

        image = build_image(progress=True)
        if not args.quiet:
            tests = ", ".join(f"{n} ({len(c)} cases)" for n, c in image.tests.items()) or "none"
            print(f"image: kernel {image.kernel_release}, {image.kernel.parent}")
            print(f"guest tests: {tests}")
    return 0
