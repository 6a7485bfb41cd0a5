"""``vuser ctl``: inspect and drive a running server through its control socket."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vuser.errors import UserError
from vuser.iommu import FaultKind, parse_reason

HELP = "inspect and drive a running vuser server (control socket, msgpack-RPC)"
DESCRIPTION = """\
Talk to the control socket of a running server (`vuser serve --control PATH`,
or the path `vuser run` prints): list devices, PASID tables, IOASes and
counters, follow faults, record translation traces, inject faults, or call
any method of the ioasid model by name.

The socket is --socket PATH, else $VUSER_CONTROL. Output is a table; --json
prints the raw result for scripts. Addresses may be given in hex (0x...).

  vuser ctl --socket /tmp/ctl.sock devices
  vuser ctl pasids 0x1
  vuser ctl faults --follow
  vuser ctl completions --follow --label 0x1
  vuser ctl trace record /tmp/t.trace --duration 10
  vuser ctl trace summary /tmp/t.trace ; vuser ctl trace plot /tmp/t.trace
  vuser ctl trace export /tmp/t.trace -o /tmp/t.json   # for ui.perfetto.dev
  vuser ctl inject fault --label 1 --pasid 5 --iova 0x400000 --length 0x1000 --count 3
  vuser ctl call ioas_alloc
"""

ENV_SOCKET = "VUSER_CONTROL"


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer (decimal or 0x hex)") from None


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--socket, --json and --timeout: before the subcommand or after it.

    After it they default to SUPPRESS, so they leave the value given before it
    alone when they are not repeated."""
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS
    parser.add_argument("--socket", "-s", metavar="PATH", default=d(None),
                        help=f"the server's control socket (default: ${ENV_SOCKET})")
    parser.add_argument("--json", action="store_true", default=d(False),
                        help="print raw results as JSON instead of tables")
    parser.add_argument("--timeout", type=float, default=d(10.0), metavar="S",
                        help="give up on a call after S seconds (default 10)")


def _reason(text: str) -> int:
    try:
        return int(parse_reason(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sub(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, top=False)
    return p


def configure(parser: argparse.ArgumentParser) -> None:
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="ctl_command", metavar="SUBCOMMAND", required=True)
    _configure_views(sub)
    _configure_events(sub)
    _configure_trace(sub)
    _configure_inject(sub)
    _configure_call(sub)


def _configure_views(sub: Any) -> None:
    """devices, pasids, ioas, hwpts, stats."""
    _sub(sub, "devices", "list devices: label, group, context, attachment per PASID",
         "Every device the server registered with the ioasid model: its label\n"
         "(stream id), IOMMU group, whether it is bound to the server's context,\n"
         "and what its RID and each PASID are attached to (HWPT, stage, IOAS).")
    p = _sub(sub, "pasids", "show one device's PASID table as the model sees it",
             "The PASID table of the device LABEL: for the RID and each attached\n"
             "PASID, the guest's vPASID, the HWPT and its kind (first-stage: a nested\n"
             "HWPT with its root GPA and levels over a stage-2 parent; pass-through:\n"
             "stage 2 only), the DID and IOAS; entries a vIOMMU blocked, with the\n"
             "fault reason; and whether the device's PASID, ATS and PRI are only\n"
             "capabilities or enabled by the guest.")
    p.add_argument("label", type=_int, help="the device label (see `vuser ctl devices`)")
    _sub(sub, "ioas", "list IOASes with their mappings and usable IOVA ranges",
         "Every IOAS of the context: its areas (IOVA, size, permissions, backing\n"
         "file), the usable IOVA ranges, and the paging HWPTs built on it.")
    _sub(sub, "hwpts", "list HWPTs with their parents",
         "Every HW page table: stage-2 (paging) or nested (stage 1 over a\n"
         "NEST_PARENT), its parent and IOAS, users and attached devices.")
    p = _sub(sub, "stats", "show IOTLB, walk, fault and device-TLB counters",
             "The model's counters (translations, IOTLB hits/misses, walks, memory\n"
             "reads of walks, faults, invalidations, evictions) and each device's\n"
             "device-TLB counters when it has them.")
    p.add_argument("--reset", action="store_true", help="zero the model's counters afterwards")


def _configure_events(sub: Any) -> None:
    """faults and completions, listed or followed."""
    p = _sub(sub, "faults", "show recent DMA faults and fault queues; --follow streams them",
             "The server's recent DMA faults (label, PASID, address, stage, VT-d\n"
             "reason), page requests and fault-queue counters. With --follow, print\n"
             "faults, page requests and DMA completions as they happen until ^C.")
    p.add_argument("--follow", "-f", action="store_true", help="stream new events until ^C")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="recent entries (default 20)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="with --follow: stop after N events")

    p = _sub(sub, "completions", "show DMA queue counters; --follow streams each descriptor's end",
             "Every DMA queue of every device: ring, HEAD, TAIL, COMPLETED count,\n"
             "halted and error. With --follow, print one line per descriptor a\n"
             "device ends (label, queue and ring slot, PASID, opcode, addresses,\n"
             "status, fault address and bytes done) as it happens, until ^C.")
    p.add_argument("--follow", "-f", action="store_true",
                   help="stream one line per completed descriptor until ^C")
    p.add_argument("--label", type=_int, default=None, metavar="LABEL",
                   help="only this device (a label, see `vuser ctl devices`)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="with --follow: stop after N descriptors")


def _configure_trace(sub: Any) -> None:
    """trace record, show, summary, plot, export."""
    p = _sub(sub, "trace", "record, show, summarise, plot and export translation traces",
             "Traces hold every translation (time, label, PASID, IOVA, GPA, stage,\n"
             "IOTLB hit or miss), fault and invalidation, as a msgpack stream.\n"
             "`record` asks the server to write one; the others read the file\n"
             "(`vuser run --trace` and `vuser serve --trace` write one too).\n"
             "`export` writes it for a trace viewer (ui.perfetto.dev).")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    t = _sub(tsub, "record", "record a trace on the server into FILE",
             "Start recording into FILE (the server writes it; give a path it can\n"
             "write), wait --duration seconds or until ^C, then stop and print what\n"
             "was written.")
    t.add_argument("file", help="the trace file to write")
    t.add_argument("--duration", "-d", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: at ^C)")
    t.add_argument("--max-events", type=int, default=None, metavar="N",
                   help="stop writing after N events (later ones are counted as dropped)")
    t.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="bound the file to N bytes (default 512 MiB)")
    t = _sub(tsub, "show", "print the events of a trace file",
             "Print a trace's events: time since the start, kind, label, PASID,\n"
             "IOVA, GPA, stage, IOTLB hit or miss, and what it was: the fault\n"
             "reason, the invalidation (IOTLB, PASID-IOTLB, PASID-cache, device-TLB;\n"
             "its range), the page request or response.")
    t.add_argument("file", help="a trace file")
    t.add_argument("--limit", "-n", type=int, default=50, metavar="N",
                   help="at most N events (default 50; 0 for all)")
    from vuser.rpc.tracing import KINDS
    t.add_argument("--kind", choices=KINDS, metavar="KIND",
                   help="only events of this kind: " + ", ".join(KINDS))
    t = _sub(tsub, "summary", "summarise a trace file: hit rate, faults, per PASID, per page",
             "Counts of a trace: translations, IOTLB hits and misses, faults by\n"
             "reason, invalidations, translations per PASID and the busiest pages.")
    t.add_argument("file", help="a trace file")
    t = _sub(tsub, "plot", "plot a trace file to PNG (needs matplotlib: vuser[plot])",
             "Write a PNG with three panels: the timeline, one lane per (label,\n"
             "PASID) with a mark per translation (IOTLB hit or walk), fault,\n"
             "invalidation, page request and page response (the lanes of `trace\n"
             "export`); the IOTLB hit rate over time, with no line where nothing\n"
             "translated; and the busiest pages. Needs matplotlib\n"
             "(pip install 'vuser[plot]').")
    t.add_argument("file", help="a trace file")
    t.add_argument("--out", "-o", metavar="PNG", help="output file (default FILE.png)")
    t = _sub(tsub, "export", "export a trace file for a trace viewer (Perfetto, chrome://tracing)",
             "Write FILE as a Chrome/Perfetto JSON trace (the Trace Event Format),\n"
             "with one process per device label and one thread per (label, PASID)\n"
             "lane: the RID, each PASID, and \"all PASIDs\" for invalidations of all;\n"
             "invalidation descriptors that name no device are on the lanes of\n"
             "\"vIOMMU (no device named)\". Each event is an instant on its lane:\n"
             "translations (category hit, or walk with the stage that answered),\n"
             "faults (with the VT-d reason), invalidations (by granularity), page\n"
             "requests and page responses; its args hold the IOVA, GPA, range, group.\n"
             "A counter per device shows translations per millisecond (hits, walks).\n\n"
             "To look at it, open the JSON file in https://ui.perfetto.dev (\"Open\n"
             "trace file\"; the file stays in the browser) or in Chrome's\n"
             "chrome://tracing (\"Load\"). Timestamps are microseconds since the\n"
             "trace started.\n\n"
             "  vuser run --test dma_nested --trace /tmp/run.trace\n"
             "  vuser ctl trace export /tmp/run.trace -o /tmp/run.json")
    t.add_argument("file", help="a trace file")
    t.add_argument("--format", "-f", choices=("perfetto", "chrome"), default="perfetto",
                   help="perfetto or chrome: the same JSON, which both viewers open "
                        "(default perfetto)")
    t.add_argument("--out", "-o", metavar="JSON", help="output file (default FILE.json)")


def _configure_inject(sub: Any) -> None:
    """inject fault, unmap, restore, list, clear."""
    p = _sub(sub, "inject", "inject translation faults or unmap stage-2 ranges under DMA",
             "Fault injection for experiments. `fault`: the next N translations of\n"
             "(label, PASID, IOVA range) fault with a chosen VT-d reason and stage.\n"
             "`unmap`: unmap a stage-2 (GPA) range of an IOAS under a running\n"
             "guest; `restore` maps it back.")
    isub = p.add_subparsers(dest="inject_command", metavar="ACTION", required=True)
    i = _sub(isub, "fault", "make the next N translations of (label, PASID, range) fault",
             "Add an injection rule. The PASID is the guest's (vPASID); --rid for\n"
             "untagged DMA, --any-pasid for all. Stage 1 faults are the guest's\n"
             "(a PRI-capable device may send a page request), stage 2 the host's.")
    i.add_argument("--label", type=_int, required=True, help="device label")
    g = i.add_mutually_exclusive_group(required=True)
    g.add_argument("--pasid", type=_int, help="the PASID as the guest knows it")
    g.add_argument("--rid", action="store_true", help="untagged DMA (no PASID)")
    g.add_argument("--any-pasid", action="store_true", help="any PASID and the RID")
    i.add_argument("--iova", type=_int, required=True, help="first address of the range")
    i.add_argument("--length", type=_int, default=4096, help="bytes (default 4096)")
    i.add_argument("--count", type=_int, default=1, help="translations to fault (default 1)")
    i.add_argument("--reason", type=_reason, default=int(FaultKind.PAGING_ENTRY_INV),
                   help="fault reason, a name or a code: the model's (PAGING_ENTRY_INV, 0x07) "
                        "or the VT-d one a guest sees (FS_P, 0x71); default: not present")
    i.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1 guest, 2 host")
    i = _sub(isub, "unmap", "unmap a stage-2 range of an IOAS (a hole under the guest)",
             "Cut a hole [IOVA, IOVA+LENGTH) in the IOAS (a VM's GPA space): DMA there\n"
             "faults at stage 2 until `inject restore HOLE`.")
    i.add_argument("--ioas", type=_int, required=True, help="IOAS id (see `vuser ctl ioas`)")
    i.add_argument("--iova", type=_int, required=True, help="first GPA, page aligned")
    i.add_argument("--length", type=_int, required=True, help="bytes, page aligned")
    i = _sub(isub, "restore", "map a stage-2 hole back",
             "Map the pages of a hole cut by `inject unmap` back at the same GPAs\n"
             "(EEXIST if something else was mapped there meanwhile).")
    i.add_argument("hole", type=_int, help="the hole id `inject unmap` printed")
    _sub(isub, "list", "list injection rules and stage-2 holes",
         "The live injection rules (what is left of each count, how often it\n"
         "fired) and the stage-2 holes not restored yet.")
    _sub(isub, "clear", "remove every injection rule",
         "Remove every injection rule; translations then go through the model\n"
         "as usual (stage-2 holes stay until restored).")


def _configure_call(sub: Any) -> None:
    """call METHOD and methods."""
    p = _sub(sub, "call", "call any control method by name (the whole ioasid uAPI)",
             "Call METHOD with positional ARGs and name=value pairs. Values are\n"
             "integers (0x hex too), null, true/false, JSON lists/maps, or strings.\n"
             "Flags and enums of the uAPI take their names too, |-joined for flags\n"
             "(flags=NEST_PARENT, flags='READABLE|WRITEABLE', access=write).\n"
             "Addresses and sizes in the result are shown in hex (--json: numbers).\n"
             "`vuser ctl methods` lists the methods and their parameters.\n\n"
             "  vuser ctl call ioas_alloc\n"
             "  vuser ctl call ioas_map 2 null 0x100000 iova=0x0 'flags=READABLE|WRITEABLE'\n"
             "  vuser ctl call hwpt_invalidate 7 '[{\"addr\":0,\"npages\":1,\"flags\":0}]'")
    p.add_argument("method", help="method name")
    p.add_argument("args", nargs="*", metavar="ARG", help="positional values or name=value")
    p = _sub(sub, "methods", "list the control methods, their parameters and results",
             "Every method the server answers: its signature, what it does, each\n"
             "parameter with its kinds, default, the uAPI flag or enum names it takes\n"
             "and what it means, what it returns, and its checks and errnos.\n"
             "--offline lists this vuser's methods without asking a server;\n"
             "--markdown writes them as docs/control.md is written.\n\n"
             "  vuser ctl methods hwpt_alloc ioas_map\n"
             "  vuser ctl methods --offline --brief")
    p.add_argument("names", nargs="*", metavar="METHOD", help="only these methods")
    p.add_argument("--brief", action="store_true",
                   help="one line per method: group, signature, what it does")
    p.add_argument("--markdown", action="store_true", help="Markdown (docs/control.md)")
    p.add_argument("--offline", action="store_true",
                   help="this vuser's methods, without a server (no --socket needed)")


# -- plumbing ---------------------------------------------------------------------------
def socket_path(args: argparse.Namespace) -> str:
    path = args.socket or os.environ.get(ENV_SOCKET)
    if not path:
        raise UserError(f"no control socket: give --socket PATH or set ${ENV_SOCKET}")
    return path


async def _with_client(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]]) -> int:
    from vuser.rpc import Client, NoServer, RpcCallError
    from vuser.rpc.client import ConnectionClosed

    path = socket_path(args)
    try:
        client = await asyncio.wait_for(Client.connect(path), args.timeout)
    except NoServer as e:
        raise UserError(e.strerror) from None
    except asyncio.TimeoutError:
        raise UserError(f"no answer from {path} in {args.timeout:g} s") from None
    try:
        return await fn(client)
    except RpcCallError as e:
        raise UserError(e.strerror) from None
    except ConnectionClosed as e:
        raise UserError(f"the server at {path} closed the connection ({e})") from None
    finally:
        await client.close()


def _print(args: argparse.Namespace, value: Any, human: Callable[[Any], str]) -> int:
    from vuser.rpc import render

    print(render.dumps_json(value) if args.json else human(value))
    return 0


def parse_value(text: str) -> Any:
    """A command-line value: int (0x too), null, true/false, JSON, else the string."""
    low = text.lower()
    if low in ("null", "none", "nil"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text[:1] in "[{\"":
        try:
            return json.loads(text)
        except ValueError:
            raise UserError(f"{text!r} is not valid JSON") from None
    return text


def _call_params(args: list[str]) -> tuple[list[Any], dict[str, Any]]:
    pos: list[Any] = []
    named: dict[str, Any] = {}
    for a in args:
        name, eq, value = a.partition("=")
        if eq and name.isidentifier():
            named[name] = parse_value(value)
        else:
            if named:
                raise UserError(f"positional {a!r} after name=value arguments")
            pos.append(parse_value(a))
    return pos, named


# -- subcommands ---------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from vuser.rpc import render

    cmd = args.ctl_command
    if cmd == "trace" and args.trace_command != "record":
        return _trace_offline(args)
    if cmd == "devices":
        return asyncio.run(_with_client(
            args, lambda c: _simple(c, args, "devices", render.devices)))
    if cmd == "pasids":
        return asyncio.run(_with_client(
            args, lambda c: _simple(c, args, "pasid_table", render.pasid_table, args.label)))
    if cmd == "ioas":
        return asyncio.run(_with_client(args, lambda c: _simple(c, args, "ioas_list",
                                                                render.ioas_list)))
    if cmd == "hwpts":
        return asyncio.run(_with_client(args, lambda c: _simple(c, args, "hwpts", render.hwpts)))
    if cmd == "stats":
        return asyncio.run(_with_client(args, lambda c: _stats(c, args)))
    if cmd == "faults":
        return asyncio.run(_with_client(args, lambda c: _faults(c, args)))
    if cmd == "completions":
        return asyncio.run(_with_client(args, lambda c: _completions(c, args)))
    if cmd == "trace":
        return asyncio.run(_with_client(args, lambda c: _trace_record(c, args)))
    if cmd == "inject":
        return asyncio.run(_with_client(args, lambda c: _inject(c, args)))
    if cmd == "call":
        pos, named = _call_params(args.args)
        return asyncio.run(_with_client(args, lambda c: _call(c, args, pos, named)))
    if cmd == "methods" and args.offline:
        return _print_methods(args, _offline_methods())
    if cmd == "methods":
        return asyncio.run(_with_client(args, lambda c: _methods(c, args)))
    raise UserError(f"unknown ctl subcommand {cmd!r}")  # argparse prevents this


async def _simple(c: Any, args: argparse.Namespace, method: str, human: Callable[[Any], str],
                  *params: Any) -> int:
    value = await asyncio.wait_for(c.call(method, *params), args.timeout)
    return _print(args, value, human)


async def _stats(c: Any, args: argparse.Namespace) -> int:
    from vuser.rpc import render

    value = await asyncio.wait_for(c.counters(), args.timeout)
    if args.reset:
        await c.stats_reset()
    return _print(args, value, render.counters)


async def _faults(c: Any, args: argparse.Namespace) -> int:
    from vuser.rpc import render

    if not args.follow:
        value = await asyncio.wait_for(c.faults(args.limit), args.timeout)
        return _print(args, value, render.faults)
    topics = await c.subscribe(["fault", "page_request", "dma_completion"])
    print(f"following {', '.join(topics)} on {c.path} (^C to stop)", file=sys.stderr, flush=True)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            topic, payload = await c.next_notification()
            seen += 1
            if args.json:
                print(json.dumps({"topic": topic, "payload": payload}, sort_keys=True,
                                 default=lambda o: o.hex() if isinstance(o, bytes) else str(o)),
                      flush=True)
            elif topic == "fault":
                print("fault: " + render.fault_line(payload), flush=True)
            elif topic == "page_request":
                print(render.page_request_line(payload), flush=True)
            elif topic == "dma_completion":
                print("completion: " + render.completion_line(payload), flush=True)
            elif topic == "lost":
                print(f"({payload.get('count')} notifications lost: the client lagged)",
                      flush=True)
            else:
                print(f"{topic}: {payload}", flush=True)
    except asyncio.CancelledError:  # ^C
        pass
    return 0


def _print_note(args: argparse.Namespace, topic: str, payload: Any) -> None:
    if args.json:
        print(json.dumps({"topic": topic, "payload": payload}, sort_keys=True,
                         default=lambda o: o.hex() if isinstance(o, bytes) else str(o)),
              flush=True)
        return
    from vuser.rpc import render

    if topic == "lost":
        print(f"({payload.get('count')} notifications lost: the client lagged)", flush=True)
    else:
        print(render.completion_line(payload), flush=True)


async def _completions(c: Any, args: argparse.Namespace) -> int:
    from vuser.rpc import render

    if not args.follow:
        qs = await asyncio.wait_for(c.dma_queues(), args.timeout)
        if args.label is not None:
            qs = [q for q in qs if q["label"] == args.label]
        return _print(args, qs, render.dma_queues)
    await c.subscribe(["dma_completion"])
    who = "every device" if args.label is None else f"label {args.label:#x}"
    print(f"following DMA completions of {who} on {c.path} (^C to stop)", file=sys.stderr,
          flush=True)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            topic, payload = await c.next_notification()
            if topic == "dma_completion":
                if args.label is not None and payload.get("label") != args.label:
                    continue
                seen += 1
            _print_note(args, topic, payload)
    except asyncio.CancelledError:  # ^C
        pass
    return 0


async def _trace_record(c: Any, args: argparse.Namespace) -> int:
    path = os.path.abspath(args.file)
    kw: dict[str, Any] = {"path": path}
    if args.max_events is not None:
        kw["max_events"] = args.max_events
    if args.max_bytes is not None:
        kw["max_bytes"] = args.max_bytes
    await asyncio.wait_for(c.call("trace_start", **kw), args.timeout)
    print(f"recording to {path}" + (f" for {args.duration:g} s" if args.duration else
                                     " (^C to stop)"), file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        if args.duration is not None:
            await asyncio.sleep(args.duration)
        else:
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass
    status = await asyncio.wait_for(c.trace_stop(), args.timeout)
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        print(f"{status['events']} events ({status['bytes']} bytes) in "
              f"{time.monotonic() - start:.1f} s to {status['path']}"
              + (f"; {status['dropped']} dropped at the limit" if status["dropped"] else ""))
    return 0


def _trace_offline(args: argparse.Namespace) -> int:
    from vuser.rpc import render
    from vuser.rpc.plot import plot_trace
    from vuser.rpc.tracing import TraceFormatError, read_trace, summarize

    try:
        trace = read_trace(args.file)
    except FileNotFoundError:
        raise UserError(f"no trace file {args.file}") from None
    except (TraceFormatError, OSError) as e:
        raise UserError(str(e)) from None
    t0 = trace.header.get("t0", 0.0)
    if args.trace_command == "show":
        events = [e for e in trace.events if args.kind is None or e["kind"] == args.kind]
        if args.limit:
            events = events[:args.limit]
        if args.json:
            print(render.dumps_json(events))
        else:
            print(render.trace_events(events, t0))
        return 0
    if args.trace_command == "summary":
        s = summarize(trace.events, t0)
        return _print(args, s, lambda v: render.trace_summary(v, trace.header, trace.footer))
    if args.trace_command == "export":
        from vuser.rpc.trace_export import write_chrome

        out = args.out or (os.path.splitext(args.file)[0] + ".json")
        try:
            doc = write_chrome(trace, out, source=os.path.abspath(args.file))
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror}") from None
        lanes = sum(1 for e in doc["traceEvents"] if e["name"] == "thread_name")
        print(f"wrote {out}: {len(trace.events)} events on {lanes} lanes "
              f"(open it in https://ui.perfetto.dev or chrome://tracing)")
        return 0
    out = args.out or (os.path.splitext(args.file)[0] + ".png")
    try:
        plot_trace(trace.events, out, title=os.path.basename(args.file),
                   t0=trace.header.get("t0"))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    print(f"wrote {out}")
    return 0


async def _inject(c: Any, args: argparse.Namespace) -> int:
    from vuser.rpc import render

    a = args.inject_command
    if a == "fault":
        pasid = None if args.rid else (-1 if args.any_pasid else args.pasid)
        rid = await c.inject_fault(args.label, pasid, args.iova, args.length, args.count,
                                   args.reason, args.stage)
        who = "any PASID" if pasid == -1 else render.pasid_str(pasid)
        return _print(args, rid, lambda v: f"injection rule {v}: the next {args.count} "
                                           f"translations of label {args.label:#x} {who}"
                                           f" in [{args.iova:#x}, +{args.length:#x}) fault")
    if a == "unmap":
        hole = await c.s2_unmap(args.ioas, args.iova, args.length)
        return _print(args, hole, lambda h: f"hole {h['id']}: IOAS {h['ioas']} "
                                            f"[{h['iova']:#x}, +{h['length']:#x}) unmapped "
                                            f"(`vuser ctl inject restore {h['id']}` maps it back)")
    if a == "restore":
        hole = await c.s2_restore(args.hole)
        return _print(args, hole, lambda h: f"hole {h['id']} restored")
    if a == "clear":
        n = await c.inject_clear()
        return _print(args, n, lambda v: f"{v} injection rules removed")
    rules = await c.inject_list()
    holes = await c.s2_holes()
    return _print(args, {"rules": rules, "holes": holes}, lambda v: (
        render.table(["RULE", "LABEL", "PASID", "FIRST", "LAST", "LEFT", "FIRED", "REASON",
                      "STAGE"],
                     [[r["id"], render.hx(r["label"]), "any" if r["pasid"] == -1 else
                       render.pasid_str(r["pasid"]), render.hx(r["first"]), render.hx(r["last"]),
                       r["remaining"], r["fired"], render.hx(r["reason"]), r["stage"]]
                      for r in v["rules"]], empty="(no rules)")
        + "\n\n" + render.table(["HOLE", "IOAS", "IOVA", "LENGTH"],
                                [[h["id"], h["ioas"], render.hx(h["iova"]), render.hx(h["length"])]
                                 for h in v["holes"]], empty="(no holes)")))


async def _call(c: Any, args: argparse.Namespace, pos: list[Any], named: dict[str, Any]) -> int:
    from vuser.rpc import render

    value = await asyncio.wait_for(c.call(args.method, *pos, **named), args.timeout)
    return _print(args, value, lambda v: render.call_result(args.method, v))


async def _methods(c: Any, args: argparse.Namespace) -> int:
    ms = await asyncio.wait_for(c.rpc_methods(), args.timeout)
    return _print_methods(args, ms)


def _offline_methods() -> list[dict[str, Any]]:
    """``rpc_methods`` of a server-less service over an empty model."""
    from vuser.iommu import IoasidContext, IommuRegistry
    from vuser.rpc import Service

    svc = Service(IoasidContext(IommuRegistry()))
    try:
        return svc.rpc_methods()
    finally:
        svc.close()


def _print_methods(args: argparse.Namespace, ms: list[dict[str, Any]]) -> int:
    from vuser.rpc import method_docs, render

    if args.names:
        unknown = sorted(set(args.names) - {m["name"] for m in ms})
        if unknown:
            raise UserError(f"no method {', '.join(unknown)} (`vuser ctl methods --brief` "
                            f"lists them)")
        ms = [m for m in ms if m["name"] in args.names]
    if args.markdown:
        print(method_docs.markdown(ms), end="")
        return 0
    if args.brief:
        return _print(args, ms, lambda v: render.table(["GROUP", "METHOD", "DOC"],
                                                       method_docs.brief(v)))
    return _print(args, ms, method_docs.text)
