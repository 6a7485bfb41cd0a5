/* libvuser: the vuser-dma function from guest userspace (docs/vuser-dma.md).
 *
 * BAR0 is mapped through sysfs; rings and completion records live in DMA
 * memory. Ring fetches carry no PASID (the device's default attachment);
 * each descriptor's addresses, its completion record included, are in the
 * address space its PASID field names.
 */
#include <fcntl.h>
#include <sys/ioctl.h>

#include "vuser.h"

#define VDMA_TIMEOUT_MS 20000

uint32_t vdma_read(struct vdma *d, unsigned off)
{
	return d->regs[off / 4];
}

void vdma_write(struct vdma *d, unsigned off, uint32_t val)
{
	d->regs[off / 4] = val;
}

uint32_t vdma_qread(struct vdma *d, unsigned q, unsigned off)
{
	return vdma_read(d, VDMA_QUEUE_BASE + VDMA_QUEUE_STRIDE * q + off);
}

void vdma_qwrite(struct vdma *d, unsigned q, unsigned off, uint32_t val)
{
	vdma_write(d, VDMA_QUEUE_BASE + VDMA_QUEUE_STRIDE * q + off, val);
}

int vdma_open(struct vdma *d, struct vt_pci *pci)
{
	uint32_t id, version;
	int ret;

	memset(d, 0, sizeof(*d));
	d->pci = *pci;
	d->pci.cfg_fd = -1;
	d->timeout_ms = VDMA_TIMEOUT_MS;
	if (pci->vendor != VDMA_VENDOR_ID || pci->device != VDMA_DEVICE_ID)
		return vt_fail(ENODEV, "%s is %04x:%04x, not vuser-dma", pci->bdf, pci->vendor,
			       pci->device);
	if ((ret = vt_pci_unbind(&d->pci)) || (ret = vt_pci_enable(&d->pci)))
		return ret;
	d->regs = vt_pci_map_bar(&d->pci, 0, &d->regs_len);
	if (!d->regs)
		return -errno;
	if (d->regs_len < 0x1000)
		return vt_fail(EINVAL, "vuser-dma BAR0 is %zu bytes", d->regs_len);
	id = vdma_read(d, VDMA_REG_ID);
	version = vdma_read(d, VDMA_REG_VERSION);
	if (id != VDMA_ID || version != VDMA_VERSION)
		return vt_fail(ENODEV, "%s: ID %#x VERSION %u, want %#x and %u", pci->bdf, id,
			       version, VDMA_ID, VDMA_VERSION);
	d->cap = vdma_read(d, VDMA_REG_CAP);
	d->label = vdma_read(d, VDMA_REG_LABEL);
	d->nqueues = (unsigned)VT_GET(d->cap, VDMA_CAP_NQUEUES);
	if (d->nqueues > VDMA_MAX_QUEUES)
		d->nqueues = VDMA_MAX_QUEUES;
	if (!d->nqueues)
		return vt_fail(ENODEV, "%s: CAP %#x has no queues", pci->bdf, d->cap);
	/* Whatever an earlier user left running stops here. */
	return vdma_reset(d);
}

int vdma_enable(struct vdma *d)
{
	int ret = vt_pci_set_master(&d->pci, 1);

	if (ret)
		return ret;
	vdma_write(d, VDMA_REG_CTRL, (uint32_t)VDMA_CTRL_ENABLE_MASK);
	if (vt_wait32(&d->regs[VDMA_REG_STATUS / 4], VDMA_STATUS_ENABLED_MASK,
		      VDMA_STATUS_ENABLED_MASK, d->timeout_ms))
		return vt_fail(ETIMEDOUT, "STATUS %#x never showed ENABLED",
			       vdma_read(d, VDMA_REG_STATUS));
	return 0;
}

int vdma_reset(struct vdma *d)
{
	vdma_write(d, VDMA_REG_CTRL, (uint32_t)VDMA_CTRL_RESET_MASK);
	if (vt_wait32(&d->regs[VDMA_REG_CTRL / 4], VDMA_CTRL_RESET_MASK, 0, d->timeout_ms))
		return vt_fail(ETIMEDOUT, "CTRL.RESET did not clear (CTRL %#x)",
			       vdma_read(d, VDMA_REG_CTRL));
	for (unsigned q = 0; q < VDMA_MAX_QUEUES; q++)
		d->q[q].enabled = 0;
	return 0;
}

int vdma_queue_setup(struct vdma *d, unsigned q, struct vdma_desc *ring, uint64_t ring_bus,
		     uint32_t entries, int irq, unsigned vector)
{
	uint32_t max = 1u << VT_GET(d->cap, VDMA_CAP_MAX_RING_LOG2), st;

	if (q >= d->nqueues)
		return vt_fail(EINVAL, "queue %u of %u", q, d->nqueues);
	if (!entries || (entries & (entries - 1)) || entries > max)
		return vt_fail(EINVAL, "ring of %u entries (a power of two up to %u)", entries, max);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_Q_CTRL, 0);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_RING_LO, (uint32_t)ring_bus);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_RING_HI, (uint32_t)(ring_bus >> 32));
	vdma_qwrite(d, q, VDMA_QUEUE_REG_RING_SIZE, entries);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_Q_CTRL, (uint32_t)(VDMA_Q_CTRL_ENABLE_MASK |
						  VT_PUT(VDMA_Q_CTRL_VECTOR, vector) |
						  (irq ? VDMA_Q_CTRL_IRQ_ENABLE_MASK : 0)));
	st = vdma_qread(d, q, VDMA_QUEUE_REG_Q_STATUS);
	if (!(st & VDMA_Q_STATUS_ENABLED_MASK) || (st & VDMA_Q_STATUS_HALTED_MASK))
		return vt_fail(EIO, "queue %u: Q_STATUS %#x, Q_ERROR %u (%s) after enabling", q, st,
			       vdma_qread(d, q, VDMA_QUEUE_REG_Q_ERROR),
			       vdma_qerror_name(vdma_qread(d, q, VDMA_QUEUE_REG_Q_ERROR)));
	d->q[q].ring = ring;
	d->q[q].ring_bus = ring_bus;
	d->q[q].size = entries;
	d->q[q].tail = vdma_qread(d, q, VDMA_QUEUE_REG_HEAD);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_TAIL, d->q[q].tail);
	d->q[q].enabled = 1;
	return 0;
}

int vdma_queue_setup_pool(struct vdma *d, unsigned q, struct vt_dmapool *pool, uint32_t entries)
{
	uint64_t pa;
	struct vdma_desc *ring = vt_dmapool_alloc(pool, (size_t)entries * VDMA_DESCRIPTOR_SIZE,
						  VT_PAGE_SIZE, &pa);

	if (!ring)
		return -errno;
	return vdma_queue_setup(d, q, ring, pa, entries, 0, 0);
}

int vdma_queue_disable(struct vdma *d, unsigned q)
{
	if (q >= d->nqueues)
		return vt_fail(EINVAL, "queue %u of %u", q, d->nqueues);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_Q_CTRL, 0);
	d->q[q].enabled = 0;
	return 0;
}

int vdma_submit(struct vdma *d, unsigned q, const struct vdma_desc *desc)
{
	struct vdma_queue *vq = &d->q[q];
	uint32_t next;
	double deadline = vt_now() + d->timeout_ms / 1000.0;

	if (q >= d->nqueues || !vq->enabled)
		return vt_fail(EINVAL, "queue %u is not set up", q);
	next = (vq->tail + 1) & (vq->size - 1);
	while (vdma_qread(d, q, VDMA_QUEUE_REG_HEAD) == next) {
		if (vdma_qread(d, q, VDMA_QUEUE_REG_Q_STATUS) & VDMA_Q_STATUS_HALTED_MASK)
			return vt_fail(EIO, "queue %u halted: %s", q,
				       vdma_qerror_name(vdma_qread(d, q, VDMA_QUEUE_REG_Q_ERROR)));
		if (vt_now() > deadline)
			return vt_fail(ETIMEDOUT, "queue %u full for %u ms", q, d->timeout_ms);
		vt_sleep_us(100);
	}
	memcpy(&vq->ring[vq->tail], desc, sizeof(*desc));
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	vq->tail = next;
	vdma_qwrite(d, q, VDMA_QUEUE_REG_TAIL, next);
	vdma_qwrite(d, q, VDMA_QUEUE_REG_DOORBELL, 1);
	return 0;
}

int vdma_wait(struct vdma *d, unsigned q, volatile struct vdma_completion *c, unsigned timeout_ms)
{
	double deadline = vt_now() + timeout_ms / 1000.0;
	unsigned spin = 0;

	while (!c->status) {
		if (vt_now() > deadline) {
			uint32_t st = vdma_qread(d, q, VDMA_QUEUE_REG_Q_STATUS);

			return vt_fail(ETIMEDOUT, "no completion in %u ms: queue %u Q_STATUS %#x "
				       "Q_ERROR %u (%s) HEAD %u TAIL %u COMPLETED %u", timeout_ms, q,
				       st, vdma_qread(d, q, VDMA_QUEUE_REG_Q_ERROR),
				       vdma_qerror_name(vdma_qread(d, q, VDMA_QUEUE_REG_Q_ERROR)),
				       vdma_qread(d, q, VDMA_QUEUE_REG_HEAD), vdma_qread(d, q, VDMA_QUEUE_REG_TAIL),
				       vdma_qread(d, q, VDMA_QUEUE_REG_COMPLETED));
		}
		if (++spin > 50)
			vt_sleep_us(100);
	}
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return c->status;
}

int vdma_run(struct vdma *d, unsigned q, const struct vdma_desc *desc,
	     volatile struct vdma_completion *c)
{
	int ret;

	memset((void *)c, 0, sizeof(*c));
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if ((ret = vdma_submit(d, q, desc)))
		return ret;
	return vdma_wait(d, q, c, d->timeout_ms);
}

int vdma_devtlb_flush(struct vdma *d)
{
	vdma_write(d, VDMA_REG_DEVTLB_CTRL, (uint32_t)VDMA_DEVTLB_CTRL_FLUSH_MASK);
	if (vt_wait32(&d->regs[VDMA_REG_DEVTLB_CTRL / 4], VDMA_DEVTLB_CTRL_FLUSH_MASK, 0,
		      d->timeout_ms))
		return vt_fail(ETIMEDOUT, "DEVTLB_CTRL.FLUSH did not clear");
	return 0;
}

static void desc_init(struct vdma_desc *x, uint8_t op, uint32_t pasid, uint64_t completion)
{
	memset(x, 0, sizeof(*x));
	x->opcode = op;
	x->flags = completion ? VDMA_DESC_FLAGS_COMPLETION : 0;
	x->completion = completion;
	if (pasid != VDMA_NO_PASID)
		x->pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | VT_PUT(VDMA_DESC_PASID_PASID, pasid));
}

void vdma_desc_memcpy(struct vdma_desc *x, uint32_t pasid, uint64_t src, uint64_t dst,
		      uint64_t len, uint64_t completion)
{
	desc_init(x, VDMA_OPCODE_MEMCPY, pasid, completion);
	x->src = src;
	x->dst = dst;
	x->length = len;
}

void vdma_desc_fill(struct vdma_desc *x, uint32_t pasid, uint64_t dst, uint64_t len,
		    uint64_t pattern, uint64_t completion)
{
	desc_init(x, VDMA_OPCODE_FILL, pasid, completion);
	x->dst = dst;
	x->length = len;
	x->pattern = pattern;
}

void vdma_desc_compare(struct vdma_desc *x, uint32_t pasid, uint64_t a, uint64_t b,
		       uint64_t len, uint64_t completion)
{
	desc_init(x, VDMA_OPCODE_COMPARE, pasid, completion);
	x->src = a;
	x->dst = b;
	x->length = len;
}

void vdma_desc_nop(struct vdma_desc *x, uint32_t pasid, uint64_t completion)
{
	desc_init(x, VDMA_OPCODE_NOP, pasid, completion);
}

const char *vdma_status_name(unsigned status)
{
	switch (status) {
	case VDMA_COMPLETION_STATUS_NONE: return "not done";
	case VDMA_COMPLETION_STATUS_SUCCESS: return "SUCCESS";
	case VDMA_COMPLETION_STATUS_PAGE_FAULT: return "PAGE_FAULT";
	case VDMA_COMPLETION_STATUS_INVALID_DESC: return "INVALID_DESC";
	case VDMA_COMPLETION_STATUS_ABORTED: return "ABORTED";
	default: return "unknown status";
	}
}

const char *vdma_qerror_name(unsigned err)
{
	switch (err) {
	case 0: return "none";
	case VDMA_QUEUE_ERROR_TAIL: return "TAIL beyond RING_SIZE";
	case VDMA_QUEUE_ERROR_RING_FAULT: return "ring fetch faulted";
	case VDMA_QUEUE_ERROR_RING_SIZE: return "bad RING_SIZE";
	case VDMA_QUEUE_ERROR_COMPLETION_FAULT: return "completion write faulted";
	default: return "unknown error";
	}
}

void vdma_completion_describe(const volatile struct vdma_completion *c, char *buf, size_t len)
{
	snprintf(buf, len, "status %u (%s), fault_info %#x, result %u, bytes_done %#llx, "
		 "fault_addr %#llx", c->status, vdma_status_name(c->status), c->fault_info,
		 c->result, (unsigned long long)c->bytes_done, (unsigned long long)c->fault_addr);
}

/* ---- the kernel driver ---- */

int vdma_kmod_open(unsigned index, int *fd)
{
	char path[64];
	int ret;

	if (!vt_module_loaded(VDMA_KMOD_NAME)) {
		ret = vt_module_load(VDMA_KMOD_PATH, NULL);
		if (ret && ret != -EEXIST)
			return ret;
	}
	snprintf(path, sizeof(path), "/dev/vuser_dma%u", index);
	for (int i = 0; i < 200 && access(path, F_OK); i++)
		vt_sleep_us(10000); /* devtmpfs creates the node asynchronously */
	*fd = open(path, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return vt_fail(errno, "open %s: %s (did the driver bind? see dmesg)", path,
			       strerror(errno));
	return 0;
}

static int kioctl(int fd, unsigned long req, void *arg, const char *what)
{
	if (ioctl(fd, req, arg))
		return vt_fail(errno, "ioctl %s: %s", what, strerror(errno));
	return 0;
}

int vdma_kmod_info(int fd, struct vuser_dma_info *info)
{
	return kioctl(fd, VUSER_DMA_IOC_INFO, info, "INFO");
}

int vdma_kmod_memcpy(int fd, struct vuser_dma_memcpy *m)
{
	return kioctl(fd, VUSER_DMA_IOC_MEMCPY, m, "MEMCPY");
}

int vdma_kmod_copy(int fd, struct vuser_dma_memcpy *m, unsigned q, unsigned flags, size_t len,
		   unsigned seed, const char *what)
{
	uint8_t *src = malloc(len), *dst = malloc(len);
	int ret;

	if (!src || !dst) {
		free(src);
		free(dst);
		return vt_fail(ENOMEM, "malloc %zu", len);
	}
	for (size_t i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 13 + seed);
	memset(dst, 0, len);
	memset(m, 0, sizeof(*m));
	m->src = (uintptr_t)src;
	m->dst = (uintptr_t)dst;
	m->len = len;
	m->queue = q;
	m->flags = flags;
	m->timeout_ms = 20000;
	ret = vdma_kmod_memcpy(fd, m);
	if (!ret && m->status != VDMA_COMPLETION_STATUS_SUCCESS)
		ret = vt_fail(EIO, "%s of %zu on queue %u: status %u (%s), fault_addr %#llx", what,
			      len, q, m->status, vdma_status_name(m->status),
			      (unsigned long long)m->fault_addr);
	for (size_t i = 0; !ret && i < len; i++)
		if (src[i] != dst[i])
			ret = vt_fail(EIO, "%s of %zu on queue %u: byte %zu is %#x, want %#x", what,
				      len, q, i, dst[i], src[i]);
	free(src);
	free(dst);
	return ret;
}

int vdma_kmod_submit(int fd, struct vuser_dma_submit *s)
{
	return kioctl(fd, VUSER_DMA_IOC_SUBMIT, s, "SUBMIT");
}

int vdma_kmod_irq_counts(int fd, struct vuser_dma_irq_counts *c)
{
	return kioctl(fd, VUSER_DMA_IOC_IRQ_COUNTS, c, "IRQ_COUNTS");
}

int vdma_kmod_mask(int fd, unsigned vector, int masked)
{
	struct vuser_dma_mask m = { .vector = vector, .masked = !!masked };

	return kioctl(fd, VUSER_DMA_IOC_MASK, &m, "MASK");
}

int vdma_kmod_pending(int fd, struct vuser_dma_pending *p)
{
	memset(p, 0, sizeof(*p));
	return kioctl(fd, VUSER_DMA_IOC_PENDING, p, "PENDING");
}

int vdma_kmod_stale(int fd, struct vuser_dma_stale *st)
{
	return kioctl(fd, VUSER_DMA_IOC_STALE, st, "STALE");
}

int vdma_kmod_sva_bind(int fd, struct vuser_dma_sva_bind *b)
{
	memset(b, 0, sizeof(*b));
	return kioctl(fd, VUSER_DMA_IOC_SVA_BIND, b, "SVA_BIND");
}

int vdma_kmod_sva_unbind(int fd)
{
	return kioctl(fd, VUSER_DMA_IOC_SVA_UNBIND, NULL, "SVA_UNBIND");
}

int vdma_kmod_sva_copy(int fd, struct vuser_dma_sva_copy *c)
{
	return kioctl(fd, VUSER_DMA_IOC_SVA_COPY, c, "SVA_COPY");
}

int vdma_kmod_sva_unbind_queued(int fd, struct vuser_dma_sva_unbind_queued *u)
{
	return kioctl(fd, VUSER_DMA_IOC_SVA_UNBIND_QUEUED, u, "SVA_UNBIND_QUEUED");
}

const char *vdma_kmod_domain_name(uint32_t domain)
{
	switch (domain) {
	case VUSER_DMA_DOMAIN_NONE: return "none (no IOMMU)";
	case VUSER_DMA_DOMAIN_IDENTITY: return "identity";
	case VUSER_DMA_DOMAIN_DMA: return "DMA (strict)";
	case VUSER_DMA_DOMAIN_DMA_FQ: return "DMA-FQ (lazy)";
	default: return "other";
	}
}
