/* kernel_isolation: after dma_unmap_single the device is blocked, and the
 * guest kernel's own DMAR fault handler reports it.
 *
 * Kernel-owned guest (tests/guest/guest_tests.toml: iommu = "kernel"). The
 * vuser_dma driver maps a page with the DMA API, has the device FILL it
 * (which works and leaves the translation in the IOMMU's caches), unmaps it
 * and, once the unmap has taken effect, has the device FILL the same IOVA
 * again (VUSER_DMA_IOC_STALE). In a strict domain the unmap itself
 * invalidates; in the default lazy domain the invalidation waits in the
 * flush queue, so the second FILL is sent after the queue's timer (10 ms
 * in 6.1) has flushed it: 50 ms later.
 *
 *   setup              dmar0 owns the vuser-dma, the driver is loaded;
 *   mapped_fill_lands  the first FILL: SUCCESS, every byte of the page;
 *   unmapped_blocked   the second FILL: PAGE_FAULT at the IOVA, not one byte
 *                      of the page changed;
 *   kernel_logs_fault  the intel_iommu fault handler's line in the kernel
 *                      log: a write, no PASID, from the vuser-dma's BDF, at
 *                      the IOVA's page, reason 0x71 (SM: first-level entry
 *                      not present), and the dmar0 fault interrupt counted;
 *   device_still_works a DMA-API copy afterwards.
 */
#include <stdlib.h>

#include "lib/vuser.h"

#define PATTERN 0x5aa5c33c0ff0e11eull
#define FL_NOT_PRESENT 0x71      /* VT-d SM fault reason: first-level PTE P clear */

static int fd = -1;
static struct vt_pci pci;
static uint16_t sid;
static struct vt_kmsg kmsg = { .fd = -1 };
static struct vuser_dma_stale st;
static long irqs_before;

static enum vt_result setup(void)
{
	struct vuser_dma_info info;
	char type[32];

	VT_CALL(vt_kmsg_open(&kmsg), "the kernel log");
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vt_pci_bdf_sid(&pci, &sid), "BDF");
	VT_CALL(vt_pci_iommu_group_type(&pci, type, sizeof(type)), "IOMMU group");
	VT_CALL(vdma_kmod_open(0, &fd), "load the driver");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("%s (source-id %#x): group type %s, domain %s", pci.bdf, sid, type,
		  vdma_kmod_domain_name(info.domain));
	VT_CHECK(info.domain == VUSER_DMA_DOMAIN_DMA || info.domain == VUSER_DMA_DOMAIN_DMA_FQ,
		 "domain %s: not translated by the kernel's IOMMU", vdma_kmod_domain_name(info.domain));
	irqs_before = vt_irq_count("dmar0");
	VT_CHECK(irqs_before >= 0, "no dmar0 fault interrupt in /proc/interrupts");
	return VT_PASS;
}

static enum vt_result mapped_fill_lands(void)
{
	unsigned waited;

	vt_require("setup");
	VT_CALL(vt_dmar_log_ready(&waited), "the fault log's ratelimit");
	if (waited)
		ktap_diag("waited %u ms for the kernel's fault log ratelimit (faults of earlier "
			  "programs)", waited);
	memset(&st, 0, sizeof(st));
	st.pattern = PATTERN;
	st.delay_ms = 50;        /* longer than the flush queue's 10 ms timer */
	st.timeout_ms = 20000;
	VT_CALL(vdma_kmod_stale(fd, &st), "map, FILL, unmap, FILL again");
	ktap_diag("page phys %#llx at IOVA %#llx: FILL while mapped %s",
		  (unsigned long long)st.phys, (unsigned long long)st.iova,
		  vdma_status_name(st.first_status));
	VT_CHECK(st.first_status == VDMA_COMPLETION_STATUS_SUCCESS, "first FILL: status %u (%s)",
		 st.first_status, vdma_status_name(st.first_status));
	return VT_PASS;
}

static enum vt_result unmapped_blocked(void)
{
	vt_require("mapped_fill_lands");
	ktap_diag("FILL 50 ms after dma_unmap_single: %s, fault_addr %#llx, bytes_done %llu, "
		  "%llu byte(s) of the page overwritten", vdma_status_name(st.status),
		  (unsigned long long)st.fault_addr, (unsigned long long)st.bytes_done,
		  (unsigned long long)st.landed);
	VT_CHECK(st.status == VDMA_COMPLETION_STATUS_PAGE_FAULT, "status %u (%s), want PAGE_FAULT",
		 st.status, vdma_status_name(st.status));
	VT_CHECK(st.fault_addr >> 12 == st.iova >> 12, "fault_addr %#llx is not in the IOVA's page",
		 (unsigned long long)st.fault_addr);
	VT_CHECK(st.landed == 0 && st.bytes_done == 0, "%llu byte(s) landed after the unmap",
		 (unsigned long long)st.landed);
	return VT_PASS;
}

static enum vt_result kernel_logs_fault(void)
{
	struct vt_dmar_fault f;
	char msg[512];
	long irqs;

	vt_require("unmapped_blocked");
	VT_CALL(vt_kmsg_find(&kmsg, "DMAR: [DMA ", msg, sizeof(msg), 5000),
		"the DMAR fault line (the fault interrupt must reach the kernel)");
	ktap_diag("kernel log: %s", msg);
	VT_CHECK(vt_dmar_fault_parse(msg, &f) == 0, "not a DMAR fault line: %s", msg);
	VT_CHECK(f.write, "logged as a read");
	VT_CHECK(!f.has_pasid, "logged with PASID %#x, want NO_PASID", f.pasid);
	VT_CHECK((f.bus << 8 | f.dev << 3 | f.fn) == sid, "source %02x:%02x.%u, want %s", f.bus,
		 f.dev, f.fn, pci.bdf);
	VT_CHECK(f.addr >> 12 == st.iova >> 12, "fault addr %#llx, want IOVA page %#llx",
		 (unsigned long long)f.addr, (unsigned long long)(st.iova & ~0xfffull));
	VT_CHECK(f.reason == FL_NOT_PRESENT, "fault reason %#x (%s), want %#x", f.reason, f.text,
		 FL_NOT_PRESENT);
	irqs = vt_irq_count("dmar0");
	ktap_diag("dmar0 fault interrupts: %ld before, %ld after", irqs_before, irqs);
	VT_CHECK(irqs > irqs_before, "the dmar0 fault interrupt count did not rise");
	return VT_PASS;
}

static enum vt_result device_still_works(void)
{
	uint8_t src[512], dst[512];
	struct vuser_dma_memcpy m = { 0 };

	vt_require("setup");
	for (unsigned i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 3 + 1);
	memset(dst, 0, sizeof(dst));
	m.src = (uintptr_t)src;
	m.dst = (uintptr_t)dst;
	m.len = sizeof(src);
	m.timeout_ms = 20000;
	VT_CALL(vdma_kmod_memcpy(fd, &m), "memcpy");
	VT_CHECK(m.status == VDMA_COMPLETION_STATUS_SUCCESS, "status %u", m.status);
	VT_CHECK(!memcmp(src, dst, sizeof(src)), "the copy differs");
	return VT_PASS;
}

VUSER_CASES(setup, mapped_fill_lands, unmapped_blocked, kernel_logs_fault, device_still_works)
