/* libvuser: what the vIOMMU reports: page requests (VT-d 7.5) and their
 * group responses (7.7.1), and the fault recording registers (7.2, 11.4.14).
 */
#include "vuser.h"

int vtd_prq_read(struct vtd *v, struct vtd_page_req *req)
{
	uint64_t head = vtd_read64(v, VTD_REG_PQH), tail = vtd_read64(v, VTD_REG_PQT);
	uint64_t ring = (uint64_t)v->prq_entries * VTD_PRQ_ENTRY_SIZE;
	const uint64_t *d;

	if (head == tail)
		return 0;
	if (head >= ring || tail >= ring || head % VTD_PRQ_ENTRY_SIZE)
		return vt_fail(EIO, "page request queue: PQH %#llx PQT %#llx outside %#llx",
			       (unsigned long long)head, (unsigned long long)tail,
			       (unsigned long long)ring);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	d = &v->prq[head / 8];
	memset(req, 0, sizeof(*req));
	memcpy(req->raw, (const void *)d, sizeof(req->raw));
	req->pasid_present = (int)VT_GET(d[0], VTD_PRD_LO_PP);
	req->rid = (uint16_t)VT_GET(d[0], VTD_PRD_LO_RID);
	req->pasid = (uint32_t)VT_GET(d[0], VTD_PRD_LO_PASID);
	req->exec_req = (int)VT_GET(d[0], VTD_PRD_LO_EXR);
	req->priv_req = (int)VT_GET(d[0], VTD_PRD_LO_PMR);
	req->read = (int)VT_GET(d[1], VTD_PRD_HI_RDR);
	req->write = (int)VT_GET(d[1], VTD_PRD_HI_WRR);
	req->lpig = (int)VT_GET(d[1], VTD_PRD_HI_LPIG);
	req->prgi = (uint16_t)VT_GET(d[1], VTD_PRD_HI_PRGI);
	req->addr = d[1] & VTD_PRD_HI_ADDR_MASK;
	vtd_write64(v, VTD_REG_PQH, (head + VTD_PRQ_ENTRY_SIZE) % ring);
	if (vtd_read64(v, VTD_REG_PQH) == vtd_read64(v, VTD_REG_PQT))
		vtd_write32(v, VTD_REG_PRS, (uint32_t)VTD_PRS_PPR_MASK); /* RW1C once drained */
	return 1;
}

int vtd_prq_wait(struct vtd *v, struct vtd_page_req *req, unsigned timeout_ms)
{
	double deadline = vt_now() + timeout_ms / 1000.0;

	for (;;) {
		int ret = vtd_prq_read(v, req);

		if (ret)
			return ret;
		if (vt_now() > deadline)
			return vt_fail(ETIMEDOUT, "no page request in %u ms (PRS %#x, PQH %#llx, PQT "
				       "%#llx)", timeout_ms, vtd_read32(v, VTD_REG_PRS),
				       (unsigned long long)vtd_read64(v, VTD_REG_PQH),
				       (unsigned long long)vtd_read64(v, VTD_REG_PQT));
		vt_sleep_us(200);
	}
}

int vtd_page_group_response(struct vtd *v, const struct vtd_page_req *req, unsigned rc)
{
	uint64_t d[4] = { 0 };

	d[0] = VT_PUT(VTD_PGRESP_DESC_TYPE_LO, VTD_INV_TYPE_PAGE_GROUP_RESPONSE) | VT_PUT(VTD_PGRESP_DESC_PP, req->pasid_present) |
	       VT_PUT(VTD_PGRESP_DESC_RC, rc) | VT_PUT(VTD_PGRESP_DESC_RID, req->rid) |
	       VT_PUT(VTD_PGRESP_DESC_PASID, req->pasid);
	d[1] = VT_PUT(VTD_PGRESP_QW1_LPIG, req->lpig) | VT_PUT(VTD_PGRESP_QW1_PRGI, req->prgi);
	return vtd_qi_submit(v, d);
}

/* ---- fault recording ---- */

uint32_t vtd_fsts(struct vtd *v)
{
	return vtd_read32(v, VTD_REG_FSTS);
}

int vtd_fault_read(struct vtd *v, unsigned index, struct vtd_fault *f)
{
	unsigned off = v->fro + index * VTD_FRCD_SIZE;
	uint64_t hi, lo;

	if (index >= v->nfr)
		return vt_fail(EINVAL, "fault record %u of %u", index, v->nfr);
	hi = vtd_read64(v, off + 8);
	memset(f, 0, sizeof(*f));
	if (!VT_GET(hi, VTD_FRCD_HI_F))
		return 0;
	lo = vtd_read64(v, off);
	f->index = (int)index;
	f->raw_lo = lo;
	f->raw_hi = hi;
	f->addr = lo & VTD_FRCD_LO_FI_MASK;
	f->sid = (uint16_t)VT_GET(hi, VTD_FRCD_HI_SID);
	f->reason = (uint8_t)VT_GET(hi, VTD_FRCD_HI_FR);
	f->pasid_present = (int)VT_GET(hi, VTD_FRCD_HI_PP);
	f->pasid = (uint32_t)VT_GET(hi, VTD_FRCD_HI_PV);
	f->is_read = (int)VT_GET(hi, VTD_FRCD_HI_T1);
	return 1;
}

void vtd_fault_clear(struct vtd *v, unsigned index)
{
	/* F is bit 63 of the record, bit 31 of its top dword: RW1C. */
	vtd_write32(v, v->fro + index * VTD_FRCD_SIZE + 12, 1u << 31);
}

int vtd_faults_collect(struct vtd *v, struct vtd_fault *out, int max)
{
	int n = 0;

	for (unsigned i = 0; i < v->nfr && n < max; i++) {
		if (vtd_fault_read(v, i, &out[n]) == 1) {
			vtd_fault_clear(v, i);
			n++;
		}
	}
	vtd_write32(v, VTD_REG_FSTS, (uint32_t)VTD_FSTS_PFO_MASK); /* RW1C */
	return n;
}

void vtd_faults_clear_all(struct vtd *v)
{
	struct vtd_fault f[16];

	while (vtd_faults_collect(v, f, 16) > 0)
		;
}

const char *vtd_fault_reason_name(unsigned reason)
{
	switch (reason) {
	case VTD_FAULT_REASON_ADDR_BEYOND_MGAW: return "address beyond MGAW";
	case VTD_FAULT_REASON_READ: return "read denied";
	case VTD_FAULT_REASON_RTADDR_INV_TTM: return "RTADDR: TTM not scalable mode";
	case VTD_FAULT_REASON_ROOT_ACCESS: return "root table not readable";
	case VTD_FAULT_REASON_ROOT_P: return "root entry not present";
	case VTD_FAULT_REASON_ROOT_RSVD: return "root entry reserved bit";
	case VTD_FAULT_REASON_CONTEXT_ACCESS: return "context table not readable";
	case VTD_FAULT_REASON_CONTEXT_P: return "context entry not present";
	case VTD_FAULT_REASON_CONTEXT_RSVD: return "context entry reserved bit";
	case VTD_FAULT_REASON_PRE_CLEAR: return "page request with PRE clear";
	case VTD_FAULT_REASON_PASID_DIR_ACCESS: return "PASID directory not readable";
	case VTD_FAULT_REASON_PASID_DIR_P: return "PASID directory entry not present";
	case VTD_FAULT_REASON_PASID_DIR_RSVD: return "PASID directory entry reserved bit";
	case VTD_FAULT_REASON_PASID_ACCESS: return "PASID table not readable";
	case VTD_FAULT_REASON_PASID_P: return "PASID entry not present";
	case VTD_FAULT_REASON_PASID_RSVD: return "PASID entry reserved bit";
	case VTD_FAULT_REASON_PASID_INVALID: return "PASID entry invalid";
	case VTD_FAULT_REASON_FS_ACCESS: return "first-stage table not readable";
	case VTD_FAULT_REASON_FS_P: return "first-stage entry not present";
	case VTD_FAULT_REASON_FS_RSVD: return "first-stage entry reserved bit";
	case VTD_FAULT_REASON_FS_NON_CANONICAL: return "first stage: non-canonical address";
	case VTD_FAULT_REASON_FS_PRIV: return "first stage: privilege (U/S or SRE)";
	case VTD_FAULT_REASON_SM_WRITE: return "write to a read-only page";
	case VTD_FAULT_REASON_FS_AD_UPDATE: return "first stage: A/D update failed";
	default: return "unknown reason";
	}
}

void vtd_fault_describe(const struct vtd_fault *f, char *buf, size_t len)
{
	char pasid[32] = "no PASID";

	if (f->pasid_present)
		snprintf(pasid, sizeof(pasid), "PASID %#x", f->pasid);
	snprintf(buf, len, "record %d: %s at %#llx, source %#x, %s, reason %#x (%s)", f->index,
		 f->is_read ? "read" : "write", (unsigned long long)f->addr, f->sid, pasid,
		 f->reason, vtd_fault_reason_name(f->reason));
}
