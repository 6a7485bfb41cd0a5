"""Out-of-tree kernel modules for a guest kernel: the kbuild machinery of
``vuser.guest.kmod`` for a developer's own driver directory.

``build_external_module(source_dir, kernel="debian:bookworm")`` builds every
module that ``source_dir/Kbuild`` names (``obj-m += foo.o``) from the ``.c``
and ``.h`` files directly in ``source_dir``, against the headers of the
kernel the guest boots (fetched and cached as for ``vuser_dma.ko``), checks
each module's vermagic against that kernel, and copies the ``.ko`` files to
``out_dir``. Results are cached by sources, kernel package and compiler.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vuser import debian
from vuser.errors import UserError
from vuser.guest import image, kmod, paths

__all__ = ["build_external_module"]


def build_external_module(source_dir: str | Path, out_dir: str | Path | None = None, *,
                          kernel: str | None = None, cache: Path | None = None,
                          progress: bool = False) -> list[Path]:
    """Build the modules of ``source_dir/Kbuild`` for the guest ``kernel``
    (``debian:<suite>``; default: the image recipe's) into ``out_dir``
    (default: ``source_dir``). Returns the ``.ko`` paths. ``KmodError``
    (a ``UserError``) carries the compiler's message when the build fails."""
    source = Path(source_dir).resolve()
    if not (source / "Kbuild").is_file():
        raise UserError(f"{source}: no Kbuild file (obj-m += NAME.o) to build modules from")
    names = kmod.module_names(source)
    if not names:
        raise UserError(f"{source}/Kbuild names no module (obj-m += NAME.o)")
    cache = cache or paths.cache_root()
    recipe = image.load_recipe().for_kernel(kernel)
    tree = debian.fetch(recipe.suite, [recipe.kernel_package, recipe.busybox_package],
                        cache / f"debian-{recipe.suite}", show_progress=progress, keep=recipe.keep)
    built = kmod.build_modules(tree, recipe.suite, root=source, cache=cache,
                               status=(lambda s: print(f"vuser: {s}")) if progress else None)
    out = Path(out_dir) if out_dir is not None else source
    out.mkdir(parents=True, exist_ok=True)
    result = []
    for name in names:
        dest = out / f"{name}.ko"
        shutil.copyfile(built.modules[name], dest)
        result.append(dest)
    return result
