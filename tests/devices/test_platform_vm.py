"""The platform: one context, VMs found by their memfd, refcounted GPA maps,
devices bound into their VM, and every DMA through the model. Driven through
our vfio-user client over real sockets, as QEMU would."""

from __future__ import annotations

import asyncio
import errno
import os
import struct

import pytest

from vuser.devices.platform import Platform
from vuser.devices.sample import SampleDevice, SampleReg, pattern
from vuser.iommu import Fault, IommufdError, Stage
from vuser.backend import DmaError
from vuser.transport.client import Client, VfioUserError
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20
GPA = 0x1_0000_0000
TIMEOUT = 10


@pytest.fixture
def platform():
    p = Platform()
    yield p
    p.close()


@pytest.fixture
def memfd():
    fd = sealed_memfd("guest-ram", 8 * MiB)
    yield fd
    os.close(fd)


@pytest.fixture
async def samples(tmp_path, platform):
    """Three sample devices (labels 1..3) on one platform: ``[(device, path)]``."""
    out, servers = [], []
    for label in (1, 2, 3):
        dev = SampleDevice(label=label)
        dev.join_platform(platform)
        path = str(tmp_path / f"s{label}.sock")
        server = DeviceServer(dev, path, name=f"sample{label}")
        await server.start()
        servers.append(server)
        out.append((dev, path))
    yield out
    for server in servers:
        await server.close()
    for dev, _ in out:
        dev.close()


async def set_reg(c: Client, off: int, value: int) -> None:
    await c.region_write(0, off, struct.pack("<I", value))


async def reg(c: Client, off: int) -> int:
    return struct.unpack("<I", await c.region_read(0, off, 4))[0]


async def sample_dma(c: Client, dev: SampleDevice, addr: int, length: int, seed: int) -> int:
    """Run one sample DMA; returns STATUS."""
    await set_reg(c, SampleReg.DMA_ADDR_LO, addr & 0xFFFF_FFFF)
    await set_reg(c, SampleReg.DMA_ADDR_HI, addr >> 32)
    await set_reg(c, SampleReg.DMA_LEN, length)
    await set_reg(c, SampleReg.DMA_SEED, seed)
    await set_reg(c, SampleReg.DOORBELL, 1)
    await asyncio.wait_for(dev.idle(), TIMEOUT)
    return await reg(c, SampleReg.STATUS)


DONE, ERROR = 2, 4


async def eventually(cond, what: str) -> None:
    """Wait (bounded) until the server has processed a disconnect."""
    for _ in range(int(TIMEOUT / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {what}")


async def test_first_fd_map_creates_the_vm_and_binds_the_device(samples, platform, memfd):
    (dev, path), *_ = samples
    assert platform.vms() == [] and not dev.iommu.bound
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, 4 * MiB, fd=memfd)
        [vm] = platform.vms()
        assert vm.devices() == [dev] and platform.vm_of(dev) is vm and dev.vm is vm
        assert platform.vm_for_file((os.fstat(memfd).st_dev, os.fstat(memfd).st_ino)) is vm
        assert dev.iommu.bound
        info = platform.ctx.device_info(dev.iommu.dev_id)
        assert info["attach"] == [[None, vm.s2_hwpt_id]]
        s2 = platform.ctx.object_info(vm.s2_hwpt_id)
        assert s2["nest_parent"] and s2["pasid_compat"] and s2["ioas"] == vm.ioas_id
        assert [(a["iova"], a["last"]) for a in platform.ctx.ioas_areas(vm.ioas_id)] == [
            (GPA, GPA + 4 * MiB - 1)]
        before = platform.ctx.stats()["translations"]
        assert await sample_dma(c, dev, GPA + 0x3000, 5000, seed=9) == DONE
        assert os.pread(memfd, 5000, 0x3000) == pattern(9, 5000)
        assert platform.ctx.stats()["translations"] > before   # the DMA went through the model
    await eventually(lambda: not dev.iommu.bound, "the device unbound")
    assert platform.vms() == [] and vm.released


async def test_devices_of_one_vm_share_it_and_maps_are_refcounted(samples, platform, memfd):
    (d1, p1), (d2, p2), _ = samples
    async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
        await c1.dma_map(GPA, 4 * MiB, fd=memfd)
        await c2.dma_map(GPA, 4 * MiB, fd=memfd)       # the same map from another device
        [vm] = platform.vms()
        assert set(vm.devices()) == {d1, d2}
        [seg] = vm.gpa.segments()
        assert seg.refs == 2
        await c1.dma_unmap(GPA, 4 * MiB)               # d1 lets go; d2 still uses it
        assert vm.gpa.segments()[0].refs == 1
        assert await sample_dma(c2, d2, GPA + 0x1000, 64, seed=3) == DONE
        assert os.pread(memfd, 64, 0x1000) == pattern(3, 64)
        # d1 is still attached to the VM's shared IOAS, which still holds the
        # RAM for d2: devices of one VM see the union of its maps.
        assert await sample_dma(c1, d1, GPA + 0x2000, 64, seed=4) == DONE
        assert os.pread(memfd, 64, 0x2000) == pattern(4, 64)
        await c2.dma_unmap(GPA, 4 * MiB)               # the last map goes: so does the RAM
        assert vm.gpa.segments() == [] and platform.ctx.ioas_areas(vm.ioas_id) == []
        assert await sample_dma(c1, d1, GPA + 0x3000, 64, seed=5) == DONE | ERROR
        assert os.pread(memfd, 64, 0x3000) == bytes(64)
    await eventually(lambda: platform.vms() == [], "the VM released")


async def test_overlapping_consistent_maps_split_into_refcounted_segments(samples, platform,
                                                                          memfd):
    (d1, p1), (d2, p2), _ = samples
    async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
        await c1.dma_map(GPA, 4 * MiB, fd=memfd)
        await c2.dma_map(GPA + MiB, MiB, fd=memfd, offset=MiB)   # same bytes, other section
        vm = platform.vms()[0]
        assert [(s.first - GPA, s.size, s.refs) for s in vm.gpa.segments()] == [
            (0, MiB, 1), (MiB, MiB, 2), (2 * MiB, 2 * MiB, 1)]
        assert len(platform.ctx.ioas_areas(vm.ioas_id)) == 3
        await c1.dma_unmap_all()
        assert [(s.first - GPA, s.size, s.refs) for s in vm.gpa.segments()] == [(MiB, MiB, 1)]
        assert await sample_dma(c2, d2, GPA + MiB + 8, 16, seed=1) == DONE
        assert os.pread(memfd, 16, MiB + 8) == pattern(1, 16)


async def test_another_connections_contradicting_map_wins_until_it_is_unmapped(
        samples, platform, memfd):
    """Connections see QEMU's memory-map changes at different times, so a map
    that contradicts another connection's is the newer view, not an error."""
    (d1, p1), (d2, p2), _ = samples
    async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
        await c1.dma_map(GPA, 4 * MiB, fd=memfd)
        vm = platform.vms()[0]
        await c2.dma_map(GPA, MiB, fd=memfd, offset=4 * MiB)       # other file offset
        assert set(vm.devices()) == {d1, d2}
        assert [(s.first - GPA, s.size, s.offset, s.refs) for s in vm.gpa.segments()] == [
            (0, MiB, 4 * MiB, 2), (MiB, 3 * MiB, MiB, 1)]
        assert [(a["iova"] - GPA, a["last"] - GPA) for a in
                platform.ctx.ioas_areas(vm.ioas_id)] == [(0, MiB - 1), (MiB, 4 * MiB - 1)]
        assert await sample_dma(c1, d1, GPA + 8, 16, seed=2) == DONE    # the newest map
        assert os.pread(memfd, 16, 4 * MiB + 8) == pattern(2, 16)
        assert os.pread(memfd, 16, 8) == bytes(16)
        await c2.dma_unmap(GPA, MiB)          # back to what c1 still maps
        assert [(s.first - GPA, s.offset, s.refs) for s in vm.gpa.segments()] == [
            (0, 0, 1), (MiB, MiB, 1)]
        assert await sample_dma(c1, d1, GPA + 8, 16, seed=3) == DONE
        assert os.pread(memfd, 16, 8) == pattern(3, 16)
        await c2.dma_map(GPA, MiB, fd=memfd, flags=1)     # a read-only view wins too
        assert await sample_dma(c1, d1, GPA + 8, 16, seed=4) == DONE | ERROR
        assert os.pread(memfd, 16, 8) == pattern(3, 16)
        vm.gpa_write(GPA + MiB, b"rw")                    # the rest stays writable
        with pytest.raises(DmaError) as e:
            vm.gpa_write(GPA, b"ro")
        assert e.value.errno == errno.EPERM


#: The legacy VGA/BIOS window QEMU remaps as the guest's PAM registers change.
PAM_LO, PAM_MID, PAM_HI, PAM_END = 0xC_0000, 0xC_3000, 0xD_8000, 0xF_0000


async def test_pam_remap_seen_late_by_another_connection(samples, platform, memfd):
    """Debian sid's guest: c1 (vuser-dma) gets QEMU's unmap and the new map of
    the PAM window before c2 has got the unmap of the old one. The new map is
    accepted (it was EEXIST), and c2's late unmap leaves it in place."""
    (d1, p1), (d2, p2), _ = samples
    ro = 1
    async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
        for c in (c1, c2):                                    # the old layout
            await c.dma_map(PAM_LO, PAM_MID - PAM_LO, fd=memfd, offset=PAM_LO)
            await c.dma_map(PAM_HI, PAM_END - PAM_HI, fd=memfd, offset=PAM_HI, flags=ro)
        vm = platform.vms()[0]
        # c1 moves to the new layout; c2 has not heard yet.
        await c1.dma_unmap(PAM_LO, PAM_MID - PAM_LO)
        await c1.dma_unmap(PAM_HI, PAM_END - PAM_HI)
        await c1.dma_map(PAM_MID, 0xE_8000 - PAM_MID, fd=memfd, offset=PAM_MID)
        await c1.dma_map(0xE_8000, PAM_END - 0xE_8000, fd=memfd, offset=0xE_8000, flags=ro)
        view = [(s.first, s.last, bool(s.prot & 2), s.refs) for s in vm.gpa.segments()]
        assert view == [(PAM_LO, PAM_MID - 1, True, 1), (PAM_MID, PAM_HI - 1, True, 1),
                        (PAM_HI, 0xE_7FFF, True, 2), (0xE_8000, PAM_END - 1, False, 2)]
        assert await sample_dma(c1, d1, PAM_HI, 16, seed=6) == DONE       # writable now
        assert os.pread(memfd, 16, PAM_HI) == pattern(6, 16)
        # c2 catches up: its unmap of the old window must not take the new map.
        await c2.dma_unmap(PAM_LO, PAM_MID - PAM_LO)
        await c2.dma_unmap(PAM_HI, PAM_END - PAM_HI)
        assert [(s.first, s.last, s.refs) for s in vm.gpa.segments()] == [
            (PAM_MID, PAM_HI - 1, 1), (PAM_HI, 0xE_7FFF, 1), (0xE_8000, PAM_END - 1, 1)]
        assert await sample_dma(c2, d2, PAM_HI + 32, 16, seed=7) == DONE
        assert os.pread(memfd, 16, PAM_HI + 32) == pattern(7, 16)
        await c2.dma_map(PAM_MID, 0xE_8000 - PAM_MID, fd=memfd, offset=PAM_MID)
        await c2.dma_map(0xE_8000, PAM_END - 0xE_8000, fd=memfd, offset=0xE_8000, flags=ro)
        assert [(s.first, s.refs) for s in vm.gpa.segments()] == [   # one area per map again
            (PAM_MID, 2), (0xE_8000, 2)]
        areas = [(a["iova"], a["last"]) for a in platform.ctx.ioas_areas(vm.ioas_id)]
        assert areas == [(s.first, s.last) for s in vm.gpa.segments()]
    await eventually(lambda: platform.vms() == [], "the VM released")


async def test_a_refused_map_does_not_bind_the_device(samples, platform, memfd):
    (d1, p1), (d2, p2), _ = samples
    async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
        await c1.dma_map(GPA, 4 * MiB, fd=memfd)
        vm = platform.vms()[0]
        with pytest.raises(VfioUserError) as e:     # beyond the file
            await c2.dma_map(GPA, 4 * MiB, fd=memfd, offset=8 * MiB)
        assert e.value.errno == errno.EINVAL
        assert [(s.first, s.refs) for s in vm.gpa.segments()] == [(GPA, 1)]
        assert vm.devices() == [d1] and not d2.iommu.bound
        assert await sample_dma(c1, d1, GPA, 8, seed=2) == DONE


async def test_unaligned_fd_map_is_einval(samples, memfd, platform):
    (dev, path), *_ = samples
    async with await Client.connect(path) as c:
        for addr, size, offset in ((GPA + 0x800, MiB, 0), (GPA, MiB + 1, 0),
                                   (GPA, MiB, 0x200)):
            with pytest.raises(VfioUserError) as e:
                await c.dma_map(addr, size, fd=memfd, offset=offset)
            assert e.value.errno == errno.EINVAL
        assert platform.vms() == [] and not dev.iommu.bound
        await c.dma_map(GPA, MiB, fd=memfd)          # and the connection still works
        assert dev.iommu.bound


async def test_another_vms_memory_is_refused(samples, platform, memfd):
    (d1, p1), (d2, p2), _ = samples
    other = sealed_memfd("other-vm", MiB)
    try:
        async with await Client.connect(p1) as c1, await Client.connect(p2) as c2:
            await c1.dma_map(GPA, MiB, fd=memfd)
            await c2.dma_map(GPA, MiB, fd=other)
            assert len(platform.vms()) == 2
            with pytest.raises(VfioUserError) as e:   # d2 is in VM 2; memfd is VM 1's
                await c2.dma_map(GPA + MiB, MiB, fd=memfd, offset=MiB)
            assert e.value.errno == errno.EINVAL
            assert platform.vm_of(d1) is not platform.vm_of(d2)
    finally:
        os.close(other)


async def test_unmap_not_matching_a_map_follows_qemus_ranges(samples, platform, memfd):
    (dev, path), *_ = samples
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, 2 * MiB, fd=memfd)
        await c.dma_map(GPA + 2 * MiB, 2 * MiB, fd=memfd, offset=2 * MiB)
        await c.dma_unmap(GPA + MiB, 2 * MiB)         # straddles both maps
        vm = platform.vms()[0]
        assert [(a["iova"] - GPA, a["last"] - GPA) for a in
                platform.ctx.ioas_areas(vm.ioas_id)] == [(0, MiB - 1), (3 * MiB, 4 * MiB - 1)]
        assert await sample_dma(c, dev, GPA + MiB - 16, 16, seed=5) == DONE
        assert await sample_dma(c, dev, GPA + 3 * MiB, 16, seed=6) == DONE
        assert await sample_dma(c, dev, GPA + 2 * MiB, 16, seed=7) == DONE | ERROR
        assert os.pread(memfd, 16, MiB - 16) == pattern(5, 16)
        assert os.pread(memfd, 16, 3 * MiB) == pattern(6, 16)
        assert os.pread(memfd, 16, 2 * MiB) == bytes(16)
        with pytest.raises(VfioUserError) as e:       # inside a page: cannot split the IOAS
            await c.dma_unmap(GPA + 0x800, 0x1000)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(VfioUserError) as e:       # nothing there
            await c.dma_unmap(GPA + MiB, MiB)
        assert e.value.errno == errno.ENOENT


async def test_fd_less_memory_goes_by_messages_for_the_sample(samples, platform, memfd):
    (dev, path), *_ = samples
    rom = bytearray(8192)
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, MiB, fd=memfd)
        await c.dma_map(0xC_0000, buffer=rom)          # ROM-like, no fd
        assert await sample_dma(c, dev, 0xC_0000 + 10, 100, seed=4) == DONE
        assert bytes(rom[10:110]) == pattern(4, 100) and c.dma_requests_served >= 1
        assert dev.dma.fallbacks == 1
        served = c.dma_requests_served
        assert await sample_dma(c, dev, GPA, 100, seed=4) == DONE   # fd memory: the model
        assert c.dma_requests_served == served


async def test_the_message_port_refuses_fd_backed_memory(samples, memfd):
    (dev, path), *_ = samples
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, MiB, fd=memfd)
        with pytest.raises(DmaError) as e:
            await dev.dma.fallback.dma_write(GPA, b"x")   # the bypass is closed
        assert e.value.errno == errno.EFAULT


async def test_no_fallback_once_the_rid_is_translated(samples, platform, memfd):
    (dev, path), *_ = samples
    rom = bytearray(4096)
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, MiB, fd=memfd)
        await c.dma_map(0xC_0000, buffer=rom)
        vm = platform.vm_of(dev)
        ctx = platform.ctx
        # Blocking instead of pass-through: the RID's addresses are not GPAs any more.
        ctx.device_detach(dev.iommu.dev_id)
        assert not platform.untagged_is_gpa(dev)
        assert await sample_dma(c, dev, 0xC_0000, 16, seed=1) == DONE | ERROR
        assert await sample_dma(c, dev, GPA, 16, seed=1) == DONE | ERROR
        assert rom[:16] == bytes(16) and os.pread(memfd, 16, 0) == bytes(16)
        ctx.device_attach(dev.iommu.dev_id, vm.s2_hwpt_id)
        assert await sample_dma(c, dev, GPA, 16, seed=1) == DONE


async def test_gpa_read_write_and_holes(samples, platform, memfd):
    (dev, path), *_ = samples
    async with await Client.connect(path) as c:
        await c.dma_map(GPA, MiB, fd=memfd)
        await c.dma_map(GPA + MiB, MiB, fd=memfd, offset=MiB, flags=1)   # read-only
        vm = platform.vms()[0]
        vm.gpa_write(GPA + MiB - 3, b"abc")
        assert os.pread(memfd, 3, MiB - 3) == b"abc"
        os.pwrite(memfd, b"xyz", MiB - 1)
        assert vm.gpa_read(GPA + MiB - 3, 6) == b"abxyz\0"    # across two segments
        with pytest.raises(DmaError) as e:
            vm.gpa_read(GPA + 2 * MiB - 2, 4)
        assert e.value.errno == errno.EFAULT
        with pytest.raises(DmaError) as e:
            vm.gpa_write(GPA + MiB - 1, b"12")        # runs into read-only RAM
        assert e.value.errno == errno.EPERM
        assert os.pread(memfd, 1, MiB - 1) == b"x"    # all or nothing


def test_vm_release_runs_callbacks_and_destroys_objects(platform, memfd):
    dev = SampleDevice(label=9)
    dev.join_platform(platform)
    try:
        sink = dev.dma_sink()
        sink.map(GPA, MiB, memfd, 0, readable=True, writable=True)
        vm = platform.vm_of(dev)
        seen = []
        vm.on_release.append(lambda v: seen.append(v.vm_id))
        ioas, s2 = vm.ioas_id, vm.s2_hwpt_id
        sink.unmap(GPA, MiB)
        sink.close()
        assert seen == [vm.vm_id] and platform.vms() == []
        assert not any(o["id"] in (ioas, s2) for o in platform.ctx.objects())
    finally:
        dev.close()


def test_label_taken_and_unregister(platform):
    a = SampleDevice(label=5)
    a.join_platform(platform)
    b = SampleDevice(label=5)
    from vuser.iommu import IommufdError
    with pytest.raises(IommufdError) as e:
        b.join_platform(platform)
    assert e.value.errno == errno.EEXIST
    assert platform.device_by_label(5) is a
    a.close()
    b.close()
    with pytest.raises(IommufdError):
        platform.device_by_label(5)


def test_unbound_device_dma_faults_blocked(platform):
    dev = SampleDevice(label=11)
    dev.join_platform(platform)
    try:
        f = dev.iommu.translate(None, GPA, 8, 1)
        assert isinstance(f, Fault) and f.stage == Stage.BLOCKED
    finally:
        dev.close()


def test_close_unbinds_a_device_bound_by_hand(platform):
    dev = SampleDevice(label=12)
    dev.join_platform(platform)
    platform.ctx.device_bind(dev.iommu)               # as the control RPC may do
    dev.close()
    assert not dev.iommu.bound and platform.devices() == []


async def test_a_pasid_device_joining_after_a_plain_one_gets_a_pasid_parent(
        tmp_path, platform, memfd):
    """The first device of a VM has no PASIDs, so its stage-2 parent cannot
    take PASID attachments; the first PASID-capable device to join replaces it
    with one that can, moving the devices already there."""
    from vuser.devices.vuser_dma import VuserDma

    plain = SampleDevice(platform=platform)            # inert PASID cap: untagged only
    dma = VuserDma(platform=platform)
    assert plain.iommu.pasid_width == 0 and dma.iommu.pasid_width == 20
    servers = []
    for dev, name in ((plain, "plain"), (dma, "dma")):
        server = DeviceServer(dev, str(tmp_path / f"{name}.sock"), name=name)
        await server.start()
        servers.append(server)
    try:
        async with await Client.connect(servers[0].path) as c1:
            await c1.dma_map(GPA, 4 * MiB, fd=memfd)
            [vm] = platform.vms()
            first = vm.s2_hwpt_id
            assert not platform.ctx.object_info(first)["pasid_compat"]
            async with await Client.connect(servers[1].path) as c2:
                await c2.dma_map(GPA, 4 * MiB, fd=memfd)
                assert vm.s2_hwpt_id != first and vm.s2_pasid
                assert platform.ctx.object_info(vm.s2_hwpt_id)["pasid_compat"]
                with pytest.raises(IommufdError) as gone:
                    platform.ctx.object_info(first)         # the old parent is gone
                assert gone.value.errno == errno.ENOENT
                for dev in (plain, dma):
                    assert platform.ctx.device_info(dev.iommu.dev_id)["attach"] == [
                        [None, vm.s2_hwpt_id]]
                # PASID attachments now work, and the plain device still DMAs.
                platform.ctx.device_attach(dma.iommu.dev_id, vm.s2_hwpt_id, pasid=1)
                assert await sample_dma(c1, plain, GPA + 0x1000, 64, seed=5) == DONE
                assert os.pread(memfd, 64, 0x1000) == pattern(5, 64)
    finally:
        for server in servers:
            await server.close()
        plain.close()
        dma.close()
