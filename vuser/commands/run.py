"""``vuser run``: boot a guest against vuser devices, run guest tests, print a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

HELP = "boot a Linux guest against vuser devices and run guest tests (or a shell)"
DESCRIPTION = """\
Start a vuser server with the given devices, boot a Linux guest in QEMU
against it (q35, each device behind its own PCIe root port, TCG unless
--accel kvm), run the guest tests and stream the serial console. Prints a
summary of the tests' KTAP results and exits with their status: 0 when all
passed. Once QEMU runs, the server's control socket is printed: drive the
ioasid model and watch the devices from another terminal with `vuser ctl`.

Missing pieces are provisioned first: QEMU with vfio-user-pci, the guest
image (see `vuser provision`, `vuser doctor`).

  vuser run                          every guest test, each with the devices
                                     tests/guest/guest_tests.toml gives it
                                     (one guest per device list)
  vuser run --test enumerate         one guest test (repeatable), its devices too
  vuser run --device sample --test environment   with the devices given
  vuser run --shell                  an interactive guest shell (Ctrl-] leaves)
"""

DEFAULT_DEVICES = ("sample",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", "-d", action="append", metavar="TYPE",
                        help="a device to serve, TYPE[,key=value...] (repeatable; default: "
                             "what each test needs, from tests/guest/guest_tests.toml; "
                             "sample for --shell)")
    parser.add_argument("--test", "-t", action="append", metavar="NAME",
                        help="a guest test to run (repeatable; default: all)")
    parser.add_argument("--shell", action="store_true",
                        help="an interactive shell on the guest's console instead of tests")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop a guest that runs longer (default: the manifest's timeout "
                             "of its tests, 300 s with --device; none with --shell)")
    parser.add_argument("--memory", type=int, default=512, metavar="MIB", help="guest RAM (default 512)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                        help="accelerator (default tcg; see `vuser doctor` for KVM)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for `vuser serve` (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not stream the console (its tail is shown on failure)")


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode (keys go to the guest as typed), restored after."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def control_socket_path(server_args: list[str]) -> tuple[list[str], str]:
    """The server's arguments with ``--control PATH`` (unless given), and PATH."""
    for i, a in enumerate(server_args):
        if a == "--control" and i + 1 < len(server_args):
            return list(server_args), server_args[i + 1]
        if a.startswith("--control="):
            return list(server_args), a.split("=", 1)[1]
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"vuser-{os.getpid()}.ctl")
    return list(server_args) + ["--control", path], path


def _on_ready(info, verbose: bool, control: str | None = None) -> None:
    """Hook once QEMU runs: print the control socket for `vuser ctl`."""
    if control is not None:
        print(f"vuser: control socket {control} (vuser ctl --socket {control} ...)",
              file=sys.stderr, flush=True)
    if verbose:
        for sock in info.sockets:
            print(f"vuser: device socket {sock}", file=sys.stderr)


def _summary(console: str) -> tuple[list[tuple[str, str, str]], bool]:
    """(name, status, reason) per top-level KTAP result and per case; and whether all passed."""
    from vuser.guest import ktap

    doc = ktap.parse(console)
    rows: list[tuple[str, str, str]] = []
    all_ok = bool(doc.results)
    for r in doc.results:
        status = r.status.value if r.status else "unfinished"
        rows.append((r.name, status, r.reason))
        for sub in r.subtests:
            rows.append((f"  {sub.name}", sub.status.value if sub.status else "unfinished", sub.reason))
        if r.status not in (ktap.Status.PASS, ktap.Status.SKIP, ktap.Status.XFAIL):
            all_ok = False
    if doc.plan is not None and len(doc.results) < doc.plan:
        rows.append((f"({doc.plan - len(doc.results)} planned test(s))", "missing", ""))
        all_ok = False
    return rows, all_ok


def _print_summary(rows: list[tuple[str, str, str]]) -> None:
    from rich.console import Console
    from rich.markup import escape

    out = Console(stderr=False, highlight=False)
    colour = {"pass": "green", "skip": "yellow", "xfail": "yellow"}
    out.print("[bold]guest test results[/]")
    for name, status, reason in rows:
        c = colour.get(status, "red")
        extra = f"  # {escape(reason)}" if reason else ""
        out.print(f"  [{c}]{status:<10}[/] {escape(name)}{extra}")


def _exit_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, so the launcher's teardown runs (no orphaned QEMU)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    from vuser.errors import UserError
    from vuser.guest.image import build_image
    from vuser.qemu.find import find_qemu
    from vuser.qemu.launcher import launch

    if args.shell and args.test:
        raise UserError("--shell and --test do not go together")
    if args.shell and not os.isatty(sys.stdin.fileno()):
        raise UserError("--shell needs a terminal on standard input")
    if args.memory < 64:
        raise UserError(f"--memory must be at least 64 MiB, not {args.memory}")
    timeout = args.timeout if args.timeout is not None else (24 * 3600.0 if args.shell else 300.0)
    if timeout <= 0:
        raise UserError(f"--timeout must be positive, not {args.timeout}")
    _exit_on_sigterm()

    qemu = find_qemu(show_progress=True)  # first: its problems are found without a build
    verbose = getattr(args, "verbose", 0) > 0
    server_args, control = control_socket_path(args.server_arg)

    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def launch_args(devices: list[str], guest_timeout: float) -> dict:
        return dict(devices=devices, timeout=guest_timeout, memory_mib=args.memory,
                    accel=args.accel, extra_server_args=server_args, qemu=qemu,
                    on_ready=lambda info: _on_ready(info, verbose, control))

    if args.shell:
        devices = args.device or list(DEFAULT_DEVICES)
        image = build_image(tests=None, progress=True, shell=True)
        print(f"vuser: booting kernel {image.kernel_release} with QEMU {qemu.version} "
              f"({qemu.source}), {args.accel}, devices: {', '.join(devices)}", file=sys.stderr)
        print("vuser: guest shell on the serial console; Ctrl-] leaves", file=sys.stderr)
        fd = sys.stdin.fileno()
        with _raw_terminal(fd):
            result = launch(image, console_echo=echo, console_input=fd,
                            **launch_args(devices, timeout))
        print(file=sys.stderr)
        if result.error and not result.error.startswith("console session ended"):
            raise UserError(result.error)
        return 0

    worst = 0
    for plan in _plan(args):
        image = build_image(tests=list(plan.programs) if plan.programs else None, progress=True)
        guest_timeout = args.timeout if args.timeout is not None else plan.timeout
        print(f"vuser: booting kernel {image.kernel_release} with QEMU {qemu.version} "
              f"({qemu.source}), {args.accel}, devices: {', '.join(plan.devices) or 'none'}; "
              f"tests: {', '.join(image.tests)}", file=sys.stderr)
        result = launch(image, console_echo=None if args.quiet else echo,
                        **launch_args(list(plan.devices), guest_timeout))
        status, error = _report(result, args.quiet)
        if error:  # the guest crashed, hung or lied: stop here
            raise UserError(error)
        worst = max(worst, status)
    return worst


def _plan(args: argparse.Namespace):
    """The guests to boot. With --device: one, with those devices, running the
    tests named (or all). Without: the devices each test needs, from
    tests/guest/guest_tests.toml, one guest per device list (tests that need
    the same devices share it); the timeout is the manifest's unless --timeout."""
    from vuser.guest import manifest

    if args.device:
        return [manifest.BootPlan(tuple(args.device), tuple(args.test or ()), 300.0)]
    specs = manifest.load_manifest()
    names = list(args.test) if args.test else list(specs)
    known = [n for n in names if n in specs]
    unlisted = [n for n in names if n not in specs]  # the image builder judges these
    plans = manifest.boot_groups(specs, known) if known else []
    if unlisted:
        plans.insert(0, manifest.BootPlan(DEFAULT_DEVICES, tuple(unlisted), 300.0))
    return plans


def _report(result, quiet: bool) -> tuple[int, str | None]:
    """Print one guest's summary; (exit status, error or None)."""
    rows, all_ok = _summary(result.console)
    if rows:
        _print_summary(rows)
    for line in result.qemu_log.splitlines():
        if line.strip():
            print(f"vuser: QEMU: {line.strip()}", file=sys.stderr)
    if result.error:
        # A crash or a hang: the test failed; show how the console ended.
        if quiet or result.timed_out:
            tail = result.console_tail(15)
            print("vuser: last console lines:\n" + (tail or "(none)"), file=sys.stderr)
        return 1, result.error
    if not rows:
        return 1, f"the guest printed no KTAP results (exit status {result.exit_status})"
    status = result.exit_status
    if status == 0 and not all_ok:
        return 1, "the guest exited 0 but its KTAP results show failures or missing tests"
    print(f"vuser: guest exited with status {status} in {result.duration_s:.1f} s", file=sys.stderr)
    return status, None
