/* soak: nested DMA in a loop, with random invalidations and PRI faults.
 *
 * Opt-in (`make soak`, tests/soak/soak_run.py): `opt_in = true` in its manifest table.
 * Runs for `vuser.soak_s=N` seconds (kernel command line, default 20).
 *
 * Each round copies a random span of a freshly patterned source page into a
 * destination page through PASID 1's first-stage table:
 * - the source IOVA S stays mapped but is re-pointed to another page, then
 *   invalidated at random by page (VT-d 6.5.2.4, PASID-selective-within-page)
 *   or by the whole PASID; a missed invalidation shows as a stale copy;
 * - the destination IOVA (one of 256 in turn) is not present: half the
 *   rounds map it first (and invalidate: CAP.CM caches not-present entries),
 *   half submit with BLOCK_ON_FAULT and answer the page request (7.5, 7.7.1);
 * - the copy is checked byte for byte, and the bytes around it unchanged;
 *   then the destination is unmapped and invalidated again.
 */
#include "lib/vuser.h"

#define Z 0x40000000ull
#define S Z                        /* the source IOVA */
#define D0 (Z + 0x100000ull)       /* destination IOVAs D0 + k * PG, k < NDEST */
#define NDEST 256
#define PG VT_PAGE_SIZE
#define NSRC 8                     /* source pages 0..7, destination pages 8..15 */
#define GUARD 0x5a

static struct vt_nested env;
static struct vt_space s1;
static struct vt_dmabuf data;
static uint64_t rng;

#define page_pa(k) vt_dmabuf_page_pa(&data, (k))
#define page_va(k) vt_dmabuf_page_va(&data, (k))

static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng % n);
}

static unsigned soak_seconds(void)
{
	char line[4096];
	const char *p;

	if (vt_read_file("/proc/cmdline", line, sizeof(line) - 1) < 0)
		return 20;
	p = strstr(line, "vuser.soak_s=");
	return p ? (unsigned)strtoul(p + strlen("vuser.soak_s="), NULL, 10) : 20;
}

static int submit(struct vdma_desc *d)
{
	memset((void *)s1.comp, 0, sizeof(*s1.comp));
	d->pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | s1.pasid);
	d->completion = VT_SPACE_COMP_IOVA;
	d->flags |= VDMA_DESC_FLAGS_COMPLETION;
	return vdma_submit(&env.dma, 0, d);
}

static int invalidate_page(uint64_t iova)
{
	int ret = vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, iova, 0, 0);

	return ret ? ret : vtd_qi_wait(&env.iommu);
}

static enum vt_result setup(void)
{
	VT_CALL(vt_nested_open(&env, VT_NESTED_ANY_LABEL, VT_NESTED_PRI), "vIOMMU, vuser-dma, PRI");
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	VT_CALL(vt_space_init(&env, &s1, 1, 41, 4), "PASID 1 table");
	VT_CALL(vt_space_map(&s1, S, page_pa(0), PG, VTD_PROT_READ, VTD_PAGE_4K), "map S");
	return VT_PASS;
}

static enum vt_result soak(void)
{
	unsigned seconds = soak_seconds(), rounds = 0, requests = 0, by_page = 0, by_pasid = 0;
	double end;

	vt_require("setup");
	rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(vt_now() * 1e6);
	ktap_diag("soak: %u s, seed %#llx", seconds, (unsigned long long)rng);
	end = vt_now() + seconds;
	while (vt_now() < end) {
		unsigned sp = rnd(NSRC), dp = NSRC + rnd(NSRC);
		uint64_t dst = D0 + (uint64_t)(rounds % NDEST) * PG;
		uint32_t len = 1 + rnd(PG), off = rnd(PG - len + 1);
		int fault = rnd(2), ret;
		struct vdma_desc d;

		for (unsigned b = 0; b < PG; b++)
			page_va(sp)[b] = (uint8_t)(b * 7 + rounds);
		memset(page_va(dp), GUARD, PG);
		VT_CALL(vtd_pgtable_remap(&s1.pt, S, page_pa(sp)), "re-point S");
		if (rnd(2)) {
			VT_CALL(invalidate_page(S), "invalidate S");
			by_page++;
		} else {
			VT_CALL(vtd_inv_piotlb_pasid(&env.iommu, s1.did, s1.pasid), "invalidate PASID");
			VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
			by_pasid++;
		}
		if (!fault) {
			VT_CALL(vt_space_map(&s1, dst, page_pa(dp), PG, VTD_PROT_READ | VTD_PROT_WRITE,
					     VTD_PAGE_4K), "map destination");
			VT_CALL(invalidate_page(dst), "invalidate destination");
		}
		vdma_desc_memcpy(&d, 0, S + off, dst + off, len, 0);
		d.flags |= VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
		VT_CALL(submit(&d), "submit");
		if (fault) {
			struct vtd_page_req req;

			ret = vtd_prq_wait(&env.iommu, &req, 20000);
			VT_CHECK(ret == 1, "round %u: no page request: %s (status %u)", rounds, vt_err(),
				 s1.comp->status);
			VT_CHECK(req.addr == dst && req.write && req.pasid_present &&
					 req.pasid == s1.pasid,
				 "round %u: page request for %#llx (W %d, PASID %d/%u), want %#llx",
				 rounds, (unsigned long long)req.addr, req.write, req.pasid_present,
				 req.pasid, (unsigned long long)dst);
			VT_CALL(vt_space_map(&s1, dst, page_pa(dp), PG, VTD_PROT_READ | VTD_PROT_WRITE,
					     VTD_PAGE_4K), "map on request");
			VT_CALL(invalidate_page(dst), "invalidate destination");
			VT_CALL(vtd_page_group_response(&env.iommu, &req, VTD_PGRESP_RC_SUCCESS),
				"response");
			VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
			requests++;
		}
		ret = vdma_wait(&env.dma, 0, s1.comp, 20000);
		VT_CHECK(ret == VDMA_COMPLETION_STATUS_SUCCESS, "round %u: memcpy: %d (%s)", rounds,
			 ret, ret < 0 ? vt_err() : vdma_status_name(ret));
		VT_CHECK(!memcmp(page_va(dp) + off, page_va(sp) + off, len),
			 "round %u: the copy of %u bytes at %#x from page %u differs", rounds, len, off,
			 sp);
		VT_CHECK(vt_first_not(page_va(dp), off, GUARD) < 0 &&
				 vt_first_not(page_va(dp) + off + len, PG - off - len, GUARD) < 0,
			 "round %u: bytes outside the copy changed", rounds);
		VT_CALL(vtd_pgtable_unmap(&s1.pt, dst, PG), "unmap destination");
		VT_CALL(invalidate_page(dst), "invalidate destination");
		rounds++;
	}
	ktap_diag("soak: %u copies verified, %u page requests, %u page and %u PASID invalidations",
		  rounds, requests, by_page, by_pasid);
	VT_CHECK(rounds > 0, "no round ran in %u s", seconds);
	return VT_PASS;
}

VUSER_CASES(setup, soak)
