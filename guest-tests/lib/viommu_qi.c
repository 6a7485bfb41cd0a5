/* libvuser: the vIOMMU's queued invalidation (VT-d 6.5.2), 256-bit descriptors.
 *
 * vtd_qi_submit writes one descriptor at IQT and moves the tail; vtd_qi_wait
 * queues a wait descriptor with a status write (SW) and polls the status
 * word in guest memory, watching FSTS for IQE/ITE/ICE meanwhile.
 */
#include "vuser.h"

/* Granularities (the G field of each descriptor type, VT-d 6.5.2). */
#define CC_G_GLOBAL 1
#define IOTLB_G_GLOBAL 1
#define PIOTLB_G_PASID 2
#define PIOTLB_G_PAGE 3
#define PC_G_PASID 1

static int qi_error(struct vtd *v)
{
	uint32_t fsts = vtd_read32(v, VTD_REG_FSTS);

	if (fsts & (VTD_FSTS_IQE_MASK | VTD_FSTS_ITE_MASK | VTD_FSTS_ICE_MASK))
		return vt_fail(EIO, "invalidation queue error: FSTS %#x (IQE %d ITE %d ICE %d), "
			       "IQERCD %#llx, IQH %#llx", fsts, !!(fsts & VTD_FSTS_IQE_MASK),
			       !!(fsts & VTD_FSTS_ITE_MASK), !!(fsts & VTD_FSTS_ICE_MASK),
			       (unsigned long long)vtd_read64(v, VTD_REG_IQERCD),
			       (unsigned long long)vtd_read64(v, VTD_REG_IQH));
	return 0;
}

int vtd_qi_submit(struct vtd *v, const uint64_t desc[4])
{
	unsigned next = (v->iq_tail + 1) % v->iq_entries;
	double deadline = vt_now() + v->timeout_ms / 1000.0;
	uint64_t *slot;
	int ret;

	if ((ret = qi_error(v)))
		return ret;
	/* Full when the tail would meet the head. */
	while ((unsigned)(vtd_read64(v, VTD_REG_IQH) / VTD_IQ_ENTRY_SIZE) == next) {
		if (vt_now() > deadline)
			return vt_fail(ETIMEDOUT, "invalidation queue full (IQH %#llx)",
				       (unsigned long long)vtd_read64(v, VTD_REG_IQH));
		vt_sleep_us(100);
	}
	slot = &v->iq[v->iq_tail * 4];
	for (int i = 0; i < 4; i++)
		slot[i] = desc[i];
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	v->iq_tail = next;
	vtd_write64(v, VTD_REG_IQT, (uint64_t)next * VTD_IQ_ENTRY_SIZE);
	return 0;
}

int vtd_qi_wait(struct vtd *v)
{
	uint64_t desc[4] = { 0 };
	uint32_t seq = ++v->wait_seq;
	double deadline;
	int ret;

	*v->wait_status = 0;
	desc[0] = VT_PUT(VTD_WAIT_DESC_TYPE_LO, VTD_INV_TYPE_WAIT) | VTD_WAIT_DESC_SW_MASK |
		  VT_PUT(VTD_WAIT_DESC_STDATA, seq);
	desc[1] = v->wait_status_pa & VTD_WAIT_ADDR_STADDR_MASK;
	if ((ret = vtd_qi_submit(v, desc)))
		return ret;
	deadline = vt_now() + v->timeout_ms / 1000.0;
	while (*v->wait_status != seq) {
		if ((ret = qi_error(v)))
			return ret;
		if (vt_now() > deadline)
			return vt_fail(ETIMEDOUT, "wait descriptor not completed in %u ms (status "
				       "word %#x, IQH %#llx, IQT %#llx)", v->timeout_ms,
				       *v->wait_status, (unsigned long long)vtd_read64(v, VTD_REG_IQH),
				       (unsigned long long)vtd_read64(v, VTD_REG_IQT));
		vt_sleep_us(50);
	}
	return 0;
}

int vtd_inv_context_global(struct vtd *v)
{
	uint64_t d[4] = { VT_PUT(VTD_CC_DESC_TYPE_LO, VTD_INV_TYPE_CONTEXT_CACHE) |
			  VT_PUT(VTD_CC_DESC_G, CC_G_GLOBAL), 0, 0, 0 };

	return vtd_qi_submit(v, d);
}

int vtd_inv_pasid_cache(struct vtd *v, uint16_t did, uint32_t pasid)
{
	uint64_t d[4] = { VT_PUT(VTD_PC_DESC_TYPE_LO, VTD_INV_TYPE_PASID_CACHE) |
			  VT_PUT(VTD_PC_DESC_G, PC_G_PASID) | VT_PUT(VTD_PC_DESC_DID, did) |
			  VT_PUT(VTD_PC_DESC_PASID, pasid), 0, 0, 0 };

	return vtd_qi_submit(v, d);
}

int vtd_inv_iotlb_global(struct vtd *v)
{
	uint64_t d[4] = { VT_PUT(VTD_IOTLB_DESC_TYPE_LO, VTD_INV_TYPE_IOTLB) |
			  VT_PUT(VTD_IOTLB_DESC_G, IOTLB_G_GLOBAL), 0, 0, 0 };

	return vtd_qi_submit(v, d);
}

int vtd_inv_piotlb_pasid(struct vtd *v, uint16_t did, uint32_t pasid)
{
	uint64_t d[4] = { VT_PUT(VTD_PIOTLB_DESC_TYPE_LO, VTD_INV_TYPE_PASID_IOTLB) |
			  VT_PUT(VTD_PIOTLB_DESC_G, PIOTLB_G_PASID) |
			  VT_PUT(VTD_PIOTLB_DESC_DID, did) | VT_PUT(VTD_PIOTLB_DESC_PASID, pasid),
			  0, 0, 0 };

	return vtd_qi_submit(v, d);
}

int vtd_inv_piotlb_pages(struct vtd *v, uint16_t did, uint32_t pasid, uint64_t addr, unsigned am,
			 int ih)
{
	uint64_t d[4] = { VT_PUT(VTD_PIOTLB_DESC_TYPE_LO, VTD_INV_TYPE_PASID_IOTLB) |
			  VT_PUT(VTD_PIOTLB_DESC_G, PIOTLB_G_PAGE) |
			  VT_PUT(VTD_PIOTLB_DESC_DID, did) | VT_PUT(VTD_PIOTLB_DESC_PASID, pasid),
			  0, 0, 0 };

	if (am > VTD_IOTLB_ADDR_AM_MASK || addr & ((VT_PAGE_SIZE << am) - 1))
		return vt_fail(EINVAL, "PASID-IOTLB invalidation: addr %#llx not aligned to 2^%u "
			       "pages", (unsigned long long)addr, am);
	d[1] = (addr & VTD_IOTLB_ADDR_ADDR_MASK) | VT_PUT(VTD_IOTLB_ADDR_AM, am) |
	       VT_PUT(VTD_IOTLB_ADDR_IH, !!ih);
	return vtd_qi_submit(v, d);
}

int vtd_inv_devtlb(struct vtd *v, uint16_t sid, int pasid_present, uint32_t pasid,
		   uint64_t addr, uint64_t size_bytes)
{
	uint64_t d[4] = { 0 };
	uint64_t a = addr & ~(size_bytes - 1);
	int s = size_bytes > VT_PAGE_SIZE;

	if (size_bytes < VT_PAGE_SIZE || (size_bytes & (size_bytes - 1)))
		return vt_fail(EINVAL, "device-TLB invalidation size %#llx",
			       (unsigned long long)size_bytes);
	/* PCIe ATS 10.3.1: with S set, the lowest clear address bit above bit
	 * 11 gives the size (all ones below it). */
	if (s)
		a |= (size_bytes >> 1) - 1;
	if (pasid_present) {
		d[0] = VT_PUT(VTD_PDEV_TLB_DESC_TYPE_LO, VTD_INV_TYPE_PASID_DEVICE_TLB) |
		       VT_PUT(VTD_PDEV_TLB_DESC_SID, sid) | VT_PUT(VTD_PDEV_TLB_DESC_PASID, pasid);
		d[1] = (a & VTD_PDEV_TLB_ADDR_ADDR_MASK) | VT_PUT(VTD_PDEV_TLB_ADDR_S, s);
	} else {
		d[0] = VT_PUT(VTD_DEV_TLB_DESC_TYPE_LO, VTD_INV_TYPE_DEVICE_TLB) |
		       VT_PUT(VTD_DEV_TLB_DESC_SID, sid);
		d[1] = (a & VTD_DEV_TLB_ADDR_ADDR_MASK) | VT_PUT(VTD_DEV_TLB_ADDR_S, s);
	}
	return vtd_qi_submit(v, d);
}
