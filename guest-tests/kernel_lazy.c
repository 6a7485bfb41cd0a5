/* kernel_lazy: the DMA API's two invalidation policies, from the device's side.
 *
 * The guest kernel's intel_iommu owns vuser-iommu (iommu = "kernel"); the
 * unit has caching mode off (CAP.CM=0, as hardware), so the 6.1 driver
 * follows the IOMMU core's policy: lazy by default (the group type is
 * DMA-FQ: an unmap clears the PTEs at once but queues the IOTLB and
 * device-TLB invalidation in a flush queue, flushed as one "everything"
 * invalidation by a 10 ms timer or when the queue fills), strict with
 * iommu.strict=1 (DMA: each unmap invalidates its range before it returns).
 * kernel_strict.c is this program built for the strict boot.
 *
 *   setup                 the policy the kernel chose is the one this boot asked for;
 *   map_copy_unmap_loop   LOOP copies through dma_map_single / dma_unmap_single,
 *                         between "loop: begin" and "loop: end" lines, with a
 *                         pause at each so the host side can read the model's
 *                         invalidation counters there
 *                         (tests/guest/test_kernel_host.py compares the boots);
 *   unmap_then_dma        a page is mapped, FILLed (the translation is now
 *                         cached), unmapped, and FILLed again at once, with
 *                         softirqs off so the flush-queue timer cannot run in
 *                         between. Strict: blocked (PAGE_FAULT, the page
 *                         untouched). Lazy: the second FILL lands in the page
 *                         through the stale translation: the window lazy mode
 *                         accepts, expected, not a bug;
 *   blocked_after_flush   the same with 50 ms between unmap and FILL: the
 *                         flush queue has flushed, both modes block.
 */
#include <stdlib.h>
#include <time.h>

#include "lib/vuser.h"

#ifndef KERNEL_STRICT
#define KERNEL_STRICT 0
#endif
#define LOOP 64
#define PATTERN 0x0123456789abcdefull

static int fd = -1;
static struct vuser_dma_info info;

static enum vt_result setup(void)
{
	struct vt_pci pci;
	char type[32], cmdline[1024];
	int strict_arg;

	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CHECK(vt_read_file("/proc/cmdline", cmdline, sizeof(cmdline)) > 0, "/proc/cmdline");
	strict_arg = strstr(cmdline, "iommu.strict=1") != NULL;
	VT_CHECK(strict_arg == KERNEL_STRICT, "this boot %s iommu.strict=1; the program is built "
		 "for the %s policy", strict_arg ? "has" : "lacks", KERNEL_STRICT ? "strict" : "lazy");
	VT_CALL(vt_pci_iommu_group_type(&pci, type, sizeof(type)), "IOMMU group");
	VT_CALL(vdma_kmod_open(0, &fd), "load the driver");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("iommu.strict=1 %s; group type %s, domain %s", strict_arg ? "given" : "not given",
		  type, vdma_kmod_domain_name(info.domain));
	VT_CHECK(!strcmp(type, KERNEL_STRICT ? "DMA" : "DMA-FQ"), "group type %s, want %s", type,
		 KERNEL_STRICT ? "DMA" : "DMA-FQ");
	VT_CHECK(info.domain == (KERNEL_STRICT ? VUSER_DMA_DOMAIN_DMA : VUSER_DMA_DOMAIN_DMA_FQ),
		 "the driver sees domain %s", vdma_kmod_domain_name(info.domain));
	return VT_PASS;
}

static enum vt_result map_copy_unmap_loop(void)
{
	static uint8_t src[4096], dst[4096];
	struct vuser_dma_memcpy m;

	vt_require("setup");
	ktap_diag("loop: begin");
	fflush(stdout);
	sleep(1);                /* the host reads the counters here */
	for (unsigned i = 0; i < LOOP; i++) {
		for (unsigned b = 0; b < sizeof(src); b++)
			src[b] = (uint8_t)(b + i * 7);
		memset(dst, 0, sizeof(dst));
		memset(&m, 0, sizeof(m));
		m.src = (uintptr_t)src;
		m.dst = (uintptr_t)dst;
		m.len = sizeof(src);
		m.timeout_ms = 20000;
		VT_CHECK(vdma_kmod_memcpy(fd, &m) == 0, "copy %u: %s", i, vt_err());
		VT_CHECK(m.status == VDMA_COMPLETION_STATUS_SUCCESS, "copy %u: status %u (%s)", i,
			 m.status, vdma_status_name(m.status));
		VT_CHECK(!memcmp(src, dst, sizeof(src)), "copy %u differs", i);
	}
	ktap_diag("loop: end, %u copies, %u dma_unmap_single", LOOP, 2 * LOOP);
	fflush(stdout);
	sleep(1);                /* and here */
	return VT_PASS;
}

static int stale(unsigned flags, unsigned delay_ms, struct vuser_dma_stale *st)
{
	memset(st, 0, sizeof(*st));
	st->pattern = PATTERN;
	st->flags = flags;
	st->delay_ms = delay_ms;
	st->timeout_ms = 20000;
	return vdma_kmod_stale(fd, st);
}

static enum vt_result unmap_then_dma(void)
{
	struct vuser_dma_stale st;

	vt_require("setup");
	VT_CALL(stale(VUSER_DMA_STALE_NO_SOFTIRQ, 0, &st), "map, FILL, unmap, FILL at once");
	if (st.cpus != 1)
		VT_SKIP_BECAUSE("%u CPUs: with softirqs off on this CPU only, the flush-queue timer "
				"could still run on another", st.cpus);
	VT_CHECK(st.first_status == VDMA_COMPLETION_STATUS_SUCCESS, "FILL while mapped: %s",
		 vdma_status_name(st.first_status));
	ktap_diag("IOVA %#llx (phys %#llx): FILL right after dma_unmap_single: %s, %llu of 4096 "
		  "bytes landed", (unsigned long long)st.iova, (unsigned long long)st.phys,
		  vdma_status_name(st.status), (unsigned long long)st.landed);
	if (KERNEL_STRICT) {
		VT_CHECK(st.status == VDMA_COMPLETION_STATUS_PAGE_FAULT,
			 "strict: the unmap did not block the IOVA (status %s)",
			 vdma_status_name(st.status));
		VT_CHECK(st.landed == 0, "strict: %llu bytes landed after the unmap",
			 (unsigned long long)st.landed);
	} else {
		ktap_diag("lazy: the invalidation still waits in the flush queue, so the device "
			  "may use the old translation: the window lazy mode accepts");
		VT_CHECK(st.status == VDMA_COMPLETION_STATUS_SUCCESS && st.landed == 4096,
			 "lazy: the stale translation was not used (status %s, %llu bytes): was the "
			 "invalidation not deferred?", vdma_status_name(st.status),
			 (unsigned long long)st.landed);
	}
	return VT_PASS;
}

static enum vt_result blocked_after_flush(void)
{
	struct vuser_dma_stale st;

	vt_require("setup");
	VT_CALL(stale(0, 50, &st), "map, FILL, unmap, 50 ms, FILL");
	ktap_diag("FILL 50 ms after dma_unmap_single: %s, %llu bytes landed",
		  vdma_status_name(st.status), (unsigned long long)st.landed);
	VT_CHECK(st.status == VDMA_COMPLETION_STATUS_PAGE_FAULT && st.landed == 0,
		 "status %s, %llu bytes landed: the flush %s did not invalidate",
		 vdma_status_name(st.status), (unsigned long long)st.landed,
		 KERNEL_STRICT ? "at unmap" : "queue's timer");
	return VT_PASS;
}

VUSER_CASES(setup, map_copy_unmap_loop, unmap_then_dma, blocked_after_flush)
