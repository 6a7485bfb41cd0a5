"""What one run adds to a cached guest image: the agent, shared directories.

``/init`` sources ``/etc/vuser/run.sh`` when a run's overlay
(``vuser.guest.overlay``) carries one, after its own modules are loaded and
before it runs tests or a shell. ``plan()`` writes that script with:

- the kernel modules the run needs that the image does not load
  (``virtio_pci``, ``virtio_console`` for the agent's port; ``9p`` and
  ``9pnet_virtio`` for shares), their dependency closure from the image's
  kernel, under ``/lib/modules/run/``; built-in ones are left out;
- **shares** (``--share DIR``): a host directory appears in the guest at the
  same absolute path, as virtme-ng does. With 9p — QEMU has
  ``virtio-9p-pci`` and the guest kernel has ``CONFIG_9P_FS`` and
  ``CONFIG_NET_9P_VIRTIO`` — it is mounted there (``-virtfs``, tag
  ``vshare<N>``, read-write, ``security_model=none``). Otherwise its files are
  copied into the run's initramfs (``/.vuser/vshare<N>``) and bind-mounted at
  that path (so a share under ``/tmp`` is not hidden by ``/init``'s tmpfs): a
  snapshot, and what the guest writes there stays in the guest. Debian's
  cloud kernels have no 9p, so the default image copies;
- **the agent** (``vuser.agent=1`` on the kernel command line): ``/init``
  starts ``/sbin/vuser-agent`` on the virtio-serial port ``org.vuser.agent``
  (``vuser.guest.agent``) and waits on it instead of running tests.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vuser.errors import UserError
from vuser.guest.agent import GUEST_PATH as AGENT_PATH, build_agent, qemu_args as agent_qemu_args
from vuser.guest.kernel import KernelTree
from vuser.guest.overlay import Overlay
from vuser.qemu.launcher import WORKDIR_MARK

__all__ = ["AGENT_ARG", "AGENT_SOCKET", "AGENT_MODULES", "NINEP_MODULES", "RunSetup", "Share",
           "kernel_has_9p", "kernel_tree_of", "plan", "plan_shares", "qemu_has_9p",
           "share_qemu_args"]

AGENT_ARG = "vuser.agent=1"
#: The agent's socket, in the launcher's run directory (``launcher.WORKDIR_MARK``).
AGENT_SOCKET = f"{WORKDIR_MARK}/agent.sock"
AGENT_MODULES = ("virtio_pci", "virtio_console")
NINEP_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
RUN_SCRIPT = "etc/vuser/run.sh"
COPY_DIR = ".vuser"  # copied shares: /.vuser/vshare<N>, bind-mounted at their path
MSIZE = 512 * 1024


@dataclass(frozen=True)
class Share:
    """A host directory and how the guest sees it (``how``: "9p" or "copy")."""

    host: Path
    guest: str
    how: str
    tag: str = ""


@dataclass
class RunSetup:
    overlay: Overlay
    qemu_args: list[str] = field(default_factory=list)
    kernel_args: list[str] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, for the user


def kernel_tree_of(image) -> KernelTree:
    """The unpacked kernel an image boots (``image.kernel_tree`` if it names one,
    else found from its ``kernel_config``: ``boot/config-*`` or
    ``usr/lib/modules/*/config`` of the unpacked packages)."""
    tree = getattr(image, "kernel_tree", None)
    if isinstance(tree, KernelTree):
        return tree
    config = getattr(image, "kernel_config", None)
    if config is None:
        raise UserError("the guest image names no kernel config: cannot find its modules")
    config = Path(config)
    for root in (config.parents[1], config.parents[4] if len(config.parents) > 4 else None):
        if root is None:
            continue
        try:
            return KernelTree.find(root)
        except Exception:  # noqa: BLE001 - try the other layout
            continue
    raise UserError(f"cannot find the unpacked kernel of {config}")


def kernel_has_9p(kernel: KernelTree) -> bool:
    opts = kernel.config_options()
    return (opts.get("9P_FS") in ("y", "m") and opts.get("NET_9P_VIRTIO") in ("y", "m")
            and opts.get("VIRTIO_PCI") in ("y", "m"))


def qemu_has_9p(qemu) -> bool:
    """Whether this QEMU has ``virtio-9p-pci`` (``-virtfs``)."""
    try:
        p = subprocess.run([*qemu.argv, "-device", "help"], capture_output=True, text=True,
                           timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return '"virtio-9p-pci"' in p.stdout


def plan_shares(dirs: list[str | Path], use_9p: bool) -> list[Share]:
    """Validate the --share directories; each appears at its own absolute path."""
    shares: list[Share] = []
    seen: set[Path] = set()
    for i, d in enumerate(dirs):
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--share {d}: not a directory")
        bad = set(str(path)) & set('"$`\\|\n')
        if bad:
            raise UserError(f"--share {d}: the path holds {''.join(sorted(bad))!r}, which the "
                            "guest's setup script cannot quote")
        if path == Path("/"):
            raise UserError("--share /: share a directory, not the whole root")
        if path in seen:
            raise UserError(f"--share {d}: given twice")
        for other in seen:
            if path.is_relative_to(other) or other.is_relative_to(path):
                raise UserError(f"--share {d}: overlaps the share {other}")
        seen.add(path)
        shares.append(Share(path, str(path), "9p" if use_9p else "copy", f"vshare{i}"))
    return shares


def share_qemu_args(shares: list[Share]) -> list[str]:
    """``-virtfs`` for each 9p share."""
    args: list[str] = []
    for s in shares:
        if s.how == "9p":
            if "," in str(s.host):
                raise UserError(f"--share {s.host}: a path with a comma cannot go to -virtfs")
            args += ["-virtfs", f"local,path={s.host},mount_tag={s.tag},security_model=none,"
                                f"id={s.tag}"]
    return args


def _script(modules: list[str], shares: list[Share], agent: bool) -> bytes:
    q = shlex.quote
    lines = ["# this run's setup (vuser.guest.runsetup), sourced by /init"]
    if modules:
        lines += [f"for m in {' '.join(modules)}; do",
                  '\t[ -d "/sys/module/$m" ] && continue',
                  '\tout=$(insmod "/lib/modules/run/$m.ko" 2>&1) || notes="$notes|insmod $m: $out"',
                  "done"]
    for s in shares:
        if s.how == "copy":
            lines.append(f"if mkdir -p {q(s.guest)} && mount -o bind /{COPY_DIR}/{s.tag} {q(s.guest)}; "
                         f"then notes=\"$notes|share {s.guest}: a copy\"; "
                         f"else notes=\"$notes|share {s.guest}: cannot bind-mount its copy\"; fi")
        if s.how == "9p":
            lines.append(f"if mkdir -p {q(s.guest)} && mount -t 9p -o trans=virtio,version=9p2000.L,"
                         f"msize={MSIZE} {s.tag} {q(s.guest)}; "
                         f"then notes=\"$notes|share {s.guest}: 9p {s.tag}\"; "
                         f"else notes=\"$notes|share {s.guest}: cannot mount 9p {s.tag}\"; fi")
    if agent:
        lines += [f"if grep -qw {AGENT_ARG} /proc/cmdline; then",
                  "\techo \"$notes\" | tr '|' '\\n' | sed '/^$/d; s/^/vuser guest: /'",
                  f"\t/{AGENT_PATH} </dev/null &",
                  "\techo \"vuser guest: agent started on virtio port org.vuser.agent\"",
                  "\twait $!",
                  "\techo \"vuser guest: the agent exited with status $?\"",
                  "\texec /sbin/vuser-debug-exit 3",
                  "fi"]
    return ("\n".join(lines) + "\n").encode()


def plan(image, *, agent: bool = False, shares: list[str | Path] = (), qemu=None,
         cache: Path | None = None) -> RunSetup:
    """The overlay, QEMU and kernel arguments for a run of ``image``."""
    setup = RunSetup(Overlay())
    if not agent and not shares:
        return setup
    kernel = kernel_tree_of(image)
    why_not = ("" if not shares else f"kernel {kernel.release} has no 9p" if not kernel_has_9p(kernel)
               else "this QEMU has no virtio-9p-pci" if qemu is None or not qemu_has_9p(qemu)
               else "")
    use_9p = bool(shares) and not why_not
    setup.shares = plan_shares(list(shares), use_9p)
    wanted: list[str] = []
    if agent:
        wanted += AGENT_MODULES
        setup.overlay.add_file(AGENT_PATH, build_agent(cache).read_bytes(), 0o755)
        setup.qemu_args += agent_qemu_args(Path(AGENT_SOCKET))
        setup.kernel_args.append(AGENT_ARG)
    if use_9p:
        wanted += NINEP_MODULES
        setup.qemu_args += share_qemu_args(setup.shares)
    try:
        modules = kernel.closure(list(dict.fromkeys(wanted)))
    except Exception as e:  # KernelError: a module the kernel does not have
        raise UserError(f"kernel {kernel.release}: {e}") from None
    if modules:
        setup.overlay.add_dir("lib/modules/run")
    for m in modules:
        setup.overlay.add_file(f"lib/modules/run/{m}.ko", kernel.module_bytes(m))
    for s in setup.shares:
        if s.how == "copy":
            size = setup.overlay.add_tree(s.host, f"{COPY_DIR}/{s.tag}")
            setup.notes.append(f"--share {s.host}: copied into the initramfs at {s.guest} "
                               f"({size / 1e6:.1f} MB; {why_not}: guest changes stay in "
                               "the guest)")
        else:
            setup.notes.append(f"--share {s.host}: 9p mount at {s.guest} (tag {s.tag})")
    setup.overlay.add_file(RUN_SCRIPT, _script(modules, setup.shares, agent), 0o644)
    return setup
