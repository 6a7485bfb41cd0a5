/* kernel_dma_api: the DMA API through the guest kernel's own intel_iommu.
 *
 * In a kernel-owned guest (tests/guest/guest_tests.toml: iommu = "kernel")
 * the stock intel_iommu driver runs vuser-iommu as a VT-d unit (dmar0),
 * puts the vuser-dma in an IOMMU group with a DMA domain, and builds that
 * domain's first-stage page table itself. The vuser_dma driver then only
 * uses the DMA API: the addresses it hands the device are IOVAs of that
 * domain, which vuser translates through the kernel's table. A copy whose
 * bytes arrive, at IOVAs that are not the buffers' physical addresses, went
 * through the kernel's table; the host side (tests/guest/test_kernel_dma_api.py)
 * checks the same in the model: the RID_PASID's nested first-stage HWPT and
 * the IOVA -> GPA translations.
 *
 *   iommu_owns_device   dmar0 is up, the vuser-dma is in an IOMMU group
 *                       with a DMA domain, its label is its BDF;
 *   module_loads        vuser_dma binds; PASID was already enabled by the
 *                       IOMMU driver (the module checks before enabling);
 *   map_single_copy     dma_map_single buffers, several sizes;
 *   coherent_copy       dma_alloc_coherent buffers (both, and mixed);
 *   every_queue         one copy per queue, each with its MSI-X interrupt;
 *   no_dmar_faults      the kernel logged no DMAR fault meanwhile.
 * Each copy prints "dma: <kind> src iova .. phys .. dst iova .. phys .. len .."
 * for the host side to find in the model's trace.
 */
#include <stdlib.h>

#include "lib/vuser.h"

static int fd = -1;
static struct vuser_dma_info info;
static struct vt_pci pci;
static struct vt_kmsg kmsg = { .fd = -1 };

static enum vt_result iommu_owns_device(void)
{
	char type[32], dev[128];
	uint16_t sid;
	uint32_t label;

	VT_CALL(vt_kmsg_open(&kmsg), "the kernel log");
	VT_CHECK(access("/sys/class/iommu/dmar0", F_OK) == 0,
		 "no /sys/class/iommu/dmar0: the kernel's intel_iommu did not take vuser-iommu "
		 "(booted kernel-owned? intel_iommu=on,sm_on)");
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vt_pci_iommu_group_type(&pci, type, sizeof(type)), "IOMMU group");
	ktap_diag("%s: IOMMU group type %s", pci.bdf, type);
	VT_CHECK(!strcmp(type, "DMA") || !strcmp(type, "DMA-FQ"),
		 "group type \"%s\", want a translated DMA domain", type);
	snprintf(dev, sizeof(dev), "/sys/class/iommu/dmar0/devices/%s", pci.bdf);
	VT_CHECK(access(dev, F_OK) == 0, "%s is not behind dmar0", pci.bdf);
	VT_CALL(vt_pci_bdf_sid(&pci, &sid), "BDF");
	VT_CALL(vt_pci_label(&pci, &label), "label");
	ktap_diag("source-id %#x, device label %#x", sid, label);
	VT_CHECK(label == sid, "label %#x is not the BDF %#x: the unit would see another "
		 "source-id than the kernel programs", label, sid);
	return VT_PASS;
}

static enum vt_result module_loads(void)
{
	vt_require("iommu_owns_device");
	VT_CALL(vdma_kmod_open(0, &fd), "load the driver and open /dev/vuser_dma0");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("domain %s, PASID %s (%s), ATS %s, PRI %s", vdma_kmod_domain_name(info.domain),
		  info.pasid_enabled ? "on" : "off",
		  info.pasid_owner == VUSER_DMA_OWNER_IOMMU ? "enabled by the IOMMU driver" :
		  info.pasid_owner == VUSER_DMA_OWNER_DRIVER ? "enabled by vuser_dma" : "-",
		  info.ats_enabled ? "on" : "off", info.pri_enabled ? "on" : "off");
	VT_CHECK(info.domain == VUSER_DMA_DOMAIN_DMA || info.domain == VUSER_DMA_DOMAIN_DMA_FQ,
		 "the device's domain is %s", vdma_kmod_domain_name(info.domain));
	VT_CHECK(info.pasid_enabled && info.pasid_owner == VUSER_DMA_OWNER_IOMMU,
		 "PASID %s, owner %u: the IOMMU driver should have enabled it before the probe",
		 info.pasid_enabled ? "on" : "off", info.pasid_owner);
	return VT_PASS;
}

/* One copy through the driver; the bytes checked here, the addresses told. */
static int copy(const char *kind, unsigned flags, unsigned q, size_t len, unsigned seed,
		struct vuser_dma_memcpy *m)
{
	int ret = vdma_kmod_copy(fd, m, q, flags, len, seed, kind);

	if (m->status == VDMA_COMPLETION_STATUS_SUCCESS)
		ktap_diag("dma: %s src iova %#llx phys %#llx dst iova %#llx phys %#llx len %zu",
			  kind, (unsigned long long)m->src_dma, (unsigned long long)m->src_phys,
			  (unsigned long long)m->dst_dma, (unsigned long long)m->dst_phys, len);
	return ret;
}

/* Translated: the device was given IOVAs, not the pages' physical addresses. */
static int check_translated(const struct vuser_dma_memcpy *m)
{
	if (m->src_dma == m->src_phys || m->dst_dma == m->dst_phys)
		return vt_fail(EINVAL, "a DMA address equals its physical address (src %#llx, "
			       "dst %#llx): not translated", (unsigned long long)m->src_dma,
			       (unsigned long long)m->dst_dma);
	return 0;
}

static enum vt_result map_single_copy(void)
{
	static const size_t sizes[] = { 1, 64, 4095, 4096, 4097, 65536 + 3, 1u << 20 };
	struct vuser_dma_memcpy m;

	vt_require("module_loads");
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		VT_CALL(copy("map_single", 0, 0, sizes[i], i, &m), "dma_map_single copy");
		VT_CALL(check_translated(&m), "IOVAs");
		VT_CHECK(m.irqs >= 1, "no MSI-X interrupt for %zu bytes", sizes[i]);
	}
	return VT_PASS;
}

static enum vt_result coherent_copy(void)
{
	static const struct { const char *kind; unsigned flags; size_t len; } runs[] = {
		{ "coherent", VUSER_DMA_MEMCPY_COHERENT_SRC | VUSER_DMA_MEMCPY_COHERENT_DST, 4096 },
		{ "coherent", VUSER_DMA_MEMCPY_COHERENT_SRC | VUSER_DMA_MEMCPY_COHERENT_DST, 3 * 4096 + 17 },
		{ "coherent_to_single", VUSER_DMA_MEMCPY_COHERENT_SRC, 8192 },
		{ "single_to_coherent", VUSER_DMA_MEMCPY_COHERENT_DST, 8192 + 5 },
	};
	struct vuser_dma_memcpy m;

	vt_require("module_loads");
	for (unsigned i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		VT_CALL(copy(runs[i].kind, runs[i].flags, 0, runs[i].len, 40 + i, &m), "copy");
		VT_CALL(check_translated(&m), "IOVAs");
	}
	return VT_PASS;
}

static enum vt_result every_queue(void)
{
	struct vuser_dma_memcpy m;

	vt_require("module_loads");
	for (unsigned q = 0; q < info.nqueues; q++) {
		VT_CALL(copy("queue", 0, q, 8192 + q, q, &m), "copy");
		VT_CHECK(m.irqs == 1, "queue %u: %llu interrupts, want 1", q,
			 (unsigned long long)m.irqs);
	}
	return VT_PASS;
}

static enum vt_result no_dmar_faults(void)
{
	int n;

	vt_require("iommu_owns_device");
	n = vt_kmsg_count(&kmsg, "DMAR: [DMA ", 100);
	VT_CHECK(n >= 0, "reading the kernel log: %s", vt_err());
	VT_CHECK(n == 0, "the kernel logged %d DMAR fault(s) during the copies", n);
	return VT_PASS;
}

VUSER_CASES(iommu_owns_device, module_loads, map_single_copy, coherent_copy, every_queue,
	    no_dmar_faults)
