"""--share planning: 9p when QEMU and the kernel have it (argument construction,
checked offline and against the real QEMU), else a copy; bad share paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from vuser.errors import UserError
from vuser.guest import runsetup
from vuser.guest.kernel import KernelTree


def test_9p_shares_get_virtfs_arguments_and_a_mount(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b c"
    a.mkdir()
    b.mkdir()
    shares = runsetup.plan_shares([a, str(b)], use_9p=True)
    assert [(s.host, s.guest, s.how, s.tag) for s in shares] == [
        (a, str(a), "9p", "vshare0"), (b, str(b), "9p", "vshare1")]
    assert runsetup.share_qemu_args(shares) == [
        "-virtfs", f"local,path={a},mount_tag=vshare0,security_model=none,id=vshare0",
        "-virtfs", f"local,path={b},mount_tag=vshare1,security_model=none,id=vshare1"]
    script = runsetup._script(["9pnet_virtio", "9p"], shares, agent=False).decode()
    assert (f"mount -t 9p -o trans=virtio,version=9p2000.L,msize={runsetup.MSIZE} vshare1 "
            f"'{b}'") in script
    assert "vuser-agent" not in script


def test_copied_shares_are_bind_mounted_not_virtfs(tmp_path):
    shares = runsetup.plan_shares([tmp_path], use_9p=False)
    assert shares[0].how == "copy" and runsetup.share_qemu_args(shares) == []
    script = runsetup._script([], shares, agent=False).decode()
    assert f"mount -o bind /.vuser/vshare0 {tmp_path}" in script


@pytest.mark.parametrize("make, what", [
    (lambda t: [t / "missing"], "not a directory"),
    (lambda t: [t, t], "given twice"),
    (lambda t: [t, t / "sub"], "overlaps"),
    (lambda t: ["/"], "not the whole root"),
    (lambda t: [t / "x$y"], "cannot quote"),
])
def test_bad_shares_are_one_line_errors(tmp_path, make, what):
    (tmp_path / "sub").mkdir()
    (tmp_path / "x$y").mkdir()
    with pytest.raises(UserError, match=what):
        runsetup.plan_shares(make(tmp_path), use_9p=False)


def test_comma_in_a_9p_path_is_refused(tmp_path):
    d = tmp_path / "a,b"
    d.mkdir()
    with pytest.raises(UserError, match="comma"):
        runsetup.share_qemu_args(runsetup.plan_shares([d], use_9p=True))


def _fake_kernel(tmp_path: Path, config: str) -> KernelTree:
    root = tmp_path / "k"
    (root / "boot").mkdir(parents=True)
    (root / "lib/modules/6.1.0-x/kernel").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-x").write_bytes(b"")
    (root / "boot/config-6.1.0-x").write_text(config)
    return KernelTree.find(root)


def test_kernel_9p_needs_9p_fs_and_its_virtio_transport(tmp_path):
    assert runsetup.kernel_has_9p(_fake_kernel(
        tmp_path, "CONFIG_9P_FS=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_VIRTIO_PCI=y\n"))
    (tmp_path / "k").rename(tmp_path / "old")
    assert not runsetup.kernel_has_9p(_fake_kernel(
        tmp_path, "CONFIG_9P_FS=m\n# CONFIG_NET_9P_VIRTIO is not set\nCONFIG_VIRTIO_PCI=y\n"))


def test_default_image_copies_and_says_why(image, qemu_bin, tmp_path):
    (tmp_path / "f").write_text("x")
    kernel = runsetup.kernel_tree_of(image)
    assert runsetup.qemu_has_9p(qemu_bin)  # this QEMU has virtio-9p-pci ...
    assert not runsetup.kernel_has_9p(kernel)  # ... the cloud kernel has no 9p
    setup = runsetup.plan(image, shares=[tmp_path], qemu=qemu_bin)
    assert [s.how for s in setup.shares] == ["copy"] and setup.qemu_args == []
    assert len(setup.notes) == 1
    assert f"copied into the initramfs at {tmp_path}" in setup.notes[0]
    assert f"kernel {kernel.release} has no 9p" in setup.notes[0]
    assert setup.overlay.files[".vuser/vshare0/f"] == (b"x", 0o644)


def test_real_qemu_accepts_the_virtfs_arguments(qemu_bin, tmp_path):
    """The 9p arguments start QEMU (a firmware-only guest, stopped after a
    second): a live 9p mount needs a kernel with 9p (Debian's generic flavour)."""
    import time

    from vuser.qemu.launcher import launch_in_background

    args = runsetup.share_qemu_args(runsetup.plan_shares([tmp_path], use_9p=True))
    bg = launch_in_background(None, devices=[], qemu=qemu_bin, qemu_extra=args, timeout=60)
    time.sleep(1.0)
    assert bg.running
    r = bg.stop()
    assert r.stopped and r.error == "stopped by the launcher once it had what it waited for"
    assert not r.qemu_log.strip(), r.qemu_log
