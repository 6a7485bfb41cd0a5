"""``vuser run``: boot a guest against vuser devices, run guest tests, print a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import replace

from vuser.commands._run_report import ProgramResult, print_summary, report

HELP = "boot a Linux guest against vuser devices and run the demo, guest tests or a shell"
DESCRIPTION = """\
Start a vuser server with the devices a guest test needs, boot a Linux guest
in QEMU against it (q35, each device behind its own PCIe root port, TCG
unless --accel kvm), run guest test programs and stream the serial console
(KTAP). Then print a summary and exit with the tests' status: 0 when all
passed. Once QEMU runs, the server's control socket is printed: drive the
ioasid model and watch the devices from another terminal with `vuser ctl`.

Without --test it runs the demo: the programs marked `demo = true` in
tests/guest/guest_tests.toml, in its order: `enumerate` (a sample device and
a vuser-dma: config space, capabilities, BARs, DMA, interrupts), `demo` (a
vuser-dma behind the vIOMMU: stage-1 tables for PASID 1, a pass-through
entry for requests without a PASID, a memcpy each way and a fault, told on
the console), and any kernel-owned ones. `make run` is this.

With --kernel-iommu the guest kernel's own intel_iommu driver owns the
vuser-iommu (there must be exactly one): the launcher finds where the
firmware puts each device (a short firmware-only boot, cached), labels each
device with its BDF, passes an ACPI DMAR for the unit and boots with
`intel_iommu=on,sm_on intremap=off`. Programs declare the mode they need
(`iommu = "kernel"` in the manifest); --kernel-iommu runs only those.

Missing pieces are provisioned first: QEMU with vfio-user-pci, the guest
image (see `vuser provision`, `vuser doctor`). The devices each program
needs are in tests/guest/guest_tests.toml; programs with the same devices,
vIOMMU mode and kernel arguments share a guest.

  vuser run                          the demo (enumerate, demo, ...)
  vuser run --all                    every guest test program
  vuser run --test dma_nested        one program (repeatable), with its devices
  vuser run --device sample --test environment   with the devices given
  vuser run --test environment --append foo=1 --trace run.trace --control /tmp/v.ctl
                                     kernel options, a trace and a fixed control socket
  vuser run --shell                  an interactive guest shell (Ctrl-] leaves)
  vuser run --exec 'lspci -n'        one shell command in the guest (through the
                                     guest agent, not the console); its status
  vuser run --share ~/src/drv --exec 'ls ~/src/drv'
                                     a host directory at the same path in the guest
  vuser run --kernel-iommu --shell   a shell in a guest whose kernel owns vuser-iommu
  vuser run --kernel-iommu           the kernel-owned demo programs
  vuser run --kernel debian:trixie --test environment   on Debian 13's 6.12 kernel
  vuser run --kernel ~/linux/arch/x86/boot/bzImage --test environment
                                     on your own kernel (its build tree: modules,
                                     .config, vuser_dma.ko)
  vuser run --kernel ROOT/boot/vmlinuz-R --modules ROOT --all

--kernel PATH checks each program's kernel options (the config embedded in
the bzImage with CONFIG_IKCONFIG, gzip/xz/lzma/bzip2-compressed; else the build
tree's .config or a config-RELEASE beside the kernel or its modules) and
refuses, in one line each, the programs the kernel lacks an option for; the
others still run.
"""

DEFAULT_DEVICES = ("sample",)
#: The devices of a kernel-owned guest without --device.
KERNEL_IOMMU_DEVICES = ("vuser-iommu", "vuser-dma")


def default_tests(iommu: str | None = None) -> tuple[str, ...]:
    """What `vuser run` (and `make run`) runs without --test or --all: the
    manifest's ``demo = true`` programs in its order; with ``iommu``, only
    those of that vIOMMU mode ("user" or "kernel")."""
    from vuser.guest import manifest

    specs = manifest.load_manifest()
    return tuple(n for n in manifest.demo_programs(specs) if iommu in (None, specs[n].iommu))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", "-d", action="append", metavar="TYPE",
                        help="a device to serve, TYPE[,key=value...] (repeatable; default: "
                             "what each test needs, from tests/guest/guest_tests.toml; "
                             "sample for --shell, vuser-iommu and vuser-dma for "
                             "--kernel-iommu --shell)")
    parser.add_argument("--test", "-t", action="append", metavar="NAME",
                        help="a guest test program to run (repeatable; default: the demo, "
                             "the programs marked demo = true in tests/guest/guest_tests.toml)")
    parser.add_argument("--all", action="store_true",
                        help="run every guest test program (guest-tests/*.c)")
    parser.add_argument("--shell", action="store_true",
                        help="an interactive shell on the guest's console instead of tests")
    parser.add_argument("--kernel-iommu", action="store_true",
                        help="the guest kernel's intel_iommu owns the vuser-iommu (DMAR, BDF "
                             "labels, intel_iommu=on,sm_on intremap=off); only programs with "
                             "iommu = \"kernel\" in the manifest")
    parser.add_argument("--kernel", metavar="KERNEL", default=None,
                        help="the guest kernel: debian:bookworm (6.1, the default), "
                             "debian:trixie (6.12), debian:sid (7.x) -- that suite's cloud "
                             "kernel, fetched and imaged on first use -- or PATH, a bzImage of "
                             "your own (its release is read from its header; see --modules). "
                             "Default: each program's manifest kernel (bookworm unless its "
                             "table says kernel = ...)")
    parser.add_argument("--modules", metavar="DIR", default=None,
                        help="the modules of --kernel PATH: DIR/lib/modules/RELEASE (make "
                             "modules_install INSTALL_MOD_PATH=DIR), that folder itself, or a "
                             "kernel build tree; only the modules the run needs go into the "
                             "guest. Default: beside the kernel (ROOT/boot/vmlinuz-R -> "
                             "ROOT/lib/modules/R; TREE/arch/x86/boot/bzImage -> TREE)")
    parser.add_argument("--kernel-build", metavar="DIR", default=None,
                        help="a build tree (or headers) of --kernel PATH to build vuser_dma.ko "
                             "against with the host's gcc (default: a build tree given as "
                             "--modules, or lib/modules/RELEASE/build); without one the "
                             "programs that need vuser_dma.ko are skipped, saying so")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop a guest that runs longer (default: the manifest's timeout "
                             "of its tests, 300 s with --device; none with --shell; with "
                             "--exec: the command's, 300 s)")
    parser.add_argument("--memory", type=int, default=512, metavar="MIB", help="guest RAM (default 512)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                        help="accelerator (default tcg; see `vuser doctor` for KVM)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for `vuser serve` (repeatable)")
    parser.add_argument("--append", metavar="ARGS", default="",
                        help="extra kernel options for each guest, after the manifest's append "
                             "(one quoted string; vuser.* is the launcher's)")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="an extra QEMU argument, passed through as is (repeatable; "
                             "--qemu-arg=-smp for one that starts with a dash)")
    parser.add_argument("--control", metavar="PATH",
                        help="the server's control socket for `vuser ctl` (default: a "
                             "fresh path in the temporary directory, printed once QEMU runs)")
    parser.add_argument("--trace", metavar="FILE",
                        help="record a model trace of each guest's whole run into FILE (`vuser "
                             "serve --trace`); with several guests one file each, the guest's "
                             "number inserted before the suffix (run.1.trace, run.2.trace, ...)")
    parser.add_argument("--exec", "-e", dest="exec_cmd", metavar="CMD",
                        help="run the shell command CMD in the guest through the guest agent "
                             "(a virtio-serial port, not the console), show its output and exit "
                             "with its status (devices: --device, else sample; vuser-iommu and "
                             "vuser-dma with --kernel-iommu)")
    parser.add_argument("--share", action="append", default=[], metavar="DIR",
                        help="make the host directory DIR visible in the guest at the same "
                             "absolute path (repeatable): 9p when QEMU and the guest kernel "
                             "have it, else copied into the initramfs (a snapshot; says so)")
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


def user_append(text: str) -> tuple[str, ...]:
    """The words of --append; ``vuser.*`` is refused, as in the manifest (the launcher sets it)."""
    from vuser.errors import UserError

    words = tuple(text.split())
    taken = [w for w in words if w.startswith("vuser.")]
    if taken:
        raise UserError(f"--append must not set vuser.* (the launcher does): {taken[0]}")
    return words


def trace_paths(trace: str | None, guests: int) -> list[str | None]:
    """The --trace file of each guest: FILE itself for one guest; for several,
    FILE with the guest's number (from 1) before its suffix."""
    if trace is None:
        return [None] * guests
    if guests == 1:
        return [trace]
    from pathlib import Path

    p = Path(trace)
    return [str(p.with_name(f"{p.stem}.{i}{p.suffix}")) for i in range(1, guests + 1)]


def _on_ready(info, verbose: bool, control: str | None = None) -> None:
    """Hook once QEMU runs: print the launcher's notes and the control socket for `vuser ctl`."""
    for note in info.notes:
        print(f"vuser: {note}", file=sys.stderr, flush=True)
    if control is not None:
        print(f"vuser: control socket {control} (vuser ctl --socket {control} ...)",
              file=sys.stderr, flush=True)
    if verbose:
        for sock in info.sockets:
            print(f"vuser: device socket {sock}", file=sys.stderr)


def _exit_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, so the launcher's teardown runs (no orphaned QEMU)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    from vuser.errors import UserError
    from vuser.qemu.find import find_qemu
    from vuser.qemu.launcher import launch

    exec_cmd = getattr(args, "exec_cmd", None)
    if exec_cmd is not None and (args.shell or args.test or args.all):
        other = "--shell" if args.shell else "--test" if args.test else "--all"
        raise UserError(f"--exec and {other} do not go together")
    if args.shell and (args.test or args.all):
        raise UserError(f"--shell and {'--test' if args.test else '--all'} do not go together")
    if args.test and args.all:
        raise UserError("--test and --all do not go together")
    if args.shell and not os.isatty(sys.stdin.fileno()):
        raise UserError("--shell needs a terminal on standard input")
    if args.memory < 64:
        raise UserError(f"--memory must be at least 64 MiB, not {args.memory}")
    timeout = args.timeout if args.timeout is not None else (24 * 3600.0 if args.shell else 300.0)
    if timeout <= 0:
        raise UserError(f"--timeout must be positive, not {args.timeout}")
    extra_append = user_append(args.append)
    if args.control is not None:
        if any(a == "--control" or a.startswith("--control=") for a in args.server_arg):
            raise UserError("--control and --server-arg --control do not go together")
        server_args, control = control_socket_path([*args.server_arg, "--control", args.control])
    else:
        server_args, control = control_socket_path(args.server_arg)
    if args.trace is not None and any(a == "--trace" or a.startswith("--trace=")
                                      for a in args.server_arg):
        raise UserError("--trace and --server-arg --trace do not go together")
    from vuser.guest.kernel_choice import choose

    kernel = choose(args.kernel, args.modules, args.kernel_build)
    for note in kernel.notes():
        print(f"vuser: {note}", file=sys.stderr)
    _exit_on_sigterm()

    qemu = find_qemu(show_progress=True)  # first: its problems are found without a build
    verbose = getattr(args, "verbose", 0) > 0

    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if exec_cmd is not None:
        return _run_exec(args, exec_cmd, qemu, extra_append, control, server_args)

    def launch_args(devices: list[str], guest_timeout: float, kernel_iommu: bool = False,
                    append: tuple[str, ...] = (), trace: str | None = None,
                    image=None) -> dict:
        setup = _share_setup(args, image, qemu)
        return dict(devices=devices, timeout=guest_timeout, memory_mib=args.memory,
                    accel=args.accel, qemu=qemu, qemu_extra=[*setup.qemu_args, *args.qemu_arg],
                    overlays=[setup.overlay],
                    extra_server_args=server_args + (["--trace", trace] if trace else []),
                    on_ready=lambda info: _on_ready(info, verbose, control if devices else None),
                    kernel_iommu=kernel_iommu, kernel_args=(*append, *extra_append))

    def mode(kernel_iommu: bool, append: tuple[str, ...] = ()) -> str:
        return ((", kernel-owned vIOMMU" if kernel_iommu else "")
                + (f", kernel args: {' '.join(append)}" if append else ""))

    if args.shell:
        devices = args.device or list(KERNEL_IOMMU_DEVICES if args.kernel_iommu
                                      else DEFAULT_DEVICES)
        image = kernel.image(None, shell=True)
        print(f"vuser: booting kernel {image.kernel_release} with QEMU {qemu.version} "
              f"({qemu.source}), {args.accel}, devices: {', '.join(devices)}"
              f"{mode(args.kernel_iommu, extra_append)}", file=sys.stderr)
        print("vuser: guest shell on the serial console; Ctrl-] leaves", file=sys.stderr)
        fd = sys.stdin.fileno()
        with _raw_terminal(fd):
            result = launch(image, console_echo=echo, console_input=fd,
                            **launch_args(devices, timeout, args.kernel_iommu,
                                          trace=trace_paths(args.trace, 1)[0], image=image))
        print(file=sys.stderr)
        if result.error and not result.error.startswith("console session ended"):
            raise UserError(result.error)
        return 0

    worst, programs, errors = 0, [], []
    plans = _plan(args)
    if kernel.given:
        from vuser.guest.kernel_choice import merge_plans

        plans = merge_plans(plans)
    plans, programs = _buildable(plans)
    worst = 1 if programs else 0
    for plan, trace in zip(plans, trace_paths(args.trace, len(plans))):
        refused = kernel.refusals(plan.programs, plan.kernel_iommu)
        for name, (status, line) in refused.items():
            print(f"vuser: {line}", file=sys.stderr)
            programs.append(ProgramResult(name, status,
                                          line.removeprefix(f"{name}: ").removeprefix(f"{name} ")))
            worst = max(worst, int(status == "fail"))
        if refused:
            plan = replace(plan, programs=tuple(p for p in plan.programs if p not in refused))
            if not plan.programs:
                continue
        image = kernel.image(list(plan.programs) if plan.programs else None,
                             table_kernel=plan.kernel)
        guest_timeout = args.timeout if args.timeout is not None else plan.timeout
        print(f"vuser: booting kernel {image.kernel_release} with QEMU {qemu.version} "
              f"({qemu.source}), {args.accel}, devices: {', '.join(plan.devices) or 'none'}"
              f"{mode(plan.kernel_iommu, (*plan.append, *extra_append))}; "
              f"tests: {', '.join(image.tests)}", file=sys.stderr)
        result = launch(image, console_echo=None if args.quiet else echo,
                        **launch_args(list(plan.devices), guest_timeout, plan.kernel_iommu,
                                      plan.append, trace, image=image))
        if trace is not None and plan.devices:
            print(f"vuser: trace {trace} (vuser ctl trace summary {trace})", file=sys.stderr)
        elif trace is not None:  # no devices: the launcher starts no server
            print(f"vuser: no trace {trace}: this guest has no devices, so no server ran",
                  file=sys.stderr)
        status, error, found = report(result, args.quiet, image.tests)
        programs += found
        worst = max(worst, status)
        if error:  # the guest crashed, hung or lied: the next guest still boots
            errors.append(error)
    if programs:
        print_summary(programs)
    for e in errors[:-1]:
        print(f"vuser: error: {e}", file=sys.stderr)
    if errors:
        raise UserError(errors[-1])
    if not (args.test or args.all):
        shown = [n for p in plans for n in p.programs]
        print(f"vuser: that was the demo ({_and(shown)}); `vuser run --all` runs "
              "every guest test, `vuser run --test NAME` one", file=sys.stderr)
    return worst


def _share_setup(args: argparse.Namespace, image, qemu):
    """The --share overlay and QEMU arguments for a --test or --shell guest (none: empty)."""
    from vuser.guest import runsetup

    setup = runsetup.plan(image, shares=list(getattr(args, "share", []) or []), qemu=qemu)
    for note in setup.notes:
        print(f"vuser: {note}", file=sys.stderr)
    return setup


def _run_exec(args: argparse.Namespace, command: str, qemu, append: tuple[str, ...],
              control: str, server_args: list[str]) -> int:
    """--exec: boot a guest with its agent, run ``command``, show its output,
    return its exit status (128 + N for a command killed by signal N)."""
    from vuser.errors import UserError
    from vuser.live import boot

    devices = args.device or list(KERNEL_IOMMU_DEVICES if args.kernel_iommu else DEFAULT_DEVICES)
    kernel = getattr(args, "kernel", None)
    print(f"vuser: booting a guest{f' ({kernel})' if kernel else ''} with QEMU {qemu.version}, "
          f"{args.accel}, devices: {', '.join(devices)}"
          f"{', kernel-owned vIOMMU' if args.kernel_iommu else ''}; then: {command}",
          file=sys.stderr)
    server_args = [a for i, a in enumerate(server_args)  # boot() passes --control itself
                   if a != "--control" and (i == 0 or server_args[i - 1] != "--control")
                   and not a.startswith("--control=")]
    with boot(devices, kernel_iommu=args.kernel_iommu, kernel=kernel,
              modules=getattr(args, "modules", None),
              kernel_build=getattr(args, "kernel_build", None), append=" ".join(append),
              memory_mib=args.memory, shares=args.share, accel=args.accel, qemu=qemu,
              qemu_args=args.qemu_arg, control=control, server_args=server_args,
              trace=args.trace, timeout=24 * 3600.0, progress=True) as guest:
        for note in guest.notes:
            print(f"vuser: {note}", file=sys.stderr)
        if guest.control_path:
            print(f"vuser: control socket {guest.control_path} (vuser ctl --socket "
                  f"{guest.control_path} ...)", file=sys.stderr, flush=True)
        result = guest.run(command, timeout=args.timeout if args.timeout is not None else 300.0)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if args.trace is not None and devices:
        print(f"vuser: trace {args.trace} (vuser ctl trace summary {args.trace})", file=sys.stderr)
    if result.stdout_truncated or result.stderr_truncated:
        print("vuser: the command's output was cut at 16 MiB per stream", file=sys.stderr)
    if result.ok:
        return 0
    print(f"vuser: guest command failed: {result.describe()}: {command}", file=sys.stderr)
    if result.status is None:
        return 128 + result.signal
    if not 0 < result.status < 256:
        raise UserError(f"guest command ended with {result.describe()}")
    return result.status


def _and(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)


def _plan(args: argparse.Namespace):
    """The guests to boot. The programs: those named with --test, every one
    (--all), or the demo (``default_tests()``). With --device: one guest with
    those devices. Without: the devices, vIOMMU mode and kernel arguments
    each program needs, from tests/guest/guest_tests.toml, one guest per
    distinct set (programs that need the same share it); the timeout is the
    manifest's unless --timeout. --kernel-iommu keeps to kernel-owned
    programs: a named userspace-mode one is an error."""
    from vuser.errors import UserError
    from vuser.guest import manifest, programs

    kernel = getattr(args, "kernel_iommu", False)
    iommu = "kernel" if kernel else "user"
    specs = manifest.load_manifest()
    if args.test and kernel:
        user = [n for n in args.test if n in specs and not specs[n].kernel_iommu]
        if user:
            raise UserError(f"{user[0]} runs with a userspace-owned vIOMMU (iommu = \"user\" in "
                            f"{manifest.MANIFEST_PATH.name}); --kernel-iommu boots only "
                            "kernel-owned guests")
    # With --device every program runs in the one mode asked for.
    only = iommu if kernel or args.device else None
    if args.all:
        names = [n for n in specs if only in (None, specs[n].iommu) and not specs[n].opt_in]
    else:
        names = list(args.test or default_tests(only))
    if not names:
        what = "kernel-owned" if kernel else "userspace-owned"
        raise UserError(f"no {'' if args.all else 'demo '}program of {manifest.MANIFEST_PATH.name} "
                        f"runs with a {what} vIOMMU (iommu = \"{iommu}\"); name one with --test")
    if args.device:  # a table that runs another program (program = ...) runs that one
        progs = dict.fromkeys(specs[n].program_name if n in specs else n for n in names)
        return [manifest.BootPlan(tuple(args.device), tuple(progs), 300.0, iommu)]
    known = [n for n in names if n in specs]
    unlisted = [n for n in names if n not in specs]  # the image builder judges these
    for name in unlisted:  # a program of guest-tests/ with no table: no devices to guess
        if name in {src.stem for src in programs.sources()["tests"]}:
            raise UserError(f"guest test {name} is not in {manifest.MANIFEST_PATH.name}: add a "
                            f"[{name}] table saying which devices its guest needs, or give "
                            "--device")
    plans = manifest.boot_groups(specs, known) if known else []
    if unlisted:
        plans.insert(0, manifest.BootPlan(KERNEL_IOMMU_DEVICES if kernel else DEFAULT_DEVICES,
                                          tuple(unlisted), 300.0, iommu))
    return plans


def _buildable(plans: list) -> tuple[list, list[ProgramResult]]:
    """Build the programs the plans run, each on its own; one that does not
    build is reported (the compiler's message) and left out, and so is a
    guest left with nothing to run. Returns (plans, the failed programs)."""
    from dataclasses import replace

    from vuser.guest import paths, programs

    names = [n for p in plans for n in p.programs]
    if not names:  # the image builder builds what it needs (e.g. --shell)
        return plans, []
    built = programs.build_programs(
        names, paths.GUEST_TESTS, status=lambda text: print(f"vuser: {text}", file=sys.stderr))
    for name, why in built.failed.items():
        print(f"vuser: guest test {name} does not build, left out:\n{why}", file=sys.stderr)
    failed = [ProgramResult(n, "fail", "does not build (the compiler's message is above)")
              for n in built.failed]
    kept = [replace(p, programs=tuple(n for n in p.programs if n not in built.failed))
            for p in plans]
    return [p for p in kept if p.programs], failed
