/* page_fault: PRI page requests through the vIOMMU's page request queue.
 *
 * With PRI enabled on the device and PRE in its context entry, a descriptor
 * flagged BLOCK_ON_FAULT that hits a not-present first-stage entry does not
 * fail: the device sends a page request, which the vIOMMU writes into the
 * guest's page request queue (VT-d 7.5). The guest reads it, maps the page,
 * invalidates (CAP.CM: not-present entries may be cached) and answers with a
 * page group response (7.7.1); the descriptor then completes. An INVALID
 * response makes it complete with PAGE_FAULT instead.
 */
#include <linux/pci_regs.h>

#include "lib/vuser.h"

#define Z 0x40000000ull
#define PG VT_PAGE_SIZE
#define PRQ_TIMEOUT_MS 10000

static struct vt_nested env;
static struct vt_space s1;
static struct vt_dmabuf data;

/* The k-th 4 KiB page of the data hugepage. */
#define page_pa(k) vt_dmabuf_page_pa(&data, (k))
#define page_va(k) vt_dmabuf_page_va(&data, (k))

/* Submit one PASID 1 descriptor without waiting, its record cleared. */
static int submit(struct vdma_desc *d)
{
	memset((void *)s1.comp, 0, sizeof(*s1.comp));
	d->pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | s1.pasid);
	d->completion = VT_SPACE_COMP_IOVA;
	d->flags |= VDMA_DESC_FLAGS_COMPLETION;
	return vdma_submit(&env.dma, 0, d);
}

static void describe_req(const struct vtd_page_req *r)
{
	ktap_diag("page request: rid %#x pasid %s%#x addr %#llx %s%s lpig %d prgi %u", r->rid,
		  r->pasid_present ? "" : "(none) ", r->pasid, (unsigned long long)r->addr,
		  r->read ? "R" : "", r->write ? "W" : "", r->lpig, r->prgi);
}

static enum vt_result setup(void)
{
	uint16_t status;

	VT_CALL(vt_nested_open(&env, VT_NESTED_ANY_LABEL, VT_NESTED_PRI), "vIOMMU, vuser-dma, PRI");
	VT_CHECK(VT_GET(env.iommu.ecap, VTD_ECAP_PRS), "ECAP %#llx lacks PRS",
		 (unsigned long long)env.iommu.ecap);
	VT_CALL(vt_pci_pri_status(&env.dma.pci, &status), "PRI status");
	VT_CHECK(!(status & (PCI_PRI_STATUS_RF | PCI_PRI_STATUS_UPRGI | PCI_PRI_STATUS_STOPPED)) ||
			 status == PCI_PRI_STATUS_STOPPED,
		 "PRI status %#x after enabling", status);
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	VT_CALL(vt_space_init(&env, &s1, 1, 31, 4), "PASID 1 table");
	return VT_PASS;
}

static enum vt_result not_present_becomes_page_request(void)
{
	struct vtd_page_req req;
	struct vdma_desc d;
	int ret;

	vt_require("setup");
	vdma_desc_fill(&d, 0, Z + 0x100, 0x200, 0xabababababababababull, 0);
	d.flags |= VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	VT_CALL(submit(&d), "submit");
	ret = vtd_prq_wait(&env.iommu, &req, PRQ_TIMEOUT_MS);
	VT_CHECK(ret == 1, "no page request: %s (completion status %u, fault records: FSTS %#x)",
		 vt_err(), s1.comp->status, vtd_fsts(&env.iommu));
	describe_req(&req);
	VT_CHECK(req.rid == env.sid, "RID %#x, the device's label is %#x", req.rid, env.sid);
	VT_CHECK(req.pasid_present && req.pasid == s1.pasid, "PASID %d/%#x", req.pasid_present,
		 req.pasid);
	VT_CHECK(req.addr == Z, "address %#llx, want %#llx", (unsigned long long)req.addr, Z);
	VT_CHECK(req.write && req.lpig, "a fill asks for write access, last of its group");
	vt_sleep_us(200000);
	VT_CHECK(s1.comp->status == 0, "the descriptor completed (%s) before the response",
		 vdma_status_name(s1.comp->status));

	/* Map it, invalidate (CAP.CM), answer SUCCESS: the descriptor completes. */
	memset(page_va(0), 0, PG);
	VT_CALL(vt_space_map(&s1, Z, page_pa(0), PG, VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K),
		"map Z");
	VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, Z, 0, 0), "invalidate Z");
	VT_CALL(vtd_page_group_response(&env.iommu, &req, VTD_PGRESP_RC_SUCCESS), "response");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	ret = vdma_wait(&env.dma, 0, s1.comp, 20000);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_SUCCESS, "after the response: %d (%s)", ret,
		 ret < 0 ? vt_err() : vdma_status_name(ret));
	VT_CHECK(vt_first_not(page_va(0) + 0x100, 0x200, 0xab) < 0 && vt_first_not(page_va(0), 0x100, 0) < 0,
		 "the fill did not land in the page mapped for it");
	return VT_PASS;
}

/* A copy from an unmapped source into an unmapped destination: two requests. */
static enum vt_result read_and_write_requests(void)
{
	struct vtd_page_req req;
	struct vdma_desc d;
	int reads = 0, writes = 0, ret;
	double deadline;

	vt_require("not_present_becomes_page_request");
	for (unsigned b = 0; b < PG; b++)
		page_va(1)[b] = (uint8_t)(b * 3);
	memset(page_va(2), 0, PG);
	vdma_desc_memcpy(&d, 0, Z + 0x10000, Z + 0x20000, PG, 0);
	d.flags |= VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	VT_CALL(submit(&d), "submit");
	deadline = vt_now() + 20;
	while (!s1.comp->status && vt_now() < deadline) {
		ret = vtd_prq_wait(&env.iommu, &req, 2000);
		if (ret != 1)
			continue;
		describe_req(&req);
		VT_CHECK(req.pasid_present && req.pasid == s1.pasid, "PASID");
		if (req.addr == Z + 0x10000) {
			VT_CHECK(req.read && !req.write, "source request is not a read");
			reads++;
			VT_CALL(vt_space_map(&s1, req.addr, page_pa(1), PG, VTD_PROT_READ, VTD_PAGE_4K),
				"map source");
		} else {
			VT_CHECK(req.addr == Z + 0x20000 && req.write, "unexpected request");
			writes++;
			VT_CALL(vt_space_map(&s1, req.addr, page_pa(2), PG,
					     VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K), "map dest");
		}
		VT_CALL(vtd_inv_piotlb_pages(&env.iommu, s1.did, s1.pasid, req.addr, 0, 0), "inv");
		VT_CALL(vtd_page_group_response(&env.iommu, &req, VTD_PGRESP_RC_SUCCESS), "response");
		VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	}
	ret = vdma_wait(&env.dma, 0, s1.comp, 1000);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_SUCCESS, "memcpy: %d (%s)", ret,
		 ret < 0 ? vt_err() : vdma_status_name(ret));
	VT_CHECK(reads == 1 && writes == 1, "%d read and %d write requests, want 1 and 1", reads,
		 writes);
	VT_CHECK(!memcmp(page_va(1), page_va(2), PG), "the copy differs");
	return VT_PASS;
}

static enum vt_result invalid_response_fails_the_descriptor(void)
{
	struct vtd_page_req req;
	struct vdma_desc d;
	int ret;

	vt_require("not_present_becomes_page_request");
	vdma_desc_fill(&d, 0, Z + 0x30040, 0x40, 0, 0);
	d.flags |= VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	VT_CALL(submit(&d), "submit");
	ret = vtd_prq_wait(&env.iommu, &req, PRQ_TIMEOUT_MS);
	VT_CHECK(ret == 1, "no page request: %s", vt_err());
	describe_req(&req);
	VT_CHECK(req.addr == Z + 0x30000, "address %#llx", (unsigned long long)req.addr);
	VT_CALL(vtd_page_group_response(&env.iommu, &req, VTD_PGRESP_RC_INVALID), "INVALID");
	VT_CALL(vtd_qi_wait(&env.iommu), "wait descriptor");
	ret = vdma_wait(&env.dma, 0, s1.comp, 20000);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_PAGE_FAULT, "after INVALID: %d (%s)", ret,
		 ret < 0 ? vt_err() : vdma_status_name(ret));
	VT_CHECK(s1.comp->fault_addr == Z + 0x30040, "fault_addr %#llx",
		 (unsigned long long)s1.comp->fault_addr);
	VT_CHECK(s1.comp->fault_info & VDMA_FAULT_INFO_WRITE, "fault_info %#x", s1.comp->fault_info);
	VT_CHECK(!(s1.comp->fault_info & VDMA_FAULT_INFO_STAGE2), "a stage-1 fault, info %#x",
		 s1.comp->fault_info);
	/* The queue goes on. */
	vdma_desc_nop(&d, 0, 0);
	ret = vt_space_run(&s1, &d);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_SUCCESS, "NOP after the failure: %d", ret);
	return VT_PASS;
}

/* Without BLOCK_ON_FAULT the descriptor fails at once: no page request. */
static enum vt_result no_request_without_block_on_fault(void)
{
	struct vtd_page_req req;
	struct vtd_fault f[8];
	struct vdma_desc d;
	int ret, n;

	vt_require("setup");
	vtd_faults_clear_all(&env.iommu);
	vdma_desc_fill(&d, 0, Z + 0x50000, 0x40, 0, 0);
	ret = vt_space_run(&s1, &d);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_PAGE_FAULT, "status %d (%s)", ret,
		 ret < 0 ? vt_err() : vdma_status_name(ret));
	VT_CHECK(vtd_prq_read(&env.iommu, &req) == 0, "a page request appeared");
	n = vtd_faults_collect(&env.iommu, f, 8);
	VT_CHECK(n == 1 && f[0].reason == VTD_FAULT_REASON_FS_P && f[0].addr == Z + 0x50000,
		 "%d fault records (first: reason %#x addr %#llx), want one FS_P at Z+0x50000", n,
		 n ? f[0].reason : 0, n ? (unsigned long long)f[0].addr : 0ull);
	return VT_PASS;
}

/* PRE clear in the context entry: the vIOMMU refuses the request (SCT.8). */
static enum vt_result request_with_pre_clear(void)
{
	struct vtd_page_req req;
	struct vtd_fault f[8];
	struct vdma_desc d;
	int ret, n;

	vt_require("not_present_becomes_page_request");
	vtd_faults_clear_all(&env.iommu);
	VT_CALL(vtd_context_setup(&env.iommu, env.sid, 0, 0), "context entry without PRE");
	vdma_desc_fill(&d, 0, Z + 0x60000, 0x40, 0, 0);
	d.flags |= VDMA_DESC_FLAGS_BLOCK_ON_FAULT;
	ret = vt_space_run(&s1, &d);
	VT_CHECK(ret == VDMA_COMPLETION_STATUS_PAGE_FAULT, "status %d (%s)", ret,
		 ret < 0 ? vt_err() : vdma_status_name(ret));
	VT_CHECK(vtd_prq_read(&env.iommu, &req) == 0, "a page request was queued despite PRE=0");
	n = vtd_faults_collect(&env.iommu, f, 8);
	for (int i = 0; i < n; i++)
		ktap_diag("fault record: reason %#x (%s)", f[i].reason,
			  vtd_fault_reason_name(f[i].reason));
	VT_CHECK(n >= 1 && f[0].reason == VTD_FAULT_REASON_PRE_CLEAR, "want a PRE_CLEAR record");
	return VT_PASS;
}

VUSER_CASES(setup, not_present_becomes_page_request, read_and_write_requests,
	    invalid_response_fails_the_descriptor, no_request_without_block_on_fault,
	    request_with_pre_clear)
