"""``vuser doctor``: what is there and what is missing to boot guests; changes nothing."""

from __future__ import annotations

import argparse

HELP = "check QEMU, KVM, the guest image and the guest tests"
DESCRIPTION = """\
Report, without downloading or building anything:
  - QEMU: version, path and source (env, system, provisioned), or why none fits;
  - KVM: whether a KVM guest actually runs here (a mini-guest, then the
    Linux guest image if it is built), else TCG;
  - the guest image and the guest tests: built for the current sources or not;
  - whether the image's kernel can own vuser-iommu (`vuser run --kernel-iommu`:
    CONFIG_INTEL_IOMMU, and CONFIG_INTEL_IOMMU_SVM for SVA), from its config.
Exit status 0 when `vuser run` can boot a guest without provisioning, else 1.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-kvm-probe", action="store_true",
                        help="only check /dev/kvm, do not boot a probe guest")


def _cached_image(st: dict | None):
    """The built guest image (from the cache, nothing built), or None."""
    if not st or not st.get("image"):
        return None
    from vuser.errors import UserError
    from vuser.guest.image import build_image
    try:
        return build_image(progress=False)
    except UserError:
        return None


def _line(ok: bool | None, what: str, text: str) -> str:
    mark = {True: "[green]ok[/]", False: "[red]--[/]", None: "[yellow]??[/]"}[ok]
    return f"{mark}  [bold]{what:<12}[/] {text}"


def _kernel_iommu_line(out, st: dict) -> None:
    """The image kernel's intel_iommu, read from its config (informational)."""
    from rich.markup import escape

    from vuser.errors import UserError
    from vuser.qemu.kernel_iommu import check_kernel_config

    if not st.get("kernel_config"):
        out.print(_line(None, "kernel IOMMU", "not checked (the kernel package is not unpacked)"))
        return
    try:
        notes = check_kernel_config(st["kernel_config"], st.get("kernel") or "")
    except UserError as e:
        out.print(_line(False, "kernel IOMMU", escape(f"{e}; `vuser run --kernel-iommu` "
                                                      "cannot be used")))
        return
    text = "intel_iommu built in: `vuser run --kernel-iommu` gives it the vIOMMU"
    out.print(_line(True if not notes else None, "kernel IOMMU",
                    escape("; ".join([text, *notes]))))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from vuser.errors import UserError
    from vuser.qemu import find

    out = Console(highlight=False, soft_wrap=True)
    healthy = True

    qemu = None
    try:
        qemu = find.installed()
    except UserError as e:
        out.print(_line(False, "QEMU", escape(str(e))))
        healthy = False
    else:
        if qemu:
            out.print(_line(True, "QEMU", escape(f"{qemu.version} ({qemu.source}) {qemu.path}; "
                                                 "vfio-user-pci present, with a socket property")))
        else:
            out.print(_line(False, "QEMU", "none with vfio-user-pci; `vuser provision --qemu` "
                                           "unpacks Debian's into the cache"))
            healthy = False

    st = None
    try:
        from vuser.guest.image import status
        st = status()
    except (ImportError, UserError) as e:
        out.print(_line(False, "guest image", escape(f"cannot check: {e}")))
        healthy = False
    if st is not None:
        if st["image"]:
            out.print(_line(True, "guest image", escape(f"kernel {st['kernel']}, {st['path']}")))
        else:
            out.print(_line(False, "guest image", escape((st.get("problem") or "not built")
                                                         + "; `vuser provision --image` builds it")))
            healthy = False
        _kernel_iommu_line(out, st)
        if st["tests_built"]:
            tests = ", ".join(f"{n} ({c} cases)" for n, c in sorted(st["tests"].items())) or "none"
            out.print(_line(True, "guest tests", escape(tests)))
        else:
            out.print(_line(False, "guest tests", "not built; `vuser provision --image` builds them"))
            healthy = False
    if qemu is None:
        out.print(_line(None, "KVM", "not probed (no QEMU)"))
    elif args.no_kvm_probe:
        from vuser.qemu.kvm import KVM_DEV
        import os
        usable = KVM_DEV.exists() and os.access(KVM_DEV, os.R_OK | os.W_OK)
        out.print(_line(None, "KVM", f"{KVM_DEV} {'accessible' if usable else 'not accessible'} "
                                     "(not probed); guests use TCG unless --accel kvm"))
    else:
        from vuser.qemu.kvm import probe_kvm
        kvm = probe_kvm(qemu, linux=_cached_image(st))
        note = "; `vuser run --accel kvm` may be used" if kvm.usable else "; guests use TCG"
        out.print(_line(kvm.usable, "KVM", escape(kvm.reason + note)))

    return 0 if healthy else 1
