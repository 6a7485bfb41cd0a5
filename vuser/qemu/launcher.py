"""The launcher: a vuser server and a QEMU guest against it, torn down completely on exit.

``launch()`` starts ``python -m vuser serve --device TYPE@SOCK ...`` in its own
process group, waits until every device socket exists, then starts QEMU (see
``vuser.qemu.cmdline``) in its own session with the serial console on a pipe.
It returns when the guest writes ``isa-debug-exit``, powers off, hangs past the
timeout (first asked for its task stacks with SysRq, ``vuser.qemu.sysrq``;
``GuestResult.task_dump``), or its server dies; in every case QEMU (QMP ``quit``, then SIGTERM,
then SIGKILL) and the server's process group are stopped, and the private
working directory with the sockets is removed. Both children also die with the
launcher itself (QEMU's ``-run-with exit-with-parent=on``; the server's
``PR_SET_PDEATHSIG``): a launcher killed with SIGKILL leaves only its working
directory, which the next launch removes (``vuser.qemu.rundir``).

With ``kernel_iommu=True`` the guest kernel owns the vuser-iommu: before the
server starts, the launcher finds where the firmware puts each device (a
firmware-only boot of the same topology, cached; ``vuser.qemu.topology``), then
labels each device with its BDF, tells the unit its register base, passes a
DMAR with ``-acpitable`` and adds the kernel options (``vuser.qemu.kernel_iommu``).

QEMU exits with ``(val << 1) | 1`` after the guest writes ``val`` to the
isa-debug-exit port (``hw/misc/debugexit.c``). QEMU's own start-up errors also
exit 1, so an exit status of 1 with an error line on QEMU's stderr and nothing
on the console is a QEMU failure, not a guest that wrote 0.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vuser.errors import UserError
from vuser.qemu import cmdline, qmp, rundir
from vuser.qemu.find import QemuBinary, find_qemu

log = logging.getLogger(__name__)

SERVER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "vuser", "serve")
CONSOLE_ESCAPE = 0x1D  # Ctrl-]: ends an interactive console session
LOG_CAP = 16 << 20  # bytes of console/log kept (the tail) per stream
SERVER_DEATH_GRACE_S = 2.0  # let QEMU report the lost server before we stop it
STOP_WAIT_S = 3.0
#: The server's environment names the launcher's pid: the server then dies with it
#: (``vuser serve`` sets PR_SET_PDEATHSIG, see ``vuser.commands.serve``).
PARENT_ENV = "VUSER_PARENT_PID"
#: In ``qemu_extra``, replaced by the run's private working directory (which the
#: firmware probe key does not see, so a path there keeps the probe cached).
WORKDIR_MARK = "@WORKDIR@"


@dataclass
class GuestResult:
    """How a guest run ended.

    ``exit_status`` is the value the guest wrote to isa-debug-exit, None if it
    never did. ``error`` is None exactly when it did; otherwise it is one line
    saying what went wrong (timeout, server death, QEMU failure, no exit).
    """

    exit_status: int | None
    console: str
    timed_out: bool = False
    server_died: bool = False
    server_log: str = ""
    qemu_returncode: int | None = None
    duration_s: float = 0.0
    qemu_log: str = ""
    error: str | None = None
    guest_state: str | None = None  # QMP query-status when the guest was stopped by us
    stopped: bool = False  # the launcher's ``until`` condition ended the run
    notes: list[str] = field(default_factory=list)  # one-line facts about the run (probe, kernel)
    topology: Any = None  # kernel_iommu: the vuser.qemu.topology.Topology the guest booted with
    task_dump: str = ""  # timed out: the guest's SysRq task dump (vuser.qemu.sysrq), if any

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0

    def console_tail(self, lines: int = 20) -> str:
        return "\n".join(self.console.rstrip("\n").splitlines()[-lines:])


@dataclass(frozen=True)
class LaunchInfo:
    """Handed to ``on_ready`` once QEMU runs (for ``vuser run`` and tests)."""

    workdir: Path
    sockets: tuple[Path, ...]
    qmp: Path
    server_pid: int | None
    qemu_pid: int
    notes: tuple[str, ...] = ()  # what the launcher found (kernel_iommu: register base, BDFs)


class _Stream:
    """Drains a pipe in a thread into a bounded text buffer, echoing each chunk."""

    def __init__(self, pipe: IO[bytes], name: str, echo: Callable[[str], None] | None = None) -> None:
        self._pipe = pipe
        self._echo = echo
        self._chunks: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"vuser-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self._pipe.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            text = decoder.decode(data, final=not data)
            if text:
                with self._lock:
                    self._chunks.append(text)
                    self._size += len(text)
                    if self._size > LOG_CAP:
                        joined = "".join(self._chunks)[-LOG_CAP // 2:]
                        self._chunks, self._size = [joined], len(joined)
                if self._echo:
                    try:
                        self._echo(text)
                    except Exception:  # noqa: BLE001 - a broken echo must not stop the drain
                        log.exception("console echo failed")
                        self._echo = None
            if not data:
                return

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)


def _last_line(text: str, default: str = "") -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else default


def _qemu_errors(qemu_log: str) -> list[str]:
    """QEMU's error lines (not its warnings)."""
    return [ln.strip() for ln in qemu_log.splitlines()
            if ln.strip() and ": warning:" not in ln and "warning:" not in ln[:9]]


def _alive(proc: subprocess.Popen | None) -> bool:
    return proc is not None and proc.poll() is None


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it; reap the leader."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, STOP_WAIT_S)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
            # The leader is gone; stragglers in its group get the same signal.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class _Run:
    """One launch: the processes, their streams and the teardown (reverse order of start)."""

    def __init__(self, image: Any, devices: Sequence[str], *, timeout: float, memory_mib: int,
                 accel: str, smp: int, extra_server_args: Sequence[str], kernel_args: Sequence[str],
                 console_echo: Callable[[str], None] | None, console_input: int | None,
                 qemu: QemuBinary | None, server_command: Sequence[str] | None,
                 ready_timeout: float, on_ready: Callable[[LaunchInfo], None] | None,
                 qemu_extra: Sequence[str], kernel_iommu: bool = False,
                 probe_cache: Path | None = None,
                 until: Callable[[Path], bool] | None = None,
                 overlays: Sequence[Any] = ()) -> None:
        self.image = image
        self.devices = list(devices)
        self.timeout = timeout
        self.memory_mib = memory_mib
        self.accel = accel
        self.smp = smp
        self.extra_server_args = list(extra_server_args)
        self.kernel_args = list(kernel_args)
        self.console_echo = console_echo
        self.console_input = console_input
        self.qemu_bin = qemu
        self.server_command = list(server_command or SERVER_COMMAND)
        self.ready_timeout = ready_timeout
        self.on_ready = on_ready
        self.qemu_extra = list(qemu_extra)
        self.kernel_iommu = kernel_iommu
        self.probe_cache = probe_cache
        self.until = until
        # The image's own per-run files (its test programs) first, then the caller's.
        self.overlays = [*getattr(image, "overlays", ()), *overlays]
        self.notes: list[str] = []
        self.topology: Any = None
        self._probe_key: str | None = None
        self._dmar: bytes | None = None
        self.workdir: Path | None = None
        self.server: subprocess.Popen | None = None
        self.qemu: subprocess.Popen | None = None
        self.server_out: _Stream | None = None
        self.console: _Stream | None = None
        self.qemu_err: _Stream | None = None
        self.detached = threading.Event()
        self.input_thread: threading.Thread | None = None

    # -- validate first
    def validate(self) -> tuple[Path | None, Path | None]:
        for dev in self.devices:
            dtype = dev.split(",", 1)[0]
            if not dtype or "@" in dev or "/" in dtype:
                raise UserError(f"bad device {dev!r} (give TYPE[,key=value...], such as 'sample')")
        if self.timeout <= 0:
            raise UserError(f"timeout must be > 0, not {self.timeout}")
        if self.accel not in cmdline.ACCELS:
            raise UserError(f"accelerator must be one of {', '.join(cmdline.ACCELS)}, not {self.accel!r}")
        if self.image is None:  # firmware only
            return None, None
        kernel = Path(self.image.kernel)
        initrd = Path(self.image.initrd) if getattr(self.image, "initrd", None) else None
        if not kernel.is_file():
            raise UserError(f"guest kernel {kernel} does not exist (build the image: vuser provision --image)")
        if initrd is not None and not initrd.is_file():
            raise UserError(f"guest initrd {initrd} does not exist (build the image: vuser provision --image)")
        if self.kernel_iommu:
            from vuser.qemu import kernel_iommu

            kernel_iommu.iommu_index(self.devices)
            self.notes += kernel_iommu.check_kernel_config(
                getattr(self.image, "kernel_config", None), getattr(self.image, "kernel_release", ""))
        return kernel, initrd

    def _prepare_kernel_iommu(self, qemu_bin: QemuBinary) -> None:
        """Probe (or recall) the firmware's placement; label the devices, build the DMAR."""
        from vuser.qemu import kernel_iommu, topology

        probe_devices = [topology.strip_options(d) for d in self.devices]
        cache = self.probe_cache or topology.default_cache()
        self._probe_key = topology.probe_key(qemu_bin, probe_devices, memory_mib=self.memory_mib,
                                             accel=self.accel, smp=self.smp,
                                             qemu_extra=self.qemu_extra)

        def boot(until: Callable[[Path], bool], timeout: float) -> GuestResult:
            return _Run(None, probe_devices, timeout=timeout, memory_mib=self.memory_mib,
                        accel=self.accel, smp=self.smp, extra_server_args=(), kernel_args=(),
                        console_echo=None, console_input=None, qemu=qemu_bin,
                        server_command=self.server_command, ready_timeout=self.ready_timeout,
                        on_ready=None, qemu_extra=self.qemu_extra, until=until).run()

        topo = topology.probe(boot, len(self.devices), key=self._probe_key, cache=cache)
        plan = kernel_iommu.plan(self.devices, topo)
        self.topology = topo
        self.devices = list(plan.devices)
        self.kernel_args += plan.kernel_args
        self._dmar = plan.dmar
        how = "cached probe" if topo.cached else f"firmware probe {topo.probe_s:.1f} s"
        self.notes.append(f"kernel-owned vIOMMU: register base {plan.register_base:#x} ({how}); "
                          + ", ".join(f"{d.split(',', 1)[0]} at {s.name}"
                                      for d, s in zip(self.devices, topo.slots)))

    # -- then act
    def run(self) -> GuestResult:
        kernel, initrd = self.validate()
        qemu_bin = self.qemu_bin or find_qemu()
        if self.kernel_iommu:
            self._prepare_kernel_iommu(qemu_bin)
        start = time.monotonic()
        try:
            stale = rundir.sweep()
            if stale:
                self.notes.append("removed what a killed run left: "
                                  + ", ".join(str(p) for p in stale))
            self.workdir = rundir.create()
            sockets = tuple(self.workdir / f"{i}-{dev.split(',', 1)[0]}.sock"
                            for i, dev in enumerate(self.devices))
            qmp_path = self.workdir / "qmp.sock"
            # WORKDIR_MARK: a path in this run's directory (the guest agent's socket)
            extra = [a.replace(WORKDIR_MARK, str(self.workdir)) for a in self.qemu_extra]
            if self._dmar is not None:
                table = self.workdir / "dmar.bin"
                table.write_bytes(self._dmar)
                extra += ["-acpitable", f"file={table}"]
            if initrd is not None and any(self.overlays):
                from vuser.guest import overlay

                initrd = overlay.concatenate(initrd, self.overlays, self.workdir / "initrd.img")
            if self.devices:
                self._start_server(sockets)
            cfg = cmdline.GuestConfig(
                kernel=kernel.resolve() if kernel else None,
                initrd=initrd.resolve() if initrd else None,
                append=cmdline.kernel_cmdline(getattr(self.image, "append", ""), self.kernel_args),
                sockets=sockets, qmp=qmp_path, memory_mib=self.memory_mib, accel=self.accel,
                smp=self.smp, extra=extra)
            # QEMU ends with its parent (PR_SET_PDEATHSIG): a killed launcher orphans nothing.
            self._start_qemu([*qemu_bin.argv, *cmdline.qemu_args(cfg),
                              "-run-with", "exit-with-parent=on"])
            if self.on_ready:
                self.on_ready(LaunchInfo(self.workdir, sockets, qmp_path,
                                         self.server.pid if self.server else None, self.qemu.pid,
                                         tuple(self.notes)))
            result = self._wait(start, qmp_path)
        finally:
            self.teardown()
        result.console = self.console.text().replace("\r\n", "\n") if self.console else ""
        result.server_log = self.server_out.text() if self.server_out else ""
        result.qemu_log = self.qemu_err.text() if self.qemu_err else ""
        self._interpret(result)
        result.notes = list(self.notes)
        result.topology = self.topology
        if self.kernel_iommu and result.server_died and self._probe_key:
            # Most likely vuser-iommu refused its register base: probe afresh next time.
            from vuser.qemu import topology

            topology.forget(self.probe_cache or topology.default_cache(), self._probe_key)
        return result

    def _start_server(self, sockets: Sequence[Path]) -> None:
        argv = list(self.server_command)
        for dev, sock in zip(self.devices, sockets):
            dtype, comma, options = dev.partition(",")
            argv += ["--device", f"{dtype}@{sock}{comma}{options}"]
        argv += self.extra_server_args
        log.debug("server: %s", " ".join(argv))
        try:
            self.server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, PARENT_ENV: str(os.getpid())})
        except OSError as e:
            raise UserError(f"cannot start the vuser server ({argv[0]}): {e.strerror}") from None
        self.server_out = _Stream(self.server.stdout, "server")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if all(_is_socket(s) for s in sockets):
                return
            rc = self.server.poll()
            if rc is not None:
                self.server_out.join()
                raise UserError(f"the vuser server exited with {rc} before its sockets were ready: "
                                f"{_last_line(self.server_out.text(), 'no output')}")
            if time.monotonic() > deadline:
                raise UserError(f"the vuser server did not create its sockets within "
                                f"{self.ready_timeout:g} s: {_last_line(self.server_out.text(), 'no output')}")
            time.sleep(0.02)

    def _start_qemu(self, argv: list[str]) -> None:
        log.debug("qemu: %s", " ".join(argv))
        stdin = subprocess.PIPE if self.console_input is not None else subprocess.DEVNULL
        try:
            self.qemu = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise UserError(f"cannot start QEMU ({argv[0]}): {e.strerror}") from None
        self.console = _Stream(self.qemu.stdout, "console", self.console_echo)
        self.qemu_err = _Stream(self.qemu.stderr, "qemu-stderr")
        if self.console_input is not None:
            self.input_thread = threading.Thread(target=self._forward_input, name="vuser-input",
                                                 daemon=True)
            self.input_thread.start()

    def _forward_input(self) -> None:
        """Copy the user's keystrokes to the serial console until Ctrl-] or EOF."""
        fd = self.console_input
        assert self.qemu is not None and self.qemu.stdin is not None and fd is not None
        while _alive(self.qemu) and not self.detached.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 1024)
            if not data:
                return
            if CONSOLE_ESCAPE in data:
                data = data[:data.index(CONSOLE_ESCAPE)]
                self.detached.set()
            try:
                self.qemu.stdin.write(data)
                self.qemu.stdin.flush()
            except (BrokenPipeError, ValueError):
                return

    def _wait(self, start: float, qmp_path: Path) -> GuestResult:
        assert self.qemu is not None
        deadline = start + self.timeout
        result = GuestResult(exit_status=None, console="")
        server_gone_at = None
        while True:
            try:
                self.qemu.wait(0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.server is not None and server_gone_at is None and self.server.poll() is not None:
                result.server_died = True
                server_gone_at = now
            if server_gone_at is not None and now - server_gone_at > SERVER_DEATH_GRACE_S:
                result.guest_state = _guest_state(qmp_path)
                break
            if now > deadline:
                result.timed_out = True
                result.guest_state = _guest_state(qmp_path)
                if result.guest_state == "running" and self.image is not None and self.console:
                    from vuser.qemu import sysrq

                    result.task_dump = sysrq.dump(qmp_path, self.console.text)
                break
            if self.detached.is_set():
                break
            if self.until is not None and self.until(qmp_path):
                result.stopped = True
                break
        result.duration_s = time.monotonic() - start
        if self.server is not None and not result.server_died and self.qemu.poll() is not None:
            # QEMU may have ended *because* the server died (QEMU 11 can abort on the
            # lost socket before the server has exited): look once more, for longer
            # when QEMU did not end through isa-debug-exit.
            rc = self.qemu.returncode
            try:
                self.server.wait(0.05 if rc > 0 and rc & 1 else SERVER_DEATH_GRACE_S)
                result.server_died = True
            except subprocess.TimeoutExpired:
                pass
        return result

    def _interpret(self, r: GuestResult) -> None:
        rc = self.qemu.returncode if self.qemu else None
        r.qemu_returncode = rc
        if r.timed_out:
            state = f", guest {r.guest_state}" if r.guest_state else ""
            r.error = f"guest timed out after {self.timeout:g} s{state}"
        elif r.server_died:
            rc_s = self.server.returncode if self.server else None
            # QEMU's vfio-user-pci never reconnects: a restarted server cannot take over.
            r.error = (f"the vuser server died ({_exit_how(rc_s)}) while the guest ran "
                       f"(QEMU does not reconnect to a restarted server): "
                       f"{_last_line(r.server_log, 'no output')}")
        elif self.detached.is_set():
            r.error = "console session ended by the user (Ctrl-])"
        elif r.stopped:
            r.error = "stopped by the launcher once it had what it waited for"
        elif rc is None:
            r.error = "QEMU did not run"
        elif rc < 0:
            # QEMU 11 can abort on a vfio-user socket closed mid-request (an assertion).
            why = _qemu_errors(r.qemu_log)
            r.error = f"QEMU was killed by signal {-rc}" + (f": {why[-1]}" if why else "")
        elif rc == 1 and _qemu_errors(r.qemu_log) and not r.console:
            # Exit status 1 is also a guest writing 0; but a guest that ran has
            # printed on the console, and QEMU's start-up errors come before that.
            r.error = f"QEMU failed: {_qemu_errors(r.qemu_log)[-1]}"
        elif rc & 1:
            r.exit_status = rc >> 1
        elif rc == 0:
            r.error = "the guest stopped without writing isa-debug-exit (reboot, power-off or panic)"
        else:
            r.error = f"QEMU exited with {rc}: {_last_line(r.qemu_log, 'no message')}"

    def teardown(self) -> None:
        """Stop QEMU, then the server; drain the streams; remove the working directory."""
        if _alive(self.qemu) and self.workdir is not None:
            try:
                qmp.call(self.workdir / "qmp.sock", "quit", timeout=2.0)
                self.qemu.wait(STOP_WAIT_S)
            except (qmp.QmpError, subprocess.TimeoutExpired) as e:
                log.debug("QMP quit did not stop QEMU: %s", e)
        if self.qemu is not None:
            if _alive(self.qemu):
                _stop_group(self.qemu)
            else:
                try:
                    os.killpg(self.qemu.pid, signal.SIGKILL)  # helpers QEMU may have forked
                except (ProcessLookupError, PermissionError):
                    pass
        if self.server is not None:
            _stop_group(self.server)
        for stream in (self.console, self.qemu_err, self.server_out):
            if stream:
                stream.join()
        if self.input_thread:
            self.detached.set()
            self.input_thread.join(1.0)
        for proc in (self.qemu, self.server):
            if proc is None:
                continue
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _exit_how(rc: int | None) -> str:
    """'killed by SIGKILL' for a negative return code, else 'exit status N'."""
    if rc is not None and rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def _guest_state(qmp_path: Path) -> str | None:
    try:
        status = qmp.call(qmp_path, "query-status", timeout=2.0)[0]
        return str(status.get("status")) if isinstance(status, dict) else None
    except qmp.QmpError as e:
        log.debug("query-status failed: %s", e)
        return None


def launch(image: Any, devices: Sequence[str] = ("sample",), timeout: float = 120.0,
           memory_mib: int = 512, accel: str = "tcg", extra_server_args: Sequence[str] = (),
           console_echo: Callable[[str], None] | None = None, *,
           kernel_args: Sequence[str] = (), qemu: QemuBinary | None = None,
           console_input: int | None = None, smp: int = 1,
           server_command: Sequence[str] | None = None, ready_timeout: float = 20.0,
           on_ready: Callable[[LaunchInfo], None] | None = None,
           qemu_extra: Sequence[str] = (), kernel_iommu: bool = False,
           probe_cache: Path | None = None, overlays: Sequence[Any] = ()) -> GuestResult:
    """Boot ``image`` (``.kernel``, ``.initrd``, ``.append``) against vuser ``devices``.

    - ``kernel_args``: words appended to the kernel command line (``vuser.tests=a,b``).
    - ``console_echo``: called with console text as it arrives.
    - ``console_input``: an fd whose bytes go to the serial console (Ctrl-] ends).
    - ``qemu``: the QEMU to use (default: ``find_qemu()``, provisioning if needed).
    - ``server_command``: argv prefix of the server (default ``python -m vuser serve``).
    - ``on_ready``: called with a ``LaunchInfo`` once QEMU has started.
    - ``kernel_iommu``: the guest kernel owns the one vuser-iommu among
      ``devices`` (module doc); ``probe_cache`` is where firmware probes are
      cached (default ``<cache>/probes``). ``result.notes`` says where the
      register base came from.
    - ``overlays``: ``vuser.guest.overlay.Overlay`` archives appended to the
      image's initrd for this run only (the cached image is not touched).

    Startup failures raise ``UserError``; everything after QEMU started is
    reported in the ``GuestResult``. Nothing is left running or on disk.
    """
    return _Run(image, devices, timeout=timeout, memory_mib=memory_mib, accel=accel, smp=smp,
                extra_server_args=extra_server_args, kernel_args=kernel_args,
                console_echo=console_echo, console_input=console_input, qemu=qemu,
                server_command=server_command, ready_timeout=ready_timeout, on_ready=on_ready,
                qemu_extra=qemu_extra, kernel_iommu=kernel_iommu, probe_cache=probe_cache,
                overlays=overlays).run()


@dataclass(frozen=True)
class Image:
    """A plain guest image (``vuser.guest.image.GuestImage`` has the same fields)."""

    kernel: Path
    initrd: Path | None = None
    append: str = ""
    kernel_config: Path | None = None  # its .config, checked in kernel_iommu mode
    kernel_release: str = ""


class BackgroundLaunch:
    """A launch running in a thread (``launch_in_background``): the guest runs
    until ``stop()``, its timeout, or its own end."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.info: LaunchInfo | None = None
        self.result: GuestResult | None = None
        self._error: BaseException | None = None
        run.until = lambda _qmp: self._stop.is_set()
        user_hook = run.on_ready

        def ready(info: LaunchInfo) -> None:
            self.info = info
            if user_hook:
                user_hook(info)
            self._ready.set()
        run.on_ready = ready
        self._thread = threading.Thread(target=self._main, name="vuser-launch", daemon=True)

    def _main(self) -> None:
        try:
            self.result = self._run.run()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of start()/stop()
            self._error = e
        finally:
            self._ready.set()

    def start(self) -> LaunchInfo:
        """Start; return once QEMU runs. Startup errors are raised here."""
        self._thread.start()
        self._ready.wait()
        if self.info is None:
            self._thread.join()
            raise self._error or UserError("the launch ended before QEMU started")
        return self.info

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the guest to end by itself; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def console(self) -> str:
        """What the serial console printed so far."""
        stream = self._run.console
        return stream.text().replace("\r\n", "\n") if stream else ""

    def stop(self) -> GuestResult:
        """End the guest (if it still runs) and tear everything down; the run's result."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self.result is not None
        return self.result


def launch_in_background(image: Any, devices: Sequence[str] = ("sample",), timeout: float = 3600.0,
                         memory_mib: int = 512, accel: str = "tcg", *,
                         extra_server_args: Sequence[str] = (), kernel_args: Sequence[str] = (),
                         qemu: QemuBinary | None = None, smp: int = 1,
                         server_command: Sequence[str] | None = None, ready_timeout: float = 20.0,
                         on_ready: Callable[[LaunchInfo], None] | None = None,
                         qemu_extra: Sequence[str] = (), kernel_iommu: bool = False,
                         probe_cache: Path | None = None, overlays: Sequence[Any] = (),
                         console_echo: Callable[[str], None] | None = None) -> BackgroundLaunch:
    """``launch()`` without waiting: returns a started ``BackgroundLaunch``
    (``.info`` once QEMU runs); ``.stop()`` ends the guest the same way a run
    ends (QMP quit, server stopped, working directory removed) and returns its
    ``GuestResult`` (``stopped`` True when ``stop()`` ended it)."""
    bg = BackgroundLaunch(_Run(image, devices, timeout=timeout, memory_mib=memory_mib, accel=accel,
                               smp=smp, extra_server_args=extra_server_args,
                               kernel_args=kernel_args, console_echo=console_echo,
                               console_input=None, qemu=qemu, server_command=server_command,
                               ready_timeout=ready_timeout, on_ready=on_ready,
                               qemu_extra=qemu_extra, kernel_iommu=kernel_iommu,
                               probe_cache=probe_cache, overlays=overlays))
    bg.start()
    return bg
