/* libvuser: a vuser-dma behind the vIOMMU, and PASID address spaces (see vuser.h). */
#include <linux/pci_regs.h>

#include "vuser.h"

#define NESTED_RING_ENTRIES 64
#define PRI_REQUESTS 32

int vt_nested_open(struct vt_nested *e, uint32_t label, unsigned flags)
{
	struct vt_pci pci;
	int ret;

	memset(e, 0, sizeof(*e));
	e->flags = flags;
	if ((ret = vtd_open(&e->iommu)) || (ret = vtd_init(&e->iommu)))
		return ret;
	ret = label == VT_NESTED_ANY_LABEL ? vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci)
					  : vt_pci_find_label(VDMA_DEVICE_ID, label, &pci);
	if (ret || (ret = vdma_open(&e->dma, &pci)))
		return ret;
	if (e->dma.label > 0xffff)
		return vt_fail(ERANGE, "label %#x does not fit a 16-bit source-id", e->dma.label);
	e->sid = (uint16_t)e->dma.label;
	/* PASID on; ATS and PRI exactly as asked (an earlier program may have left them on). */
	if ((ret = vt_pci_pasid_enable(&e->dma.pci, 1)) ||
	    (ret = vt_pci_ats_enable(&e->dma.pci, !!(flags & VT_NESTED_ATS))) ||
	    (ret = vt_pci_pri_enable(&e->dma.pci, !!(flags & VT_NESTED_PRI), PRI_REQUESTS)))
		return ret;
	ret = vtd_context_setup(&e->iommu, e->sid, 0,
				(flags & VT_NESTED_PRI ? VTD_CTX_PRE : 0) |
				(flags & VT_NESTED_ATS ? VTD_CTX_DTE : 0));
	if (ret || (ret = vtd_pasid_set_pass_through(&e->iommu, e->sid, 0, VT_NESTED_RID_DID)))
		return ret;
	if ((ret = vtd_enable_translation(&e->iommu, 1)))
		return ret;
	if ((ret = vdma_enable(&e->dma)))
		return ret;
	return vdma_queue_setup_pool(&e->dma, 0, &e->iommu.pool, NESTED_RING_ENTRIES);
}

int vt_space_init(struct vt_nested *e, struct vt_space *s, uint32_t pasid, uint16_t did,
		  int levels)
{
	int ret;

	memset(s, 0, sizeof(*s));
	s->env = e;
	s->pasid = pasid;
	s->did = did;
	if ((ret = vtd_pgtable_init(&s->pt, &e->iommu.pool, levels)))
		return ret;
	s->comp = vt_dmapool_alloc(&e->iommu.pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &s->comp_pa);
	if (!s->comp)
		return -errno;
	if ((ret = vtd_pgtable_map(&s->pt, VT_SPACE_COMP_IOVA, s->comp_pa, VT_PAGE_SIZE,
				   VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K)))
		return ret;
	return vtd_pasid_set_first_stage(&e->iommu, e->sid, pasid, did, s->pt.root_pa, levels);
}

int vt_space_map(struct vt_space *s, uint64_t iova, uint64_t pa, uint64_t size, unsigned prot,
		 uint64_t page_size)
{
	return vtd_pgtable_map(&s->pt, iova, pa, size, prot, page_size);
}

int vt_space_run(struct vt_space *s, struct vdma_desc *d)
{
	d->pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | VT_PUT(VDMA_DESC_PASID_PASID, s->pasid));
	d->completion = VT_SPACE_COMP_IOVA;
	d->flags |= VDMA_DESC_FLAGS_COMPLETION;
	return vdma_run(&s->env->dma, 0, d, s->comp);
}

int vt_nested_run_gpa(struct vt_nested *e, struct vdma_desc *d,
		      volatile struct vdma_completion **rec)
{
	if (!e->gpa_comp) {
		e->gpa_comp = vt_dmapool_alloc(&e->iommu.pool, sizeof(*e->gpa_comp), 64,
					       &e->gpa_comp_pa);
		if (!e->gpa_comp)
			return -errno;
	}
	d->pasid = 0;
	d->completion = e->gpa_comp_pa;
	d->flags |= VDMA_DESC_FLAGS_COMPLETION;
	if (rec)
		*rec = e->gpa_comp;
	return vdma_run(&e->dma, 0, d, e->gpa_comp);
}
