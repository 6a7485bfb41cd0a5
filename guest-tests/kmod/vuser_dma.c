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
 *                streaming or coherent DMA mappings, raw (PASID-tagged)
 *                descriptors, interrupt counts, vector masking, the pending
 *                bits, DMA after an unmap, and shared virtual addressing
 *                (bind the caller's mm, copy between its virtual addresses).
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
 *
 * Two ways a guest can run: with no kernel IOMMU driver for the device (the
 * vIOMMU, if any, is programmed from userspace), the DMA API hands out
 * physical addresses and this driver enables PASID itself; with the guest
 * kernel's intel_iommu owning the vIOMMU, the DMA API hands out IOVAs of the
 * device's DMA domain, the IOMMU driver has enabled PASID, ATS and PRI
 * (6.1: iommu_enable_pci_caps at attach), and SVA binds process address
 * spaces to PASIDs.
 */
#include <linux/bitfield.h>
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/irq.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ats.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/wait.h>

#include "vdma_layout.h"
#include "vuser_dma_ioctl.h"

#define DRV_NAME "vuser_dma"
#define RING_ENTRIES 64                    /* descriptors per queue */
#define MEMCPY_MAX (1u << 20)              /* bytes per VUSER_DMA_IOC_MEMCPY */
#define DEFAULT_TIMEOUT_MS 10000
#define SVA_COPY_MAX (16u << 20)            /* the descriptor's length limit */
#define UNBIND_QUEUED_MAX 8

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
	u32 pasid_owner;                    /* VUSER_DMA_OWNER_* */
	bool sva_features;                  /* IOPF and SVA enabled by this driver */
	struct vdma_queue q[VUSER_DMA_MAX_QUEUES];
	atomic64_t irqs[VUSER_DMA_MAX_VECTORS];
	struct mutex lock;                  /* one ioctl at a time per device */
	struct miscdevice misc;
	char name[32];
	int id;
};

/* One per open file: the device, and the mm bound through it (SVA). */
struct vdma_file {
	struct vdma_dev *vd;
	struct iommu_sva *sva;
	u32 pasid;
};

static DEFINE_IDA(vdma_ida);

static u32 vdma_domain_kind(struct pci_dev *pdev);

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

/*
 * Run one descriptor with its completion record in the queue's slot of the
 * driver's coherent record array (untagged when the descriptor carries a
 * PASID) and wait for the record: sleeping until the queue's interrupt, or,
 * with `poll`, spinning on the record (for callers that may not sleep).
 * A descriptor that did not end is abandoned by restarting its queue.
 */
static int vdma_run(struct vdma_queue *q, struct vdma_hw_desc *desc, unsigned int timeout_ms,
		    bool poll, struct vdma_hw_completion *out)
{
	struct vdma_hw_completion *comp;
	u64 irqs_before;
	int slot;
	long ret;

	if (!timeout_ms)
		timeout_ms = DEFAULT_TIMEOUT_MS;
	slot = q->tail;
	comp = &q->comp[slot];
	memset(comp, 0, sizeof(*comp));
	desc->flags |= VDMA_DESC_FLAGS_IRQ | VDMA_DESC_FLAGS_COMPLETION;
	if (le32_to_cpu(desc->pasid) & VDMA_DESC_PASID_VALID_MASK)
		desc->flags |= VDMA_DESC_FLAGS_COMPLETION_RID;
	desc->completion = cpu_to_le64(q->comp_dma + slot * sizeof(*comp));

	irqs_before = atomic64_read(&q->vd->irqs[q->index]);
	slot = vdma_submit(q, desc);
	if (slot < 0)
		return slot;
	if (poll) {
		u64 deadline = get_jiffies_64() + msecs_to_jiffies(timeout_ms);
		unsigned long spins = 0, max_spins = timeout_ms * 50ul;

		/* jiffies may not advance (softirqs off): bound the spins too. */
		ret = -ETIMEDOUT;
		while (time_before64(get_jiffies_64(), deadline) && spins++ < max_spins) {
			if (READ_ONCE(comp->status)) {
				ret = 0;
				break;
			}
			if (vdma_halted(q)) {
				ret = -EIO;
				break;
			}
			udelay(20);
		}
	} else {
		ret = wait_event_interruptible_timeout(q->wait,
			(READ_ONCE(comp->status) != 0 && vdma_irq_seen(q, irqs_before)) ||
			vdma_halted(q), msecs_to_jiffies(timeout_ms));
		if (ret == 0)
			ret = -ETIMEDOUT;
		else if (ret > 0)
			ret = READ_ONCE(comp->status) ? 0 : -EIO;   /* halted: no record */
	}
	dma_rmb();   /* read the record (and the data) after seeing its status */
	if (ret) {
		vdma_queue_start(q);
		return ret;
	}
	*out = *comp;
	return 0;
}

/* ---- ioctls ---- */

static long vdma_ioc_memcpy(struct vdma_dev *vd, struct vuser_dma_memcpy __user *uarg)
{
	struct device *dev = &vd->pdev->dev;
	struct vuser_dma_memcpy m;
	struct vdma_hw_desc desc = {};
	struct vdma_hw_completion *comp;
	struct vdma_queue *q;
	dma_addr_t src_dma = DMA_MAPPING_ERROR, dst_dma = DMA_MAPPING_ERROR;
	void *src = NULL, *dst = NULL;
	bool csrc, cdst;
	u64 irqs_before;
	int slot;
	long ret;

	if (copy_from_user(&m, uarg, sizeof(m)))
		return -EFAULT;
	if (!m.len || m.len > MEMCPY_MAX || m.queue >= vd->nqueues || m.reserved ||
	    (m.flags & ~(VUSER_DMA_MEMCPY_COHERENT_SRC | VUSER_DMA_MEMCPY_COHERENT_DST)))
		return -EINVAL;
	q = &vd->q[m.queue];
	csrc = m.flags & VUSER_DMA_MEMCPY_COHERENT_SRC;
	cdst = m.flags & VUSER_DMA_MEMCPY_COHERENT_DST;

	/*
	 * Coherent buffers (dma_alloc_coherent: mapped for as long as they
	 * live), or streaming DMA: kernel buffers mapped for the device's
	 * direction around the transfer.
	 */
	ret = -ENOMEM;
	src = csrc ? dma_alloc_coherent(dev, m.len, &src_dma, GFP_KERNEL) : kmalloc(m.len, GFP_KERNEL);
	if (!src)
		goto out_free;
	dst = cdst ? dma_alloc_coherent(dev, m.len, &dst_dma, GFP_KERNEL) : kzalloc(m.len, GFP_KERNEL);
	if (!dst)
		goto out_free;
	memset(dst, 0, m.len);
	ret = -EFAULT;
	if (copy_from_user(src, u64_to_user_ptr(m.src), m.len))
		goto out_free;
	if (!csrc) {
		src_dma = dma_map_single(dev, src, m.len, DMA_TO_DEVICE);
		ret = dma_mapping_error(dev, src_dma);
		if (ret) {
			src_dma = DMA_MAPPING_ERROR;
			goto out_free;
		}
	}
	if (!cdst) {
		dst_dma = dma_map_single(dev, dst, m.len, DMA_FROM_DEVICE);
		ret = dma_mapping_error(dev, dst_dma);
		if (ret) {
			dst_dma = DMA_MAPPING_ERROR;
			goto out_unmap_src;
		}
	}
	m.src_dma = src_dma;
	m.dst_dma = dst_dma;
	/* Coherent memory may come from a remap (not the linear map). */
	m.src_phys = is_vmalloc_addr(src) ? page_to_phys(vmalloc_to_page(src)) +
		     offset_in_page(src) : virt_to_phys(src);
	m.dst_phys = is_vmalloc_addr(dst) ? page_to_phys(vmalloc_to_page(dst)) +
		     offset_in_page(dst) : virt_to_phys(dst);

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

	if (!cdst) {
		dma_unmap_single(dev, dst_dma, m.len, DMA_FROM_DEVICE);
		dst_dma = DMA_MAPPING_ERROR;
	}
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
	if (!cdst && dst_dma != DMA_MAPPING_ERROR)
		dma_unmap_single(dev, dst_dma, m.len, DMA_FROM_DEVICE);
out_unmap_src:
	if (!csrc && src_dma != DMA_MAPPING_ERROR)
		dma_unmap_single(dev, src_dma, m.len, DMA_TO_DEVICE);
out_free:
	if (cdst && dst)
		dma_free_coherent(dev, m.len, dst, dst_dma);
	else
		kfree(dst);
	if (csrc && src)
		dma_free_coherent(dev, m.len, src, src_dma);
	else
		kfree(src);
	return ret;
}

/*
 * DMA after dma_unmap_single (VUSER_DMA_IOC_STALE, see the header). What a
 * strict domain must do: the unmap invalidates the IOTLB (and the device
 * TLB) before it returns, so the second FILL faults. A lazy (flush queue)
 * domain defers that invalidation: until the queue is flushed the old
 * translation may still be used, the window that lazy mode accepts.
 */
static long vdma_ioc_stale(struct vdma_dev *vd, struct vuser_dma_stale __user *uarg)
{
	struct device *dev = &vd->pdev->dev;
	struct vuser_dma_stale st;
	struct vdma_hw_desc desc = {};
	struct vdma_hw_completion rec;
	struct vdma_queue *q;
	struct page *page;
	dma_addr_t iova;
	bool nosoftirq;
	u8 *buf;
	size_t i;
	long ret;

	if (copy_from_user(&st, uarg, sizeof(st)))
		return -EFAULT;
	if (st.queue >= vd->nqueues ||
	    (st.flags & ~(VUSER_DMA_STALE_NO_SOFTIRQ | VUSER_DMA_STALE_BLOCK_ON_FAULT)) ||
	    st.delay_ms > 10000)
		return -EINVAL;
	q = &vd->q[st.queue];
	nosoftirq = st.flags & VUSER_DMA_STALE_NO_SOFTIRQ;
	page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!page)
		return -ENOMEM;
	buf = page_address(page);
	iova = dma_map_page(dev, page, 0, PAGE_SIZE, DMA_FROM_DEVICE);
	ret = dma_mapping_error(dev, iova);
	if (ret)
		goto out_free;
	st.iova = iova;
	st.phys = page_to_phys(page);
	st.cpus = num_online_cpus();

	desc.opcode = VDMA_OPCODE_FILL;
	desc.dst = cpu_to_le64(iova);
	desc.length = cpu_to_le64(PAGE_SIZE);
	desc.pattern = cpu_to_le64(st.pattern);
	ret = vdma_run(q, &desc, st.timeout_ms, false, &rec);
	if (ret) {
		dma_unmap_page(dev, iova, PAGE_SIZE, DMA_FROM_DEVICE);
		goto out_free;
	}
	st.first_status = rec.status;

	memset(&desc, 0, sizeof(desc));
	desc.opcode = VDMA_OPCODE_FILL;
	desc.dst = cpu_to_le64(iova);
	desc.length = cpu_to_le64(PAGE_SIZE);
	desc.pattern = cpu_to_le64(~st.pattern);
	if (st.flags & VUSER_DMA_STALE_BLOCK_ON_FAULT)
		desc.flags = VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	if (nosoftirq)
		local_bh_disable();
	dma_unmap_page(dev, iova, PAGE_SIZE, DMA_FROM_DEVICE);
	/*
	 * Sleep, not spin: a spinning task can keep softirqs deferred to
	 * ksoftirqd, and with them the flush queue's timer.
	 */
	if (st.delay_ms && nosoftirq)
		mdelay(st.delay_ms);
	else if (st.delay_ms)
		msleep(st.delay_ms);
	ret = vdma_run(q, &desc, st.timeout_ms, nosoftirq, &rec);
	if (nosoftirq)
		local_bh_enable();
	if (ret)
		goto out_free;
	st.status = rec.status;
	st.fault_info = rec.fault_info;
	st.fault_addr = le64_to_cpu(rec.fault_addr);
	st.bytes_done = le64_to_cpu(rec.bytes_done);
	st.landed = 0;
	for (i = 0; i < PAGE_SIZE; i++)
		st.landed += buf[i] == (u8)(~st.pattern >> (8 * (i % 8)));
	ret = copy_to_user(uarg, &st, sizeof(st)) ? -EFAULT : 0;
out_free:
	__free_page(page);
	return ret;
}

/* ---- shared virtual addressing (6.1: iommu_sva_bind_device with drvdata) ---- */

/*
 * IOPF first, then SVA (include/linux/iommu.h); 6.1's intel driver accepts
 * them only when it has enabled PASID, ATS and PRI on the device.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
/*
 * 6.16 removed the device features: the IOMMU driver enables IOPF itself
 * when the SVA domain attaches, so a successful bind means both are on.
 */
static int vdma_sva_features(struct vdma_dev *vd)
{
	return 0;
}

static void vdma_sva_features_off(struct vdma_dev *vd)
{
}
#else
static int vdma_sva_features(struct vdma_dev *vd)
{
	struct device *dev = &vd->pdev->dev;
	int ret;

	if (vd->sva_features)
		return 0;
	ret = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_IOPF);
	if (ret) {
		dev_err(dev, "enable IOMMU_DEV_FEAT_IOPF: %d\n", ret);
		return ret;
	}
	ret = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_SVA);
	if (ret) {
		dev_err(dev, "enable IOMMU_DEV_FEAT_SVA: %d\n", ret);
		iommu_dev_disable_feature(dev, IOMMU_DEV_FEAT_IOPF);
		return ret;
	}
	vd->sva_features = true;
	return 0;
}

static void vdma_sva_features_off(struct vdma_dev *vd)
{
	if (!vd->sva_features)
		return;
	iommu_dev_disable_feature(&vd->pdev->dev, IOMMU_DEV_FEAT_SVA);
	iommu_dev_disable_feature(&vd->pdev->dev, IOMMU_DEV_FEAT_IOPF);
	vd->sva_features = false;
}
#endif

static long vdma_ioc_sva_bind(struct vdma_file *f, struct vuser_dma_sva_bind __user *uarg)
{
	struct vdma_dev *vd = f->vd;
	struct vuser_dma_sva_bind b = {};
	struct iommu_sva *sva;
	int ret;

	if (f->sva)
		return -EBUSY;
	ret = vdma_sva_features(vd);
	if (!ret) {
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 16, 0)
		b.features = VUSER_DMA_FEAT_IOPF | VUSER_DMA_FEAT_SVA;
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
		sva = iommu_sva_bind_device(&vd->pdev->dev, current->mm);
#else
		sva = iommu_sva_bind_device(&vd->pdev->dev, current->mm, NULL);
#endif
		ret = PTR_ERR_OR_ZERO(sva);
		if (ret)
			dev_err(&vd->pdev->dev, "iommu_sva_bind_device: %d\n", ret);
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
		else  /* the bind enabled IOPF (see vdma_sva_features) */
			b.features = VUSER_DMA_FEAT_IOPF | VUSER_DMA_FEAT_SVA;
#endif
	}
	if (ret)
		return copy_to_user(uarg, &b, sizeof(b)) ? -EFAULT : ret;
	f->sva = sva;
	f->pasid = iommu_sva_get_pasid(sva);
	b.pasid = f->pasid;
	dev_info(&vd->pdev->dev, "bound pid %d's mm to PASID %#x\n", current->pid, f->pasid);
	return copy_to_user(uarg, &b, sizeof(b)) ? -EFAULT : 0;
}

static void vdma_sva_unbind(struct vdma_file *f)
{
	if (!f->sva)
		return;
	iommu_sva_unbind_device(f->sva);
	f->sva = NULL;
}

static long vdma_ioc_sva_copy(struct vdma_file *f, struct vuser_dma_sva_copy __user *uarg)
{
	struct vdma_dev *vd = f->vd;
	struct vuser_dma_sva_copy c;
	struct vdma_hw_desc desc = {};
	struct vdma_hw_completion rec;
	u32 pasid;
	long ret;

	if (copy_from_user(&c, uarg, sizeof(c)))
		return -EFAULT;
	if (!c.len || c.len > SVA_COPY_MAX || c.queue >= vd->nqueues || c.reserved ||
	    (c.flags & ~VUSER_DMA_SVA_BLOCK_ON_FAULT) || c.pasid > VDMA_DESC_PASID_PASID_MASK)
		return -EINVAL;
	if (!vd->pasid_enabled)
		return -EOPNOTSUPP;
	if (!c.pasid && !f->sva)
		return -ENOENT;     /* nothing bound through this file */
	pasid = c.pasid ? c.pasid : f->pasid;
	desc.opcode = VDMA_OPCODE_MEMCPY;
	if (c.flags & VUSER_DMA_SVA_BLOCK_ON_FAULT)
		desc.flags = VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	desc.pasid = cpu_to_le32(VDMA_DESC_PASID_VALID_MASK | pasid);
	desc.src = cpu_to_le64(c.src);
	desc.dst = cpu_to_le64(c.dst);
	desc.length = cpu_to_le64(c.len);
	ret = vdma_run(&vd->q[c.queue], &desc, c.timeout_ms, false, &rec);
	if (ret)
		return ret;
	c.status = rec.status;
	c.fault_info = rec.fault_info;
	c.bytes_done = le64_to_cpu(rec.bytes_done);
	c.fault_addr = le64_to_cpu(rec.fault_addr);
	c.used_pasid = pasid;
	return copy_to_user(uarg, &c, sizeof(c)) ? -EFAULT : 0;
}

/*
 * Unbinding while descriptors are queued (VUSER_DMA_IOC_SVA_UNBIND_QUEUED):
 * with the device stopped they cannot start, so they are still in the ring
 * when iommu_sva_unbind_device() tears the PASID entry down and drains its
 * page requests; started again, the device must find the PASID blocked.
 */
static long vdma_ioc_sva_unbind_queued(struct vdma_file *f,
				       struct vuser_dma_sva_unbind_queued __user *uarg)
{
	struct vdma_dev *vd = f->vd;
	struct vuser_dma_sva_unbind_queued u;
	struct vdma_queue *q;
	u32 first, i;
	u64 irqs_before;
	long ret = 0;

	if (copy_from_user(&u, uarg, sizeof(u)))
		return -EFAULT;
	if (!u.count || u.count > UNBIND_QUEUED_MAX || !u.len || u.len > SVA_COPY_MAX ||
	    u.queue >= vd->nqueues)
		return -EINVAL;
	if (!f->sva)
		return -ENOENT;
	q = &vd->q[u.queue];
	if (RING_ENTRIES - 1 - ((q->tail - vdma_rd(vd, qreg(q->index, VDMA_QUEUE_REG_HEAD))) %
				RING_ENTRIES) < u.count)
		return -EBUSY;

	vdma_wr(vd, VDMA_REG_CTRL, 0);                  /* stop: nothing runs */
	first = q->tail;
	irqs_before = atomic64_read(&vd->irqs[q->index]);
	for (i = 0; i < u.count; i++) {
		struct vdma_hw_desc desc = {};
		u32 slot = (first + i) % RING_ENTRIES;

		memset(&q->comp[slot], 0, sizeof(q->comp[slot]));
		desc.opcode = VDMA_OPCODE_MEMCPY;
		desc.flags = VDMA_DESC_FLAGS_IRQ | VDMA_DESC_FLAGS_COMPLETION |
			     VDMA_DESC_FLAGS_COMPLETION_RID | VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
		desc.pasid = cpu_to_le32(VDMA_DESC_PASID_VALID_MASK | f->pasid);
		desc.src = cpu_to_le64(u.src);
		desc.dst = cpu_to_le64(u.dst + (u64)i * u.len);
		desc.length = cpu_to_le64(u.len);
		desc.completion = cpu_to_le64(q->comp_dma + slot * sizeof(q->comp[0]));
		ret = vdma_submit(q, &desc);
		if (ret < 0)
			break;
		ret = 0;
	}
	vdma_sva_unbind(f);
	u.unbound = 1;
	vdma_wr(vd, VDMA_REG_CTRL, VDMA_CTRL_ENABLE_MASK);  /* start again */
	if (!ret && i)
		ret = vdma_wait_completed(q, q->submitted, irqs_before, u.timeout_ms);
	if (ret)
		vdma_queue_start(q);
	dma_rmb();
	for (i = 0; i < u.count && i < UNBIND_QUEUED_MAX; i++)
		u.statuses[i] = READ_ONCE(q->comp[(first + i) % RING_ENTRIES].status);
	if (copy_to_user(uarg, &u, sizeof(u)))
		return -EFAULT;
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
	struct vdma_file *f = file->private_data;
	struct vdma_dev *vd = f->vd;
	void __user *uarg = (void __user *)arg;
	long ret;

	mutex_lock(&vd->lock);
	switch (cmd) {
	case VUSER_DMA_IOC_INFO: {
		struct vuser_dma_info info = {
			.label = vd->label, .cap = vd->cap, .nqueues = vd->nqueues,
			.nvectors = vd->nvectors, .ring_entries = RING_ENTRIES,
			.pasid_enabled = vd->pasid_enabled, .pasid_owner = vd->pasid_owner,
			.domain = vdma_domain_kind(vd->pdev),
			.ats_enabled = vd->pdev->ats_enabled, .pri_enabled = vd->pdev->pri_enabled,
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
	case VUSER_DMA_IOC_STALE:
		ret = vdma_ioc_stale(vd, uarg);
		break;
	case VUSER_DMA_IOC_SVA_BIND:
		ret = vdma_ioc_sva_bind(f, uarg);
		break;
	case VUSER_DMA_IOC_SVA_UNBIND:
		ret = f->sva ? 0 : -ENOENT;
		vdma_sva_unbind(f);
		break;
	case VUSER_DMA_IOC_SVA_COPY:
		ret = vdma_ioc_sva_copy(f, uarg);
		break;
	case VUSER_DMA_IOC_SVA_UNBIND_QUEUED:
		ret = vdma_ioc_sva_unbind_queued(f, uarg);
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&vd->lock);
	return ret;
}

/* misc_open() left the miscdevice in private_data; put a vdma_file there. */
static int vdma_open(struct inode *inode, struct file *file)
{
	struct vdma_dev *vd = container_of(file->private_data, struct vdma_dev, misc);
	struct vdma_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	f->vd = vd;
	file->private_data = f;
	return 0;
}

static int vdma_release(struct inode *inode, struct file *file)
{
	struct vdma_file *f = file->private_data;

	mutex_lock(&f->vd->lock);
	vdma_sva_unbind(f);
	mutex_unlock(&f->vd->lock);
	kfree(f);
	return 0;
}

static const struct file_operations vdma_fops = {
	.owner = THIS_MODULE,
	.open = vdma_open,
	.release = vdma_release,
	.unlocked_ioctl = vdma_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* ---- probe and remove ---- */

/* What the device's default domain is: none (no IOMMU), identity, DMA, DMA-FQ. */
static u32 vdma_domain_kind(struct pci_dev *pdev)
{
	struct iommu_domain *dom = iommu_get_domain_for_dev(&pdev->dev);

	if (!dom)
		return VUSER_DMA_DOMAIN_NONE;
	switch (dom->type) {
	case IOMMU_DOMAIN_IDENTITY:
		return VUSER_DMA_DOMAIN_IDENTITY;
	case IOMMU_DOMAIN_DMA:
		return VUSER_DMA_DOMAIN_DMA;
	case IOMMU_DOMAIN_DMA_FQ:
		return VUSER_DMA_DOMAIN_DMA_FQ;
	default:
		return VUSER_DMA_DOMAIN_OTHER;
	}
}

/*
 * PASID. With the kernel's IOMMU driver owning the device, that driver has
 * enabled PASID already (and will disable it): check first, and leave it.
 * Otherwise pci_enable_pasid() wants End-End TLP Prefix support and ACS on
 * the whole path to the root port, which a VM's emulated root port may not
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
	if (pdev->pasid_enabled) {
		vd->pasid_enabled = true;
		vd->pasid_owner = VUSER_DMA_OWNER_IOMMU;
		return;
	}
	ret = pci_enable_pasid(pdev, 0);
	if (ret) {
		u16 ctrl;

		dev_info(&pdev->dev, "pci_enable_pasid: %d; enabling the endpoint's PASID\n", ret);
		pci_read_config_word(pdev, pos + PCI_PASID_CTRL, &ctrl);
		pci_write_config_word(pdev, pos + PCI_PASID_CTRL, ctrl | PCI_PASID_CTRL_ENABLE);
	}
	vd->pasid_enabled = true;
	vd->pasid_owner = VUSER_DMA_OWNER_DRIVER;
}

static void vdma_disable_pasid(struct vdma_dev *vd)
{
	struct pci_dev *pdev = vd->pdev;
	int pos = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_PASID);
	u16 ctrl;

	if (!vd->pasid_enabled || vd->pasid_owner != VUSER_DMA_OWNER_DRIVER)
		return;
	if (pdev->pasid_enabled) {
		pci_disable_pasid(pdev);
	} else if (pos) {
		pci_read_config_word(pdev, pos + PCI_PASID_CTRL, &ctrl);
		pci_write_config_word(pdev, pos + PCI_PASID_CTRL, ctrl & ~PCI_PASID_CTRL_ENABLE);
	}
	vd->pasid_enabled = false;
	vd->pasid_owner = VUSER_DMA_OWNER_NONE;
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
	dev_info(dev, "/dev/%s: label %#x, %u queues, %u MSI-X vectors%s%s\n", vd->name,
		 vd->label, vd->nqueues, vd->nvectors, vd->pasid_enabled ? ", PASID" : "",
		 vd->pasid_owner == VUSER_DMA_OWNER_IOMMU ? " (enabled by the IOMMU driver)" : "");
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
	vdma_sva_features_off(vd);
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
