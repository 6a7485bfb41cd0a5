"""``vuser experiment``: run one of the nested-translation experiments."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from vuser.errors import UserError

HELP = "run a reproducible nested-translation experiment (table + plot)"
DESCRIPTION = """\
Run an experiment from experiments/ (one module each): it prints a table and
writes a PNG plot into --out (default: the current directory). Without
matplotlib (pip install 'vuser[plot]') the table still prints, with a
one-line note instead of the plot. Each experiment's --help says whether it
runs headless or against a running guest (--socket PATH).

  vuser experiment list
  vuser experiment iotlb-hit-rate
  vuser experiment nested-walk-cost --out /tmp/plots
  vuser experiment s2-unmap-under-dma
  vuser experiment iotlb-hit-rate -- --help     (the experiment's own options)
"""

ENV_DIR = "VUSER_EXPERIMENTS"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="an experiment, or `list`")
    parser.add_argument("--out", "-o", default=".", metavar="DIR",
                        help="where the plot goes (default: the current directory)")
    parser.add_argument("--dir", metavar="DIR",
                        help=f"the experiments directory (default: ${ENV_DIR}, else the "
                             "checkout's experiments/)")
    parser.add_argument("options", nargs=argparse.REMAINDER, metavar="...",
                        help="options of the experiment (see `vuser experiment NAME --help`)")


def experiments_dir(arg: str | None) -> Path:
    for cand in (arg, os.environ.get(ENV_DIR)):
        if cand:
            p = Path(cand)
            if not (p / "__init__.py").is_file():
                raise UserError(f"{p} is not an experiments directory (no __init__.py)")
            return p
    import vuser
    p = Path(vuser.__file__).resolve().parent.parent / "experiments"
    if not (p / "__init__.py").is_file():
        raise UserError(f"no experiments directory next to the vuser package ({p}); "
                        f"give --dir or set ${ENV_DIR}")
    return p


def available(d: Path) -> dict[str, Path]:
    return {f.stem.replace("_", "-"): f for f in sorted(d.glob("*.py"))
            if not f.name.startswith("_")}


def load(d: Path, name: str) -> Any:
    """Import ``experiments.<name>`` from ``d`` (its parent goes on sys.path)."""
    found = available(d)
    if name not in found:
        raise UserError(f"no experiment {name!r} (known: {', '.join(found) or 'none'})")
    parent = str(d.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return importlib.import_module(f"{d.name}.{found[name].stem}")


def run(args: argparse.Namespace) -> int:
    d = experiments_dir(args.dir)
    if args.name == "list":
        for name in available(d):
            mod = load(d, name)
            print(f"{name:24} {getattr(mod, 'SUMMARY', '')}")
        return 0
    mod = load(d, args.name)
    if not args.verbose:  # the servers an experiment runs log at INFO; keep the table clean
        logging.getLogger("vuser").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog=f"vuser experiment {args.name}",
                                     description=mod.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", "-o", default=None, metavar="DIR",
                        help="where the plot goes (default: the current directory)")
    if hasattr(mod, "configure"):
        mod.configure(parser)
    opts = args.options[1:] if args.options[:1] == ["--"] else args.options
    eargs = parser.parse_args(opts)
    out_dir = Path(eargs.out or args.out)
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is not a directory")
    result = mod.run(eargs)
    print_result(result)
    if result.plot is None:
        return 0
    from vuser.rpc.plot import PlotUnavailable

    png = out_dir / f"{args.name}.png"
    try:
        result.plot(str(png))
    except PlotUnavailable as e:
        print(str(e))
        return 0
    print(f"plot: {png}")
    return 0


def print_result(r: Any) -> None:
    """The experiment's title, table and notes."""
    from vuser.rpc.render import table

    print(r.title)
    print(table(list(r.headers), r.rows))
    for note in r.notes:
        print(note)
