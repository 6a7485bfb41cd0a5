"""The guest kernel of a run: ``--kernel debian:SUITE`` or ``--kernel PATH [--modules DIR]``.

- ``debian:bookworm`` (the recipe's suite, 6.1), ``debian:trixie`` (6.12),
  ``debian:sid`` (7.x), or any ``debian:<suite>``: that suite's cloud kernel,
  as a manifest table's ``kernel =`` gives it (``vuser.guest.image``).
- ``PATH``: a user's bzImage (``vuser.guest.localkernel``), imaged by
  ``vuser.guest.custom_image``. Before booting, each program the kernel cannot
  run is refused in one line (``vuser.guest.requirements``): a missing config
  option fails it; a missing ``vuser_dma.ko`` (no build tree given) skips it,
  naming the build tree as the missing prerequisite.

Without ``--kernel`` each program gets its manifest table's kernel (default the
recipe's). With it, every program runs on that kernel: tables that differ
only in their kernel (``kernel_sva``/``kernel_sva_sid``) run once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from vuser.errors import UserError

__all__ = ["KernelChoice", "choose", "DEBIAN_KERNELS"]

#: The Debian kernels vuser is tested with (any debian:<suite> is tried).
DEBIAN_KERNELS = ("debian:bookworm", "debian:trixie", "debian:sid")


@dataclass
class KernelChoice:
    """``spec`` (``debian:<suite>``, or None: each table's own) or a ``local`` kernel."""

    spec: str | None = None
    local: Any = None  # vuser.guest.localkernel.LocalKernel

    @property
    def given(self) -> bool:
        return self.spec is not None or self.local is not None

    def image(self, tests: Sequence[str] | None, *, progress: bool = True, shell: bool = False,
              table_kernel: str | None = None, extra_modules: Sequence[str] = ()):
        """The guest image for ``tests`` on this kernel (``table_kernel``: the
        manifest's, used when no --kernel was given)."""
        if self.local is not None:
            from vuser.guest.custom_image import build_custom_image

            return build_custom_image(self.local, tests, progress, shell=shell,
                                      extra_modules=extra_modules)
        from vuser.guest.image import build_image

        return build_image(tests=tests, progress=progress, shell=shell,
                           kernel=self.spec or table_kernel)

    def notes(self) -> list[str]:
        """One-line facts about a local kernel (config not checked, no vuser_dma.ko)."""
        if self.local is None:
            return []
        k = self.local
        out = [f"kernel {k.release} from {k.vmlinuz}; modules: "
               f"{k.modules_dir if k.modules_given else 'none given (all built in?)'}; config: "
               f"{k.config_source or 'not found'}"]
        if k.config_note:
            out.append(k.config_note)
        if k.build_tree is None:
            out.append(f"vuser_dma.ko is unavailable for kernel {k.release}: no build tree "
                       "(give --kernel-build DIR, or --modules with lib/modules/<release>/build)")
        return out

    def refusals(self, programs: Sequence[str], kernel_iommu: bool) -> dict[str, tuple[str, str]]:
        """``{program: (status, line)}`` for the programs this kernel cannot run:
        ``fail`` for a missing option, ``skip`` for a missing build tree."""
        if self.local is None:
            return {}
        from vuser.guest import requirements
        from vuser.guest.image import load_recipe

        k = self.local
        out = {}
        if k.config_text is not None:
            for name, line in requirements.refusals(
                    [(p, kernel_iommu) for p in programs], k.release, k.config_options(),
                    load_recipe().require, k.modules_given).items():
                out[name] = ("fail", line)
        if k.build_tree is None:
            for p in programs:
                if p not in out and requirements.needs_kmod(p):
                    out[p] = ("skip", f"{p}: vuser_dma.ko is unavailable for kernel {k.release}: "
                                      "no build tree given (--kernel-build DIR)")
        return out


def choose(kernel: str | None, modules: str | None = None,
           kernel_build: str | None = None) -> KernelChoice:
    """Parse --kernel/--modules/--kernel-build; ``UserError`` (one line) for bad ones."""
    if kernel is None:
        if modules is not None or kernel_build is not None:
            raise UserError(f"{'--modules' if modules else '--kernel-build'} goes with "
                            "--kernel PATH (a kernel of your own)")
        return KernelChoice()
    if kernel.startswith("debian:"):
        from vuser.guest.image import kernel_suite

        kernel_suite(kernel)
        if modules is not None or kernel_build is not None:
            raise UserError(f"{'--modules' if modules else '--kernel-build'} goes with "
                            f"--kernel PATH, not with {kernel} (its modules come with it)")
        return KernelChoice(spec=kernel)
    import re
    from pathlib import Path

    from vuser.guest.localkernel import LocalKernel

    if not Path(kernel).exists() and re.fullmatch(r"[a-z][a-z0-9-]*", kernel):
        raise UserError(f"kernel {kernel} does not exist (a Debian kernel is debian:{kernel})")
    return KernelChoice(local=LocalKernel.find(kernel, modules, kernel_build))


def merge_plans(plans: Sequence[Any]) -> list[Any]:
    """With --kernel every guest boots that kernel: plans that differ only in
    their table's kernel become one, each program once."""
    merged: dict[tuple, Any] = {}
    for p in plans:
        key = (p.devices, p.iommu, p.append)
        if key in merged:
            m = merged[key]
            merged[key] = replace(m, programs=tuple(dict.fromkeys((*m.programs, *p.programs))),
                                  timeout=m.timeout + p.timeout)
        else:
            merged[key] = replace(p, programs=tuple(dict.fromkeys(p.programs)), kernel=None)
    return list(merged.values())
