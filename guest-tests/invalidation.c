/* invalidation: cached translations stay in use until the guest invalidates them.
 *
 * The vIOMMU follows hardware: it does not snoop the guest's page tables
 * (docs/architecture.md "The model"). After a first-stage PTE is changed, DMA keeps using
 * the cached translation until a PASID-based IOTLB invalidation (VT-d
 * 6.5.2.4) for that DID and PASID; with ATS enabled, until a PASID-based
 * device-TLB invalidation (6.5.2.6). Each case re-points (or clears) a PTE,
 * shows the old page still written, invalidates, shows the new one written.
 */
#include "lib/vuser.h"

#define X 0x40000000ull
#define Y 0x48000000ull
#define PG VT_PAGE_SIZE

static struct vt_nested env;
static struct vt_space s1, s2;
static struct vt_dmabuf data;

/* The k-th 4 KiB page of the data hugepage. */
#define page_pa(k) vt_dmabuf_page_pa(&data, (k))
#define page_va(k) vt_dmabuf_page_va(&data, (k))

/* Fill `len` bytes at iova in space s with byte v; 0 on SUCCESS. */
static int fill(struct vt_space *s, uint64_t iova, uint64_t len, uint8_t v)
{
	struct vdma_desc d;
	char why[200];
	int st;

	vdma_desc_fill(&d, 0, iova, len, 0x0101010101010101ull * v, 0);
	st = vt_space_run(s, &d);
	if (st == VDMA_COMPLETION_STATUS_SUCCESS)
		return 0;
	vdma_completion_describe(s->comp, why, sizeof(why));
	ktap_diag("fill %#llx (PASID %u): %s", (unsigned long long)iova, s->pasid,
		  st < 0 ? vt_err() : why);
	return st < 0 ? st : -EIO;
}

static int drain_faults(int quiet)
{
	struct vtd_fault f[8];
	int n = vtd_faults_collect(&env.iommu, f, 8);
	char line[200];

	for (int i = 0; i < n && !quiet; i++) {
		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("vIOMMU fault %s", line);
	}
	return n;
}

static enum vt_result setup(void)
{
	VT_CALL(vt_nested_open(&env, VT_NESTED_ANY_LABEL, 0), "vIOMMU and vuser-dma");
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	VT_CALL(vt_space_init(&env, &s1, 1, 21, 4), "PASID 1 table");
	VT_CALL(vt_space_init(&env, &s2, 2, 22, 4), "PASID 2 table");
	return VT_PASS;
}

static enum vt_result iotlb_page_selective(void)
{
	vt_require("setup");
	memset(page_va(0), 0, 2 * PG);
	VT_CALL(vt_space_map(&s1, X, page_pa(0), PG, VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K),
		"map X -> page 0");
	VT_CHECK(!fill(&s1, X, PG, 0x11), "first fill");
	VT_CHECK(vt_first_not(page_va(0), PG, 0x11) < 0, "page 0 not filled");

	VT_CALL(vtd_pgtable_remap(&s1.pt, X, page_pa(1)), "re-point X -> page 1");
	VT_CHECK(!fill(&s1, X, PG, 0x22), "fill after the PTE change");
	VT_CHECK(vt_first_not(page_va(0), PG, 0x22) < 0 && vt_first_not(page_va(1), PG, 0) < 0,
		 "the PTE change took effect without an invalidation (page 0 %#x, page 1 %#x)",
		 page_va(0)[0], page_va(1)[0]);

	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, X, 0, 0), "PASID-IOTLB (page)");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s1, X, PG, 0x33), "fill after the invalidation");
	VT_CHECK(vt_first_not(page_va(1), PG, 0x33) < 0, "page 1 not written after the invalidation");
	VT_CHECK(vt_first_not(page_va(0), PG, 0x22) < 0, "page 0 written after the invalidation");
	return VT_PASS;
}

/* Two pages re-pointed; one invalidation of all of PASID 1. */
static enum vt_result iotlb_whole_pasid(void)
{
	vt_require("setup");
	memset(page_va(2), 0, 4 * PG);
	VT_CALL(vt_space_map(&s1, X + 0x100000, page_pa(2), 2 * PG, VTD_PROT_READ | VTD_PROT_WRITE,
			     VTD_PAGE_4K), "map 2 pages");
	VT_CHECK(!fill(&s1, X + 0x100000, 2 * PG, 0x44), "first fill");
	VT_CALL(vtd_pgtable_remap(&s1.pt, X + 0x100000, page_pa(4)), "re-point page 0");
	VT_CALL(vtd_pgtable_remap(&s1.pt, X + 0x101000, page_pa(5)), "re-point page 1");
	VT_CHECK(!fill(&s1, X + 0x100000, 2 * PG, 0x55), "fill after the PTE changes");
	VT_CHECK(vt_first_not(page_va(2), 2 * PG, 0x55) < 0 && vt_first_not(page_va(4), 2 * PG, 0) < 0,
		 "a PTE change took effect without an invalidation");
	VT_CALL(vtd_inv_piotlb_pasid(&env.iommu, s1.did, s1.pasid), "PASID-IOTLB (whole PASID)");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s1, X + 0x100000, 2 * PG, 0x66), "fill after the invalidation");
	VT_CHECK(vt_first_not(page_va(4), 2 * PG, 0x66) < 0, "new pages not written");
	VT_CHECK(vt_first_not(page_va(2), 2 * PG, 0x55) < 0, "old pages written");
	return VT_PASS;
}

/* An invalidation of another PASID, or with another DID, leaves it stale. */
static enum vt_result invalidation_is_selective(void)
{
	vt_require("iotlb_page_selective");
	memset(page_va(6), 0, 2 * PG);
	/* X -> page 1, cached again (iotlb_whole_pasid flushed all of PASID 1). */
	VT_CHECK(!fill(&s1, X, PG, 0x70), "fill to cache X");
	VT_CHECK(vt_first_not(page_va(1), PG, 0x70) < 0, "X does not lead to page 1");
	VT_CALL(vtd_pgtable_remap(&s1.pt, X, page_pa(6)), "re-point X -> page 6");
	VT_CALL(vtd_inv_piotlb_pasid(&env.iommu, s2.did, s2.pasid), "invalidate PASID 2");
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, 99, s1.pasid, X, 0, 0), "PASID 1 under DID 99");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s1, X, PG, 0x77), "fill");
	VT_CHECK(vt_first_not(page_va(1), PG, 0x77) < 0 && vt_first_not(page_va(6), PG, 0) < 0,
		 "PASID 1's entry was flushed by another PASID's or DID's invalidation");
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, X, 0, 0), "PASID 1, its DID");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s1, X, PG, 0x78), "fill after the right invalidation");
	VT_CHECK(vt_first_not(page_va(6), PG, 0x78) < 0, "page 6 not written");
	return VT_PASS;
}

/* A cleared PTE keeps working until invalidated, then faults. */
static enum vt_result unmap_then_invalidate(void)
{
	struct vtd_fault f[8];
	int n, st;
	struct vdma_desc d;

	vt_require("invalidation_is_selective");
	drain_faults(0);
	VT_CALL(vtd_pgtable_unmap(&s1.pt, X, PG), "clear the PTE of X");
	VT_CHECK(!fill(&s1, X, PG, 0x79), "fill through the stale entry");
	VT_CHECK(vt_first_not(page_va(6), PG, 0x79) < 0, "the stale translation was not used");
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, X, 0, 0), "invalidate X");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	vdma_desc_fill(&d, 0, X + 0x10, 16, 0, 0);
	st = vt_space_run(&s1, &d);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_PAGE_FAULT, "fill of the unmapped X: status %d (%s)",
		 st, st < 0 ? vt_err() : vdma_status_name(st));
	VT_CHECK(s1.comp->fault_addr == X + 0x10, "fault_addr %#llx",
		 (unsigned long long)s1.comp->fault_addr);
	VT_CHECK(vt_first_not(page_va(6), PG, 0x79) < 0, "page 6 written after the unmap");
	n = vtd_faults_collect(&env.iommu, f, 8);
	VT_CHECK(n == 1, "%d fault records, want 1", n);
	VT_CHECK(f[0].reason == VTD_FAULT_REASON_FS_P && f[0].pasid_present && f[0].pasid == 1 &&
			 f[0].addr == X && f[0].sid == env.sid,
		 "record: reason %#x pasid %d/%#x addr %#llx sid %#x", f[0].reason, f[0].pasid_present,
		 f[0].pasid, (unsigned long long)f[0].addr, f[0].sid);
	return VT_PASS;
}

/* With ATS: translations cached in the device TLB. */
static enum vt_result device_tlb_with_ats(void)
{
	vt_require("setup");
	drain_faults(0);
	VT_CALL(vtd_context_setup(&env.iommu, env.sid, 0, VTD_CTX_DTE), "context entry with DTE");
	VT_CALL(vt_pci_ats_enable(&env.dma.pci, 1), "enable ATS");
	memset(page_va(10), 0, 4 * PG);
	VT_CALL(vt_space_map(&s2, Y, page_pa(10), PG, VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K),
		"map Y -> page 10");
	VT_CHECK(!fill(&s2, Y, PG, 0x81), "first fill (through ATS)");
	VT_CHECK(vt_first_not(page_va(10), PG, 0x81) < 0, "page 10 not filled");
	VT_CALL(vtd_pgtable_remap(&s2.pt, Y, page_pa(11)), "re-point Y -> page 11");
	VT_CHECK(!fill(&s2, Y, PG, 0x82), "fill after the PTE change");
	VT_CHECK(vt_first_not(page_va(10), PG, 0x82) < 0 && vt_first_not(page_va(11), PG, 0) < 0,
		 "the PTE change took effect without an invalidation");
	/* The device dropping its own TLB is not enough: the IOTLB is still stale. */
	VT_CALL(vdma_devtlb_flush(&env.dma), "DEVTLB_CTRL flush");
	VT_CHECK(!fill(&s2, Y, PG, 0x83), "fill after the device's own flush");
	VT_CHECK(vt_first_not(page_va(10), PG, 0x83) < 0 && vt_first_not(page_va(11), PG, 0) < 0,
		 "the device's own TLB flush made the vIOMMU re-walk");
	/* Two caches, two descriptors (VT-d 6.5.2): the PASID-IOTLB invalidation
	 * alone leaves the device TLB stale... */
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s2.did, s2.pasid, Y, 0, 0), "PASID-IOTLB inv");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s2, Y, PG, 0x85), "fill after the PASID-IOTLB invalidation");
	VT_CHECK(vt_first_not(page_va(10), PG, 0x85) < 0 && vt_first_not(page_va(11), PG, 0) < 0,
		 "the PASID-IOTLB invalidation flushed the device TLB too");
	/* ...until the PASID device-TLB invalidation. */
	VT_CALL(vtd_inv_devtlb(&env.iommu, env.sid, 1, s2.pasid, Y, PG), "PASID device-TLB inv");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s2, Y, PG, 0x84), "fill after the device-TLB invalidation");
	VT_CHECK(vt_first_not(page_va(11), PG, 0x84) < 0, "page 11 not written");
	VT_CHECK(vt_first_not(page_va(10), PG, 0x85) < 0, "page 10 written after the invalidation");
	return VT_PASS;
}

/* A device-TLB invalidation of a size-encoded range (S bit: 8 KiB). */
static enum vt_result device_tlb_range(void)
{
	vt_require("device_tlb_with_ats");
	memset(page_va(12), 0, 4 * PG);
	VT_CALL(vt_space_map(&s2, Y + 0x2000, page_pa(12), 2 * PG, VTD_PROT_READ | VTD_PROT_WRITE,
			     VTD_PAGE_4K), "map 2 pages");
	VT_CHECK(!fill(&s2, Y + 0x2000, 2 * PG, 0x91), "first fill");
	VT_CALL(vtd_pgtable_remap(&s2.pt, Y + 0x2000, page_pa(14)), "re-point page 0");
	VT_CALL(vtd_pgtable_remap(&s2.pt, Y + 0x3000, page_pa(15)), "re-point page 1");
	VT_CHECK(!fill(&s2, Y + 0x2000, 2 * PG, 0x92), "fill after the PTE changes");
	VT_CHECK(vt_first_not(page_va(12), 2 * PG, 0x92) < 0, "a PTE change took effect at once");
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s2.did, s2.pasid, Y + 0x2000, 1, 0),
		"PASID-IOTLB invalidation of 8 KiB");
	VT_CALL(vtd_inv_devtlb(&env.iommu, env.sid, 1, s2.pasid, Y + 0x2000, 2 * PG),
		"device-TLB invalidation of 8 KiB");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	VT_CHECK(!fill(&s2, Y + 0x2000, 2 * PG, 0x93), "fill after the invalidation");
	VT_CHECK(vt_first_not(page_va(14), 2 * PG, 0x93) < 0, "both new pages written");
	VT_CHECK(vt_first_not(page_va(12), 2 * PG, 0x92) < 0, "old pages written");
	return VT_PASS;
}

static enum vt_result queue_healthy(void)
{
	uint32_t fsts;

	vt_require("setup");
	fsts = vtd_fsts(&env.iommu);
	VT_CHECK(!(fsts & (VTD_FSTS_IQE_MASK | VTD_FSTS_ITE_MASK | VTD_FSTS_ICE_MASK)),
		 "FSTS %#x: invalidation queue error", fsts);
	VT_CHECK(drain_faults(0) == 0, "unexpected fault records");
	return VT_PASS;
}

VUSER_CASES(setup, iotlb_page_selective, iotlb_whole_pasid, invalidation_is_selective,
	    unmap_then_invalidate, device_tlb_with_ats, device_tlb_range, queue_healthy)
