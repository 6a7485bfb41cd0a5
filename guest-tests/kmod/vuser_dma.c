// SPDX-License-Identifier: GPL-2.0
/*
 * vuser_dma: a Linux PCI driver for vuser's vuser-dma engine.
 *
 * The device (docs/vuser-dma.md) executes 64-byte descriptors from rings in
 * memory, one ring per queue, and writes a 32-byte completion record for
 * each. This driver is meant to be read and copied: it shows the usual
 * pieces of a DMA engine driver, each in one place:
 *
 *   probe:       enable the function, map BAR0, set the DMA mask, allocate
 *                one MSI-X vector per queue plus an error vector, allocate
 *                the rings with the DMA API (coherent memory), enable PASID;
 *   interrupts:  one handler per queue vector, counting interrupts and waking
 *                whoever waits on that queue; masking a vector through the
 *                MSI-X table (disable_irq with IRQ_DISABLE_UNLAZY);
 *   submission:  descriptor into the ring at TAIL, TAIL forward, doorbell;
 *   userspace:   one misc character device per function, /dev/vuser_dma<N>,
 *                with the ioctls of vuser_dma_ioctl.h: a memcpy through
 *                streaming DMA mappings, raw (PASID-tagged) descriptors,
 *                interrupt counts, vector masking, the pending bits.
 *
 * Register and descriptor layouts come from vdma_layout.h, generated from
 * the server's declaration (vuser/devices/dma_layout.py).
 *
 * PASID-tagged descriptors carry addresses in that PASID's address space;
 * whoever submits them (here: userspace, through the ioctl) has set up the
 * PASID's first-stage tables in the vIOMMU (guest-tests/lib/viommu.c). The
 * driver's own DMA (rings, completion records, the memcpy buffers) carries
 * no PASID: it goes through the device's default attachment, which is what
 * the DMA API's addresses are for.
 */
#include <linux/bitfield.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ats.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "vdma_layout.h"
#include "vuser_dma_ioctl.h"

#define DRV_NAME "vuser_dma"
#define RING_ENTRIES 64                    /* descriptors per queue */
#define MEMCPY_MAX (1u << 20)              /* bytes per VUSER_DMA_IOC_MEMCPY */
#define DEFAULT_TIMEOUT_MS 10000

/* The descriptor and completion record, as the device reads and writes them. */
struct vdma_hw_desc {
	u8 opcode;
	u8 flags;
	__le16 reserved0;
	__le32 pasid;
	__le64 src;
	__le64 dst;
	__le64 length;
	__le64 completion;
	__le64 pattern;
	u8 reserved1[16];
} __packed;

struct vdma_hw_completion {
	u8 status;
	u8 fault_info;
	__le16 reserved0;
	__le32 result;
	__le64 bytes_done;
	__le64 fault_addr;
	__le64 reserved1;
} __packed;

static_assert(sizeof(struct vdma_hw_desc) == VDMA_DESCRIPTOR_SIZE);
static_assert(offsetof(struct vdma_hw_desc, pasid) == VDMA_DESCRIPTOR_PASID_OFF);
static_assert(offsetof(struct vdma_hw_desc, completion) == VDMA_DESCRIPTOR_COMPLETION_OFF);
static_assert(offsetof(struct vdma_hw_desc, pattern) == VDMA_DESCRIPTOR_PATTERN_OFF);
static_assert(sizeof(struct vdma_hw_completion) == VDMA_COMPLETION_RECORD_SIZE);
static_assert(offsetof(struct vdma_hw_completion, fault_addr) ==
	      VDMA_COMPLETION_RECORD_FAULT_ADDR_OFF);

struct vdma_dev;

struct vdma_queue {
	struct vdma_dev *vd;
	unsigned int index;
	struct vdma_hw_desc *ring;          /* coherent: the device fetches it */
	dma_addr_t ring_dma;
	struct vdma_hw_completion *comp;    /* coherent: one record per ring slot */
	dma_addr_t comp_dma;
	u32 tail;
	u32 submitted;                      /* descriptors submitted since enable */
	wait_queue_head_t wait;
};

struct vdma_dev {
	struct pci_dev *pdev;
	void __iomem *regs;                 /* BAR0 */
	void __iomem *pba;                  /* the MSI-X Pending Bit Array */
	void __iomem *msix_table;           /* the MSI-X table (read-only use here) */
	u32 cap, label;
	unsigned int nqueues, nvectors;
	bool pasid_enabled;
	struct vdma_queue q[VUSER_DMA_MAX_QUEUES];
	atomic64_t irqs[VUSER_DMA_MAX_VECTORS];
	struct mutex lock;                  /* one ioctl at a time per device */
	struct miscdevice misc;
	char name[32];
	int id;
};

static DEFINE_IDA(vdma_ida);

/* ---- registers ---- */

static u32 vdma_rd(struct vdma_dev *vd, unsigned int off)
{
	return readl(vd->regs + off);
}

static void vdma_wr(struct vdma_dev *vd, unsigned int off, u32 val)
{
	writel(val, vd->regs + off);
}

static unsigned int qreg(unsigned int q, unsigned int off)
{
	return VDMA_QUEUE_BASE + VDMA_QUEUE_STRIDE * q + off;
}

/* ---- interrupts ---- */

/* One vector per queue: count it, acknowledge INT_STATUS, wake the waiter. */
static irqreturn_t vdma_queue_irq(int irq, void *data)
{
	struct vdma_queue *q = data;
	struct vdma_dev *vd = q->vd;

	atomic64_inc(&vd->irqs[q->index]);
	vdma_wr(vd, VDMA_REG_INT_STATUS, BIT(q->index));   /* RW1C */
	wake_up(&q->wait);
	return IRQ_HANDLED;
}

/* The error vector: some queue halted. */
static irqreturn_t vdma_error_irq(int irq, void *data)
{
	struct vdma_dev *vd = data;
	unsigned int i;

	atomic64_inc(&vd->irqs[vd->nqueues]);
	dev_warn_ratelimited(&vd->pdev->dev, "error interrupt, STATUS %#x\n",
			     vdma_rd(vd, VDMA_REG_STATUS));
	for (i = 0; i < vd->nqueues; i++)
		wake_up(&vd->q[i].wait);
	return IRQ_HANDLED;
}

static int vdma_setup_irqs(struct vdma_dev *vd)
{
	struct pci_dev *pdev = vd->pdev;
	unsigned int i;
	int ret, nvec = vd->nqueues + 1;

	ret = pci_alloc_irq_vectors(pdev, nvec, nvec, PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	vd->nvectors = nvec;
	for (i = 0; i < vd->nqueues; i++) {
		ret = request_irq(pci_irq_vector(pdev, i), vdma_queue_irq, 0, vd->name, &vd->q[i]);
		if (ret)
			goto out_free_irqs;
		/*
		 * disable_irq() is lazy by default: it masks at the device only
		 * when an interrupt arrives. UNLAZY masks the MSI-X vector at once,
		 * so VUSER_DMA_IOC_MASK really leaves the message pending in the
		 * PBA until enable_irq() unmasks it.
		 */
		irq_set_status_flags(pci_irq_vector(pdev, i), IRQ_DISABLE_UNLAZY);
	}
	ret = request_irq(pci_irq_vector(pdev, vd->nqueues), vdma_error_irq, 0, vd->name, vd);
	if (ret)
		goto out_free_irqs;
	irq_set_status_flags(pci_irq_vector(pdev, vd->nqueues), IRQ_DISABLE_UNLAZY);
	return 0;

out_free_irqs:
	while (i--)
		free_irq(pci_irq_vector(pdev, i), &vd->q[i]);
	pci_free_irq_vectors(pdev);
	return ret;
}

static void vdma_free_irqs(struct vdma_dev *vd)
{
	unsigned int i;

	free_irq(pci_irq_vector(vd->pdev, vd->nqueues), vd);
	for (i = 0; i < vd->nqueues; i++)
		free_irq(pci_irq_vector(vd->pdev, i), &vd->q[i]);
	pci_free_irq_vectors(vd->pdev);
}

/*
 * Map the PBA (pending bits) and the MSI-X table, which the MSI-X capability
 * locates, to report them (VUSER_DMA_IOC_PENDING). The MSI core owns the
 * table; the driver only reads it.
 */
static int vdma_map_msix(struct vdma_dev *vd)
{
	u32 pba, table;

	pci_read_config_dword(vd->pdev, vd->pdev->msix_cap + PCI_MSIX_PBA, &pba);
	pci_read_config_dword(vd->pdev, vd->pdev->msix_cap + PCI_MSIX_TABLE, &table);
	vd->pba = pci_iomap_range(vd->pdev, pba & PCI_MSIX_PBA_BIR, pba & PCI_MSIX_PBA_OFFSET, 8);
	vd->msix_table = pci_iomap_range(vd->pdev, table & PCI_MSIX_TABLE_BIR,
					 table & PCI_MSIX_TABLE_OFFSET,
					 vd->nvectors * PCI_MSIX_ENTRY_SIZE);
	if (!vd->pba || !vd->msix_table) {
		if (vd->pba)
			pci_iounmap(vd->pdev, vd->pba);
		if (vd->msix_table)
			pci_iounmap(vd->pdev, vd->msix_table);
		return -ENOMEM;
	}
	return 0;
}

static void vdma_unmap_msix(struct vdma_dev *vd)
{
	pci_iounmap(vd->pdev, vd->msix_table);
	pci_iounmap(vd->pdev, vd->pba);
}

/* ---- queues ---- */

/*
 * (Re)start a queue on its ring: disabled first (the device abandons what it
 * has not finished), then the ring programmed and the queue enabled with its
 * completions interrupting on the queue's own vector. The ring starts empty.
 */
static int vdma_queue_start(struct vdma_queue *q)
{
	struct vdma_dev *vd = q->vd;
	unsigned int i = q->index;
	u32 st;

	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_Q_CTRL), 0);
	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_RING_LO), lower_32_bits(q->ring_dma));
	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_RING_HI), upper_32_bits(q->ring_dma));
	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_RING_SIZE), RING_ENTRIES);
	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_Q_CTRL),
		VDMA_Q_CTRL_ENABLE_MASK | VDMA_Q_CTRL_IRQ_ENABLE_MASK |
		FIELD_PREP(VDMA_Q_CTRL_VECTOR_MASK, i));
	st = vdma_rd(vd, qreg(i, VDMA_QUEUE_REG_Q_STATUS));
	if (!(st & VDMA_Q_STATUS_ENABLED_MASK) || (st & VDMA_Q_STATUS_HALTED_MASK)) {
		dev_err(&vd->pdev->dev, "queue %u did not enable: Q_STATUS %#x Q_ERROR %u\n", i, st,
			vdma_rd(vd, qreg(i, VDMA_QUEUE_REG_Q_ERROR)));
		return -EIO;
	}
	q->tail = vdma_rd(vd, qreg(i, VDMA_QUEUE_REG_HEAD));
	q->submitted = vdma_rd(vd, qreg(i, VDMA_QUEUE_REG_COMPLETED));
	vdma_wr(vd, qreg(i, VDMA_QUEUE_REG_TAIL), q->tail);
	return 0;
}

static int vdma_queue_init(struct vdma_dev *vd, unsigned int i)
{
	struct vdma_queue *q = &vd->q[i];
	struct device *dev = &vd->pdev->dev;

	q->vd = vd;
	q->index = i;
	init_waitqueue_head(&q->wait);
	q->ring = dmam_alloc_coherent(dev, RING_ENTRIES * sizeof(*q->ring), &q->ring_dma,
				      GFP_KERNEL);
	q->comp = dmam_alloc_coherent(dev, RING_ENTRIES * sizeof(*q->comp), &q->comp_dma,
				      GFP_KERNEL);
	if (!q->ring || !q->comp)
		return -ENOMEM;
	return vdma_queue_start(q);
}

/* Put one descriptor at TAIL and ring the doorbell; returns its ring slot. */
static int vdma_submit(struct vdma_queue *q, const struct vdma_hw_desc *desc)
{
	struct vdma_dev *vd = q->vd;
	u32 slot = q->tail, next = (q->tail + 1) % RING_ENTRIES;

	if (vdma_rd(vd, qreg(q->index, VDMA_QUEUE_REG_HEAD)) == next)
		return -EBUSY;
	if (vdma_rd(vd, qreg(q->index, VDMA_QUEUE_REG_Q_STATUS)) & VDMA_Q_STATUS_HALTED_MASK)
		return -EIO;
	q->ring[slot] = *desc;
	/* The descriptor must be visible before the device sees the new TAIL. */
	dma_wmb();
	q->tail = next;
	q->submitted++;
	vdma_wr(vd, qreg(q->index, VDMA_QUEUE_REG_TAIL), next);
	vdma_wr(vd, qreg(q->index, VDMA_QUEUE_REG_DOORBELL), 1);
	return slot;
}

/* True once the queue's vector has fired since `irqs_before`. */
static bool vdma_irq_seen(struct vdma_queue *q, u64 irqs_before)
{
	return atomic64_read(&q->vd->irqs[q->index]) != irqs_before;
}

static bool vdma_halted(struct vdma_queue *q)
{
	return vdma_rd(q->vd, qreg(q->index, VDMA_QUEUE_REG_Q_STATUS)) & VDMA_Q_STATUS_HALTED_MASK;
}

/*
 * Sleep until COMPLETED reaches `target` and the queue's interrupt has
 * arrived: the device retires the descriptor before it sends the MSI-X
 * message, so the count alone could be seen before the interrupt.
 */
static int vdma_wait_completed(struct vdma_queue *q, u32 target, u64 irqs_before,
			       unsigned int timeout_ms)
{
	struct vdma_dev *vd = q->vd;
	long left;

	left = wait_event_interruptible_timeout(q->wait,
		((s32)(vdma_rd(vd, qreg(q->index, VDMA_QUEUE_REG_COMPLETED)) - target) >= 0 &&
		 vdma_irq_seen(q, irqs_before)) || vdma_halted(q),
		msecs_to_jiffies(timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS));
	if (left < 0)
		return left;
	if (vdma_halted(q))
		return -EIO;
	return left ? 0 : -ETIMEDOUT;
}

/* ---- ioctls ---- */

static long vdma_ioc_memcpy(struct vdma_dev *vd, struct vuser_dma_memcpy __user *uarg)
{
	struct device *dev = &vd->pdev->dev;
	struct vuser_dma_memcpy m;
	struct vdma_hw_desc desc = {};
	struct vdma_hw_completion *comp;
	struct vdma_queue *q;
	dma_addr_t src_dma, dst_dma;
	void *src, *dst;
	u64 irqs_before;
	int slot;
	long ret;

	if (copy_from_user(&m, uarg, sizeof(m)))
		return -EFAULT;
	if (!m.len || m.len > MEMCPY_MAX || m.queue >= vd->nqueues)
		return -EINVAL;
	q = &vd->q[m.queue];

	/* Streaming DMA: kernel buffers mapped for the device's direction. */
	src = kmalloc(m.len, GFP_KERNEL);
	dst = kzalloc(m.len, GFP_KERNEL);
	ret = -ENOMEM;
	if (!src || !dst)
		goto out_free;
	ret = -EFAULT;
	if (copy_from_user(src, u64_to_user_ptr(m.src), m.len))
		goto out_free;
	src_dma = dma_map_single(dev, src, m.len, DMA_TO_DEVICE);
	ret = dma_mapping_error(dev, src_dma);
	if (ret)
		goto out_free;
	dst_dma = dma_map_single(dev, dst, m.len, DMA_FROM_DEVICE);
	ret = dma_mapping_error(dev, dst_dma);
	if (ret)
		goto out_unmap_src;

	slot = q->tail;
	comp = &q->comp[slot];
	memset(comp, 0, sizeof(*comp));
	desc.opcode = VDMA_OPCODE_MEMCPY;
	desc.flags = VDMA_DESC_FLAGS_IRQ | VDMA_DESC_FLAGS_COMPLETION;
	desc.src = cpu_to_le64(src_dma);
	desc.dst = cpu_to_le64(dst_dma);
	desc.length = cpu_to_le64(m.len);
	desc.completion = cpu_to_le64(q->comp_dma + slot * sizeof(*comp));

	irqs_before = atomic64_read(&vd->irqs[q->index]);
	slot = vdma_submit(q, &desc);
	ret = slot < 0 ? slot : 0;
	/* Completion is signalled by the queue's MSI-X vector; the record says how. */
	if (!ret)
		ret = wait_event_interruptible_timeout(q->wait,
			(READ_ONCE(comp->status) != 0 && vdma_irq_seen(q, irqs_before)) ||
			vdma_halted(q),
			msecs_to_jiffies(m.timeout_ms ? m.timeout_ms : DEFAULT_TIMEOUT_MS));
	if (ret == 0)
		ret = -ETIMEDOUT;
	else if (ret > 0)
		ret = READ_ONCE(comp->status) ? 0 : -EIO;   /* halted: no record */
	dma_rmb();   /* read the record (and the data) after seeing its status */
	/*
	 * Timed out, interrupted or halted: the device may still hold the
	 * descriptor. Stop the queue before the buffers go back to the kernel.
	 */
	if (ret && slot >= 0)
		vdma_queue_start(q);

	dma_unmap_single(dev, dst_dma, m.len, DMA_FROM_DEVICE);
	if (!ret) {
		m.status = comp->status;
		m.fault_info = comp->fault_info;
		m.bytes_done = le64_to_cpu(comp->bytes_done);
		m.fault_addr = le64_to_cpu(comp->fault_addr);
		m.irqs = atomic64_read(&vd->irqs[q->index]) - irqs_before;
		if (copy_to_user(u64_to_user_ptr(m.dst), dst, m.len) ||
		    copy_to_user(uarg, &m, sizeof(m)))
			ret = -EFAULT;
	}
out_unmap_src:
	dma_unmap_single(dev, src_dma, m.len, DMA_TO_DEVICE);
out_free:
	kfree(dst);
	kfree(src);
	return ret;
}

static long vdma_ioc_submit(struct vdma_dev *vd, struct vuser_dma_submit __user *uarg)
{
	struct vuser_dma_submit s;
	struct vdma_hw_desc desc = {};
	struct vdma_queue *q;
	u64 irqs_before;
	int slot;
	long ret = 0;

	if (copy_from_user(&s, uarg, sizeof(s)))
		return -EFAULT;
	if (s.queue >= vd->nqueues || s.reserved)
		return -EINVAL;
	if ((s.pasid & VDMA_DESC_PASID_VALID_MASK) && !vd->pasid_enabled)
		return -EOPNOTSUPP;
	q = &vd->q[s.queue];
	desc.opcode = s.opcode;
	desc.flags = s.flags | VDMA_DESC_FLAGS_IRQ;   /* we wait for its interrupt */
	desc.pasid = cpu_to_le32(s.pasid);
	desc.src = cpu_to_le64(s.src);
	desc.dst = cpu_to_le64(s.dst);
	desc.length = cpu_to_le64(s.len);
	desc.completion = cpu_to_le64(s.completion);
	desc.pattern = cpu_to_le64(s.pattern);

	irqs_before = atomic64_read(&vd->irqs[q->index]);
	slot = vdma_submit(q, &desc);
	if (slot < 0)
		return slot;
	if (s.wait) {
		ret = vdma_wait_completed(q, q->submitted, irqs_before, s.timeout_ms);
		/* Not completed (timed out, interrupted, queue halted): stop the
		 * queue and start it again, empty. */
		if (ret)
			vdma_queue_start(q);
	}
	s.completed = vdma_rd(vd, qreg(q->index, VDMA_QUEUE_REG_COMPLETED));
	s.irqs = atomic64_read(&vd->irqs[q->index]) - irqs_before;
	if (copy_to_user(uarg, &s, sizeof(s)))
		return -EFAULT;
	return ret;
}

static long vdma_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vdma_dev *vd = container_of(file->private_data, struct vdma_dev, misc);
	void __user *uarg = (void __user *)arg;
	long ret;

	mutex_lock(&vd->lock);
	switch (cmd) {
	case VUSER_DMA_IOC_INFO: {
		struct vuser_dma_info info = {
			.label = vd->label, .cap = vd->cap, .nqueues = vd->nqueues,
			.nvectors = vd->nvectors, .ring_entries = RING_ENTRIES,
			.pasid_enabled = vd->pasid_enabled,
		};

		ret = copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
		break;
	}
	case VUSER_DMA_IOC_MEMCPY:
		ret = vdma_ioc_memcpy(vd, uarg);
		break;
	case VUSER_DMA_IOC_SUBMIT:
		ret = vdma_ioc_submit(vd, uarg);
		break;
	case VUSER_DMA_IOC_IRQ_COUNTS: {
		struct vuser_dma_irq_counts c = { .nvectors = vd->nvectors };
		unsigned int i;

		for (i = 0; i < vd->nvectors; i++)
			c.count[i] = atomic64_read(&vd->irqs[i]);
		ret = copy_to_user(uarg, &c, sizeof(c)) ? -EFAULT : 0;
		break;
	}
	case VUSER_DMA_IOC_MASK: {
		struct vuser_dma_mask m;

		ret = -EFAULT;
		if (copy_from_user(&m, uarg, sizeof(m)))
			break;
		ret = -EINVAL;
		if (m.vector >= vd->nvectors)
			break;
		/* Masks or unmasks the vector's MSI-X Vector Control bit (UNLAZY). */
		if (m.masked)
			disable_irq(pci_irq_vector(vd->pdev, m.vector));
		else
			enable_irq(pci_irq_vector(vd->pdev, m.vector));
		ret = 0;
		break;
	}
	case VUSER_DMA_IOC_PENDING: {
		struct vuser_dma_pending p = { .pba = readq(vd->pba) };
		unsigned int i;

		for (i = 0; i < vd->nvectors; i++)
			p.vector_ctrl[i] = readl(vd->msix_table + i * PCI_MSIX_ENTRY_SIZE +
						 PCI_MSIX_ENTRY_VECTOR_CTRL);
		ret = copy_to_user(uarg, &p, sizeof(p)) ? -EFAULT : 0;
		break;
	}
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&vd->lock);
	return ret;
}

static const struct file_operations vdma_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vdma_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* ---- probe and remove ---- */

/*
 * PASID: pci_enable_pasid() wants End-End TLP Prefix support and ACS on the
 * whole path to the root port, which a VM's emulated root port may not
 * advertise. vuser does not route TLPs, so when the core refuses, enabling
 * the endpoint's own PASID capability is what the device needs.
 */
static void vdma_enable_pasid(struct vdma_dev *vd)
{
	struct pci_dev *pdev = vd->pdev;
	int pos = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_PASID);
	int ret;

	if (!pos || !(vd->cap & VDMA_CAP_PASID_MASK))
		return;
	ret = pci_enable_pasid(pdev, 0);
	if (ret) {
		u16 ctrl;

		dev_info(&pdev->dev, "pci_enable_pasid: %d; enabling the endpoint's PASID\n", ret);
		pci_read_config_word(pdev, pos + PCI_PASID_CTRL, &ctrl);
		pci_write_config_word(pdev, pos + PCI_PASID_CTRL, ctrl | PCI_PASID_CTRL_ENABLE);
	}
	vd->pasid_enabled = true;
}

static void vdma_disable_pasid(struct vdma_dev *vd)
{
	struct pci_dev *pdev = vd->pdev;
	int pos = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_PASID);
	u16 ctrl;

	if (!vd->pasid_enabled)
		return;
	if (pdev->pasid_enabled) {
		pci_disable_pasid(pdev);
	} else if (pos) {
		pci_read_config_word(pdev, pos + PCI_PASID_CTRL, &ctrl);
		pci_write_config_word(pdev, pos + PCI_PASID_CTRL, ctrl & ~PCI_PASID_CTRL_ENABLE);
	}
	vd->pasid_enabled = false;
}

static void vdma_hw_reset(struct vdma_dev *vd)
{
	int i;

	vdma_wr(vd, VDMA_REG_CTRL, VDMA_CTRL_RESET_MASK);
	for (i = 0; i < 1000 && (vdma_rd(vd, VDMA_REG_CTRL) & VDMA_CTRL_RESET_MASK); i++)
		usleep_range(100, 200);
}

static int vdma_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct vdma_dev *vd;
	unsigned int i;
	int ret;

	vd = devm_kzalloc(dev, sizeof(*vd), GFP_KERNEL);
	if (!vd)
		return -ENOMEM;
	vd->pdev = pdev;
	mutex_init(&vd->lock);
	pci_set_drvdata(pdev, vd);

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	ret = pcim_iomap_regions(pdev, BIT(0), DRV_NAME);
	if (ret)
		return ret;
	vd->regs = pcim_iomap_table(pdev)[0];
	if (vdma_rd(vd, VDMA_REG_ID) != VDMA_ID) {
		dev_err(dev, "ID %#x, not a vuser-dma\n", vdma_rd(vd, VDMA_REG_ID));
		return -ENODEV;
	}
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return ret;
	pci_set_master(pdev);

	vd->cap = vdma_rd(vd, VDMA_REG_CAP);
	vd->label = vdma_rd(vd, VDMA_REG_LABEL);
	vd->nqueues = min_t(unsigned int, FIELD_GET(VDMA_CAP_NQUEUES_MASK, vd->cap),
			    VUSER_DMA_MAX_QUEUES);
	if (!vd->nqueues)
		return -ENODEV;

	vd->id = ida_alloc(&vdma_ida, GFP_KERNEL);
	if (vd->id < 0)
		return vd->id;
	snprintf(vd->name, sizeof(vd->name), DRV_NAME "%d", vd->id);

	vdma_hw_reset(vd);
	vdma_wr(vd, VDMA_REG_CTRL, VDMA_CTRL_ENABLE_MASK);
	ret = vdma_setup_irqs(vd);
	if (ret)
		goto out_ida;
	ret = vdma_map_msix(vd);
	if (ret)
		goto out_irqs;
	for (i = 0; i < vd->nqueues; i++) {
		ret = vdma_queue_init(vd, i);
		if (ret)
			goto out_pba;
	}
	vdma_enable_pasid(vd);

	vd->misc.minor = MISC_DYNAMIC_MINOR;
	vd->misc.name = vd->name;
	vd->misc.fops = &vdma_fops;
	vd->misc.parent = dev;
	ret = misc_register(&vd->misc);
	if (ret)
		goto out_pasid;
	dev_info(dev, "/dev/%s: label %#x, %u queues, %u MSI-X vectors%s\n", vd->name, vd->label,
		 vd->nqueues, vd->nvectors, vd->pasid_enabled ? ", PASID" : "");
	return 0;

out_pasid:
	vdma_disable_pasid(vd);
out_pba:
	vdma_hw_reset(vd);
	vdma_unmap_msix(vd);
out_irqs:
	vdma_free_irqs(vd);
out_ida:
	ida_free(&vdma_ida, vd->id);
	return ret;
}

static void vdma_remove(struct pci_dev *pdev)
{
	struct vdma_dev *vd = pci_get_drvdata(pdev);

	misc_deregister(&vd->misc);
	vdma_disable_pasid(vd);
	vdma_hw_reset(vd);            /* stops every queue before the rings are freed */
	vdma_unmap_msix(vd);
	vdma_free_irqs(vd);
	ida_free(&vdma_ida, vd->id);
	/* devm/pcim release BAR0, the rings and the device. */
}

static const struct pci_device_id vdma_ids[] = {
	{ PCI_DEVICE(VDMA_VENDOR_ID, VDMA_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vdma_ids);

static struct pci_driver vdma_driver = {
	.name = DRV_NAME,
	.id_table = vdma_ids,
	.probe = vdma_probe,
	.remove = vdma_remove,
};
module_pci_driver(vdma_driver);

MODULE_DESCRIPTION("vuser-dma PASID DMA engine (vuser's emulated device)");
MODULE_LICENSE("GPL");
