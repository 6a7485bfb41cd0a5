/* dma_passthrough: vuser-dma without a vIOMMU in the way (docs/vuser-dma.md).
 *
 * The device's requests without a PASID go through its default attachment,
 * the VM's stage 2, so bus addresses are guest physical addresses. The
 * program drives the device from userspace (BAR0 through sysfs, rings and
 * buffers in hugepages whose GPA comes from /proc/self/pagemap) and checks
 * MEMCPY, FILL and COMPARE byte for byte with several sizes, among them
 * sizes and offsets that cross 4 KiB pages, plus the error paths.
 */
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "lib/vuser.h"

#define RING_ENTRIES 16
#define CANARY 0xc5

static struct vt_pci pci;
static struct vdma dev;
static struct vt_dmapool pool;
static struct vt_dmabuf src, dst;
static volatile struct vdma_completion *comp;
static uint64_t comp_pa;

/* Unmapped in stage 2: far above guest RAM and the PCI holes. */
#define UNMAPPED_GPA 0x7f00000000ull

static void fill_random(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

/* The first byte of [p, p+n) that is not v, or -1. */
static int run(struct vdma_desc *d)
{
	int st = vdma_run(&dev, 0, d, comp);

	if (st < 0)
		ktap_diag("descriptor did not complete: %s", vt_err());
	return st;
}

static enum vt_result find_device(void)
{
	uint32_t label;

	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vt_pci_label(&pci, &label), "read the device label");
	ktap_diag("vuser-dma at %s, label %#x", pci.bdf, label);
	return VT_PASS;
}

static enum vt_result open_device(void)
{
	vt_require("find_device");
	VT_CALL(vdma_open(&dev, &pci), "open vuser-dma");
	ktap_diag("CAP %#x: %u queues, largest ring 2^%llu, LABEL %#x", dev.cap, dev.nqueues,
		  (unsigned long long)VT_GET(dev.cap, VDMA_CAP_MAX_RING_LOG2), dev.label);
	VT_CALL(vdma_enable(&dev), "enable");
	VT_CALL(vt_dmapool_init(&pool), "pool");
	VT_CALL(vdma_queue_setup_pool(&dev, 0, &pool, RING_ENTRIES), "queue 0");
	comp = vt_dmapool_alloc(&pool, sizeof(*comp), 32, &comp_pa);
	VT_CHECK(comp, "completion record: %s", vt_err());
	VT_CALL(vt_dmabuf_alloc_huge(&src), "source hugepage");
	VT_CALL(vt_dmabuf_alloc_huge(&dst), "destination hugepage");
	ktap_diag("ring at %#llx, src %#llx, dst %#llx", (unsigned long long)dev.q[0].ring_bus,
		  (unsigned long long)src.pa, (unsigned long long)dst.pa);
	return VT_PASS;
}

static enum vt_result nop(void)
{
	struct vdma_desc d;
	uint32_t before;
	int st;

	vt_require("open_device");
	before = vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED);
	vdma_desc_nop(&d, VDMA_NO_PASID, comp_pa);
	st = run(&d);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "NOP status %d (%s)", st, vdma_status_name(st));
	VT_CHECK(vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED) == before + 1,
		 "COMPLETED %u, was %u", vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED), before);
	VT_CHECK(vdma_qread(&dev, 0, VDMA_QUEUE_REG_HEAD) == dev.q[0].tail, "HEAD %u, TAIL %u",
		 vdma_qread(&dev, 0, VDMA_QUEUE_REG_HEAD), dev.q[0].tail);
	return VT_PASS;
}

/* Lengths and (source, destination) page offsets: the odd ones cross pages. */
static const struct {
	uint32_t len, src_off, dst_off;
} cases[] = {
	{ 1, 0, 0 },           { 8, 0xffc, 0x10 },       { 64, 0, 0 },
	{ 4095, 1, 0 },        { 4096, 0, 0 },           { 4096, 0x800, 0xf00 },
	{ 4097, 0xfff, 3 },    { 8205, 0x123, 0xabc },   { 65536, 0, 0x1000 },
	{ 300000, 0x777, 0x10001 }, { 1u << 20, 0, 0 },
};

static enum vt_result memcpy_sizes(void)
{
	char why[200];

	vt_require("nop");
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t len = cases[i].len;
		uint8_t *s = src.va + cases[i].src_off, *t = dst.va + cases[i].dst_off;
		struct vdma_desc d;
		int st;

		fill_random(src.va, src.len, i + 1);
		memset(dst.va, CANARY, dst.len);
		vdma_desc_memcpy(&d, VDMA_NO_PASID, src.pa + cases[i].src_off,
				 dst.pa + cases[i].dst_off, len, comp_pa);
		st = run(&d);
		vdma_completion_describe(comp, why, sizeof(why));
		VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "memcpy %u bytes: %s", len, why);
		VT_CHECK(comp->bytes_done == len || comp->bytes_done == 0,
			 "memcpy %u bytes: bytes_done %llu", len, (unsigned long long)comp->bytes_done);
		VT_CHECK(!memcmp(s, t, len), "memcpy %u bytes (src +%#x, dst +%#x): data differs",
			 len, cases[i].src_off, cases[i].dst_off);
		VT_CHECK(vt_first_not(dst.va, cases[i].dst_off, CANARY) < 0 &&
				 vt_first_not(t + len, dst.len - cases[i].dst_off - len, CANARY) < 0,
			 "memcpy %u bytes wrote outside its destination", len);
	}
	ktap_diag("%zu sizes from 1 byte to 1 MiB", sizeof(cases) / sizeof(cases[0]));
	return VT_PASS;
}

static enum vt_result fill_sizes(void)
{
	const uint64_t pattern = 0x0123456789abcdefull;
	char why[200];

	vt_require("nop");
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t len = cases[i].len, off = cases[i].dst_off;
		struct vdma_desc d;
		int st;

		memset(dst.va, CANARY, dst.len);
		vdma_desc_fill(&d, VDMA_NO_PASID, dst.pa + off, len, pattern, comp_pa);
		st = run(&d);
		vdma_completion_describe(comp, why, sizeof(why));
		VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "fill %u bytes: %s", len, why);
		for (uint32_t b = 0; b < len; b++) {
			uint8_t want = (uint8_t)(pattern >> (8 * (b % 8)));

			VT_CHECK(dst.va[off + b] == want, "fill %u bytes at +%#x: byte %u is %#x, want %#x",
				 len, off, b, dst.va[off + b], want);
		}
		VT_CHECK(vt_first_not(dst.va, off, CANARY) < 0 &&
				 vt_first_not(dst.va + off + len, dst.len - off - len, CANARY) < 0,
			 "fill %u bytes wrote outside its destination", len);
	}
	return VT_PASS;
}

static enum vt_result compare_equal_and_different(void)
{
	static const uint32_t lens[] = { 1, 4096, 4097, 65536 + 7 };
	struct vdma_desc d;
	int st;

	vt_require("nop");
	for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		uint32_t len = lens[i], where = len / 2;

		fill_random(src.va, len + 0x900, 77 + i);
		memcpy(dst.va + 0x300, src.va + 0x900, len);
		vdma_desc_compare(&d, VDMA_NO_PASID, src.pa + 0x900, dst.pa + 0x300, len, comp_pa);
		st = run(&d);
		VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "compare %u: status %d", len, st);
		VT_CHECK(comp->result == 0, "compare %u equal bytes: result %u", len, comp->result);

		dst.va[0x300 + where] ^= 0x40;
		st = run(&d);
		VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "compare %u: status %d", len, st);
		VT_CHECK(comp->result == 1, "compare %u bytes differing at %u: result %u", len, where,
			 comp->result);
		VT_CHECK(comp->bytes_done == where, "first difference reported at %llu, is at %u",
			 (unsigned long long)comp->bytes_done, where);
	}
	return VT_PASS;
}

/* More descriptors than the ring holds, submitted as fast as there is room. */
static enum vt_result ring_wraps(void)
{
	enum { N = RING_ENTRIES * 3 + 5 };
	volatile struct vdma_completion *recs;
	uint64_t recs_pa;
	uint32_t before;

	vt_require("nop");
	recs = vt_dmapool_alloc(&pool, N * sizeof(*recs), 64, &recs_pa);
	VT_CHECK(recs, "records: %s", vt_err());
	memset(dst.va, 0, N * 64);
	before = vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED);
	for (unsigned i = 0; i < N; i++) {
		struct vdma_desc d;

		vdma_desc_fill(&d, VDMA_NO_PASID, dst.pa + i * 64, 64, 0x0101010101010101ull * (i + 1),
			       recs_pa + i * sizeof(*recs));
		VT_CALL(vdma_submit(&dev, 0, &d), "submit");
	}
	for (unsigned i = 0; i < N; i++) {
		int st = vdma_wait(&dev, 0, &recs[i], 20000);

		VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "descriptor %u: %d (%s)", i, st, vt_err());
		VT_CHECK(dst.va[i * 64] == (uint8_t)(i + 1) && dst.va[i * 64 + 63] == (uint8_t)(i + 1),
			 "descriptor %u filled %#x", i, dst.va[i * 64]);
	}
	VT_CHECK(vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED) == before + N, "COMPLETED %u, want %u",
		 vdma_qread(&dev, 0, VDMA_QUEUE_REG_COMPLETED), before + N);
	return VT_PASS;
}

static enum vt_result invalid_descriptor(void)
{
	struct vdma_desc d;
	int st;

	vt_require("nop");
	memset(dst.va, CANARY, 4096);
	vdma_desc_fill(&d, VDMA_NO_PASID, dst.pa, VDMA_MAX_LENGTH + 1, 0, comp_pa);
	st = run(&d);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_INVALID_DESC, "over-long fill: status %d (%s)", st,
		 vdma_status_name(st));
	d.opcode = 0x7f;
	d.length = 64;
	st = run(&d);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_INVALID_DESC, "unknown opcode: status %d", st);
	VT_CHECK(vt_first_not(dst.va, 4096, CANARY) < 0, "an invalid descriptor wrote memory");
	vdma_desc_nop(&d, VDMA_NO_PASID, comp_pa);
	VT_CHECK(run(&d) == VDMA_COMPLETION_STATUS_SUCCESS, "the queue does not work afterwards");
	return VT_PASS;
}

static enum vt_result unmapped_address(void)
{
	struct vdma_desc d;
	char why[200];
	int st;

	vt_require("nop");
	vdma_desc_fill(&d, VDMA_NO_PASID, UNMAPPED_GPA + 0x40, 64, 0, comp_pa);
	st = run(&d);
	vdma_completion_describe(comp, why, sizeof(why));
	VT_CHECK(st == VDMA_COMPLETION_STATUS_PAGE_FAULT, "fill of an unmapped GPA: %s", why);
	VT_CHECK(comp->fault_addr >> 12 == (UNMAPPED_GPA + 0x40) >> 12, "fault_addr: %s", why);
	VT_CHECK(comp->fault_info & VDMA_FAULT_INFO_WRITE, "a fill is a write: %s", why);
	VT_CHECK(comp->fault_info & VDMA_FAULT_INFO_STAGE2, "no vIOMMU: a stage-2 fault: %s", why);
	vdma_desc_memcpy(&d, VDMA_NO_PASID, src.pa, dst.pa, 64, comp_pa);
	VT_CHECK(run(&d) == VDMA_COMPLETION_STATUS_SUCCESS, "the queue does not work afterwards");
	return VT_PASS;
}

/*
 * DMA memory fails loudly without root: a child that drops to uid 65534
 * cannot allocate (euid check) nor read a PFN from pagemap (it reads 0).
 */
static enum vt_result dma_memory_needs_root(void)
{
	int status;
	pid_t pid = fork();

	VT_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct vt_dmabuf b;
		static char page[4096] __attribute__((aligned(4096)));
		int code = 0;

		page[0] = 1;
		if (setgid(65534) || setuid(65534))
			_exit(10);
		/* As a process started by that user: changing uid made it non-dumpable,
		 * which would hide /proc/self/pagemap altogether. */
		prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
		if (vt_dmabuf_alloc(&b, 4096) != -EPERM || !strstr(vt_err(), "need root")) {
			ktap_diag("as uid 65534, vt_dmabuf_alloc: %s", vt_err());
			code |= 1;
		}
		if (vt_virt_to_phys(page) != 0 || !strstr(vt_err(), "PFN reads 0")) {
			ktap_diag("as uid 65534, vt_virt_to_phys: %s", vt_err());
			code |= 2;
		}
		fflush(stdout);
		_exit(code);
	}
	VT_CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status), "child did not exit");
	VT_CHECK(WEXITSTATUS(status) != 10, "could not drop to uid 65534");
	VT_CHECK(!(WEXITSTATUS(status) & 1), "a DMA buffer was allocated without root");
	VT_CHECK(!(WEXITSTATUS(status) & 2), "pagemap gave a PFN without CAP_SYS_ADMIN, or no "
		 "clear error");
	return VT_PASS;
}

VUSER_CASES(find_device, open_device, nop, memcpy_sizes, fill_sizes, compare_equal_and_different,
	    ring_wraps, invalid_descriptor, unmapped_address, dma_memory_needs_root)
