"""The ``vuser`` command line: argument parsing and error reporting only.

Subcommands live in ``vuser.commands``, one module each; this module finds them,
builds the parser and turns ``UserError`` into one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

import vuser
import vuser.commands
from vuser.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vuser",
        description="vfio-user server for PCIe devices with PASID, ATS, PRI and DMA, "
                    "translated through a model of Linux iommufd (/dev/ioasid).",
    )
    parser.add_argument("--version", action="version", version=f"vuser {vuser.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging; -v traces every vfio-user message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(vuser.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"vuser.commands.{info.name}")
        name = getattr(mod, "NAME", info.name.replace("_", "-"))
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0,
                       help="more logging, as before the command (the counts add up)")
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    args.verbose += args.sub_verbose  # -v before the command and after it
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # QMP's own connection chatter ("Task.Reader: end-of-file" as QEMU quits) only with -v.
    logging.getLogger("qemu.qmp").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"vuser: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
