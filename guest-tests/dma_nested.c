/* dma_nested: PASID-tagged DMA through guest first-stage tables, nested on stage 2.
 *
 * The guest programs the vIOMMU (docs/vuser-iommu.md) from userspace: a
 * context entry for the vuser-dma's label, its RID_PASID entry (PASID 0)
 * pass-through, and one first-stage table per PASID. Then:
 *   - PASID 1 and PASID 2 use different tables, in which the same IOVA
 *     leads to different pages;
 *   - a buffer contiguous in IOVA but scattered in guest memory is copied;
 *   - 2 MiB pages (4-level) and a 5-level table with IOVAs above 2^48;
 *   - requests without a PASID go through the pass-through entry while
 *     PASID-tagged ones run, interleaved on one queue and on a second queue.
 * Every check reads the guest physical pages the mapping should reach.
 */
#include <stdlib.h>

#include "lib/vuser.h"

#define IOVA_SAME 0x40000000ull
#define IOVA_SRC 0x50000000ull
#define IOVA_DST 0x60000000ull
#define IOVA_2M 0x80000000ull
#define IOVA_HIGH (1ull << 48)      /* needs 5 levels */
#define PG VT_PAGE_SIZE

static struct vt_nested env;
static struct vt_space s1, s2, s3, s5;
static struct vt_dmabuf data, big1, big2;

/* The k-th 4 KiB page of the data hugepage. */
#define page_pa(k) vt_dmabuf_page_pa(&data, (k))
#define page_va(k) vt_dmabuf_page_va(&data, (k))

static int check_status(int st, volatile struct vdma_completion *c, const char *what)
{
	char why[200];

	if (st == VDMA_COMPLETION_STATUS_SUCCESS)
		return 0;
	vdma_completion_describe(c, why, sizeof(why));
	ktap_diag("%s: %s", what, st < 0 ? vt_err() : why);
	return -1;
}

static void dump_faults(void)
{
	struct vtd_fault f[8];
	int n = vtd_faults_collect(&env.iommu, f, 8);
	char line[200];

	for (int i = 0; i < n; i++) {
		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("vIOMMU fault %s", line);
	}
}

static enum vt_result setup(void)
{
	int ret = vt_nested_open(&env, VT_NESTED_ANY_LABEL, 0);

	if (ret)
		dump_faults();
	VT_CHECK(ret == 0, "vIOMMU and vuser-dma: %s", vt_err());
	ktap_diag("vIOMMU %s CAP %#llx ECAP %#llx; vuser-dma %s label %#x", env.iommu.pci.bdf,
		  (unsigned long long)env.iommu.cap, (unsigned long long)env.iommu.ecap,
		  env.dma.pci.bdf, env.dma.label);
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	VT_CALL(vt_dmabuf_alloc_huge(&big1), "2 MiB target 1");
	VT_CALL(vt_dmabuf_alloc_huge(&big2), "2 MiB target 2");
	return VT_PASS;
}

static enum vt_result rid_pass_through(void)
{
	volatile struct vdma_completion *c;
	struct vdma_desc d;
	int st;

	vt_require("setup");
	memset(page_va(0), 0, PG);
	vdma_desc_fill(&d, VDMA_NO_PASID, page_pa(0) + 0x100, 0x200, 0x5a5a5a5a5a5a5a5aull, 0);
	st = vt_nested_run_gpa(&env, &d, &c);
	VT_CHECK(!check_status(st, c, "untagged fill with translation on"), "failed");
	VT_CHECK(vt_first_not(page_va(0) + 0x100, 0x200, 0x5a) < 0 && vt_first_not(page_va(0), 0x100, 0) < 0,
		 "the untagged fill did not land at its GPA");
	return VT_PASS;
}

static enum vt_result two_pasids_two_tables(void)
{
	struct vdma_desc d;
	int st;

	vt_require("setup");
	VT_CALL(vt_space_init(&env, &s1, 1, 11, 4), "PASID 1 table");
	VT_CALL(vt_space_init(&env, &s2, 2, 12, 4), "PASID 2 table");
	/* The same IOVA: page 1 for PASID 1, page 2 for PASID 2. */
	VT_CALL(vt_space_map(&s1, IOVA_SAME, page_pa(1), PG, VTD_PROT_READ | VTD_PROT_WRITE,
			     VTD_PAGE_4K), "map PASID 1");
	VT_CALL(vt_space_map(&s2, IOVA_SAME, page_pa(2), PG, VTD_PROT_READ | VTD_PROT_WRITE,
			     VTD_PAGE_4K), "map PASID 2");
	memset(page_va(1), 0, 3 * PG);
	vdma_desc_fill(&d, 0, IOVA_SAME, PG, 0x1111111111111111ull, 0);
	st = vt_space_run(&s1, &d);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(!check_status(st, s1.comp, "PASID 1 fill"), "failed");
	vdma_desc_fill(&d, 0, IOVA_SAME, PG, 0x2222222222222222ull, 0);
	st = vt_space_run(&s2, &d);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(!check_status(st, s2.comp, "PASID 2 fill"), "failed");
	VT_CHECK(vt_first_not(page_va(1), PG, 0x11) < 0, "PASID 1's page holds %#x at +%ld",
		 page_va(1)[vt_first_not(page_va(1), PG, 0x11)], vt_first_not(page_va(1), PG, 0x11));
	VT_CHECK(vt_first_not(page_va(2), PG, 0x22) < 0, "PASID 2's page holds %#x at +%ld",
		 page_va(2)[vt_first_not(page_va(2), PG, 0x22)], vt_first_not(page_va(2), PG, 0x22));
	VT_CHECK(vt_first_not(page_va(3), PG, 0) < 0, "a neighbouring page was written");
	return VT_PASS;
}

/* IOVA-contiguous, GPA-scattered: source pages 4..7 mapped in reverse order. */
static enum vt_result scattered_memcpy(void)
{
	const uint64_t off = 0x123, len = 3 * PG + 0x456;
	uint8_t expect[4 * PG], got[4 * PG];
	struct vdma_desc d;
	int st;

	vt_require("two_pasids_two_tables");
	for (unsigned i = 0; i < 4; i++) {
		VT_CALL(vt_space_map(&s1, IOVA_SRC + i * PG, page_pa(7 - i), PG, VTD_PROT_READ,
				     VTD_PAGE_4K), "map source");
		VT_CALL(vt_space_map(&s1, IOVA_DST + i * PG, page_pa(8 + 2 * i), PG,
				     VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K), "map destination");
	}
	for (unsigned i = 0; i < 4; i++) {
		for (unsigned b = 0; b < PG; b++)
			page_va(7 - i)[b] = (uint8_t)(i * 37 + b * 13 + 1);
		memcpy(expect + i * PG, page_va(7 - i), PG);   /* the source as the device sees it */
		memset(page_va(8 + 2 * i), 0xee, PG);
		memset(page_va(9 + 2 * i), 0xdd, PG);          /* unmapped holes between */
	}
	vdma_desc_memcpy(&d, 0, IOVA_SRC + off, IOVA_DST + 0x80, len, 0);
	st = vt_space_run(&s1, &d);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(!check_status(st, s1.comp, "scattered memcpy"), "failed");
	for (unsigned i = 0; i < 4; i++)
		memcpy(got + i * PG, page_va(8 + 2 * i), PG);
	VT_CHECK(!memcmp(got + 0x80, expect + off, len), "the destination pages do not hold the "
		 "source in IOVA order");
	VT_CHECK(vt_first_not(got, 0x80, 0xee) < 0 && vt_first_not(got + 0x80 + len, 4 * PG - 0x80 - len,
							       0xee) < 0,
		 "memcpy wrote outside its IOVA range");
	for (unsigned i = 0; i < 4; i++)
		VT_CHECK(vt_first_not(page_va(9 + 2 * i), PG, 0xdd) < 0, "unmapped page %u written",
			 9 + 2 * i);
	return VT_PASS;
}

static enum vt_result pages_2m(void)
{
	uint64_t pte;
	int level;
	struct vdma_desc d;
	int st;

	vt_require("setup");
	VT_CALL(vt_space_init(&env, &s3, 3, 13, 4), "PASID 3 table");
	VT_CALL(vt_space_map(&s3, IOVA_2M, big1.pa, VT_HUGEPAGE_SIZE,
			     VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_2M), "map 2 MiB");
	VT_CALL(vt_space_map(&s3, IOVA_2M + VT_HUGEPAGE_SIZE, page_pa(20), PG,
			     VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K), "map the 4 KiB after it");
	VT_CALL(vtd_pgtable_lookup(&s3.pt, IOVA_2M + 0x12345, &pte, &level), "lookup");
	VT_CHECK(level == 2 && (pte & VTD_FIRST_STAGE_PTE_PS_MASK), "leaf at level %d, PTE %#llx",
		 level, (unsigned long long)pte);
	memset(big1.va, 0, big1.len);
	memset(page_va(20), 0, PG);
	/* From 2 KiB before the end of the 2 MiB page into the 4 KiB page after it. */
	vdma_desc_fill(&d, 0, IOVA_2M + VT_HUGEPAGE_SIZE - 0x800, 0x1000, 0x3333333333333333ull, 0);
	st = vt_space_run(&s3, &d);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(!check_status(st, s3.comp, "fill across a 2 MiB page"), "failed");
	VT_CHECK(vt_first_not(big1.va + VT_HUGEPAGE_SIZE - 0x800, 0x800, 0x33) < 0 &&
			 vt_first_not(big1.va, VT_HUGEPAGE_SIZE - 0x800, 0) < 0,
		 "the 2 MiB page is not as expected");
	VT_CHECK(vt_first_not(page_va(20), 0x800, 0x33) < 0 && vt_first_not(page_va(20) + 0x800, 0x800, 0) < 0,
		 "the 4 KiB page after it is not as expected");
	/* A copy inside the 2 MiB page, far from its start. */
	for (unsigned b = 0; b < 0x3000; b++)
		big1.va[0x100000 + b] = (uint8_t)(b * 7);
	vdma_desc_memcpy(&d, 0, IOVA_2M + 0x100000, IOVA_2M + 0x180000 + 5, 0x3000, 0);
	st = vt_space_run(&s3, &d);
	VT_CHECK(!check_status(st, s3.comp, "memcpy in a 2 MiB page"), "failed");
	VT_CHECK(!memcmp(big1.va + 0x180005, big1.va + 0x100000, 0x3000), "copy differs");
	return VT_PASS;
}

static enum vt_result five_level(void)
{
	uint64_t pte;
	int level;
	struct vdma_desc d;
	int st;

	vt_require("setup");
	VT_CHECK(VT_GET(env.iommu.cap, VTD_CAP_FS5LP), "CAP %#llx lacks FS5LP",
		 (unsigned long long)env.iommu.cap);
	VT_CALL(vt_space_init(&env, &s5, 5, 15, 5), "PASID 5: a 5-level table");
	VT_CALL(vt_space_map(&s5, IOVA_HIGH, page_pa(30), PG, VTD_PROT_READ | VTD_PROT_WRITE,
			     VTD_PAGE_4K), "map 4 KiB above 2^48");
	VT_CALL(vt_space_map(&s5, IOVA_HIGH + (1ull << 40), big2.pa, VT_HUGEPAGE_SIZE,
			     VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_2M), "map 2 MiB above 2^48");
	VT_CALL(vtd_pgtable_lookup(&s5.pt, IOVA_HIGH + (1ull << 40) + 0x1000, &pte, &level),
		"lookup");
	VT_CHECK(level == 2, "2 MiB leaf at level %d", level);
	memset(page_va(30), 0, PG);
	memset(big2.va, 0, big2.len);
	vdma_desc_fill(&d, 0, IOVA_HIGH + 0x10, 0x20, 0x5555555555555555ull, 0);
	st = vt_space_run(&s5, &d);
	if (st != VDMA_COMPLETION_STATUS_SUCCESS)
		dump_faults();
	VT_CHECK(!check_status(st, s5.comp, "fill at 2^48 + 0x10"), "failed");
	VT_CHECK(vt_first_not(page_va(30) + 0x10, 0x20, 0x55) < 0 && vt_first_not(page_va(30), 0x10, 0) < 0,
		 "the page above 2^48 is not as expected");
	vdma_desc_memcpy(&d, 0, IOVA_HIGH + 0x10, IOVA_HIGH + (1ull << 40) + 0x1fffe0, 0x20, 0);
	st = vt_space_run(&s5, &d);
	VT_CHECK(!check_status(st, s5.comp, "memcpy between 5-level mappings"), "failed");
	VT_CHECK(vt_first_not(big2.va + 0x1fffe0, 0x20, 0x55) < 0, "the 2 MiB page was not written");
	return VT_PASS;
}

/* Tagged and untagged descriptors in one batch on queue 0, and untagged
 * copies on queue 1 at the same time. */
static enum vt_result no_pasid_at_the_same_time(void)
{
	enum { N = 12 };
	volatile struct vdma_completion *gpa_recs;
	uint64_t gpa_recs_pa;
	int st;

	vt_require("two_pasids_two_tables");
	VT_CALL(vdma_queue_setup_pool(&env.dma, 1, &env.iommu.pool, 16), "queue 1");
	gpa_recs = vt_dmapool_alloc(&env.iommu.pool, 2 * N * sizeof(*gpa_recs), 64, &gpa_recs_pa);
	VT_CHECK(gpa_recs, "records: %s", vt_err());
	memset(page_va(40), 0, 4 * PG);
	memset(page_va(1), 0, PG);
	memset(page_va(2), 0, PG);
	memset((void *)s1.comp, 0, PG);
	memset((void *)s2.comp, 0, PG);
	for (unsigned i = 0; i < N; i++) {
		struct vdma_desc d;
		struct vt_space *s = i % 2 ? &s2 : &s1;

		/* queue 0: PASID 1 and 2 alternately fill 64 bytes of IOVA_SAME ... */
		vdma_desc_fill(&d, s->pasid, IOVA_SAME + (i / 2) * 64, 64,
			       0x0101010101010101ull * (i + 1), VT_SPACE_COMP_IOVA + i * 32);
		VT_CALL(vdma_submit(&env.dma, 0, &d), "submit tagged");
		/* ... with an untagged fill of a GPA after each, */
		vdma_desc_fill(&d, VDMA_NO_PASID, page_pa(40) + i * 64, 64,
			       0x8080808080808080ull + i, gpa_recs_pa + i * 32);
		VT_CALL(vdma_submit(&env.dma, 0, &d), "submit untagged");
		/* and queue 1 copies untagged at the same time. */
		vdma_desc_fill(&d, VDMA_NO_PASID, page_pa(42) + i * 64, 64, 0x4242424242424242ull,
			       gpa_recs_pa + (N + i) * 32);
		VT_CALL(vdma_submit(&env.dma, 1, &d), "submit on queue 1");
	}
	for (unsigned i = 0; i < N; i++) {
		struct vt_space *s = i % 2 ? &s2 : &s1;
		volatile struct vdma_completion *c = (volatile struct vdma_completion *)s->comp + i;
		uint8_t *page = i % 2 ? page_va(2) : page_va(1);

		st = vdma_wait(&env.dma, 0, c, 20000);
		VT_CHECK(!check_status(st, c, "tagged fill"), "tagged descriptor %u", i);
		st = vdma_wait(&env.dma, 0, &gpa_recs[i], 20000);
		VT_CHECK(!check_status(st, &gpa_recs[i], "untagged fill"), "untagged descriptor %u", i);
		st = vdma_wait(&env.dma, 1, &gpa_recs[N + i], 20000);
		VT_CHECK(!check_status(st, &gpa_recs[N + i], "queue 1 fill"), "queue 1 descriptor %u", i);
		VT_CHECK(vt_first_not(page + (i / 2) * 64, 64, (uint8_t)(i + 1)) < 0,
			 "PASID %u's fill %u did not reach its page", s->pasid, i);
		VT_CHECK(page_va(40)[i * 64] == (uint8_t)(0x80 + i), "untagged fill %u: %#x", i,
			 page_va(40)[i * 64]);
		VT_CHECK(vt_first_not(page_va(42) + i * 64, 64, 0x42) < 0, "queue 1 fill %u", i);
	}
	return VT_PASS;
}

static enum vt_result no_faults_recorded(void)
{
	struct vtd_fault f[8];
	int n;

	vt_require("setup");
	n = vtd_faults_collect(&env.iommu, f, 8);
	for (int i = 0; i < n; i++) {
		char line[200];

		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("unexpected fault %s", line);
	}
	VT_CHECK(n == 0, "%d fault record(s) after valid DMA only", n);
	return VT_PASS;
}

VUSER_CASES(setup, rid_pass_through, two_pasids_two_tables, scattered_memcpy, pages_2m,
	    five_level, no_pasid_at_the_same_time, no_faults_recorded)
