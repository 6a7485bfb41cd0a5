"""What each guest test program needs of its kernel: config options and ``vuser_dma.ko``.

- Every program: the recipe's ``[kernel.require]`` (``images/guest.toml``:
  serial console, initramfs, devtmpfs, hugetlbfs, pagemap, PCIe with
  MSI/ATS/PRI/PASID, ``UIO_PCI_GENERIC``).
- A kernel-owned guest (``iommu = "kernel"``): ``INTEL_IOMMU=y`` (the stock
  driver owns vuser-iommu) and ``PCI_MSI=y``, but not ``UIO``/``UIO_PCI_GENERIC``
  (no program there drives a device from userspace).
- SVA programs (those calling ``vdma_kmod_sva_bind``): ``INTEL_IOMMU_SVM=y``.
- Programs that use ``vuser_dma.ko`` (``vdma_kmod_*`` in their source): the
  module, built for that kernel, and ``MODULES=y``.

``refusals()`` names, for a kernel's config, each program it cannot run, in
one line naming the options and the program.
"""

from __future__ import annotations

from pathlib import Path

from vuser.guest import paths

__all__ = ["KERNEL_IOMMU_OPTIONS", "SVA_OPTIONS", "needs_kmod", "needs_sva", "program_options",
           "refusals"]

KERNEL_IOMMU_OPTIONS = {"INTEL_IOMMU": ["y"], "PCI_MSI": ["y"]}
SVA_OPTIONS = {"INTEL_IOMMU_SVM": ["y"]}
KMOD_OPTIONS = {"MODULES": ["y"]}
#: Base options only userspace-owned guests need (their programs drive devices through uio).
USERSPACE_ONLY = ("UIO", "UIO_PCI_GENERIC")


def _source(program: str, guest_tests: Path) -> str:
    try:
        return (guest_tests / f"{program}.c").read_text(errors="replace")
    except OSError:
        return ""


def needs_kmod(program: str, guest_tests: Path = paths.GUEST_TESTS) -> bool:
    """The program drives vuser_dma.ko (``vdma_kmod_*`` calls)."""
    return "vdma_kmod_" in _source(program, guest_tests)


def needs_sva(program: str, guest_tests: Path = paths.GUEST_TESTS) -> bool:
    """The program binds a process address space (SVA)."""
    return "vdma_kmod_sva_bind" in _source(program, guest_tests)


def program_options(program: str, kernel_iommu: bool, base: dict[str, list[str]],
                    guest_tests: Path = paths.GUEST_TESTS) -> dict[str, list[str]]:
    """The config options (name -> allowed values) ``program`` needs (module doc)."""
    want = dict(base)
    if kernel_iommu:  # the kernel's own driver owns the devices: no uio
        for k in USERSPACE_ONLY:
            want.pop(k, None)
        want.update(KERNEL_IOMMU_OPTIONS)
    if needs_kmod(program, guest_tests):
        want.update(KMOD_OPTIONS)
    if needs_sva(program, guest_tests):
        want.update(SVA_OPTIONS)
    return want


def refusals(programs: list[tuple[str, bool]], release: str, options: dict[str, str],
             base: dict[str, list[str]], have_modules: bool = True,
             guest_tests: Path = paths.GUEST_TESTS) -> dict[str, str]:
    """``{program: one line}`` for each (program, kernel_iommu) whose options
    the kernel (config ``options``) lacks; without a modules tree
    (``have_modules`` false), also those needing an option the kernel has as a module."""
    out = {}
    for name, kernel_iommu in programs:
        want = program_options(name, kernel_iommu, base, guest_tests)
        bad = [k for k, v in want.items() if options.get(k, "n") not in v]
        if bad:
            got = ", ".join(f"CONFIG_{k}={options.get(k, 'n')} (needs {'/'.join(want[k])})"
                            for k in bad)
            out[name] = f"{name} needs kernel options that kernel {release} lacks: {got}"
            continue
        as_module = [k for k in want if options.get(k) == "m"]
        if as_module and not have_modules:
            out[name] = (f"{name} needs {', '.join(f'CONFIG_{k}' for k in as_module)}, a module "
                         f"(=m) of kernel {release}, but no modules tree was given (--modules DIR)")
    return out
