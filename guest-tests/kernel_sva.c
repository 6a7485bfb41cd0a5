/* kernel_sva: shared virtual addressing with I/O page faults, through the
 * guest kernel's own intel_iommu. It runs twice: on Debian 12's 6.1 kernel
 * ([kernel_sva]) and on Debian sid's 7.x kernel ([kernel_sva_sid] in
 * tests/guest/guest_tests.toml), which allows SVA on x86. On 7.x (6.16+) there
 * are no device features: the bind is iommu_sva_bind_device(dev, mm) and the
 * IOMMU driver enables IOPF when the SVA domain attaches.
 *
 * Kernel-owned guest (iommu = "kernel"). The process opens /dev/vuser_dma0
 * and binds its mm (VUSER_DMA_IOC_SVA_BIND: IOMMU_DEV_FEAT_IOPF, then
 * IOMMU_DEV_FEAT_SVA, iommu_sva_bind_device(dev, current->mm, NULL),
 * iommu_sva_get_pasid()). The kernel points that PASID's first-stage table at
 * the process's own page table (5 levels when the CPU runs with LA57). The
 * device then copies between mmap'ed buffers at their virtual addresses,
 * tagged with the PASID, with block-on-fault. PRI was enabled on the device
 * by the IOMMU driver when it attached the device (6.1
 * iommu_enable_pci_caps; vuser_dma only reports it).
 *
 *   setup                   the driver, PASID/ATS/PRI on, dmar0-prq present;
 *   page_request_answered   the page request path, with what 6.1 accepts
 *                           without SVA: a DMA-API FILL with block-on-fault
 *                           at an unmapped IOVA (no PASID) becomes a page
 *                           request in the vIOMMU's PRQ; its interrupt runs
 *                           the kernel's prq_event_thread, which refuses a
 *                           request without PASID ("Page request without
 *                           PASID") and answers INVALID with a page group
 *                           response (6.13+: the IOPF core answers it, with
 *                           no log line); the descriptor ends PAGE_FAULT;
 *   unbound_pasid_blocked   a PASID the kernel never bound: PAGE_FAULT, nothing
 *                           written, the kernel's DMAR fault line names that
 *                           PASID and the device (no SVA needed);
 *   features                IOMMU_DEV_FEAT_IOPF and IOMMU_DEV_FEAT_SVA are
 *                           accepted (the unit and the device meet 6.1's
 *                           checks: PASID, ATS, PRI, FS5LP, the PRQ);
 *   bind                    the mm is bound, a PASID is given. Debian's
 *                           6.1 kernels since 6.1.164 refuse every bind on
 *                           x86 (iommu_sva_bind_device returns -EOPNOTSUPP
 *                           under CONFIG_X86: the fix for CVE-2025-71089),
 *                           so there this case and those that need a bound
 *                           mm are TODO with that reason; on sid's 7.x they
 *                           run;
 *   copy_faults_pages_in    the destination was never touched (its pages are
 *                           not present, checked in /proc/self/pagemap): the
 *                           first write faults, the page request goes through
 *                           the vIOMMU's PRQ and its interrupt to the kernel's
 *                           handler (dmar0-prq counts it), which faults the
 *                           pages in and answers with a page group response;
 *                           the descriptor completes and the bytes are right;
 *   copy_again_no_requests  the same copy again: pages present, no request;
 *   unbind_while_queued     descriptors queued while the device is stopped,
 *                           the mm unbound, the device started: each ends
 *                           PAGE_FAULT (the PASID is gone), none hangs, not a
 *                           byte is written;
 *   rebind                  bound again, the mm keeps its PASID, a copy works.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/utsname.h>

#include "lib/vuser.h"

#define LEN (256u << 10)         /* 64 pages, mmapped fresh for each copy test */
#define NEVER_BOUND 0x777u

static int fd = -1;
static struct vuser_dma_info info;
static struct vt_pci pci;
static uint16_t sid;
static uint32_t pasid;
static struct vt_kmsg kmsg = { .fd = -1 };
static struct vuser_dma_sva_bind bound;
static int bind_errno;

/* The cases that need a bound mm: skipped where the kernel refuses SVA. */
#define require_bind()                                                                  \
	do {                                                                            \
		if (vt_result_of("bind") == VT_SKIP)                                    \
			VT_SKIP_BECAUSE("needs an mm bound with SVA, which this guest "     \
					"kernel refuses (see case bind)");                  \
		vt_require("bind");                                                     \
	} while (0)

/* 5 when the kernel runs with LA57: only then does a hint above 2^47 stick. */
static int paging_levels(void)
{
	void *p = mmap((void *)(1ull << 52), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int five = p != MAP_FAILED && (uintptr_t)p >= (1ull << 47);

	if (p != MAP_FAILED)
		munmap(p, 4096);
	return five ? 5 : 4;
}

static enum vt_result setup(void)
{
	VT_CALL(vt_kmsg_open(&kmsg), "the kernel log");
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vt_pci_bdf_sid(&pci, &sid), "BDF");
	VT_CALL(vdma_kmod_open(0, &fd), "load the driver");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("domain %s; PASID %s (%s), ATS %s, PRI %s", vdma_kmod_domain_name(info.domain),
		  info.pasid_enabled ? "on" : "off",
		  info.pasid_owner == VUSER_DMA_OWNER_IOMMU ? "by the IOMMU driver" : "not by it",
		  info.ats_enabled ? "on" : "off", info.pri_enabled ? "on" : "off");
	VT_CHECK(info.pasid_owner == VUSER_DMA_OWNER_IOMMU, "PASID not enabled by the IOMMU driver");
	VT_CHECK(info.ats_enabled && info.pri_enabled,
		 "6.1's intel_iommu enables SVA only with ATS and PRI on (ATS %u, PRI %u)",
		 info.ats_enabled, info.pri_enabled);
	VT_CHECK(vt_irq_count("dmar0-prq") >= 0, "no dmar0-prq interrupt: the driver set up no "
		 "page request queue");
	ktap_diag("process page tables: %d levels", paging_levels());
	return VT_PASS;
}

/*
 * Up to 6.12 intel_iommu's prq_event_thread answered a page request without
 * PASID itself (INVALID, with "Page request without PASID" and "Invalid page
 * request" in the log); 6.13's prq.c dropped that check.
 */
static int prq_handler_rejects_no_pasid(void)
{
	struct utsname u;
	unsigned major = 0, minor = 0;

	if (uname(&u) || sscanf(u.release, "%u.%u", &major, &minor) != 2)
		return 1;
	return major < 6 || (major == 6 && minor < 13);
}

static enum vt_result page_request_answered(void)
{
	struct vuser_dma_stale st = { 0 };
	long prq_before, prq_after;
	char msg[512];

	vt_require("setup");
	prq_before = vt_irq_count("dmar0-prq");
	st.pattern = 0x1122334455667788ull;
	st.flags = VUSER_DMA_STALE_BLOCK_ON_FAULT;
	st.delay_ms = 50;        /* past the flush queue's timer: the IOVA is unmapped */
	st.timeout_ms = 30000;
	VT_CALL(vdma_kmod_stale(fd, &st), "map, FILL, unmap, FILL with block-on-fault");
	prq_after = vt_irq_count("dmar0-prq");
	ktap_diag("FILL with block-on-fault at unmapped IOVA %#llx: %s; dmar0-prq interrupts "
		  "%ld -> %ld", (unsigned long long)st.iova, vdma_status_name(st.status),
		  prq_before, prq_after);
	VT_CHECK(st.status == VDMA_COMPLETION_STATUS_PAGE_FAULT && st.landed == 0,
		 "status %s, %llu bytes landed", vdma_status_name(st.status),
		 (unsigned long long)st.landed);
	VT_CHECK(prq_after > prq_before, "the page request interrupt did not reach the kernel");
	if (!prq_handler_rejects_no_pasid()) {
		/*
		 * The kernel's IOPF code takes no-PASID requests: with no fault
		 * handler on the DMA domain it answers INVALID without a log line.
		 * The descriptor's PAGE_FAULT (not a timeout) is that answer.
		 */
		ktap_diag("no-PASID request answered by the IOPF core (no log line on this kernel)");
		return VT_PASS;
	}
	VT_CALL(vt_kmsg_find(&kmsg, "Page request without PASID", msg, sizeof(msg), 5000),
		"the kernel's page request handler");
	ktap_diag("kernel log: %s", msg);
	VT_CALL(vt_kmsg_find(&kmsg, "Invalid page request", msg, sizeof(msg), 5000),
		"the kernel's INVALID answer");
	ktap_diag("kernel log: %s", msg);
	return VT_PASS;
}

static enum vt_result features(void)
{
	vt_require("setup");
	bind_errno = vdma_kmod_sva_bind(fd, &bound);
	ktap_diag("IOMMU_DEV_FEAT_IOPF %s, IOMMU_DEV_FEAT_SVA %s",
		  bound.features & VUSER_DMA_FEAT_IOPF ? "enabled" : "refused",
		  bound.features & VUSER_DMA_FEAT_SVA ? "enabled" : "refused");
	VT_CHECK((bound.features & (VUSER_DMA_FEAT_IOPF | VUSER_DMA_FEAT_SVA)) ==
		 (VUSER_DMA_FEAT_IOPF | VUSER_DMA_FEAT_SVA), "%s", vt_err());
	return VT_PASS;
}

static enum vt_result bind(void)
{
	vt_require("features");
	if (bind_errno == -EOPNOTSUPP)
		/* at most 159 characters (the runner's reason buffer) */
		VT_SKIP_BECAUSE("the guest kernel refuses SVA: iommu_sva_bind_device() is "
				"-EOPNOTSUPP on x86 (the CVE-2025-71089 fix, 6.1.164+ and 6.12); "
				"kernel_sva_sid runs these cases");
	VT_CHECK(bind_errno == 0, "SVA_BIND: %s (see the kernel log)", vt_err());
	pasid = bound.pasid;
	ktap_diag("pid %d's mm bound: PASID %#x", getpid(), pasid);
	VT_CHECK(pasid > 0 && pasid < (1u << 20), "PASID %#x", pasid);
	return VT_PASS;
}

static int sva_copy(uint32_t use_pasid, const void *src, void *dst, size_t len, unsigned flags,
		    struct vuser_dma_sva_copy *c)
{
	memset(c, 0, sizeof(*c));
	c->src = (uintptr_t)src;
	c->dst = (uintptr_t)dst;
	c->len = len;
	c->pasid = use_pasid;
	c->flags = flags;
	c->timeout_ms = 30000;
	return vdma_kmod_sva_copy(fd, c);
}

static uint8_t *src, *dst;

/* Index of the first byte where a and b differ; -1 if none. */
static long first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return (long)i;
	return -1;
}

static enum vt_result copy_faults_pages_in(void)
{
	struct vuser_dma_sva_copy c;
	long prq_before, prq_after;
	int present;

	require_bind();
	/* mmap, not malloc: malloc's chunk header would make dst's first page present */
	src = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	VT_CHECK(src != MAP_FAILED && dst != MAP_FAILED, "mmap: %s", strerror(errno));
	for (size_t i = 0; i < LEN; i++)
		src[i] = (uint8_t)(i * 31 + 7);
	present = vt_pages_present(dst, LEN);
	VT_CHECK(present >= 0, "%s", vt_err());
	ktap_diag("src %p (touched), dst %p: %d of %u pages present before the copy", (void *)src,
		  (void *)dst, present, LEN / VT_PAGE_SIZE);
	VT_CHECK(present == 0, "dst has %d present pages: it would not fault", present);
	prq_before = vt_irq_count("dmar0-prq");
	VT_CALL(sva_copy(0, src, dst, LEN, VUSER_DMA_SVA_BLOCK_ON_FAULT, &c), "SVA_COPY");
	prq_after = vt_irq_count("dmar0-prq");
	ktap_diag("MEMCPY tagged PASID %#x: %s, bytes_done %llu; dmar0-prq interrupts %ld -> %ld",
		  c.used_pasid, vdma_status_name(c.status), (unsigned long long)c.bytes_done,
		  prq_before, prq_after);
	VT_CHECK(c.status == VDMA_COMPLETION_STATUS_SUCCESS, "status %s, fault_addr %#llx",
		 vdma_status_name(c.status), (unsigned long long)c.fault_addr);
	VT_CHECK(prq_after > prq_before, "no page request interrupt reached the kernel");
	present = vt_pages_present(dst, LEN);
	ktap_diag("%d of %u dst pages present after the copy", present, LEN / VT_PAGE_SIZE);
	VT_CHECK(present == (int)(LEN / VT_PAGE_SIZE), "the kernel faulted in %d pages", present);
	VT_CHECK(first_diff(src, dst, LEN) < 0, "byte %ld differs",
		 first_diff(src, dst, LEN));
	return VT_PASS;
}

static enum vt_result copy_again_no_requests(void)
{
	struct vuser_dma_sva_copy c;
	long before;

	require_bind();
	vt_require("copy_faults_pages_in");
	for (size_t i = 0; i < LEN; i++)
		src[i] = (uint8_t)(i * 5 + 3);
	before = vt_irq_count("dmar0-prq");
	VT_CALL(sva_copy(0, src, dst, LEN, VUSER_DMA_SVA_BLOCK_ON_FAULT, &c), "SVA_COPY");
	VT_CHECK(c.status == VDMA_COMPLETION_STATUS_SUCCESS, "status %s",
		 vdma_status_name(c.status));
	VT_CHECK(vt_irq_count("dmar0-prq") == before, "page requests for present pages");
	VT_CHECK(first_diff(src, dst, LEN) < 0, "byte %ld differs",
		 first_diff(src, dst, LEN));
	return VT_PASS;
}

static enum vt_result unbound_pasid_blocked(void)
{
	struct vuser_dma_sva_copy c;
	struct vt_dmar_fault f;
	uint8_t *d = calloc(1, 8192);
	char msg[512];
	unsigned waited;
	long irqs;

	vt_require("setup");
	VT_CHECK(d, "calloc");
	VT_CALL(vt_dmar_log_ready(&waited), "the fault log's ratelimit");
	if (waited)
		ktap_diag("waited %u ms for the kernel's fault log ratelimit", waited);
	irqs = vt_irq_count("dmar0");
	VT_CALL(sva_copy(NEVER_BOUND, d + 4096, d, 4096, 0, &c), "SVA_COPY");
	ktap_diag("MEMCPY tagged PASID %#x (never bound): %s, fault_addr %#llx; dmar0 fault "
		  "interrupts %ld -> %ld", NEVER_BOUND, vdma_status_name(c.status),
		  (unsigned long long)c.fault_addr, irqs, vt_irq_count("dmar0"));
	VT_CHECK(c.status == VDMA_COMPLETION_STATUS_PAGE_FAULT, "status %s",
		 vdma_status_name(c.status));
	VT_CHECK(vt_first_not(d, 8192, 0) < 0, "bytes written through an unbound PASID");
	VT_CALL(vt_kmsg_find(&kmsg, "DMAR: [DMA ", msg, sizeof(msg), 5000), "the DMAR fault line");
	ktap_diag("kernel log: %s", msg);
	VT_CHECK(vt_dmar_fault_parse(msg, &f) == 0, "not a DMAR fault line");
	VT_CHECK(f.has_pasid && f.pasid == NEVER_BOUND, "logged PASID %s%#x, want %#x",
		 f.has_pasid ? "" : "none ", f.pasid, NEVER_BOUND);
	VT_CHECK((f.bus << 8 | f.dev << 3 | f.fn) == sid, "source %02x:%02x.%u, want %s", f.bus,
		 f.dev, f.fn, pci.bdf);
	/* No PASID table covers 0x777 (reason 0x51, directory entry not present), or
	 * one does but has no entry for it: either way the PASID's own entry is missing. */
	VT_CHECK(strstr(f.text, "Directory Entry is clear") || strstr(f.text, "PASID"),
		 "reason %#x (%s): not a missing PASID entry", f.reason, f.text);
	free(d);
	return VT_PASS;
}

static enum vt_result unbind_while_queued(void)
{
	struct vuser_dma_sva_unbind_queued u = { 0 };
	const unsigned n = 4, len = 8192;
	uint8_t *d = calloc(1, n * len);  /* malloc may hand back a used chunk */
	int present;

	require_bind();
	VT_CHECK(d && src, "buffers");
	u.src = (uintptr_t)src;
	u.dst = (uintptr_t)d;
	u.len = len;
	u.count = n;
	u.timeout_ms = 30000;
	VT_CALL(vdma_kmod_sva_unbind_queued(fd, &u), "SVA_UNBIND_QUEUED");
	ktap_diag("%u MEMCPYs queued, mm unbound (%u), device started: statuses %s %s %s %s", n,
		  u.unbound, vdma_status_name(u.statuses[0]), vdma_status_name(u.statuses[1]),
		  vdma_status_name(u.statuses[2]), vdma_status_name(u.statuses[3]));
	VT_CHECK(u.unbound, "the driver did not unbind");
	for (unsigned i = 0; i < n; i++)
		VT_CHECK(u.statuses[i] == VDMA_COMPLETION_STATUS_PAGE_FAULT,
			 "descriptor %u: %s, want PAGE_FAULT", i, vdma_status_name(u.statuses[i]));
	present = vt_pages_present(d, n * len);
	VT_CHECK(present >= 0, "%s", vt_err());
	VT_CHECK(present == 0 || vt_first_not(d, n * len, 0) < 0,
		 "a byte was written after the unbind");
	ktap_diag("destination: %d pages present, nothing written", present);
	pasid = 0;
	free(d);
	return VT_PASS;
}

static enum vt_result rebind(void)
{
	struct vuser_dma_sva_copy c;
	struct vuser_dma_sva_bind again;
	uint8_t *s2 = malloc(LEN), *d2 = malloc(LEN);

	require_bind();
	vt_require("unbind_while_queued");
	VT_CHECK(s2 && d2, "malloc");
	VT_CALL(vdma_kmod_sva_bind(fd, &again), "SVA_BIND again");
	ktap_diag("bound again: PASID %#x (first bind: %#x)", again.pasid, bound.pasid);
	VT_CHECK(again.pasid == bound.pasid, "the mm's PASID changed");
	memset(s2, 0x3c, LEN);
	VT_CALL(sva_copy(0, s2, d2, LEN, VUSER_DMA_SVA_BLOCK_ON_FAULT, &c), "SVA_COPY");
	VT_CHECK(c.status == VDMA_COMPLETION_STATUS_SUCCESS, "status %s",
		 vdma_status_name(c.status));
	VT_CHECK(vt_first_not(d2, LEN, 0x3c) < 0, "the copy differs");
	VT_CALL(vdma_kmod_sva_unbind(fd), "SVA_UNBIND");
	free(s2);
	free(d2);
	return VT_PASS;
}

VUSER_CASES(setup, page_request_answered, unbound_pasid_blocked, features, bind,
	    copy_faults_pages_in, copy_again_no_requests, unbind_while_queued, rebind)
