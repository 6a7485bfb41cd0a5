/* demo: what `make run` shows: one descriptor, two address spaces, one fault.
 *
 * A guest programs the vIOMMU (docs/vuser-iommu.md) the way an IOMMU driver
 * does, from userspace, and tells each step in KTAP diagnostics ("# ...")
 * so the console reads as a story; each step is also a case.
 *
 *   find_devices     the vuser-dma by the label the host gave it
 *                    (tests/guest/guest_tests.toml: 0x42), the vIOMMU by its
 *                    ids. The label is the source-id the vIOMMU knows the
 *                    device by: the server never learns guest BDFs.
 *   context_entry    root table, invalidation queue, and the scalable-mode
 *                    context entry of source-id 0x42 with its PASID directory.
 *   stage1_tables    PASID 1's first-stage table (x86-64 paging, 4 levels).
 *                    In one 2 MiB page of guest RAM, 4 KiB pages A to E:
 *                    IOVA SRC -> A (read-only) and IOVA DST -> B. SRC and DST
 *                    are chosen equal to the guest physical addresses of C
 *                    and D, so the same descriptor can be sent both ways.
 *   pasid_entries    PASID 1: first stage, that table; PASID 0 (RID_PASID,
 *                    for requests without a PASID): pass-through. Written,
 *                    then made effective by PASID-cache invalidations.
 *   translation_on   GCMD.TE; the vuser-dma enabled with PASID, one ring.
 *   memcpy_pasid_1   MEMCPY SRC -> DST tagged PASID 1: reads A, writes B.
 *   memcpy_no_pasid  the same descriptor untagged: reads C, writes D.
 *   fault            PASID 1 writes to E's guest physical address, which
 *                    its table does not map: PAGE_FAULT, nothing written,
 *                    one vIOMMU fault record (reason, source-id, PASID).
 *   what_went_where  the three side by side; the device still runs.
 *
 * Where the bytes landed is found by looking at memory: every 4 KiB page of
 * the 2 MiB page is searched for the source's bytes. Stage 2 (the VM's GPA
 * space, built from QEMU's DMA_MAPs) then takes each GPA to guest RAM.
 */
#include <stdlib.h>

#include "lib/vuser.h"

#define DMA_LABEL 0x42u
#define SID ((uint16_t)DMA_LABEL)
#define RID_DID 1                /* domain id of the pass-through RID_PASID entry */
#define PASID1 1u
#define PASID1_DID 11
#define COMP_IOVA 0x7ff000ull    /* PASID 1's completion records */
#define PG VT_PAGE_SIZE
#define NPAGES (VT_HUGEPAGE_SIZE / PG)
#define RING_ENTRIES 16
#define FSPM_4LEVEL 0            /* PASID entry first-stage paging mode */
enum { PAGE_A = 1, PAGE_B, PAGE_C, PAGE_D, PAGE_E };

static struct vtd iommu;
static struct vdma dma;
static struct vtd_pgtable pt;
static struct vt_dmabuf data;
static volatile struct vdma_completion *pasid_rec, *gpa_rec;
static uint64_t pasid_rec_pa, gpa_rec_pa;

/* One line per descriptor for the last case. */
struct outcome {
	int done;
	char line[200];
};
static struct outcome told[3];

static uint64_t pa(unsigned k)
{
	return data.pa + (uint64_t)k * PG;
}

static uint8_t *va(unsigned k)
{
	return data.va + (size_t)k * PG;
}

static char page_name(unsigned k)
{
	return k >= PAGE_A && k <= PAGE_E ? (char)('A' + k - PAGE_A) : '?';
}

static void fill_text(unsigned k, const char *text)
{
	size_t n = strlen(text);

	for (size_t i = 0; i < PG; i++)
		va(k)[i] = (uint8_t)text[i % n];
}

/* The first 24 bytes of page k, printable. */
static const char *peek(unsigned k)
{
	static char buf[4][32];
	static int turn;
	char *s = buf[turn++ % 4];

	for (int i = 0; i < 24; i++)
		s[i] = va(k)[i] >= 0x20 && va(k)[i] < 0x7f ? (char)va(k)[i] : '.';
	s[24] = 0;
	return s;
}

/* Pages other than src that hold src's bytes; their count, the first in *at. */
static int copies_of(unsigned src, unsigned *at)
{
	int n = 0;

	for (unsigned k = 0; k < NPAGES; k++)
		if (k != src && !memcmp(va(k), va(src), PG) && n++ == 0)
			*at = k;
	return n;
}

static int all_bytes(unsigned k, uint8_t v)
{
	for (size_t i = 0; i < PG; i++)
		if (va(k)[i] != v)
			return 0;
	return 1;
}

static const char *status_line(volatile struct vdma_completion *c)
{
	static char buf[200];

	vdma_completion_describe(c, buf, sizeof(buf));
	return buf;
}

/* One row of the last case's table; page 0: nothing landed. */
static void tell(int i, const char *who, uint64_t dst, unsigned page,
		 volatile struct vdma_completion *c)
{
	char given[32], landed[48], how[80];

	snprintf(given, sizeof(given), "%#llx", (unsigned long long)dst);
	if (page)
		snprintf(landed, sizeof(landed), "GPA %#llx (page %c)", (unsigned long long)pa(page),
			 page_name(page));
	else
		snprintf(landed, sizeof(landed), "nothing written");
	if (c->status == VDMA_COMPLETION_STATUS_SUCCESS)
		snprintf(how, sizeof(how), "SUCCESS, %llu bytes", (unsigned long long)c->bytes_done);
	else
		snprintf(how, sizeof(how), "%s at %#llx", vdma_status_name(c->status),
			 (unsigned long long)c->fault_addr);
	snprintf(told[i].line, sizeof(told[i].line), "%-9s %-11s %-24s %s", who, given, landed, how);
	told[i].done = 1;
}

static enum vt_result find_devices(void)
{
	struct vt_pci dma_pci;

	VT_CALL(vt_pci_find_label(VDMA_DEVICE_ID, DMA_LABEL, &dma_pci),
		"the vuser-dma with label 0x42");
	ktap_diag("vuser-dma:   %s %04x:%04x, label %#x (vendor capability): to the vIOMMU it is "
		  "source-id %#x (root entry %u, context entry %#x)", dma_pci.bdf, dma_pci.vendor,
		  dma_pci.device, DMA_LABEL, SID, SID >> 8, SID & 0xff);
	VT_CALL(vtd_open(&iommu), "the vIOMMU (vendor 0x5655, device 0x0003)");
	ktap_diag("vuser-iommu: %s %04x:%04x, class IOMMU (0x0806), VT-d registers in BAR0",
		  iommu.pci.bdf, iommu.pci.vendor, iommu.pci.device);
	ktap_diag("vIOMMU CAP %#llx ECAP %#llx: scalable mode %s, first stage %s (5-level %s), "
		  "nested %s, PASID %u bits, PRS %s, QI %s, DT %s, pass-through %s",
		  (unsigned long long)iommu.cap, (unsigned long long)iommu.ecap,
		  VT_GET(iommu.ecap, VTD_ECAP_SMTS) ? "yes" : "no",
		  VT_GET(iommu.ecap, VTD_ECAP_FSTS) ? "yes" : "no",
		  VT_GET(iommu.cap, VTD_CAP_FS5LP) ? "yes" : "no",
		  VT_GET(iommu.ecap, VTD_ECAP_NEST) ? "yes" : "no",
		  (unsigned)VT_GET(iommu.ecap, VTD_ECAP_PSS) + 1,
		  VT_GET(iommu.ecap, VTD_ECAP_PRS) ? "yes" : "no",
		  VT_GET(iommu.ecap, VTD_ECAP_QI) ? "yes" : "no",
		  VT_GET(iommu.ecap, VTD_ECAP_DT) ? "yes" : "no",
		  VT_GET(iommu.ecap, VTD_ECAP_PT) ? "yes" : "no");
	VT_CHECK(VT_GET(iommu.ecap, VTD_ECAP_FSTS) && VT_GET(iommu.ecap, VTD_ECAP_PT) &&
			 VT_GET(iommu.ecap, VTD_ECAP_PASID),
		 "the vIOMMU lacks first stage, pass-through or PASID");

	VT_CALL(vdma_open(&dma, &dma_pci), "map the vuser-dma's registers");
	VT_CHECK(dma.label == DMA_LABEL, "vuser-dma LABEL register %#x, want %#x", dma.label,
		 DMA_LABEL);
	ktap_diag("vuser-dma CAP %#x: %u queues, PASID %s, ATS %s, PRI %s; LABEL register %#x",
		  dma.cap, (unsigned)VT_GET(dma.cap, VDMA_CAP_NQUEUES),
		  VT_GET(dma.cap, VDMA_CAP_PASID) ? "yes" : "no",
		  VT_GET(dma.cap, VDMA_CAP_ATS) ? "yes" : "no",
		  VT_GET(dma.cap, VDMA_CAP_PRI) ? "yes" : "no", dma.label);
	return VT_PASS;
}

static enum vt_result context_entry(void)
{
	const uint64_t *ce;

	vt_require("find_devices");
	VT_CALL(vtd_init(&iommu), "root table and invalidation queue");
	ktap_diag("root table at GPA %#llx (RTADDR, scalable mode), invalidation queue at GPA "
		  "%#llx (%u entries), page request queue at GPA %#llx",
		  (unsigned long long)iommu.root_pa, (unsigned long long)iommu.iq_pa,
		  iommu.iq_entries, (unsigned long long)iommu.prq_pa);
	VT_CALL(vtd_context_setup(&iommu, SID, 0, 0), "context entry");
	ce = &iommu.ctx_tables[SID >> 8][(SID & 0xff) >= 128][(SID & 0x7f) * 4];
	ktap_diag("root[%u] -> context table at GPA %#llx; context[%#x] = 0x%016llx 0x%016llx",
		  SID >> 8, (unsigned long long)(iommu.root[(SID >> 8) * 2] & VTD_ROOT_HALF_CTP_MASK),
		  SID & 0xff, (unsigned long long)ce[0], (unsigned long long)ce[1]);
	ktap_diag("  present, PASID enabled, PASID directory at GPA %#llx (%u entries), "
		  "RID_PASID %llu: requests without a PASID use PASID entry 0",
		  (unsigned long long)(ce[0] & VTD_CONTEXT_QW0_PASIDDIRPTR_MASK),
		  1u << (VT_GET(ce[0], VTD_CONTEXT_QW0_PDTS) + 7),
		  (unsigned long long)VT_GET(ce[1], VTD_CONTEXT_QW1_RID_PASID));
	VT_CHECK(VT_GET(ce[0], VTD_CONTEXT_QW0_P) && VT_GET(ce[0], VTD_CONTEXT_QW0_PASIDE),
		 "context entry %#llx: not present or PASID disabled", (unsigned long long)ce[0]);
	return VT_PASS;
}

static void show_mapping(uint64_t iova, unsigned page)
{
	uint64_t pte = 0;
	int level = 0;

	vtd_pgtable_lookup(&pt, iova, &pte, &level);
	ktap_diag("  IOVA %#llx -> GPA %#llx (page %c), PTE %#llx: %s%s, level %d leaf",
		  (unsigned long long)iova, (unsigned long long)pa(page), page_name(page),
		  (unsigned long long)pte, pte & VTD_FIRST_STAGE_PTE_RW_MASK ? "read/write" : "read-only",
		  pte & VTD_FIRST_STAGE_PTE_US_MASK ? ", user" : "", level);
}

static enum vt_result stage1_tables(void)
{
	uint64_t rec_iova_pte;
	int level;

	vt_require("context_entry");
	VT_CALL(vt_dmabuf_alloc_huge(&data), "a 2 MiB page of guest RAM");
	memset(data.va, '.', data.len);
	fill_text(PAGE_A, "PASID 1's data (page A) ");
	fill_text(PAGE_C, "untagged data (page C)  ");
	for (unsigned k = PAGE_A; k <= PAGE_E; k++)
		ktap_diag("page %c at GPA %#llx: \"%s...\"", page_name(k), (unsigned long long)pa(k),
			  peek(k));

	VT_CALL(vtd_pgtable_init(&pt, &iommu.pool, 4), "PASID 1's first-stage table");
	VT_CALL(vtd_pgtable_map(&pt, pa(PAGE_C), pa(PAGE_A), PG, VTD_PROT_READ, VTD_PAGE_4K),
		"map SRC");
	VT_CALL(vtd_pgtable_map(&pt, pa(PAGE_D), pa(PAGE_B), PG, VTD_PROT_READ | VTD_PROT_WRITE,
				VTD_PAGE_4K), "map DST");
	pasid_rec = vt_dmapool_alloc(&iommu.pool, PG, PG, &pasid_rec_pa);
	VT_CHECK(pasid_rec, "completion record page: %s", vt_err());
	VT_CALL(vtd_pgtable_map(&pt, COMP_IOVA, pasid_rec_pa, PG, VTD_PROT_READ | VTD_PROT_WRITE,
				VTD_PAGE_4K), "map the completion record");
	ktap_diag("PASID 1's first-stage table: 4 levels, root (PML4) at GPA %#llx",
		  (unsigned long long)pt.root_pa);
	show_mapping(pa(PAGE_C), PAGE_A);
	show_mapping(pa(PAGE_D), PAGE_B);
	VT_CALL(vtd_pgtable_lookup(&pt, COMP_IOVA, &rec_iova_pte, &level), "lookup");
	ktap_diag("  IOVA %#llx -> GPA %#llx (completion records)", COMP_IOVA,
		  (unsigned long long)pasid_rec_pa);
	ktap_diag("  nothing else: page E's GPA %#llx is not mapped for PASID 1",
		  (unsigned long long)pa(PAGE_E));
	VT_CHECK(vtd_pgtable_lookup(&pt, pa(PAGE_E), &rec_iova_pte, &level) == -ENOENT,
		 "page E's address is mapped");
	return VT_PASS;
}

/* A PASID table entry that was not present: words 1-7 first, then word 0
 * with P (VT-d 9.6). Takes effect after a PASID-cache invalidation. */
static int write_pasid_entry(uint32_t pasid, const uint64_t val[8])
{
	uint64_t *pe = vtd_pasid_entry(&iommu, SID, pasid);

	if (!pe)
		return -errno;
	if (pe[0] & VTD_PASID_QW0_P_MASK)
		return vt_fail(EBUSY, "PASID %u's entry is already present", pasid);
	for (int i = 1; i < 8; i++)
		pe[i] = val[i];
	__atomic_store_n(&pe[0], val[0], __ATOMIC_RELEASE);
	ktap_diag("PASID %u entry at GPA %#llx: 0x%016llx 0x%016llx 0x%016llx", pasid,
		  (unsigned long long)vt_dmapool_pa(&iommu.pool, pe), (unsigned long long)pe[0],
		  (unsigned long long)pe[1], (unsigned long long)pe[2]);
	return 0;
}

static enum vt_result pasid_entries(void)
{
	uint64_t pasid1[8] = { 0 }, rid[8] = { 0 };
	uint64_t iqt0, iqt1;

	vt_require("stage1_tables");
	pasid1[0] = VTD_PASID_QW0_P_MASK | VT_PUT(VTD_PASID_QW0_PGTT, VTD_PGTT_FIRST_STAGE);
	pasid1[1] = VT_PUT(VTD_PASID_QW1_DID, PASID1_DID);
	pasid1[2] = VT_PUT(VTD_PASID_QW2_FSPM, FSPM_4LEVEL) | (pt.root_pa & VTD_PASID_QW2_FSPTPTR_MASK);
	VT_CALL(write_pasid_entry(PASID1, pasid1), "PASID 1 entry");
	ktap_diag("  present, PGTT first stage, domain %d, first-stage table GPA %#llx, 4-level",
		  PASID1_DID, (unsigned long long)pt.root_pa);
	rid[0] = VTD_PASID_QW0_P_MASK | VT_PUT(VTD_PASID_QW0_PGTT, VTD_PGTT_PASS_THROUGH);
	rid[1] = VT_PUT(VTD_PASID_QW1_DID, RID_DID);
	VT_CALL(write_pasid_entry(0, rid), "RID_PASID entry");
	ktap_diag("  present, PGTT pass-through, domain %d: untagged requests use GPAs", RID_DID);

	iqt0 = vtd_read64(&iommu, VTD_REG_IQT);
	VT_CALL(vtd_inv_pasid_cache(&iommu, PASID1_DID, PASID1), "PASID-cache invalidation, PASID 1");
	VT_CALL(vtd_inv_pasid_cache(&iommu, RID_DID, 0), "PASID-cache invalidation, PASID 0");
	VT_CALL(vtd_qi_wait(&iommu), "wait descriptor");
	iqt1 = vtd_read64(&iommu, VTD_REG_IQT);
	ktap_diag("invalidation queue: PASID-cache (domain %d, PASID 1), PASID-cache (domain %d, "
		  "PASID 0), wait with status write; IQT %#llx -> %#llx, IQH %#llx, FSTS %#x",
		  PASID1_DID, RID_DID, (unsigned long long)iqt0, (unsigned long long)iqt1,
		  (unsigned long long)vtd_read64(&iommu, VTD_REG_IQH),
		  vtd_read32(&iommu, VTD_REG_FSTS));
	ktap_diag("from now on the vIOMMU uses both entries: PASID 1 through a nested HWPT (this "
		  "stage 1 over the VM's stage 2), PASID 0 through the stage-2 parent alone");
	VT_CHECK(vtd_read64(&iommu, VTD_REG_IQH) == iqt1, "IQH %#llx, IQT %#llx: queue not drained",
		 (unsigned long long)vtd_read64(&iommu, VTD_REG_IQH), (unsigned long long)iqt1);
	return VT_PASS;
}

static enum vt_result translation_on(void)
{
	vt_require("pasid_entries");
	VT_CALL(vtd_enable_translation(&iommu, 1), "GCMD.TE");
	ktap_diag("GCMD.TE set: GSTS %#x, translation on", vtd_read32(&iommu, VTD_REG_GSTS));
	VT_CALL(vt_pci_pasid_enable(&dma.pci, 1), "PASID Enable");
	VT_CALL(vt_pci_ats_enable(&dma.pci, 0), "ATS off");
	VT_CALL(vt_pci_pri_enable(&dma.pci, 0, 0), "PRI off");
	VT_CALL(vdma_enable(&dma), "Bus Master and CTRL.ENABLE");
	VT_CALL(vdma_queue_setup_pool(&dma, 0, &iommu.pool, RING_ENTRIES), "queue 0");
	gpa_rec = vt_dmapool_alloc(&iommu.pool, 64, 64, &gpa_rec_pa);
	VT_CHECK(gpa_rec, "record: %s", vt_err());
	ktap_diag("vuser-dma: PASID Enable, Bus Master, queue 0 ring at GPA %#llx (%u entries; the "
		  "device fetches it untagged, through PASID 0's pass-through)",
		  (unsigned long long)dma.q[0].ring_bus, RING_ENTRIES);
	return VT_PASS;
}

/* MEMCPY SRC -> DST of one page; tagged with PASID 1 or untagged. */
static int run_memcpy(int tagged, uint64_t dst, volatile struct vdma_completion **rec)
{
	struct vdma_desc d;

	if (tagged) {
		vdma_desc_memcpy(&d, PASID1, pa(PAGE_C), dst, PG, COMP_IOVA);
		*rec = pasid_rec;
	} else {
		vdma_desc_memcpy(&d, VDMA_NO_PASID, pa(PAGE_C), dst, PG, gpa_rec_pa);
		*rec = gpa_rec;
	}
	return vdma_run(&dma, 0, &d, *rec);
}

static void dump_faults(void)
{
	struct vtd_fault f[8];
	int n = vtd_faults_collect(&iommu, f, 8);
	char line[200];

	for (int i = 0; i < n; i++) {
		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("vIOMMU fault %s", line);
	}
}

static enum vt_result memcpy_pasid_1(void)
{
	volatile struct vdma_completion *c;
	unsigned at = 0;
	int st, n;

	vt_require("translation_on");
	ktap_diag("MEMCPY src %#llx dst %#llx, 4096 bytes, PASID 1 (IOVAs), record at IOVA %#llx",
		  (unsigned long long)pa(PAGE_C), (unsigned long long)pa(PAGE_D), COMP_IOVA);
	st = run_memcpy(1, pa(PAGE_D), &c);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "completion: %s",
		 st < 0 ? vt_err() : status_line(c));
	n = copies_of(PAGE_A, &at);
	ktap_diag("  completion: %s", status_line(c));
	ktap_diag("  page A's bytes now at GPA %#llx (page %c): \"%s...\"", (unsigned long long)pa(at),
		  page_name(at), peek(at));
	ktap_diag("  page D (GPA %#llx, the same number as the IOVA) untouched: \"%s...\"",
		  (unsigned long long)pa(PAGE_D), peek(PAGE_D));
	VT_CHECK(n == 1 && at == PAGE_B, "page A's bytes found in %d pages (first %u), want B only",
		 n, at);
	VT_CHECK(all_bytes(PAGE_D, '.') && all_bytes(PAGE_E, '.'), "page D or E was written");
	VT_CHECK(copies_of(PAGE_C, &at) == 0, "page C's bytes were copied (to page %u)", at);
	tell(0, "PASID 1", pa(PAGE_D), PAGE_B, c);
	return VT_PASS;
}

static enum vt_result memcpy_no_pasid(void)
{
	volatile struct vdma_completion *c;
	unsigned at = 0;
	int st, n;

	vt_require("translation_on");
	ktap_diag("the same MEMCPY src %#llx dst %#llx, without a PASID (GPAs), record at GPA %#llx",
		  (unsigned long long)pa(PAGE_C), (unsigned long long)pa(PAGE_D),
		  (unsigned long long)gpa_rec_pa);
	st = run_memcpy(0, pa(PAGE_D), &c);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "completion: %s",
		 st < 0 ? vt_err() : status_line(c));
	n = copies_of(PAGE_C, &at);
	ktap_diag("  completion: %s", status_line(c));
	ktap_diag("  page C's bytes now at GPA %#llx (page %c): \"%s...\"", (unsigned long long)pa(at),
		  page_name(at), peek(at));
	ktap_diag("  page B keeps what PASID 1 wrote: \"%s...\"", peek(PAGE_B));
	VT_CHECK(n == 1 && at == PAGE_D, "page C's bytes found in %d pages (first %u), want D only",
		 n, at);
	VT_CHECK(copies_of(PAGE_A, &at) == 1 && at == PAGE_B, "page B changed");
	VT_CHECK(all_bytes(PAGE_E, '.'), "page E was written");
	tell(1, "no PASID", pa(PAGE_D), PAGE_D, c);
	return VT_PASS;
}

static enum vt_result fault(void)
{
	volatile struct vdma_completion *c;
	struct vtd_fault f[8];
	uint8_t *before;
	char line[200];
	uint32_t fsts;
	int st, n, same;

	vt_require("translation_on");
	vtd_faults_clear_all(&iommu);
	before = malloc(data.len);
	VT_CHECK(before, "no memory for a snapshot");
	memcpy(before, data.va, data.len);
	ktap_diag("MEMCPY src %#llx dst %#llx (page E's GPA, not in PASID 1's table), PASID 1",
		  (unsigned long long)pa(PAGE_C), (unsigned long long)pa(PAGE_E));
	st = run_memcpy(1, pa(PAGE_E), &c);
	same = !memcmp(before, data.va, data.len);
	free(before);
	ktap_diag("  completion: %s", st < 0 ? vt_err() : status_line(c));
	VT_CHECK(st == VDMA_COMPLETION_STATUS_PAGE_FAULT, "want PAGE_FAULT");
	VT_CHECK(c->fault_addr == pa(PAGE_E), "fault_addr %#llx, want %#llx",
		 (unsigned long long)c->fault_addr, (unsigned long long)pa(PAGE_E));
	VT_CHECK((c->fault_info & VDMA_FAULT_INFO_WRITE) && !(c->fault_info & VDMA_FAULT_INFO_STAGE2),
		 "fault_info %#x: want a stage-1 write fault", c->fault_info);
	ktap_diag("  the device was told: a write at %#llx faulted in stage 1 (the guest's table), "
		  "after %llu bytes", (unsigned long long)c->fault_addr,
		  (unsigned long long)c->bytes_done);
	ktap_diag("  the 2 MiB page is %s; page E still reads \"%s...\"",
		  same ? "unchanged" : "CHANGED", peek(PAGE_E));
	VT_CHECK(same, "guest memory changed");

	fsts = vtd_fsts(&iommu);
	n = vtd_faults_collect(&iommu, f, 8);
	ktap_diag("vIOMMU: FSTS %#x (primary pending fault %s), %d fault record(s)", fsts,
		  fsts & VTD_FSTS_PPF_MASK ? "set" : "clear", n);
	for (int i = 0; i < n; i++) {
		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("  %s", line);
	}
	VT_CHECK(n == 1, "%d fault records, want 1", n);
	VT_CHECK(f[0].reason == VTD_FAULT_REASON_FS_P, "reason %#x, want %#x (%s)", f[0].reason,
		 VTD_FAULT_REASON_FS_P, vtd_fault_reason_name(VTD_FAULT_REASON_FS_P));
	VT_CHECK(f[0].sid == SID, "source-id %#x, want the label %#x", f[0].sid, SID);
	VT_CHECK(f[0].pasid_present && f[0].pasid == PASID1, "PASID %d/%#x, want 1",
		 f[0].pasid_present, f[0].pasid);
	VT_CHECK(f[0].addr == pa(PAGE_E) && !f[0].is_read, "a write at %#llx, want %#llx",
		 (unsigned long long)f[0].addr, (unsigned long long)pa(PAGE_E));
	tell(2, "PASID 1", pa(PAGE_E), 0, c);
	snprintf(told[2].line + strlen(told[2].line), sizeof(told[2].line) - strlen(told[2].line),
		 "; vIOMMU fault record: reason %#x, source-id %#x, PASID %u", f[0].reason, f[0].sid,
		 f[0].pasid);
	return VT_PASS;
}

static enum vt_result what_went_where(void)
{
	volatile struct vdma_completion *c;
	unsigned at = 0;
	int st;

	vt_require("fault");
	vt_require("memcpy_no_pasid");
	ktap_diag("what went where (MEMCPY of 4096 bytes from %#llx):",
		  (unsigned long long)pa(PAGE_C));
	ktap_diag("  %-9s %-11s %-24s %s", "request", "dst given", "landed at", "completion");
	for (int i = 0; i < 3; i++)
		if (told[i].done)
			ktap_diag("  %s", told[i].line);
	ktap_diag("the same addresses meant different memory with and without PASID 1; an address "
		  "PASID 1's table does not map faulted and left memory as it was");
	/* The fault did not stop the device: PASID 1 works on. */
	memset(va(PAGE_B), '.', PG);
	st = run_memcpy(1, pa(PAGE_D), &c);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "PASID 1 after the fault: %s",
		 st < 0 ? vt_err() : status_line(c));
	VT_CHECK(copies_of(PAGE_A, &at) == 1 && at == PAGE_B, "PASID 1 after the fault: page A's "
		 "bytes not in page B");
	VT_CHECK(!(vdma_read(&dma, VDMA_REG_STATUS) & VDMA_STATUS_ERROR_MASK),
		 "vuser-dma STATUS %#x: a queue halted", vdma_read(&dma, VDMA_REG_STATUS));
	VT_CHECK(vtd_faults_collect(&iommu, (struct vtd_fault[8]){}, 8) == 0,
		 "fault records after valid DMA");
	ktap_diag("after the fault, queue 0 ran PASID 1 again: %s", status_line(c));
	return VT_PASS;
}

VUSER_CASES(find_devices, context_entry, stage1_tables, pasid_entries, translation_on,
	    memcpy_pasid_1, memcpy_no_pasid, fault, what_went_where)
