"""The QEMU command line for a guest with vfio-user devices (docs/architecture.md
"QEMU and guests").

- q35, so the devices sit on PCI Express; each ``vfio-user-pci`` behind its own
  ``pcie-root-port``, otherwise QEMU hides the extended capabilities (PASID,
  ATS, PRI at 0x100+; ``hw/vfio/pci.c vfio_add_ext_cap``).
- Guest RAM from ``memory-backend-memfd,share=on``, so every DMA_MAP carries an
  fd the server can map and share with the guest (spec "VFIO_USER_DMA_MAP").
- ``isa-debug-exit`` at 0xf4/4: the guest's status, QEMU exits ``(val<<1)|1``.
- ``-nodefaults``: no NIC, VGA or default serial; the console is ``ttyS0`` on a
  ``stdio`` chardev (QEMU's stdin/stdout are the launcher's pipes).
- ``-no-reboot``: a reboot or a panic ends QEMU (exit status 0, no debug-exit).
- QMP on a UNIX socket.
- Without a kernel (``GuestConfig.kernel`` None) the guest stays in the
  firmware: SeaBIOS assigns the BARs and finds nothing to boot (the probe of
  ``vuser.qemu.topology``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEBUG_EXIT_IOBASE = 0xF4
ACCELS = ("tcg", "kvm")
PROCESS_NAME = "qemu-vuser"  # the thread name QEMU sets (comm: at most 15 bytes)


@dataclass(frozen=True)
class GuestConfig:
    """What the guest gets; paths are absolute. ``kernel`` None: firmware only."""

    kernel: Path | None
    initrd: Path | None
    append: str
    sockets: Sequence[Path] = ()
    qmp: Path | None = None
    memory_mib: int = 512
    accel: str = "tcg"
    smp: int = 1
    extra: Sequence[str] = field(default_factory=tuple)


def kernel_cmdline(append: str, extra: Sequence[str] = ()) -> str:
    """The image's command line, with ``console=ttyS0`` and ``panic=-1`` unless it says otherwise."""
    words = append.split()
    if not any(w.startswith("console=") for w in words):
        words.insert(0, "console=ttyS0")
    if not any(w.startswith("panic=") for w in words):
        words.append("panic=-1")
    return " ".join([*words, *extra])


def vfio_user_device(sock: Path, bus: str, dev_id: str) -> str:
    """The JSON ``-device`` for one vfio-user device (the socket is a QAPI SocketAddress)."""
    return json.dumps({"driver": "vfio-user-pci", "id": dev_id,
                       "socket": {"type": "unix", "path": str(sock)}, "bus": bus},
                      separators=(",", ":"))


def qemu_args(cfg: GuestConfig) -> list[str]:
    """QEMU options (to append to ``QemuBinary.argv``). Validates first."""
    if cfg.accel not in ACCELS:
        raise ValueError(f"accel must be one of {ACCELS}, not {cfg.accel!r}")
    if cfg.memory_mib < 16:
        raise ValueError(f"memory_mib must be >= 16, not {cfg.memory_mib}")
    if cfg.smp < 1:
        raise ValueError(f"smp must be >= 1, not {cfg.smp}")
    args = [
        "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "q35,memory-backend=ram0",
        "-accel", cfg.accel,
        "-cpu", "max",
        "-smp", str(cfg.smp),
        "-m", f"{cfg.memory_mib}M",
        "-object", f"memory-backend-memfd,id=ram0,size={cfg.memory_mib}M,share=on",
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_IOBASE:#x},iosize=0x04",
        "-chardev", "stdio,id=con0,signal=off",
        "-serial", "chardev:con0",
        "-no-reboot",
        # the provisioned QEMU runs through sid's dynamic loader, so without a
        # name `ps` and `top` would show it as ld-linux-x86-64.so.2
        "-name", f"vuser,process={PROCESS_NAME}",
    ]
    for i, sock in enumerate(cfg.sockets):
        bus = f"rp{i}"
        args += ["-device", f"pcie-root-port,id={bus},bus=pcie.0,chassis={i + 1},slot=0"]
        args += ["-device", vfio_user_device(sock, bus, f"vuser{i}")]
    if cfg.qmp is not None:
        args += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    if cfg.kernel is not None:
        args += ["-kernel", str(cfg.kernel)]
        if cfg.initrd is not None:
            args += ["-initrd", str(cfg.initrd)]
        args += ["-append", cfg.append]
    return args + list(cfg.extra)
