/* demo_kernel: `make run`'s second story: the guest kernel owns the vIOMMU.
 *
 * Here no userspace code programs vuser-iommu: the Debian kernel's stock
 * intel_iommu driver found it through the DMAR table the launcher passed
 * (its register base is vuser-iommu's BAR0), runs it as dmar0 and builds
 * every table itself. Each step is told in KTAP diagnostics ("# ..."), like
 * demo.c, and is a case:
 *
 *   the_unit         dmar0: its registers (vuser-iommu's BAR0), CAP/ECAP;
 *                    the vuser-dma in an IOMMU group with a DMA domain;
 *   dma_api_copy     vuser_dma.ko copies a page through dma_map_single: the
 *                    device only ever sees IOVAs, vuser translates them with
 *                    the first-stage table the kernel built for the device's
 *                    requests without PASID (RID_PASID). Where did the bytes
 *                    land? At the guest physical page behind the dst IOVA;
 *   after_unmap      the same IOVA after dma_unmap_single (and the flush):
 *                    blocked, and the kernel's own DMAR fault handler says so;
 *   sva_bind         a process binds its own address space (SVA, 6.1 API);
 *   sva_copy         the device copies between two fresh buffers at
 *                    their virtual addresses, tagged with the process's
 *                    PASID: the first-stage table is the process's page
 *                    table, the untouched destination faults and the kernel
 *                    pages it in on the device's page requests. Debian's
 *                    6.1 kernels since 6.1.164 and trixie's 6.12 refuse SVA
 *                    on x86 (CVE-2025-71089), so on those these two steps
 *                    say so and skip;
 *   what_went_where  the requests side by side.
 */
#include <stdlib.h>
#include <sys/mman.h>

#include "lib/vuser.h"

#define PG VT_PAGE_SIZE
#define TEXT_DMA "copied by vuser-dma through the kernel's DMA API -- "
#define TEXT_SVA "copied by vuser-dma at this process's virtual addresses -- "

static int fd = -1;
static struct vt_pci dma_pci;
static struct vuser_dma_info info;
static struct vt_kmsg kmsg = { .fd = -1 };
static struct vuser_dma_sva_bind bound;
static int bind_ret;

struct row {
	int done;
	char line[200];
};
static struct row told[3];

static void tell(int i, const char *who, const char *given, const char *landed, const char *how)
{
	snprintf(told[i].line, sizeof(told[i].line), "%-16s %-22s %-26s %s", who, given, landed,
		 how);
	told[i].done = 1;
}

static void fill_text(uint8_t *p, size_t len, const char *text)
{
	size_t n = strlen(text);

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)text[i % n];
}

static const char *peek(const uint8_t *p)
{
	static char buf[2][32];
	static int turn;
	char *s = buf[turn++ % 2];

	for (int i = 0; i < 24; i++)
		s[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
	s[24] = 0;
	return s;
}

static void sysfs_word(const char *path, char *out, size_t len)
{
	if (vt_read_file(path, out, len) < 0)
		snprintf(out, len, "?");
	out[strcspn(out, "\n")] = 0;
}

static enum vt_result the_unit(void)
{
	char addr[32], cap[32], ecap[32], type[32], link[256], path[400];
	struct vt_pci unit;
	uint16_t sid;
	ssize_t n;

	VT_CALL(vt_kmsg_open(&kmsg), "the kernel log");
	VT_CHECK(access("/sys/class/iommu/dmar0", F_OK) == 0,
		 "no dmar0: the kernel's intel_iommu does not own vuser-iommu (iommu = \"kernel\"?)");
	sysfs_word("/sys/class/iommu/dmar0/intel-iommu/address", addr, sizeof(addr));
	sysfs_word("/sys/class/iommu/dmar0/intel-iommu/cap", cap, sizeof(cap));
	sysfs_word("/sys/class/iommu/dmar0/intel-iommu/ecap", ecap, sizeof(ecap));
	VT_CALL(vt_pci_find(VTD_VENDOR_ID, VTD_DEVICE_ID, &unit), "vuser-iommu's function");
	ktap_diag("dmar0: the stock intel_iommu driver, registers at %s = BAR0 of vuser-iommu "
		  "(%s), found through the DMAR table; CAP %s ECAP %s", addr, unit.bdf, cap, ecap);
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &dma_pci), "the vuser-dma");
	VT_CALL(vt_pci_bdf_sid(&dma_pci, &sid), "its BDF");
	VT_CALL(vt_pci_iommu_group_type(&dma_pci, type, sizeof(type)), "its IOMMU group");
	snprintf(path, sizeof(path), "%s/iommu_group", dma_pci.dir);
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	ktap_diag("vuser-dma %s (source-id %#x, also its vuser label): IOMMU group %s, "
		  "domain type %s", dma_pci.bdf, sid, strrchr(link, '/') ? strrchr(link, '/') + 1 : "?",
		  type);
	return VT_PASS;
}

static enum vt_result dma_api_copy(void)
{
	struct vuser_dma_memcpy m = { 0 };
	uint8_t *src = malloc(PG), *dst = calloc(1, PG);
	char given[32], landed[48];

	vt_require("the_unit");
	VT_CHECK(src && dst, "malloc");
	VT_CALL(vdma_kmod_open(0, &fd), "load vuser_dma.ko");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("vuser_dma.ko bound %s: PASID %s by the IOMMU driver, ATS %s, PRI %s; its "
		  "rings and records are dma_alloc_coherent memory (IOVAs too)", dma_pci.bdf,
		  info.pasid_owner == VUSER_DMA_OWNER_IOMMU ? "enabled" : "not enabled",
		  info.ats_enabled ? "on" : "off", info.pri_enabled ? "on" : "off");
	fill_text(src, PG, TEXT_DMA);
	m.src = (uintptr_t)src;
	m.dst = (uintptr_t)dst;
	m.len = PG;
	m.timeout_ms = 20000;
	VT_CALL(vdma_kmod_memcpy(fd, &m), "MEMCPY through the driver");
	ktap_diag("dma_map_single: src buffer at GPA %#llx -> IOVA %#llx; dst buffer at GPA "
		  "%#llx -> IOVA %#llx", (unsigned long long)m.src_phys,
		  (unsigned long long)m.src_dma, (unsigned long long)m.dst_phys,
		  (unsigned long long)m.dst_dma);
	ktap_diag("MEMCPY src %#llx dst %#llx, 4096 bytes, no PASID: vuser-iommu translated both "
		  "with the first-stage table of the kernel's %s domain (RID_PASID)",
		  (unsigned long long)m.src_dma, (unsigned long long)m.dst_dma,
		  vdma_kmod_domain_name(info.domain));
	ktap_diag("  completion: %s, %llu bytes; the dst buffer (GPA %#llx) now reads \"%s...\"",
		  vdma_status_name(m.status), (unsigned long long)m.bytes_done,
		  (unsigned long long)m.dst_phys, peek(dst));
	VT_CHECK(m.status == VDMA_COMPLETION_STATUS_SUCCESS && !memcmp(src, dst, PG),
		 "the copy did not arrive");
	VT_CHECK(m.src_dma != m.src_phys && m.dst_dma != m.dst_phys, "untranslated addresses");
	snprintf(given, sizeof(given), "IOVA %#llx", (unsigned long long)m.dst_dma);
	snprintf(landed, sizeof(landed), "GPA %#llx", (unsigned long long)m.dst_phys);
	tell(0, "DMA API", given, landed, "SUCCESS, 4096 bytes");
	free(src);
	free(dst);
	return VT_PASS;
}

static enum vt_result after_unmap(void)
{
	struct vuser_dma_stale st = { 0 };
	struct vt_dmar_fault f;
	char msg[512], given[32], how[64];
	unsigned waited;

	vt_require("dma_api_copy");
	VT_CALL(vt_dmar_log_ready(&waited), "the fault log's ratelimit");
	st.pattern = 0x2121212121212121ull;
	st.delay_ms = 50;
	st.timeout_ms = 20000;
	VT_CALL(vdma_kmod_stale(fd, &st), "map, FILL, unmap, FILL");
	ktap_diag("a page at GPA %#llx mapped at IOVA %#llx: FILL %s; dma_unmap_single, 50 ms "
		  "(the flush queue has flushed), FILL again: %s at %#llx, %llu bytes landed",
		  (unsigned long long)st.phys, (unsigned long long)st.iova,
		  vdma_status_name(st.first_status), vdma_status_name(st.status),
		  (unsigned long long)st.fault_addr, (unsigned long long)st.landed);
	VT_CHECK(st.status == VDMA_COMPLETION_STATUS_PAGE_FAULT && !st.landed,
		 "the unmapped IOVA was not blocked");
	VT_CALL(vt_kmsg_find(&kmsg, "DMAR: [DMA ", msg, sizeof(msg), 5000), "the DMAR fault line");
	ktap_diag("  the kernel's fault handler (dmar0's fault interrupt, a VT-d MSI from "
		  "vuser-iommu): %s", msg);
	VT_CHECK(vt_dmar_fault_parse(msg, &f) == 0 && f.addr >> 12 == st.iova >> 12,
		 "the fault line does not name the IOVA");
	snprintf(given, sizeof(given), "IOVA %#llx", (unsigned long long)st.iova);
	snprintf(how, sizeof(how), "PAGE_FAULT, DMAR reason %#x", f.reason);
	tell(1, "after unmap", given, "nothing written", how);
	return VT_PASS;
}

static enum vt_result sva_bind(void)
{
	vt_require("dma_api_copy");
	bind_ret = vdma_kmod_sva_bind(fd, &bound);
	ktap_diag("IOMMU_DEV_FEAT_IOPF %s, IOMMU_DEV_FEAT_SVA %s; iommu_sva_bind_device(pid %d): "
		  "%s", bound.features & VUSER_DMA_FEAT_IOPF ? "on" : "refused",
		  bound.features & VUSER_DMA_FEAT_SVA ? "on" : "refused", getpid(),
		  bind_ret ? vt_err() : "bound");
	if (bind_ret == -EOPNOTSUPP) {
		tell(2, "SVA", "-", "-", "refused by this kernel (see sva_bind)");
		/* at most 159 characters (the runner's reason buffer) */
		VT_SKIP_BECAUSE("this kernel refuses SVA: iommu_sva_bind_device() is -EOPNOTSUPP "
				"on x86 (the CVE-2025-71089 fix, 6.1.164+ and 6.12); "
				"demo_kernel_sid shows SVA");
	}
	VT_CHECK(bind_ret == 0, "SVA bind: %s", vt_err());
	ktap_diag("  PASID %#x: its first-stage table is this process's page table", bound.pasid);
	return VT_PASS;
}

static enum vt_result sva_copy(void)
{
	const size_t len = 256u << 10;
	struct vuser_dma_sva_copy c = { 0 };
	uint8_t *src, *dst;
	char given[32], landed[48], how[64];
	long prq;
	int before;

	if (vt_result_of("sva_bind") == VT_SKIP)
		VT_SKIP_BECAUSE("needs the SVA bind this kernel refuses (see sva_bind)");
	vt_require("sva_bind");
	/* fresh anonymous memory: no page of dst has been touched yet */
	src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	VT_CHECK(src != MAP_FAILED && dst != MAP_FAILED, "mmap: %s", strerror(errno));
	fill_text(src, len, TEXT_SVA);
	before = vt_pages_present(dst, len);
	prq = vt_irq_count("dmar0-prq");
	c.src = (uintptr_t)src;
	c.dst = (uintptr_t)dst;
	c.len = len;
	c.flags = VUSER_DMA_SVA_BLOCK_ON_FAULT;
	c.timeout_ms = 30000;
	VT_CALL(vdma_kmod_sva_copy(fd, &c), "SVA MEMCPY");
	prq = vt_irq_count("dmar0-prq") - prq;
	ktap_diag("MEMCPY src %p dst %p (virtual addresses), %zu bytes, PASID %#x: dst had %d of "
		  "%zu pages present; %ld page request interrupt(s); %s", (void *)src, (void *)dst,
		  len, c.used_pasid, before, len / PG, prq, vdma_status_name(c.status));
	VT_CHECK(c.status == VDMA_COMPLETION_STATUS_SUCCESS && !memcmp(src, dst, len),
		 "the copy did not arrive");
	ktap_diag("  dst now reads \"%s...\"; its first page is at GPA %#llx", peek(dst),
		  (unsigned long long)vt_virt_to_phys(dst));
	snprintf(given, sizeof(given), "VA %p", (void *)dst);
	snprintf(landed, sizeof(landed), "GPA %#llx (paged in)",
		 (unsigned long long)vt_virt_to_phys(dst));
	snprintf(how, sizeof(how), "SUCCESS after %ld page request irq(s)", prq);
	tell(2, "SVA PASID", given, landed, how);
	return VT_PASS;
}

static enum vt_result what_went_where(void)
{
	vt_require("after_unmap");
	ktap_diag("what went where (the guest kernel's intel_iommu built every table):");
	ktap_diag("  %-16s %-22s %-26s %s", "request", "dst given", "landed at", "completion");
	for (int i = 0; i < 3; i++)
		if (told[i].done)
			ktap_diag("  %s", told[i].line);
	ktap_diag("the device never saw a physical address: the DMA API gave it IOVAs of the "
		  "kernel's domain; after the unmap the same IOVA led nowhere");
	return VT_PASS;
}

VUSER_CASES(the_unit, dma_api_copy, after_unmap, sva_bind, sva_copy, what_went_where)
