"""Two vuser-dma functions in one IOMMU group: the ioasid group rules at the
device level (docs/architecture.md "The model")."""

from __future__ import annotations

import errno

import pytest
from vdma_harness import GuestRam, eventually

from vuser.devices.dma_layout import CompletionStatus, Reg
from vuser.iommu import Access, Fault, IoasidContext, IommufdError, Stage
from vuser.transport.client import VfioUserError


@pytest.fixture
async def pair(rig):
    a = await rig.add(group="g0")
    b = await rig.add(group="g0")
    assert a.iommu.group is b.iommu.group
    return a, b


async def test_one_bound_one_not(pair, rig, ram):
    a, b = pair
    group = a.iommu.group
    drv_a = await rig.connect(0, ram)
    await drv_a.setup()
    drv_b = await rig.connect(1, ram)                 # connected, no DMA_MAP yet: unbound
    # Binding A put the whole group under the platform's context, blocked.
    assert a.iommu.bound and not b.iommu.bound
    assert group.owner is rig.platform.ctx
    # B is unusable, MMIO included, until bound (config space stays readable).
    with pytest.raises(VfioUserError) as e:
        await drv_b.reg(Reg.ID)
    assert e.value.errno == errno.EINVAL
    assert await drv_b.cfg_read(0, 4) == 0x0002_5655
    # B cannot DMA: blocked, not open.
    f = b.iommu.translate(None, ram.gpa, 8, Access.WRITE)
    assert isinstance(f, Fault) and f.stage == Stage.BLOCKED
    # Another context cannot take a device of an owned group.
    other = IoasidContext(rig.platform.registry)
    with pytest.raises(IommufdError) as e2:
        other.device_bind(b.iommu)
    assert e2.value.errno == errno.EPERM
    other.close()
    # A works meanwhile.
    src, dst = ram.alloc(4096), ram.alloc(4096)
    ram.write(src, b"group A")
    assert (await drv_a.memcpy(0, src, dst, 7)).status == CompletionStatus.SUCCESS
    # B's connection maps the same VM's RAM: bound to the same context, same parent.
    await drv_b.setup()
    assert b.iommu.bound and rig.platform.vm_of(b) is rig.platform.vm_of(a)
    ram.write(src, b"group B")
    assert (await drv_b.memcpy(0, src, dst, 7)).status == CompletionStatus.SUCCESS
    assert ram.read(dst, 7) == b"group B"


async def test_the_group_follows_its_rid_hwpt(pair, rig, ram):
    a, b = pair
    drv_a, drv_b = await rig.connect(0, ram), await rig.connect(1, ram)
    await drv_a.setup()
    await drv_b.setup()
    ctx, vm = rig.platform.ctx, rig.platform.vm_of(a)
    # Replacing one RID's HWPT moves the group's RIDs together (iommufd rule).
    other = ctx.hwpt_alloc(a.iommu.dev_id, vm.ioas_id, 0)
    ctx.device_replace(a.iommu.dev_id, other)
    assert ctx.device_info(b.iommu.dev_id)["attach"] == [[None, other]]
    ctx.device_replace(a.iommu.dev_id, vm.s2_hwpt_id)
    assert ctx.device_info(b.iommu.dev_id)["attach"] == [[None, vm.s2_hwpt_id]]
    ctx.destroy(other)


async def test_a_group_cannot_span_two_vms(pair, rig, ram):
    a, b = pair
    other_ram = GuestRam(size=4 << 20, name="other-vm")
    try:
        drv_a = await rig.connect(0, ram)
        await drv_a.setup()
        drv_b = await rig.connect(1, other_ram)
        with pytest.raises(VfioUserError) as e:       # the group's RIDs are on VM 1's parent
            await drv_b.map_ram()
        assert e.value.errno == errno.EINVAL
        assert not b.iommu.bound and len(rig.platform.vms()) == 1
        # The server keeps serving: A still works, B's connection still answers.
        src, dst = ram.alloc(4096), ram.alloc(4096)
        assert (await drv_a.memcpy(0, src, dst, 8)).status == CompletionStatus.SUCCESS
        assert await drv_b.cfg_read(0, 2) == 0x5655
    finally:
        other_ram.close()


async def test_unbinding_the_last_device_releases_the_group(pair, rig, ram):
    a, b = pair
    group = a.iommu.group
    drv_a, drv_b = await rig.connect(0, ram), await rig.connect(1, ram)
    await drv_a.setup()
    await drv_b.setup()
    await rig.disconnect(drv_a)
    assert not a.iommu.bound and group.owner is rig.platform.ctx   # B still holds it
    await rig.disconnect(drv_b)
    await eventually(lambda: group.owner is None, "the group released")
    assert rig.platform.vms() == []
