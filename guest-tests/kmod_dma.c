/* kmod_dma: the vuser_dma kernel driver (guest-tests/kmod/vuser_dma.c) at work.
 *
 * The driver is loaded from /lib/modules (its vermagic was checked against
 * this kernel when the image was built), binds the vuser-dma function and
 * creates /dev/vuser_dma0. Through its ioctls:
 *   - memcpy through the DMA API (streaming mappings, untagged requests),
 *     several sizes, on every queue, each completion signalled by the
 *     queue's MSI-X vector;
 *   - PASID-tagged descriptors: userspace programs the vIOMMU (a first-stage
 *     table for PASID 1, the RID_PASID entry pass-through so the driver's
 *     own DMA keeps working), the driver submits and sleeps until the
 *     queue's interrupt says it completed.
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "lib/vuser.h"

#define X 0x40000000ull
#define PG VT_PAGE_SIZE

static int fd = -1;
static struct vuser_dma_info info;
static struct vt_nested env;     /* the vIOMMU only: the device belongs to the driver */
static struct vt_space s1;
static struct vt_dmabuf data;

static enum vt_result module_loads(void)
{
	struct vt_pci pci;
	char drv[64];

	VT_CHECK(access(VDMA_KMOD_PATH, R_OK) == 0, "%s: %s", VDMA_KMOD_PATH, strerror(errno));
	VT_CALL(vdma_kmod_open(0, &fd), "load the driver and open /dev/vuser_dma0");
	VT_CHECK(vt_module_loaded(VDMA_KMOD_NAME), "/sys/module/" VDMA_KMOD_NAME " missing");
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vt_pci_driver(&pci, drv, sizeof(drv)), "driver link");
	VT_CHECK(!strcmp(drv, VDMA_KMOD_NAME), "%s is bound to \"%s\"", pci.bdf, drv);
	return VT_PASS;
}

static enum vt_result driver_info(void)
{
	vt_require("module_loads");
	VT_CALL(vdma_kmod_info(fd, &info), "INFO");
	ktap_diag("label %#x, CAP %#x, %u queues, %u vectors, ring %u, PASID %s", info.label,
		  info.cap, info.nqueues, info.nvectors, info.ring_entries,
		  info.pasid_enabled ? "on" : "off");
	VT_CHECK(info.nqueues >= 1 && info.nvectors == info.nqueues + 1,
		 "%u queues with %u vectors (want one per queue + error)", info.nqueues,
		 info.nvectors);
	VT_CHECK(info.pasid_enabled, "the driver did not enable PASID");
	return VT_PASS;
}

static int kmemcpy(unsigned q, size_t len, unsigned seed, struct vuser_dma_memcpy *m)
{
	return vdma_kmod_copy(fd, m, q, 0, len, seed, "memcpy");
}

static enum vt_result memcpy_dma_api(void)
{
	static const size_t sizes[] = { 1, 64, 4095, 4096, 4097, 65536 + 3, 1u << 20 };
	struct vuser_dma_memcpy m;

	vt_require("driver_info");
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		VT_CALL(kmemcpy(0, sizes[i], i, &m), "memcpy through the driver");
		VT_CHECK(m.irqs >= 1, "memcpy of %zu bytes: no MSI-X interrupt on queue 0", sizes[i]);
	}
	return VT_PASS;
}

static enum vt_result memcpy_every_queue(void)
{
	struct vuser_dma_memcpy m;

	vt_require("driver_info");
	for (unsigned q = 0; q < info.nqueues; q++) {
		VT_CALL(kmemcpy(q, 8192 + q, q, &m), "memcpy");
		VT_CHECK(m.irqs == 1, "queue %u: %llu interrupts on its vector, want 1", q,
			 (unsigned long long)m.irqs);
	}
	return VT_PASS;
}

static enum vt_result bad_ioctls_refused(void)
{
	struct vuser_dma_memcpy m = { 0 };
	uint8_t b[16];

	vt_require("driver_info");
	m.src = (uintptr_t)b;
	m.dst = (uintptr_t)b;
	m.len = 16;
	m.queue = info.nqueues;
	VT_CHECK(vdma_kmod_memcpy(fd, &m) == -EINVAL, "queue %u accepted", info.nqueues);
	m.queue = 0;
	m.len = (2u << 20);
	VT_CHECK(vdma_kmod_memcpy(fd, &m) == -EINVAL, "2 MiB memcpy accepted");
	m.len = 16;
	m.src = 8;  /* not a user address that can be read */
	VT_CHECK(vdma_kmod_memcpy(fd, &m) == -EFAULT, "bad user pointer: %s", vt_err());
	return VT_PASS;
}

/* The vIOMMU, set up from userspace around the driver's device. */
static enum vt_result viommu_for_the_driver(void)
{
	vt_require("driver_info");
	VT_CALL(vtd_open(&env.iommu), "open the vIOMMU");
	VT_CALL(vtd_init(&env.iommu), "init the vIOMMU");
	VT_CHECK(info.label <= 0xffff, "label %#x beyond a source-id", info.label);
	env.sid = (uint16_t)info.label;
	VT_CALL(vtd_context_setup(&env.iommu, env.sid, 0, 0), "context entry");
	VT_CALL(vtd_pasid_set_pass_through(&env.iommu, env.sid, 0, VT_NESTED_RID_DID),
		"RID_PASID pass-through (the driver's own DMA)");
	VT_CALL(vt_space_init(&env, &s1, 1, 51, 4), "PASID 1 table");
	VT_CALL(vt_dmabuf_alloc_huge(&data), "data hugepage");
	VT_CALL(vt_space_map(&s1, X, data.pa, 4 * PG, VTD_PROT_READ | VTD_PROT_WRITE, VTD_PAGE_4K),
		"map X");
	VT_CALL(vtd_enable_translation(&env.iommu, 1), "translation on");
	return VT_PASS;
}

static enum vt_result pasid_descriptor_through_the_driver(void)
{
	struct vuser_dma_submit s = { 0 };

	vt_require("viommu_for_the_driver");
	memset(data.va, 0, 4 * PG);
	memset((void *)s1.comp, 0, sizeof(*s1.comp));
	s.opcode = VDMA_OPCODE_FILL;
	s.flags = VDMA_DESC_FLAGS_COMPLETION;
	s.pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | s1.pasid);
	s.dst = X + 0x800;
	s.len = 2 * PG;
	s.pattern = 0x6b6b6b6b6b6b6b6bull;
	s.completion = VT_SPACE_COMP_IOVA;
	s.queue = 0;
	s.wait = 1;
	s.timeout_ms = 20000;
	VT_CALL(vdma_kmod_submit(fd, &s), "SUBMIT");
	VT_CHECK(s1.comp->status == VDMA_COMPLETION_STATUS_SUCCESS, "status %u (%s)",
		 s1.comp->status, vdma_status_name(s1.comp->status));
	VT_CHECK(s.irqs >= 1, "the completion raised no interrupt");
	for (size_t i = 0; i < 4 * PG; i++) {
		uint8_t want = i >= 0x800 && i < 0x800 + 2 * PG ? 0x6b : 0;

		VT_CHECK(data.va[i] == want, "byte %#zx is %#x, want %#x", i, data.va[i], want);
	}
	ktap_diag("COMPLETED %u, %llu interrupt(s)", s.completed, (unsigned long long)s.irqs);
	return VT_PASS;
}

/* PASID-tagged copy between two IOVAs, then the untagged DMA API memcpy: both work. */
static enum vt_result pasid_and_dma_api_together(void)
{
	struct vuser_dma_submit s = { 0 };
	struct vuser_dma_memcpy m;

	vt_require("pasid_descriptor_through_the_driver");
	for (unsigned i = 0; i < PG; i++)
		data.va[i] = (uint8_t)(i ^ 0x5a);
	memset((void *)s1.comp, 0, sizeof(*s1.comp));
	s.opcode = VDMA_OPCODE_MEMCPY;
	s.flags = VDMA_DESC_FLAGS_COMPLETION;
	s.pasid = (uint32_t)(VDMA_DESC_PASID_VALID_MASK | s1.pasid);
	s.src = X;
	s.dst = X + 3 * PG;
	s.len = PG;
	s.completion = VT_SPACE_COMP_IOVA;
	s.queue = info.nqueues > 1 ? 1 : 0;
	s.wait = 1;
	s.timeout_ms = 20000;
	VT_CALL(vdma_kmod_submit(fd, &s), "SUBMIT memcpy");
	VT_CHECK(s1.comp->status == VDMA_COMPLETION_STATUS_SUCCESS, "status %u", s1.comp->status);
	VT_CHECK(!memcmp(data.va, data.va + 3 * PG, PG), "the PASID copy differs");
	VT_CALL(kmemcpy(0, 3 * PG + 5, 9, &m), "untagged memcpy with translation on");
	VT_CHECK(m.irqs >= 1, "no interrupt");
	return VT_PASS;
}

static enum vt_result no_faults_recorded(void)
{
	struct vtd_fault f[8];
	int n;

	vt_require("viommu_for_the_driver");
	n = vtd_faults_collect(&env.iommu, f, 8);
	for (int i = 0; i < n; i++) {
		char line[200];

		vtd_fault_describe(&f[i], line, sizeof(line));
		ktap_diag("unexpected fault %s", line);
	}
	VT_CHECK(n == 0, "%d fault records", n);
	return VT_PASS;
}

VUSER_CASES(module_loads, driver_info, memcpy_dma_api, memcpy_every_queue, bad_ioctls_refused,
	    viommu_for_the_driver, pasid_descriptor_through_the_driver, pasid_and_dma_api_together,
	    no_faults_recorded)
