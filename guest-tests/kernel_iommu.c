/* kernel_iommu: the guest kernel's own intel_iommu driver owns vuser-iommu.
 *
 * Runs in a guest booted with iommu = "kernel" (tests/guest/guest_tests.toml):
 * the launcher passed a DMAR whose DRHD register base is vuser-iommu's BAR0
 * and whose device scope holds the vuser-dma, labelled each device with its
 * BDF, and added intel_iommu=on,sm_on intremap=off vuser.iommu=kernel; /init
 * set Bus Master Enable on the vuser-iommu function. Checked from inside:
 * the kernel registered dmar0 at vuser-iommu's BAR0, put the vuser-dma behind
 * it in a DMA-API IOMMU group, said so in the kernel log, and the function's
 * Bus Master Enable is set.
 */
#include <sys/klog.h>

#include <stdlib.h>

#include "lib/vuser.h"

#define DMAR0 "/sys/class/iommu/dmar0"
#define SYSLOG_ACTION_READ_ALL 3
#define SYSLOG_ACTION_SIZE_BUFFER 10
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4

static struct vt_pci unit, dma;
static unsigned long long unit_bar0;
static char *klog;

/* The first word of a sysfs file, or "" (and a failed check by the caller). */
static const char *first_word(const char *path, char *buf, size_t len)
{
	int n = vt_read_file(path, buf, len);

	if (n <= 0)
		return "";
	buf[strcspn(buf, " \n")] = '\0';
	return buf;
}

static int bdf_number(const char *bdf)
{
	unsigned dom, bus, dev, fn;

	if (sscanf(bdf, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4)
		return -1;
	return (int)(bus << 8 | dev << 3 | fn);
}

static enum vt_result booted_kernel_owned(void)
{
	char cmdline[4096];
	int n = vt_read_file("/proc/cmdline", cmdline, sizeof(cmdline));

	VT_CHECK(n > 0, "read /proc/cmdline: %s", strerror(-n));
	VT_CHECK(strstr(cmdline, "intel_iommu=on,sm_on"), "no intel_iommu=on,sm_on in: %s", cmdline);
	VT_CHECK(strstr(cmdline, "intremap=off"), "no intremap=off in: %s", cmdline);
	VT_CHECK(strstr(cmdline, "vuser.iommu=kernel"), "no vuser.iommu=kernel in: %s", cmdline);
	return VT_PASS;
}

static enum vt_result find_devices(void)
{
	char path[400], text[128];

	VT_CHECK(vt_pci_count(VT_VUSER_VENDOR, VTD_DEVICE_ID) == 1, "%d vuser-iommu functions, want 1",
		 vt_pci_count(VT_VUSER_VENDOR, VTD_DEVICE_ID));
	VT_CALL(vt_pci_find(VT_VUSER_VENDOR, VTD_DEVICE_ID, &unit), "find vuser-iommu");
	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &dma), "find vuser-dma");
	snprintf(path, sizeof(path), "%s/resource", unit.dir);
	VT_CHECK(vt_read_file(path, text, sizeof(text)) > 0, "read %s", path);
	unit_bar0 = strtoull(text, NULL, 0);
	VT_CHECK(unit_bar0 != 0, "vuser-iommu %s has no BAR0 (%s)", unit.bdf, text);
	ktap_diag("vuser-iommu %s BAR0 %#llx, vuser-dma %s", unit.bdf, unit_bar0, dma.bdf);
	return VT_PASS;
}

/* The launcher labels every device with its BDF (the source-id the kernel programs). */
static enum vt_result labels_are_bdfs(void)
{
	uint32_t label;

	vt_require("find_devices");
	VT_CALL(vt_pci_label(&dma, &label), "vuser-dma label");
	VT_CHECK((int)label == bdf_number(dma.bdf), "vuser-dma %s has label %#x, want %#x", dma.bdf,
		 label, bdf_number(dma.bdf));
	VT_CALL(vt_pci_label(&unit, &label), "vuser-iommu label");
	VT_CHECK((int)label == bdf_number(unit.bdf), "vuser-iommu %s has label %#x, want %#x",
		 unit.bdf, label, bdf_number(unit.bdf));
	return VT_PASS;
}

static enum vt_result dmar0_is_vuser_iommu(void)
{
	char text[64];
	unsigned long long address;

	vt_require("find_devices");
	VT_CHECK(access(DMAR0, F_OK) == 0, "%s: %s (the kernel registered no VT-d unit)", DMAR0,
		 strerror(errno));
	VT_CHECK(access("/sys/class/iommu/dmar1", F_OK) != 0, "a second unit, dmar1, exists");
	address = strtoull(first_word(DMAR0 "/intel-iommu/address", text, sizeof(text)), NULL, 16);
	VT_CHECK(address == unit_bar0, "dmar0's register base is %#llx, vuser-iommu's BAR0 %#llx",
		 address, unit_bar0);
	return VT_PASS;
}

static enum vt_result dma_device_behind_dmar0(void)
{
	char path[400];

	vt_require("dmar0_is_vuser_iommu");
	snprintf(path, sizeof(path), DMAR0 "/devices/%s", dma.bdf);
	VT_CHECK(access(path, F_OK) == 0, "%s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), DMAR0 "/devices/%s", unit.bdf);
	VT_CHECK(access(path, F_OK) != 0, "vuser-iommu itself is behind dmar0 (%s)", path);
	return VT_PASS;
}

static enum vt_result dma_device_iommu_group(void)
{
	char path[400], type[32];
	const char *t;

	vt_require("dma_device_behind_dmar0");
	snprintf(path, sizeof(path), "%s/iommu_group/type", dma.dir);
	t = first_word(path, type, sizeof(type));
	VT_CHECK(*t, "%s: unreadable (no IOMMU group)", path);
	ktap_diag("vuser-dma %s: iommu group type %s", dma.bdf, t);
	VT_CHECK(!strcmp(t, "DMA") || !strcmp(t, "DMA-FQ"), "group type %s, want DMA or DMA-FQ", t);
	return VT_PASS;
}

static int read_klog(void)
{
	int size = klogctl(SYSLOG_ACTION_SIZE_BUFFER, NULL, 0), n;

	if (size <= 0)
		return -errno;
	klog = calloc(1, (size_t)size + 1);
	if (!klog)
		return -ENOMEM;
	n = klogctl(SYSLOG_ACTION_READ_ALL, klog, size);
	if (n < 0)
		return -errno;
	klog[n] = '\0';
	return 0;
}

static enum vt_result kernel_log_dmar_lines(void)
{
	char want[160];
	int ret;

	vt_require("find_devices");
	ret = read_klog();
	VT_CHECK(ret == 0, "read the kernel log: %s", strerror(-ret));
	snprintf(want, sizeof(want), "DMAR: dmar0: reg_base_addr %llx ", unit_bar0);
	VT_CHECK(strstr(klog, want), "no \"%s\" in the kernel log", want);
	VT_CHECK(strstr(klog, "DMAR: Intel(R) Virtualization Technology for Directed I/O"),
		 "the kernel log does not say intel_iommu initialised");
	snprintf(want, sizeof(want), "pci %s: Adding to iommu group", dma.bdf);
	VT_CHECK(strstr(klog, want), "no \"%s\" in the kernel log", want);
	VT_CHECK(!strstr(klog, "DMAR hardware is malfunctioning"), "the kernel says: DMAR hardware "
		 "is malfunctioning");
	return VT_PASS;
}

/* /init sets it: QEMU carries out the function's interrupt messages only with BME. */
static enum vt_result viommu_bus_master(void)
{
	uint16_t cmd;

	vt_require("find_devices");
	VT_CALL(vt_pci_cfg_read16(&unit, PCI_COMMAND, &cmd), "read vuser-iommu's Command");
	ktap_diag("vuser-iommu Command %#06x", cmd);
	VT_CHECK(cmd & PCI_COMMAND_MEMORY, "memory decode is off (Command %#06x)", cmd);
	VT_CHECK(cmd & PCI_COMMAND_MASTER, "Bus Master Enable is clear (Command %#06x)", cmd);
	return VT_PASS;
}

VUSER_CASES(booted_kernel_owned, find_devices, labels_are_bdfs, dmar0_is_vuser_iommu,
	    dma_device_behind_dmar0, dma_device_iommu_group, kernel_log_dmar_lines,
	    viommu_bus_master)
