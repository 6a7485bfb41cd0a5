"""A live guest from Python: a vuser server with devices, a guest booted
against it, commands through the guest agent, the model through the control
RPC (docs/python-api.md)::

    from vuser.live import boot

    with boot(devices=["vuser-iommu", "vuser-dma"], kernel_iommu=True) as g:
        r = g.run("lspci -n")
        print(r.status, r.out)
        g.copy_in("build/my.ko", "/tmp/my.ko")
        print(g.dmesg()[-500:])
        print(g.control.faults())

Commands go over a virtio-serial port to ``vuser-agent`` in the guest
(``vuser.guest.agent``), never over the serial console, so kernel messages
cannot mix into their output. ``close()`` (or leaving the ``with`` block)
stops QEMU and the server and removes every file the run made.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from vuser.errors import UserError
from vuser.guest.agent import AgentClient, AgentError, AgentGone, AgentTimeout
from vuser.guest.agent_wire import MAX_REQUEST, ExecResult, WriteRequest

__all__ = ["AgentError", "BootError", "CommandFailed", "ExecResult", "Guest", "boot"]

STOP_GRACE_S = 5.0


class BootError(UserError):
    """The guest did not come up (its agent never answered) or ended early."""


class CommandFailed(UserError):
    """``run(..., check=True)``: the command did not exit 0."""

    def __init__(self, command: str, result: ExecResult) -> None:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        super().__init__(f"guest command {command!r}: {result.describe()}"
                         + (f": {err[-1]}" if err else ""))
        self.result = result


class Guest:
    """A running guest (from ``boot()``). Use it as a context manager, or call ``close()``."""

    def __init__(self, bg, agent: AgentClient, control_path: str | None, rundir: Path,
                 notes: list[str]) -> None:
        self._bg = bg
        self._agent = agent
        self.control_path = control_path
        self._rundir = rundir
        self._control = None
        self.notes = notes  # one-line facts: shares, kernel-owned vIOMMU placement
        self.result = None  # the launcher's GuestResult, after close()

    # -- commands ----------------------------------------------------------------------
    def run(self, command: str, timeout: float | None = 300.0, check: bool = False) -> ExecResult:
        """Run ``/bin/sh -c command`` in the guest (as root, cwd ``/``).

        Returns an ``ExecResult``: ``stdout``/``stderr`` (bytes; ``out``/``err``
        decoded), ``status`` (None when a signal killed it: ``signal``),
        ``timed_out`` (killed after ``timeout`` seconds). ``check``: raise
        ``CommandFailed`` unless it exited 0.
        """
        result = self._agent.exec(command, timeout=timeout)
        if check and not result.ok:
            raise CommandFailed(command, result)
        return result

    def copy_in(self, host_path: str | Path, guest_path: str, mode: int | None = None) -> None:
        """Copy a host file to ``guest_path`` (absolute; parent directories made),
        keeping its permission bits unless ``mode`` is given."""
        src = Path(host_path)
        try:
            data = src.read_bytes()
            file_mode = mode if mode is not None else src.stat().st_mode & 0o7777
        except OSError as e:
            raise UserError(f"copy_in {src}: {e.strerror}") from None
        room = MAX_REQUEST - WriteRequest.SIZE - len(os.fsencode(guest_path))
        if len(data) > room:
            raise UserError(f"copy_in {src}: {len(data)} bytes, the agent takes at most {room} "
                            "in one file (share its directory instead: shares=[...])")
        self._agent.write_file(guest_path, data, file_mode)

    def read_file(self, guest_path: str) -> bytes:
        """A guest file's bytes (up to 16 MiB)."""
        return self._agent.read_file(guest_path)

    def dmesg(self) -> str:
        """The guest kernel's log buffer (syslog(2) READ_ALL), as text."""
        return self._agent.kmsg().decode(errors="replace")

    def console(self) -> str:
        """What the serial console printed so far (boot messages, /init's notes)."""
        return self._bg.console()

    # -- the model ---------------------------------------------------------------------
    @property
    def control(self):
        """A ``vuser.rpc.client.SyncClient`` on the server's control socket
        (``control.faults()``, ``control.call("ioas_alloc")``, ...); None without devices."""
        if self.control_path is None:
            return None
        if self._control is None:
            from vuser.rpc.client import SyncClient

            self._control = SyncClient(self.control_path)
        return self._control

    # -- the end -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._bg.running

    def close(self):
        """Stop the guest, QEMU and the server; remove the run's files. Returns
        the launcher's ``GuestResult`` (idempotent)."""
        if self.result is None:
            self._agent.close()
            if self._control is not None:
                try:
                    self._control.close()
                except Exception:  # noqa: BLE001 - the server may be gone already
                    pass
            try:
                self.result = self._bg.stop()
            finally:
                shutil.rmtree(self._rundir, ignore_errors=True)
        return self.result

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def boot(devices: Sequence[str] = ("sample",), *, kernel_iommu: bool = False,
         kernel: str | None = None, modules: str | Path | None = None,
         kernel_build: str | Path | None = None, append: str | Sequence[str] = (), memory_mib: int = 512,
         shares: Sequence[str | Path] = (), timeout: float = 3600.0, boot_timeout: float = 180.0,
         accel: str = "tcg", smp: int = 1, trace: str | Path | None = None,
         qemu_args: Sequence[str] = (), control: str | Path | None = None,
         server_args: Sequence[str] = (), qemu=None, progress: bool = False) -> Guest:
    """Start a vuser server with ``devices``, boot a guest against it, wait for its agent.

    - ``devices``: ``TYPE[,key=value...]`` as for ``vuser run --device`` (none: no server).
    - ``kernel_iommu``: the guest kernel's intel_iommu owns the one vuser-iommu.
    - ``kernel``: ``"debian:<suite>"`` (default: the image recipe's, bookworm), or
      the path of your own bzImage, with ``modules`` (its modules tree) and
      ``kernel_build`` (a build tree, for ``vuser_dma.ko``) as for
      ``vuser run --kernel PATH --modules DIR --kernel-build DIR``.
    - ``append``: extra kernel options (``vuser.*`` is refused).
    - ``shares``: host directories, seen at the same absolute path in the guest
      (9p when QEMU and kernel have it, else copied in: ``guest.notes`` says which).
    - ``timeout``: the guest's whole life; ``boot_timeout``: until the agent answers.
    - ``trace``: record a model trace of the whole run into this file.
    - ``control``: a fixed path for the control socket (default: one in a
      private directory, ``guest.control_path``); ``server_args``: more
      ``vuser serve`` arguments; ``qemu_args``: more QEMU arguments;
      ``qemu``: a ``vuser.qemu.find.QemuBinary`` (default: ``find_qemu()``).

    Raises ``UserError`` (``BootError`` when the guest boots but its agent never
    answers); nothing is left running then.
    """
    from vuser.guest import runsetup
    from vuser.guest.kernel_choice import choose
    from vuser.qemu import rundir
    from vuser.qemu.find import find_qemu
    from vuser.qemu.launcher import WORKDIR_MARK, launch_in_background

    words = tuple((append if isinstance(append, str) else " ".join(append)).split())
    taken = [w for w in words if w.startswith("vuser.")]
    if taken:
        raise UserError(f"append must not set vuser.* (the launcher does): {taken[0]}")
    qemu = qemu or find_qemu(show_progress=progress)
    image = choose(None if kernel is None else str(kernel), modules,
                   kernel_build).image(None, progress=progress)
    setup = runsetup.plan(image, agent=True, shares=list(shares), qemu=qemu)
    own = rundir.create()  # the control socket; swept if this process dies
    if not devices:
        control = None
    else:
        control = str(control) if control is not None else str(own / "control.sock")
    server_args = [*(["--control", control] if control else []), *server_args]
    if trace is not None:
        server_args += ["--trace", str(Path(trace).resolve())]
    try:
        bg = launch_in_background(image, list(devices), timeout=timeout, memory_mib=memory_mib,
                                  accel=accel, smp=smp, qemu=qemu, extra_server_args=server_args,
                                  kernel_args=[*setup.kernel_args, *words],
                                  qemu_extra=[*setup.qemu_args, *qemu_args],
                                  kernel_iommu=kernel_iommu, overlays=[setup.overlay])
    except BaseException:
        shutil.rmtree(own, ignore_errors=True)
        raise
    notes = [*setup.notes, *bg.info.notes]
    agent = None
    try:
        sock = Path(runsetup.AGENT_SOCKET.replace(WORKDIR_MARK, str(bg.info.workdir)))
        agent = AgentClient.connect(sock, timeout=30.0)
        _wait_for_agent(agent, bg, boot_timeout)
    except BaseException as e:
        if agent is not None:
            agent.close()
        if isinstance(e, AgentGone):
            bg.wait(STOP_GRACE_S)  # the guest ended: let the launcher see how
        result = bg.stop()
        shutil.rmtree(own, ignore_errors=True)
        tail = f"; last console lines:\n{result.console_tail(15)}"
        if isinstance(e, AgentGone):
            raise BootError(f"the guest ended before its agent answered: {result.error}{tail}") \
                from None
        if isinstance(e, AgentTimeout):
            raise BootError(f"the guest agent did not answer within {boot_timeout:g} s{tail}") \
                from None
        raise
    return Guest(bg, agent, control, own, notes)


def _wait_for_agent(agent: AgentClient, bg, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            agent.ping(timeout=1.0)
            return
        except AgentTimeout:
            if not bg.running:
                raise AgentGone("the guest ended") from None
            if time.monotonic() > deadline:
                raise AgentTimeout(f"no answer within {timeout:g} s") from None

