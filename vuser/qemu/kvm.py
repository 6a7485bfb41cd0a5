"""A short probe: does a KVM guest run here, or only TCG?

``/dev/kvm`` being openable is not enough: on some hosts (nested
virtualisation) KVM guests start and then hang. The probe boots the multiboot
mini-guest (``vuser.qemu.miniguest``) with ``-accel kvm`` and expects its
isa-debug-exit value within a few seconds. Even that is not enough on this
project's own CI machines, where the mini-guest runs but a Linux kernel
hangs: given the guest image, the probe then boots it too, running only the
device-less ``environment`` test, and KVM is usable only if that passes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vuser.errors import UserError
from vuser.qemu import miniguest
from vuser.qemu.find import QemuBinary
from vuser.qemu.launcher import Image, launch

KVM_DEV = Path("/dev/kvm")
PROBE_VALUE = 0x2A
PROBE_TIMEOUT_S = 5.0
#: A Linux guest under KVM reaches /init in about a second where KVM works.
LINUX_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class KvmStatus:
    usable: bool
    reason: str  # one line: why, or what was seen


def probe_kvm(qemu: QemuBinary, timeout: float = PROBE_TIMEOUT_S, *, linux: Any = None,
              linux_timeout: float = LINUX_PROBE_TIMEOUT_S) -> KvmStatus:
    """Boot the mini-guest under KVM; usable only if it exits with the expected
    value and, when ``linux`` (a guest image) is given, that guest's
    ``environment`` test passes under KVM as well."""
    if not KVM_DEV.exists():
        return KvmStatus(False, f"{KVM_DEV} does not exist")
    if not os.access(KVM_DEV, os.R_OK | os.W_OK):
        return KvmStatus(False, f"{KVM_DEV} is not readable and writable by this user")
    with tempfile.TemporaryDirectory(prefix="vuser-kvm-") as d:
        kernel = miniguest.write(Path(d) / "probe.bin", "kvm\r\n", PROBE_VALUE)
        try:
            r = launch(Image(kernel), devices=[], timeout=timeout, memory_mib=64, accel="kvm",
                       qemu=qemu)
        except UserError as e:
            return KvmStatus(False, str(e))
    if r.exit_status == PROBE_VALUE:
        mini = f"a KVM mini-guest ran and exited in {r.duration_s:.2f} s"
        return _probe_linux(qemu, linux, linux_timeout, mini) if linux is not None \
            else KvmStatus(True, mini + " (no guest image to try a Linux guest)")
    if r.timed_out:
        return KvmStatus(False, f"a KVM guest hung (no exit within {timeout:g} s)")
    return KvmStatus(False, r.error or f"unexpected exit status {r.exit_status}")


def _probe_linux(qemu: QemuBinary, image: Any, timeout: float, mini: str) -> KvmStatus:
    try:
        r = launch(image, devices=[], timeout=timeout, accel="kvm", qemu=qemu,
                   kernel_args=("vuser.tests=environment",))
    except UserError as e:
        return KvmStatus(False, f"{mini}, but the Linux guest did not start: {e}")
    if r.exit_status == 0:
        return KvmStatus(True, f"{mini}; the Linux guest passed its tests in {r.duration_s:.1f} s")
    if r.timed_out:
        return KvmStatus(False, f"{mini}, but the Linux guest hung (no exit within {timeout:g} s)")
    return KvmStatus(False, f"{mini}, but the Linux guest failed: "
                            f"{r.error or f'exit status {r.exit_status}'}")
