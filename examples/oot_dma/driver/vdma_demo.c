// SPDX-License-Identifier: GPL-2.0
/*
 * vdma_demo: a small out-of-tree driver for vuser's vuser-dma engine, built
 * by examples/oot_dma/test_oot_dma.py against the guest kernel's headers.
 *
 * It binds to vuser-dma (5655:0002), enables one queue whose ring and
 * completion records come from dma_alloc_coherent, and runs tests on demand
 * through a sysfs file of the PCI device, `selftest`:
 *
 *   echo copy  > selftest   a MEMCPY between two dma_map_single buffers;
 *   echo stale > selftest   a FILL to a page, dma_unmap_page, then the same
 *                           FILL again at the unmapped IOVA: with a strict
 *                           IOMMU domain (iommu.strict=1) the unmap has
 *                           invalidated the IOTLB, so the device faults;
 *   cat selftest            the last result, one line of key=value words.
 *
 * Registers and descriptors: docs/vuser-dma.md. Completion is polled (no
 * interrupts), to keep the example short.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>

#define DEMO_VENDOR 0x5655
#define DEMO_DEVICE 0x0002
#define REG_ID 0x000
#define REG_CTRL 0x010
#define CTRL_ENABLE 1
#define Q0 0x100 /* queue 0's register block */
#define Q_RING_LO 0x00
#define Q_RING_HI 0x04
#define Q_RING_SIZE 0x08
#define Q_TAIL 0x10
#define Q_DOORBELL 0x14
#define Q_CTRL 0x18
#define Q_STATUS 0x1c
#define Q_STATUS_HALTED 4
#define RING 8
#define OP_MEMCPY 1
#define OP_FILL 2
#define FLAG_COMPLETION 2
#define ST_SUCCESS 1
#define ST_PAGE_FAULT 2

struct desc {
	u8 opcode, flags;
	__le16 reserved0;
	__le32 pasid;
	__le64 src, dst, length, completion, pattern;
	u8 reserved1[16];
} __packed;

struct record {
	u8 status, fault_info;
	__le16 reserved0;
	__le32 result;
	__le64 bytes_done, fault_addr, reserved1;
} __packed;

struct demo {
	struct pci_dev *pdev;
	void __iomem *regs;
	struct desc *ring;
	dma_addr_t ring_dma;
	struct record *rec;
	dma_addr_t rec_dma;
	u32 tail;
	struct mutex lock;
	char result[256];
};

/* Run one descriptor and poll its completion record (up to 10 s). */
static int demo_run(struct demo *d, struct desc *x, struct record *out)
{
	u32 slot = d->tail;
	int i;

	memset(&d->rec[slot], 0, sizeof(d->rec[slot]));
	x->flags |= FLAG_COMPLETION;
	x->completion = cpu_to_le64(d->rec_dma + slot * sizeof(struct record));
	d->ring[slot] = *x;
	dma_wmb();
	d->tail = (slot + 1) % RING;
	writel(d->tail, d->regs + Q0 + Q_TAIL);
	writel(1, d->regs + Q0 + Q_DOORBELL);
	for (i = 0; i < 10000; i++) {
		if (READ_ONCE(d->rec[slot].status)) {
			dma_rmb();
			*out = d->rec[slot];
			return 0;
		}
		if (readl(d->regs + Q0 + Q_STATUS) & Q_STATUS_HALTED)
			return -EIO;
		usleep_range(500, 1000);
	}
	return -ETIMEDOUT;
}

static int demo_copy(struct demo *d)
{
	struct device *dev = &d->pdev->dev;
	struct desc x = { .opcode = OP_MEMCPY };
	struct record r;
	dma_addr_t s, t;
	u8 *src, *dst;
	int ret, i;

	src = kmalloc(PAGE_SIZE, GFP_KERNEL);
	dst = kzalloc(PAGE_SIZE, GFP_KERNEL);
	ret = -ENOMEM;
	if (!src || !dst)
		goto out;
	for (i = 0; i < PAGE_SIZE; i++)
		src[i] = (u8)(i * 7 + 3);
	s = dma_map_single(dev, src, PAGE_SIZE, DMA_TO_DEVICE);
	t = dma_map_single(dev, dst, PAGE_SIZE, DMA_FROM_DEVICE);
	if (dma_mapping_error(dev, s) || dma_mapping_error(dev, t)) {
		ret = -EIO;
		goto out; /* (a real driver unmaps the one that worked) */
	}
	x.src = cpu_to_le64(s);
	x.dst = cpu_to_le64(t);
	x.length = cpu_to_le64(PAGE_SIZE);
	ret = demo_run(d, &x, &r);
	dma_unmap_single(dev, s, PAGE_SIZE, DMA_TO_DEVICE);
	dma_unmap_single(dev, t, PAGE_SIZE, DMA_FROM_DEVICE);
	if (!ret)
		snprintf(d->result, sizeof(d->result),
			 "test=copy status=%u src_iova=%#llx dst_iova=%#llx same=%d\n", r.status,
			 (u64)s, (u64)t, !memcmp(src, dst, PAGE_SIZE));
out:
	kfree(src);
	kfree(dst);
	return ret;
}

static int demo_stale(struct demo *d)
{
	struct device *dev = &d->pdev->dev;
	struct desc x = { .opcode = OP_FILL };
	struct record first, second;
	struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	dma_addr_t iova;
	int ret;

	if (!page)
		return -ENOMEM;
	iova = dma_map_page(dev, page, 0, PAGE_SIZE, DMA_FROM_DEVICE);
	if (dma_mapping_error(dev, iova)) {
		__free_page(page);
		return -EIO;
	}
	x.dst = cpu_to_le64(iova);
	x.length = cpu_to_le64(PAGE_SIZE);
	x.pattern = cpu_to_le64(0x1122334455667788ull);
	ret = demo_run(d, &x, &first);
	dma_unmap_page(dev, iova, PAGE_SIZE, DMA_FROM_DEVICE);
	if (!ret) {
		memset(&x, 0, sizeof(x));
		x.opcode = OP_FILL;
		x.dst = cpu_to_le64(iova);
		x.length = cpu_to_le64(PAGE_SIZE);
		x.pattern = cpu_to_le64(~0x1122334455667788ull);
		ret = demo_run(d, &x, &second);
	}
	if (!ret)
		snprintf(d->result, sizeof(d->result),
			 "test=stale first=%u second=%u iova=%#llx fault_addr=%#llx landed=%d\n",
			 first.status, second.status, (u64)iova, le64_to_cpu(second.fault_addr),
			 ((u8 *)page_address(page))[0] != 0x88);
	__free_page(page);
	return ret;
}

static ssize_t selftest_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	struct demo *d = dev_get_drvdata(dev);
	int ret;

	mutex_lock(&d->lock);
	if (sysfs_streq(buf, "copy"))
		ret = demo_copy(d);
	else if (sysfs_streq(buf, "stale"))
		ret = demo_stale(d);
	else
		ret = -EINVAL;
	if (ret)
		snprintf(d->result, sizeof(d->result), "error=%d\n", ret);
	mutex_unlock(&d->lock);
	return ret ? ret : count;
}

static ssize_t selftest_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct demo *d = dev_get_drvdata(dev);
	ssize_t n;

	mutex_lock(&d->lock);
	n = sysfs_emit(buf, "%s", d->result[0] ? d->result : "none\n");
	mutex_unlock(&d->lock);
	return n;
}
static DEVICE_ATTR_RW(selftest);

static int demo_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct demo *d;
	int ret;

	d = devm_kzalloc(dev, sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->pdev = pdev;
	mutex_init(&d->lock);
	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	d->regs = pcim_iomap(pdev, 0, 0);
	if (!d->regs)
		return -ENOMEM;
	if (readl(d->regs + REG_ID) != 0x56550002)
		return -ENODEV;
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return ret;
	pci_set_master(pdev);
	d->ring = dmam_alloc_coherent(dev, RING * sizeof(*d->ring), &d->ring_dma, GFP_KERNEL);
	d->rec = dmam_alloc_coherent(dev, RING * sizeof(*d->rec), &d->rec_dma, GFP_KERNEL);
	if (!d->ring || !d->rec)
		return -ENOMEM;
	writel(lower_32_bits(d->ring_dma), d->regs + Q0 + Q_RING_LO);
	writel(upper_32_bits(d->ring_dma), d->regs + Q0 + Q_RING_HI);
	writel(RING, d->regs + Q0 + Q_RING_SIZE);
	writel(1, d->regs + Q0 + Q_CTRL); /* ENABLE, no interrupt */
	writel(CTRL_ENABLE, d->regs + REG_CTRL);
	pci_set_drvdata(pdev, d);
	ret = device_create_file(dev, &dev_attr_selftest);
	if (ret)
		return ret;
	dev_info(dev, "vdma_demo: ring at IOVA %#llx\n", (u64)d->ring_dma);
	return 0;
}

static void demo_remove(struct pci_dev *pdev)
{
	struct demo *d = pci_get_drvdata(pdev);

	device_remove_file(&pdev->dev, &dev_attr_selftest);
	writel(0, d->regs + REG_CTRL);
	writel(0, d->regs + Q0 + Q_CTRL);
}

static const struct pci_device_id demo_ids[] = {
	{ PCI_DEVICE(DEMO_VENDOR, DEMO_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, demo_ids);

static struct pci_driver demo_driver = {
	.name = "vdma_demo",
	.id_table = demo_ids,
	.probe = demo_probe,
	.remove = demo_remove,
};
module_pci_driver(demo_driver);

MODULE_DESCRIPTION("vuser-dma DMA API example (out of tree)");
MODULE_LICENSE("GPL");
