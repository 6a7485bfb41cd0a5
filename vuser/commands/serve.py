"""``vuser serve``: serve devices over vfio-user UNIX sockets, one per device."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from vuser.errors import UserError
from vuser.transport.channel import Timeouts

HELP = "serve emulated PCIe devices on vfio-user sockets"
DESCRIPTION = """\
Serve emulated PCIe devices to vfio-user clients (QEMU's vfio-user-pci), one
UNIX socket per device, all in this process.

  vuser serve --socket /tmp/s.sock --device sample
  vuser serve --device sample@/tmp/a.sock --device sample@/tmp/b.sock,label=2
  vuser serve --device vuser-iommu@/tmp/i.sock,cm=0,drhd_base=0xfe400000 \\
              --device vuser-dma@/tmp/d.sock,label=0x200 --trace /tmp/run.trace

vuser-iommu's options (docs/vuser-iommu.md): label=N, cm=0|1 (caching mode,
default 1), drhd_base=ADDR (the DMAR's register base: BAR0 must be there).

Options after the path (TYPE@PATH,key=value,...) go to the device as keyword
strings. Once a device listens, one line "TYPE ready on PATH" is printed on
stdout; with --control PATH, "control ready on PATH" follows once the control
socket (see `vuser ctl`) listens. --trace FILE records every translation,
fault, invalidation (the model's IOTLB drops and vuser-iommu's descriptors),
page request and page response from before the first message until the
server exits, SIGTERM included. -v traces every vfio-user message, -vv adds
raw bytes. SIGINT or SIGTERM shuts down cleanly and removes the sockets.

A device that finds its setup wrong beyond repair stops the server: one
error line on stderr, sockets closed, exit status 3 (vuser-iommu with
drhd_base=ADDR when the firmware puts BAR0 elsewhere).
"""

log = logging.getLogger(__name__)

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class DeviceSpec:
    type: str
    path: str
    options: dict[str, str] = field(default_factory=dict)


def configure(parser: Any) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="socket of the single --device (which then takes no @PATH)")
    parser.add_argument("--device", action="append", required=True,
                        metavar="TYPE[@PATH][,key=value...]",
                        help="a device to serve; repeat for several (each with its own @PATH)")
    parser.add_argument("--control", metavar="PATH",
                        help="also serve the control socket (msgpack-RPC, mode 0600) at PATH, "
                             "for `vuser ctl --socket PATH`")
    defaults = Timeouts()
    parser.add_argument("--handshake-timeout", type=_seconds, default=defaults.handshake,
                        metavar="S", help="drop a client that has not sent VERSION S seconds "
                        f"after connecting (default {defaults.handshake:g}; 0: no limit)")
    parser.add_argument("--message-timeout", type=_seconds, default=defaults.message,
                        metavar="S", help="drop a client whose message is not complete S seconds "
                        "after its first byte, or that leaves replies unread that long; fail a "
                        "DMA_READ/WRITE the client does not answer in S seconds "
                        f"(default {defaults.message:g}; 0: no limit)")
    parser.add_argument("--idle-timeout", type=_seconds, default=defaults.idle, metavar="S",
                        help="drop a client that sends nothing for S seconds (default: no "
                        "limit, since QEMU is silent while the guest leaves a device alone)")
    parser.add_argument("--trace", metavar="FILE", dest="trace_file",
                        help="record a model trace into FILE from the first message until "
                             "exit (the format of `vuser ctl trace record`; read it with "
                             "`vuser ctl trace show|summary FILE`)")


def _seconds(text: str) -> float | None:
    """A timeout in seconds; 0 means no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"a timeout must be >= 0 seconds, not {text}")
    return value or None


def parse_device(text: str, socket_path: str | None) -> DeviceSpec:
    """``TYPE[@PATH][,key=value...]``; ``UserError`` when malformed."""
    head, *opts = text.split(",")
    dtype, at, path = head.partition("@")
    if not dtype:
        raise UserError(f"--device {text!r}: no device type")
    if at and socket_path is not None:
        raise UserError(f"--device {text!r}: give the path either with --socket or after @")
    path = path if at else (socket_path or "")
    if not path:
        raise UserError(f"--device {text!r}: no socket path (TYPE@PATH or --socket PATH)")
    options: dict[str, str] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not key or not eq:
            raise UserError(f"--device {text!r}: option {opt!r} is not key=value")
        if key in options:
            raise UserError(f"--device {text!r}: option {key!r} given twice")
        options[key] = value
    return DeviceSpec(dtype, path, options)


def parse_specs(socket_path: str | None, devices: list[str]) -> list[DeviceSpec]:
    if socket_path is not None and len(devices) != 1:
        raise UserError("--socket goes with exactly one --device; use TYPE@PATH for several")
    specs = [parse_device(d, socket_path) for d in devices]
    seen: set[str] = set()
    for s in specs:
        real = os.path.abspath(s.path)
        if real in seen:
            raise UserError(f"socket {s.path} is given to two devices")
        seen.add(real)
    return specs


def device_types() -> dict[str, type]:
    from vuser.devices import DEVICE_TYPES
    return DEVICE_TYPES


def make_device(spec: DeviceSpec, types: dict[str, type], platform: Any = None) -> Any:
    """Build the device; with a ``Platform``, the device joins it.

    A class whose constructor takes ``platform`` gets it there (it needs its
    label while building its capabilities); other ``PciDevice``s join after
    construction. A taken label is a ``UserError``.
    """
    from vuser.iommu import IommufdError

    cls = types.get(spec.type)
    if cls is None:
        raise UserError(f"unknown device type {spec.type!r} (known: {', '.join(sorted(types))})")
    options: dict[str, Any] = dict(spec.options)
    params = inspect.signature(cls).parameters
    valid = sorted(name for name, p in params.items()
                   if name != "platform" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(set(options) - set(valid))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UserError(f"device {spec.type}: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)} (valid: {', '.join(valid) or 'none'})")
    takes_platform = platform is not None and "platform" in params
    if takes_platform:
        options["platform"] = platform
    try:
        device = cls(**options)
        if platform is not None and not takes_platform and hasattr(device, "join_platform"):
            try:
                device.join_platform(platform)
            except BaseException:
                device.close()
                raise
        return device
    except UserError:
        raise
    except IommufdError as e:
        raise UserError(f"device {spec.type}@{spec.path}: {e.msg}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"device {spec.type}: {e}") from None


def prepare_socket_path(path: str) -> None:
    """Refuse a path we must not take; remove a stale socket left behind."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UserError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"socket directory {parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UserError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale socket from a previous run
        return
    except OSError as e:
        raise UserError(f"cannot check socket {path}: {e.strerror or e}") from None
    finally:
        probe.close()
    raise UserError(f"socket {path} is in use by another server")


async def serve(specs: list[DeviceSpec], *, trace: int = 0,
                types: dict[str, type] | None = None,
                stop: asyncio.Event | None = None, platform: Any = None,
                control: str | None = None, trace_file: str | None = None,
                timeouts: Timeouts | None = None) -> int:
    """Serve ``specs`` until SIGINT/SIGTERM (or ``stop`` is set).

    All devices join one ``Platform`` (one ioasid context): ``platform`` if
    given (the caller then closes it), else a new one closed on return.
    ``trace_file``: a model trace recorded from before the first socket
    listens until return (footer written however the server stops).
    """
    from vuser.devices.platform import FATAL_EXIT, Platform
    from vuser.transport.server import DeviceServer

    types = device_types() if types is None else types
    own_platform = platform is None
    platform = Platform() if own_platform else platform
    devices: list[Any] = []

    def close_devices() -> None:
        for device in devices:
            device.close()
        if own_platform:
            platform.close()

    try:
        for s in specs:
            devices.append(make_device(s, types, platform))
    except BaseException:
        close_devices()
        raise
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    platform.on_fatal.append(lambda _msg: stop.set())
    recorder = None
    if trace_file is not None:
        try:
            recorder = _start_trace(trace_file, platform)
        except BaseException:
            close_devices()
            raise
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    servers: list[DeviceServer] = []
    ctl_server: Any = None
    try:
        for spec, device in zip(specs, devices):
            prepare_socket_path(spec.path)
            server = DeviceServer(device, spec.path, name=f"{spec.type}@{spec.path}",
                                  trace=trace, timeouts=timeouts)
            try:
                await server.start()
            except OSError as e:
                raise UserError(f"cannot listen on {spec.path}: {e.strerror or e}") from None
            servers.append(server)
            print(f"{spec.type} ready on {spec.path}", flush=True)
        if control is not None:
            ctl_server = await _start_control(control, platform, specs, recorder)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if ctl_server is not None:
            await ctl_server.close()
            ctl_server.service.close()
        for server in servers:
            await server.close()
        for device in devices:
            close = getattr(device, "close", None)
            if close is not None:
                close()
        if recorder is not None and recorder.status()["recording"]:
            platform.ctx.set_trace(None)
            recorder.stop()
        if own_platform:
            platform.close()
    if platform.fatal_error is not None:
        print(platform.fatal_error, file=sys.stderr, flush=True)
        return FATAL_EXIT
    return 0


def _start_trace(path: str, platform: Any) -> Any:
    """A ``TraceRecorder`` on ``platform``'s model (``UserError`` if FILE cannot be written)."""
    from vuser.errors import RemoteProtocolError
    from vuser.rpc.tracing import TraceRecorder

    try:
        rec = TraceRecorder(os.path.abspath(path),
                            meta={"pid": os.getpid(), "stats": platform.ctx.stats(),
                                  "from": "vuser serve --trace"})
    except RemoteProtocolError as e:
        raise UserError(str(e)) from None
    platform.ctx.set_trace(rec.hook)
    return rec


async def _start_control(path: str, platform: Any, specs: list[DeviceSpec],
                         recorder: Any = None) -> Any:
    """The control socket over ``platform`` (vuser.rpc); prints "control ready on PATH".
    A ``recorder`` already running (``--trace``) becomes the service's trace."""
    from vuser.rpc import ControlServer, Service

    if any(os.path.abspath(s.path) == os.path.abspath(path) for s in specs):
        raise UserError(f"--control {path} is also a device socket")
    prepare_socket_path(path)
    service = Service.for_platform(platform)
    if recorder is not None:
        service.adopt_trace(recorder)
    server = ControlServer(service, path)
    try:
        await server.start()
    except OSError as e:
        server.service.close()
        raise UserError(f"cannot listen on {path}: {e.strerror or e}") from None
    print(f"control ready on {path}", flush=True)
    return server


def die_with_parent() -> None:
    """Started by the launcher (``VUSER_PARENT_PID`` set): get SIGTERM when it
    dies (prctl(2) PR_SET_PDEATHSIG), so a launcher killed with SIGKILL orphans
    no server; exit at once if it is already gone."""
    parent = os.environ.pop("VUSER_PARENT_PID", None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise UserError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if str(os.getppid()) != parent:  # it died before the prctl
        raise UserError(f"the launcher (pid {parent}) is gone")


def run(args: Any) -> int:
    die_with_parent()
    specs = parse_specs(args.socket, args.device)
    try:
        timeouts = Timeouts(args.handshake_timeout, args.message_timeout, args.idle_timeout)
        return asyncio.run(serve(specs, trace=args.verbose, control=args.control,
                                 trace_file=args.trace_file, timeouts=timeouts))
    except KeyboardInterrupt:  # a second ^C while shutting down
        print("vuser: interrupted", file=sys.stderr)
        return 130
