/* libvuser: a driver for the vuser-iommu function (docs/vuser-iommu.md).
 *
 * The function's BAR0 is a VT-d scalable-mode register file (VT-d 11.4);
 * this file programs it as a VT-d driver would, from guest userspace: the
 * registers, root table (6.2.1), scalable-mode context entries (9.4), PASID
 * directory and table (9.5, 9.6). Queued invalidation is in viommu_qi.c,
 * page requests and fault records in viommu_events.c. The source-id of a
 * device is its label (root index label >> 8, context index label & 0xff).
 */
#include <linux/pci_regs.h>

#include "vuser.h"

#define VTD_TIMEOUT_MS 10000
/* PASID entry FSPM (first-stage paging mode). */
#define FSPM_4LEVEL 0
#define FSPM_5LEVEL 1
/* GCMD one-shot bits, never written back from GSTS (Linux: 0x96ffffff). */
#define GCMD_ONE_SHOT 0x69000000u

uint32_t vtd_read32(struct vtd *v, unsigned off)
{
	return *(volatile uint32_t *)(v->regs + off);
}

void vtd_write32(struct vtd *v, unsigned off, uint32_t val)
{
	*(volatile uint32_t *)(v->regs + off) = val;
}

/* 64-bit registers as two 32-bit accesses, low half first (VT-d 10.2). */
uint64_t vtd_read64(struct vtd *v, unsigned off)
{
	uint64_t lo = vtd_read32(v, off);

	return lo | (uint64_t)vtd_read32(v, off + 4) << 32;
}

void vtd_write64(struct vtd *v, unsigned off, uint64_t val)
{
	vtd_write32(v, off, (uint32_t)val);
	vtd_write32(v, off + 4, (uint32_t)(val >> 32));
}

int vtd_open(struct vtd *v)
{
	int ret;

	memset(v, 0, sizeof(*v));
	v->timeout_ms = VTD_TIMEOUT_MS;
	if ((ret = vt_pci_find(VTD_VENDOR_ID, VTD_DEVICE_ID, &v->pci)))
		return ret;
	if ((ret = vt_pci_unbind(&v->pci)) || (ret = vt_pci_enable(&v->pci)) ||
	    (ret = vt_pci_set_master(&v->pci, 1)))
		return ret;
	v->regs = vt_pci_map_bar(&v->pci, 0, &v->regs_len);
	if (!v->regs)
		return -errno;
	if (v->regs_len < 0x1000)
		return vt_fail(EINVAL, "vIOMMU BAR0 is %zu bytes", v->regs_len);
	v->cap = vtd_read64(v, VTD_REG_CAP);
	v->ecap = vtd_read64(v, VTD_REG_ECAP);
	v->fro = (unsigned)VT_GET(v->cap, VTD_CAP_FRO) * 16;
	v->nfr = (unsigned)VT_GET(v->cap, VTD_CAP_NFR) + 1;
	if (!VT_GET(v->ecap, VTD_ECAP_SMTS) || !VT_GET(v->ecap, VTD_ECAP_QI))
		return vt_fail(ENODEV, "vIOMMU ECAP %#llx lacks scalable mode or QI",
			       (unsigned long long)v->ecap);
	if (v->fro + v->nfr * VTD_FRCD_SIZE > v->regs_len)
		return vt_fail(EINVAL, "fault records at %#x x %u beyond BAR0", v->fro, v->nfr);
	vt_dmapool_init(&v->pool);
	return 0;
}

/* GCMD: set or clear one persistent command bit, wait for its GSTS bit. */
static int gcmd(struct vtd *v, uint32_t cmd, uint32_t sts, int on, const char *what)
{
	uint32_t val = vtd_read32(v, VTD_REG_GSTS) & ~GCMD_ONE_SHOT;
	int ret;

	vtd_write32(v, VTD_REG_GCMD, on ? val | cmd : val & ~cmd);
	ret = vt_wait32((volatile uint32_t *)(v->regs + VTD_REG_GSTS), sts, on ? sts : 0,
			v->timeout_ms);
	if (ret)
		return vt_fail(ETIMEDOUT, "GCMD %s %s: GSTS %#x", what, on ? "on" : "off",
			       vtd_read32(v, VTD_REG_GSTS));
	return 0;
}

int vtd_init(struct vtd *v)
{
	uint32_t val, gsts = vtd_read32(v, VTD_REG_GSTS);
	int ret;

	/* Start from a quiet unit, whatever an earlier program left: translation
	 * off, queued invalidation off (IQH returns to 0), no fault pending. */
	if ((gsts & VTD_GCMD_TE_MASK) && (ret = gcmd(v, VTD_GCMD_TE_MASK, VTD_GCMD_TE_MASK, 0, "TE")))
		return ret;
	if ((gsts & VTD_GCMD_QIE_MASK) &&
	    (ret = gcmd(v, VTD_GCMD_QIE_MASK, VTD_GCMD_QIE_MASK, 0, "QIE")))
		return ret;
	vtd_write32(v, VTD_REG_FSTS, (uint32_t)(VTD_FSTS_PFO_MASK | VTD_FSTS_IQE_MASK |
						VTD_FSTS_ICE_MASK | VTD_FSTS_ITE_MASK));
	vtd_faults_clear_all(v);

	v->root = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &v->root_pa);
	v->iq = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &v->iq_pa);
	v->prq = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &v->prq_pa);
	v->wait_status = vt_dmapool_alloc(&v->pool, 64, 64, &v->wait_status_pa);
	if (!v->root || !v->iq || !v->prq || !v->wait_status)
		return -ENOMEM;

	/* Root table, scalable mode (TTM = 01b), then SRTP (one-shot). */
	vtd_write64(v, VTD_REG_RTADDR, (v->root_pa & VTD_RTADDR_RTA_MASK) |
			VT_PUT(VTD_RTADDR_TTM, VTD_TTM_SCALABLE));
	val = vtd_read32(v, VTD_REG_GSTS) & ~GCMD_ONE_SHOT;
	vtd_write32(v, VTD_REG_GCMD, val | (uint32_t)VTD_GCMD_SRTP_MASK);
	if (vt_wait32((volatile uint32_t *)(v->regs + VTD_REG_GSTS), VTD_GCMD_SRTP_MASK,
		      VTD_GCMD_SRTP_MASK, v->timeout_ms))
		return vt_fail(ETIMEDOUT, "SRTP: GSTS %#x never showed RTPS",
			       vtd_read32(v, VTD_REG_GSTS));

	/* Invalidation queue: one page of 256-bit descriptors (QS 0: 128). */
	v->iq_entries = VT_PAGE_SIZE / VTD_IQ_ENTRY_SIZE;
	v->iq_tail = 0;
	vtd_write64(v, VTD_REG_IQT, 0);
	vtd_write64(v, VTD_REG_IQA, (v->iq_pa & VTD_IQA_IQA_MASK) | VT_PUT(VTD_IQA_DW, 1) |
			VT_PUT(VTD_IQA_QS, 0));
	if ((ret = gcmd(v, VTD_GCMD_QIE_MASK, VTD_GCMD_QIE_MASK, 1, "QIE")))
		return ret;

	/* Page request queue: one page of 32-byte descriptors (PQS 0: 128). */
	v->prq_entries = VT_PAGE_SIZE / VTD_PRQ_ENTRY_SIZE;
	vtd_write64(v, VTD_REG_PQH, 0);
	vtd_write64(v, VTD_REG_PQA, (v->prq_pa & VTD_PQA_PQA_MASK) | VT_PUT(VTD_PQA_PQS, 0));
	vtd_write32(v, VTD_REG_PRS, (uint32_t)(VTD_PRS_PPR_MASK | VTD_PRS_PRO_MASK));

	/* Start from clean caches, as a driver does after setting the root. */
	if ((ret = vtd_inv_context_global(v)) || (ret = vtd_inv_pasid_cache(v, 0, 0)) ||
	    (ret = vtd_inv_iotlb_global(v)))
		return ret;
	return vtd_qi_wait(v);
}

int vtd_enable_translation(struct vtd *v, int on)
{
	return gcmd(v, VTD_GCMD_TE_MASK, VTD_GCMD_TE_MASK, on, "TE");
}

void vtd_close(struct vtd *v)
{
	vt_pci_unmap_bar(v->regs, v->regs_len);
	vt_pci_close(&v->pci);
	vt_dmapool_destroy(&v->pool);
	v->regs = NULL;
}

/* ---- context entries and PASID tables ---- */

static struct vtd_dev_ctx *dev_ctx(struct vtd *v, uint16_t sid, int create)
{
	struct vtd_dev_ctx *free_slot = NULL;

	for (int i = 0; i < VTD_MAX_LABELS; i++) {
		if (v->devs[i].used && v->devs[i].sid == sid)
			return &v->devs[i];
		if (!v->devs[i].used && !free_slot)
			free_slot = &v->devs[i];
	}
	if (!create) {
		vt_fail(ENOENT, "no context set up for source-id %#x", sid);
		return NULL;
	}
	if (!free_slot) {
		vt_fail(ENOSPC, "more than %d devices", VTD_MAX_LABELS);
		return NULL;
	}
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->used = 1;
	free_slot->sid = sid;
	return free_slot;
}

int vtd_context_setup(struct vtd *v, uint16_t sid, uint32_t rid_pasid, unsigned flags)
{
	unsigned bus = sid >> 8, devfn = sid & 0xff, half = devfn >= 128;
	struct vtd_dev_ctx *d = dev_ctx(v, sid, 1);
	uint64_t *ctx, ctx_pa, *root = &v->root[bus * 2 + half];
	uint64_t *ce;

	if (!d)
		return -errno;
	if (rid_pasid >= VTD_PASID_MAX)
		return vt_fail(EINVAL, "RID_PASID %#x beyond 20 bits", rid_pasid);
	ctx = v->ctx_tables[bus][half];
	if (!ctx) {
		ctx = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &ctx_pa);
		if (!ctx)
			return -ENOMEM;
		v->ctx_tables[bus][half] = ctx;
		/* lo: LP | LCTP (devfn 0-127); hi: UP | UCTP (devfn 128-255). */
		__atomic_store_n(root, VTD_ROOT_HALF_P_MASK | (ctx_pa & VTD_ROOT_HALF_CTP_MASK),
				 __ATOMIC_RELEASE);
	}
	if (!d->pasid_dir) {
		d->pdts = 0; /* 2^(0+7) = 128 directory entries: PASIDs below 8192 */
		d->pasid_dir = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE,
						&d->pasid_dir_pa);
		if (!d->pasid_dir)
			return -ENOMEM;
	}
	ce = &ctx[(devfn & 0x7f) * 4];
	ce[1] = VT_PUT(VTD_CONTEXT_QW1_RID_PASID, rid_pasid);
	ce[2] = 0;
	ce[3] = 0;
	__atomic_store_n(&ce[0], VTD_CONTEXT_QW0_P_MASK | VTD_CONTEXT_QW0_PASIDE_MASK |
				 (flags & VTD_CTX_PRE ? VTD_CONTEXT_QW0_PRE_MASK : 0) |
				 (flags & VTD_CTX_DTE ? VTD_CONTEXT_QW0_DTE_MASK : 0) |
				 VT_PUT(VTD_CONTEXT_QW0_PDTS, d->pdts) |
				 (d->pasid_dir_pa & VTD_CONTEXT_QW0_PASIDDIRPTR_MASK),
			 __ATOMIC_RELEASE);
	/* A context entry that was not present needs no flush on hardware with
	 * CM=0; flush anyway: the vIOMMU may cache the not-present state. */
	int ret = vtd_inv_context_global(v);

	return ret ? ret : vtd_qi_wait(v);
}

uint64_t *vtd_pasid_entry(struct vtd *v, uint16_t sid, uint32_t pasid)
{
	struct vtd_dev_ctx *d = dev_ctx(v, sid, 0);
	unsigned dir_idx = pasid >> 6;
	uint64_t pa;

	if (!d)
		return NULL;
	if (dir_idx >= (1u << (d->pdts + 7)) || dir_idx >= 64) {
		vt_fail(ERANGE, "PASID %#x beyond this library's directory (%u tables)", pasid,
			64u);
		return NULL;
	}
	if (!d->pasid_tables[dir_idx]) {
		/* 64 entries of 64 bytes: one page. */
		d->pasid_tables[dir_idx] = vt_dmapool_alloc(&v->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &pa);
		if (!d->pasid_tables[dir_idx])
			return NULL;
		__atomic_store_n(&d->pasid_dir[dir_idx],
				 VTD_PASID_DIR_ENTRY_P_MASK | (pa & VTD_PASID_DIR_ENTRY_SMPTBLPTR_MASK), __ATOMIC_RELEASE);
	}
	return &d->pasid_tables[dir_idx][(pasid & 0x3f) * 8];
}

/* Write a PASID entry: words 1..7 first, word 0 (with P) last; then flush. */
static int pasid_write(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did,
		       const uint64_t val[8])
{
	uint64_t *pe = vtd_pasid_entry(v, sid, pasid);
	int ret;

	if (!pe)
		return -errno;
	if (pe[0] & VTD_PASID_QW0_P_MASK) {
		/* Changing a live entry: tear down first (VT-d 6.5.2.5 / Linux
		 * intel_pasid_tear_down_entry), so no half-written entry is used. */
		__atomic_store_n(&pe[0], 0, __ATOMIC_RELEASE);
		if ((ret = vtd_inv_pasid_cache(v, (uint16_t)VT_GET(pe[1], VTD_PASID_QW1_DID), pasid)) ||
		    (ret = vtd_inv_piotlb_pasid(v, (uint16_t)VT_GET(pe[1], VTD_PASID_QW1_DID), pasid)) ||
		    (ret = vtd_qi_wait(v)))
			return ret;
	}
	for (int i = 1; i < 8; i++)
		pe[i] = val[i];
	__atomic_store_n(&pe[0], val[0], __ATOMIC_RELEASE);
	if ((ret = vtd_inv_pasid_cache(v, did, pasid)) || (ret = vtd_inv_piotlb_pasid(v, did, pasid)))
		return ret;
	return vtd_qi_wait(v);
}

int vtd_pasid_set_first_stage(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did,
			      uint64_t flptr, int levels)
{
	uint64_t val[8] = { 0 };

	if (levels != 4 && levels != 5)
		return vt_fail(EINVAL, "first-stage levels %d (4 or 5)", levels);
	if (levels == 5 && !VT_GET(v->cap, VTD_CAP_FS5LP))
		return vt_fail(EOPNOTSUPP, "vIOMMU CAP %#llx lacks FS5LP (5-level first stage)",
			       (unsigned long long)v->cap);
	val[0] = VTD_PASID_QW0_P_MASK | VT_PUT(VTD_PASID_QW0_PGTT, VTD_PGTT_FIRST_STAGE);
	val[1] = VT_PUT(VTD_PASID_QW1_DID, did);
	val[2] = VT_PUT(VTD_PASID_QW2_FSPM, levels == 5 ? FSPM_5LEVEL : FSPM_4LEVEL) |
		 (flptr & VTD_PASID_QW2_FSPTPTR_MASK);
	return pasid_write(v, sid, pasid, did, val);
}

int vtd_pasid_set_pass_through(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did)
{
	uint64_t val[8] = { 0 };

	if (!VT_GET(v->ecap, VTD_ECAP_PT))
		return vt_fail(EOPNOTSUPP, "vIOMMU ECAP %#llx lacks PT", (unsigned long long)v->ecap);
	val[0] = VTD_PASID_QW0_P_MASK | VT_PUT(VTD_PASID_QW0_PGTT, VTD_PGTT_PASS_THROUGH);
	val[1] = VT_PUT(VTD_PASID_QW1_DID, did);
	return pasid_write(v, sid, pasid, did, val);
}

int vtd_pasid_clear(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did)
{
	uint64_t *pe = vtd_pasid_entry(v, sid, pasid);
	int ret;

	if (!pe)
		return -errno;
	__atomic_store_n(&pe[0], 0, __ATOMIC_RELEASE);
	if ((ret = vtd_inv_pasid_cache(v, did, pasid)) || (ret = vtd_inv_piotlb_pasid(v, did, pasid)))
		return ret;
	return vtd_qi_wait(v);
}
