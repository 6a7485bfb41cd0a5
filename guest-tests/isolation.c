/* isolation: DMA the first stage does not allow faults, and touches nothing.
 *
 * Each case sends one PASID-tagged descriptor that must not reach memory:
 * to a PASID with no PASID entry (and one with no PASID table), into a
 * read-only page, into a range that runs out of the stage-1 mappings, and
 * to a non-canonical address. Each must complete with PAGE_FAULT (the
 * record is written untagged, flag COMPLETION_RID, so it survives the
 * fault), leave exactly one fault record in the vIOMMU's fault recording
 * registers with the right reason, source-id, PASID and address, and leave
 * every byte of guest memory around the target as it was (canaries over
 * the whole 2 MiB page that holds the targets).
 */
#include "lib/vuser.h"

#define PG VT_PAGE_SIZE
#define CANARY 0xc5
#define RW (VTD_PROT_READ | VTD_PROT_WRITE)
#define IOVA_RO 0x40000000ull
#define IOVA_RW 0x40010000ull
#define IOVA_EDGE 0x40020000ull         /* mapped; the next page is not */

static struct vt_nested env;
static struct vt_space s1;
static struct vt_dmabuf data;
static volatile struct vdma_completion *rec;
static uint64_t rec_pa;

/* The k-th 4 KiB page of the data hugepage. */
#define page_pa(k) vt_dmabuf_page_pa(&data, (k))
#define page_va(k) vt_dmabuf_page_va(&data, (k))

/* The first byte of the data hugepage that is not CANARY, outside [lo, hi). */
static long canary_broken(size_t lo, size_t hi)
{
	for (size_t i = 0; i < data.len; i++)
		if ((i < lo || i >= hi) && data.va[i] != CANARY)
			return (long)i;
	return -1;
}

/* Run d tagged with pasid, its record untagged at rec_pa; the status. */
static int run_tagged(struct vdma_desc *d, uint32_t pasid)
{
	d->pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | VT_PUT(VDMA_DESC_PASID_PASID, pasid));
	d->completion = rec_pa;
	d->flags |= VDMA_DESC_FLAGS_COMPLETION | VDMA_DESC_FLAGS_COMPLETION_RID;
	return vdma_run(&env.dma, 0, d, rec);
}

/* Exactly one fault record, with this reason, PASID and page. */
static enum vt_result expect_one_fault(unsigned reason, uint32_t pasid, uint64_t addr)
{
	struct vtd_fault f[8];
	char line[200];
	int n = vtd_faults_collect(&env.iommu, f, 8);

	for (int i = 0; i < n; i++) {
		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("fault %s", line);
	}
	VT_CHECK(n == 1, "%d fault records, want 1", n);
	VT_CHECK(f[0].reason == reason, "reason %#x (%s), want %#x (%s)", f[0].reason,
		 vtd_fault_reason_name(f[0].reason), reason, vtd_fault_reason_name(reason));
	VT_CHECK(f[0].sid == env.sid, "source-id %#x, the device's label is %#x", f[0].sid, env.sid);
	VT_CHECK(f[0].pasid_present && f[0].pasid == pasid, "PASID %d/%#x, want %#x",
		 f[0].pasid_present, f[0].pasid, pasid);
	VT_CHECK(f[0].addr == (addr & ~0xfffull), "address %#llx, want %#llx",
		 (unsigned long long)f[0].addr, (unsigned long long)(addr & ~0xfffull));
	VT_CHECK(vtd_fsts(&env.iommu) == 0 || !(vtd_fsts(&env.iommu) & VTD_FSTS_PPF_MASK),
		 "FSTS %#x: PPF still set after clearing", vtd_fsts(&env.iommu));
	return VT_PASS;
}

static enum vt_result expect_page_fault(int st, uint64_t addr, int write)
{
	char why[200];

	vdma_completion_describe(rec, why, sizeof(why));
	VT_CHECK(st == VDMA_COMPLETION_STATUS_PAGE_FAULT, "status: %s", st < 0 ? vt_err() : why);
	VT_CHECK(rec->fault_addr == addr, "fault_addr %#llx, want %#llx",
		 (unsigned long long)rec->fault_addr, (unsigned long long)addr);
	VT_CHECK(!!(rec->fault_info & VDMA_FAULT_INFO_WRITE) == write, "%s", why);
	VT_CHECK(!(rec->fault_info & VDMA_FAULT_INFO_STAGE2), "a guest (stage-1) fault: %s", why);
	return VT_PASS;
}

static enum vt_result setup(void)
{
	VT_CALL(vt_nested_open(&env, VT_NESTED_ANY_LABEL, 0), "vIOMMU and vuser-dma");
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	rec = vt_dmapool_alloc(&env.iommu.pool, sizeof(*rec), 64, &rec_pa);
	VT_CHECK(rec, "record: %s", vt_err());
	VT_CALL(vt_space_init(&env, &s1, 1, 41, 4), "PASID 1 table");
	VT_CALL(vt_space_map(&s1, IOVA_RO, page_pa(10), PG, VTD_PROT_READ, VTD_PAGE_4K), "map RO");
	VT_CALL(vt_space_map(&s1, IOVA_RW, page_pa(20), PG, RW, VTD_PAGE_4K), "map RW");
	VT_CALL(vt_space_map(&s1, IOVA_EDGE, page_pa(30), PG, RW, VTD_PAGE_4K), "map the edge");
	vtd_faults_clear_all(&env.iommu);
	return VT_PASS;
}

/* The mappings work, so the faults below are about permissions and reach. */
static enum vt_result allowed_dma_works(void)
{
	struct vdma_desc d;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	vdma_desc_memcpy(&d, 0, IOVA_RO, IOVA_RW + 0x100, 0x100, 0);
	st = run_tagged(&d, s1.pasid);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "read RO, write RW: %d (%s)", st,
		 st < 0 ? vt_err() : vdma_status_name(st));
	VT_CHECK(canary_broken(0, 0) < 0, "memory changed (same bytes copied, should not)");
	vdma_desc_fill(&d, 0, IOVA_EDGE + PG - 0x10, 0x10, 0, 0);
	st = run_tagged(&d, s1.pasid);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "fill the edge page: %d", st);
	VT_CHECK(canary_broken(30 * PG + PG - 0x10, 31 * PG) < 0, "fill wrote outside its target");
	VT_CHECK(vtd_faults_collect(&env.iommu, (struct vtd_fault[8]){}, 8) == 0,
		 "faults from allowed DMA");
	return VT_PASS;
}

static enum vt_result unattached_pasid(void)
{
	struct vdma_desc d;
	enum vt_result r;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	/* PASID 7: its PASID table exists (PASID 1 is in it), its entry is not present. */
	vdma_desc_fill(&d, 0, IOVA_RW, 0x100, 0, 0);
	st = run_tagged(&d, 7);
	if ((r = expect_page_fault(st, IOVA_RW, 1)) != VT_PASS)
		return r;
	if ((r = expect_one_fault(VTD_FAULT_REASON_PASID_P, 7, IOVA_RW)) != VT_PASS)
		return r;
	/* PASID 0x1000: no PASID table at all (directory entry 64 not present). */
	st = run_tagged(&d, 0x1000);
	if ((r = expect_page_fault(st, IOVA_RW, 1)) != VT_PASS)
		return r;
	if ((r = expect_one_fault(VTD_FAULT_REASON_PASID_DIR_P, 0x1000, IOVA_RW)) != VT_PASS)
		return r;
	VT_CHECK(canary_broken(0, 0) < 0, "memory changed at +%#lx", canary_broken(0, 0));
	return VT_PASS;
}

static enum vt_result read_only_page_written(void)
{
	struct vdma_desc d;
	enum vt_result r;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	vdma_desc_fill(&d, 0, IOVA_RO + 0x40, 0x80, 0, 0);
	st = run_tagged(&d, s1.pasid);
	if ((r = expect_page_fault(st, IOVA_RO + 0x40, 1)) != VT_PASS)
		return r;
	if ((r = expect_one_fault(VTD_FAULT_REASON_SM_WRITE, s1.pasid, IOVA_RO)) != VT_PASS)
		return r;
	VT_CHECK(canary_broken(0, 0) < 0, "memory changed at +%#lx (page %ld)", canary_broken(0, 0),
		 canary_broken(0, 0) / (long)PG);
	/* A memcpy whose destination is read-only: same, and the source is only read. */
	vdma_desc_memcpy(&d, 0, IOVA_RW, IOVA_RO, PG, 0);
	st = run_tagged(&d, s1.pasid);
	if ((r = expect_page_fault(st, IOVA_RO, 1)) != VT_PASS)
		return r;
	if ((r = expect_one_fault(VTD_FAULT_REASON_SM_WRITE, s1.pasid, IOVA_RO)) != VT_PASS)
		return r;
	VT_CHECK(canary_broken(0, 0) < 0, "memory changed at +%#lx", canary_broken(0, 0));
	return VT_PASS;
}

/* A fill that starts in the last mapped page and runs past the mappings. */
static enum vt_result range_outside_stage_1(void)
{
	struct vdma_desc d;
	enum vt_result r;
	size_t lo;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	vdma_desc_fill(&d, 0, IOVA_EDGE + PG - 0x100, 0x200, 0, 0);
	st = run_tagged(&d, s1.pasid);
	if ((r = expect_page_fault(st, IOVA_EDGE + PG, 1)) != VT_PASS)
		return r;
	ktap_diag("bytes_done %llu of 0x200", (unsigned long long)rec->bytes_done);
	VT_CHECK(rec->bytes_done <= 0x100, "bytes_done %llu beyond the mapped part",
		 (unsigned long long)rec->bytes_done);
	if ((r = expect_one_fault(VTD_FAULT_REASON_FS_P, s1.pasid, IOVA_EDGE + PG)) != VT_PASS)
		return r;
	/* Only the mapped tail of page 30 may have been written (bytes_done of it). */
	lo = 30 * PG + PG - 0x100;
	VT_CHECK(canary_broken(lo, lo + rec->bytes_done) < 0,
		 "memory outside the mapped part changed at +%#lx",
		 canary_broken(lo, lo + rec->bytes_done));
	VT_CHECK(page_va(31)[0] == CANARY, "the page physically after the mapping was written");
	return VT_PASS;
}

/* 4-level first stage: bits 63:47 must be a sign extension of bit 47. */
static enum vt_result non_canonical_address(void)
{
	struct vdma_desc d;
	enum vt_result r;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	vdma_desc_fill(&d, 0, 1ull << 47, 0x40, 0, 0);
	st = run_tagged(&d, s1.pasid);
	if ((r = expect_page_fault(st, 1ull << 47, 1)) != VT_PASS)
		return r;
	if ((r = expect_one_fault(VTD_FAULT_REASON_FS_NON_CANONICAL, s1.pasid, 1ull << 47)) != VT_PASS)
		return r;
	VT_CHECK(canary_broken(0, 0) < 0, "memory changed at +%#lx", canary_broken(0, 0));
	return VT_PASS;
}

/* After all that the queue and the vIOMMU still work. */
static enum vt_result still_working(void)
{
	struct vdma_desc d;
	int st;

	vt_require("setup");
	memset(data.va, CANARY, data.len);
	vdma_desc_fill(&d, 0, IOVA_RW, PG, 0x1111111111111111ull, 0);
	st = run_tagged(&d, s1.pasid);
	VT_CHECK(st == VDMA_COMPLETION_STATUS_SUCCESS, "fill: %d", st);
	VT_CHECK(canary_broken(20 * PG, 21 * PG) < 0 && page_va(20)[PG - 1] == 0x11,
		 "fill did not land exactly in its page");
	VT_CHECK(!(vdma_qread(&env.dma, 0, VDMA_QUEUE_REG_Q_STATUS) & VDMA_Q_STATUS_HALTED_MASK),
		 "queue halted");
	return VT_PASS;
}

VUSER_CASES(setup, allowed_dma_works, unattached_pasid, read_only_page_written,
	    range_outside_stage_1, non_canonical_address, still_working)
