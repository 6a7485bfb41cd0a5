/* enumerate: the sample device seen from a Linux guest (docs/sample-device.md).
 *
 * Finds the device by id in sysfs, checks its config space (standard and
 * extended capabilities), maps BAR0, makes the device DMA a pattern into a
 * hugepage whose physical address comes from /proc/self/pagemap, and sees the
 * completion and the INTx interrupt through uio_pci_generic. Then the device
 * labels: every vuser device carries its label (the stream id the vIOMMU
 * knows it by) in its vendor capability and its VSEC; the guest finds each
 * device by label, the labels are the ones the host gave (guest_tests.toml:
 * the sample with label 0x21, a vuser-dma with 0x22) and vuser-dma's LABEL
 * register agrees. Needs root, the q35 machine with each device behind a
 * PCIe root port, and the uio modules.
 */
#include <poll.h>
#include <time.h>

#include <dirent.h>
#include <fcntl.h>
#include <linux/pci_regs.h>

#include "lib/vuser.h"

#define SAMPLE_VENDOR 0x5655
#define SAMPLE_DEVICE 0x0001
#define SAMPLE_CLASS 0xff0000
#define SAMPLE_REVISION 0x01
#define SAMPLE_MSIX_VECTORS 4
#define SAMPLE_MSIX_BAR 4
#define SAMPLE_MSIX_PBA_OFFSET 0x800
#define SAMPLE_PASID_WIDTH 20
#define SAMPLE_VNDR_CAP_LEN 8
#define SAMPLE_DMA_MAX (1u << 20)
/* The labels guest_tests.toml gives the devices of this program's guest. */
#define SAMPLE_LABEL 0x21
#define DMA_LABEL 0x22
#define VSEC_LABEL_OFF 8     /* after the extended and the VSEC headers */

/* BAR0 registers, u32 each (docs/sample-device.md "BAR0 registers"). */
enum sample_reg {
	REG_ID = 0x00,
	REG_VERSION = 0x04,
	REG_SCRATCH = 0x08,
	REG_STATUS = 0x0c,
	REG_DMA_ADDR_LO = 0x10,
	REG_DMA_ADDR_HI = 0x14,
	REG_DMA_LEN = 0x18,
	REG_DMA_SEED = 0x1c,
	REG_DOORBELL = 0x20,
	REG_IRQ_VECTOR = 0x24,
	REG_COMPLETIONS = 0x28,
};

#define SAMPLE_ID 0x56550001u
#define STATUS_BUSY (1u << 0)
#define STATUS_DONE (1u << 1)
#define STATUS_ERROR (1u << 2)

/* Guest RAM and the q35 64-bit PCI hole both end far below 508 GiB. */
#define UNMAPPED_BUS_ADDR 0x7f00000000ull
#define DMA_TIMEOUT_S 30
#define DMA_LEN 0x10000u
#define DMA_SEED 0x5a

static struct vt_pci dev;
static uint8_t cfg[VT_PCI_CFG_MAX];
static size_t cfg_len;
static volatile uint32_t *bar0;
static size_t bar0_len;
static struct vt_dmabuf buf;
static int uio_fd = -1;
static uint32_t completions_before;

static uint32_t rd(enum sample_reg r)
{
	return bar0[r / 4];
}

static void wr(enum sample_reg r, uint32_t v)
{
	bar0[r / 4] = v;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Ring the doorbell and wait for BUSY to clear; returns the final STATUS. */
static int run_dma(uint64_t addr, uint32_t len, uint32_t seed, uint32_t *status)
{
	double deadline = now_s() + DMA_TIMEOUT_S;

	wr(REG_DMA_ADDR_LO, (uint32_t)addr);
	wr(REG_DMA_ADDR_HI, (uint32_t)(addr >> 32));
	wr(REG_DMA_LEN, len);
	wr(REG_DMA_SEED, seed);
	wr(REG_DOORBELL, 1);
	do {
		*status = rd(REG_STATUS);
		if (!(*status & STATUS_BUSY) && (*status & (STATUS_DONE | STATUS_ERROR)))
			return 0;
		usleep(1000);
	} while (now_s() < deadline);
	ktap_diag("DMA still busy after %d s, STATUS=%#x", DMA_TIMEOUT_S, *status);
	return -1;
}

static enum vt_result find_device(void)
{
	int ret = vt_pci_find(SAMPLE_VENDOR, SAMPLE_DEVICE, &dev);

	VT_CHECK(ret == 0, "no PCI device %04x:%04x in " VT_SYSFS_PCI ": %s",
		 SAMPLE_VENDOR, SAMPLE_DEVICE, strerror(-ret));
	ktap_diag("sample device at %s", dev.bdf);
	return VT_PASS;
}

static enum vt_result config_header(void)
{
	ssize_t n;

	vt_require("find_device");
	VT_CHECK(geteuid() == 0, "full config space needs root, euid is %d", (int)geteuid());
	n = vt_pci_cfg_read(&dev, cfg, sizeof(cfg), 0);
	VT_CHECK(n >= 0, "read %s/config: %s", dev.dir, strerror((int)-n));
	cfg_len = (size_t)n;
	VT_CHECK(cfg_len == VT_PCI_CFG_MAX,
		 "config space is %zu bytes, want 4096 (device not behind a PCIe root port?)",
		 cfg_len);
	VT_CHECK(vt_le16(cfg, PCI_VENDOR_ID) == SAMPLE_VENDOR, "vendor %#x",
		 vt_le16(cfg, PCI_VENDOR_ID));
	VT_CHECK(vt_le16(cfg, PCI_DEVICE_ID) == SAMPLE_DEVICE, "device %#x",
		 vt_le16(cfg, PCI_DEVICE_ID));
	VT_CHECK((vt_le32(cfg, PCI_CLASS_REVISION) >> 8) == SAMPLE_CLASS, "class %#x",
		 vt_le32(cfg, PCI_CLASS_REVISION) >> 8);
	VT_CHECK(cfg[PCI_REVISION_ID] == SAMPLE_REVISION, "revision %#x", cfg[PCI_REVISION_ID]);
	VT_CHECK((cfg[PCI_HEADER_TYPE] & 0x7f) == PCI_HEADER_TYPE_NORMAL, "header type %#x",
		 cfg[PCI_HEADER_TYPE]);
	VT_CHECK(cfg[PCI_INTERRUPT_PIN] == 1, "interrupt pin %u, want 1 (INTA)",
		 cfg[PCI_INTERRUPT_PIN]);
	VT_CHECK(vt_le16(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST, "status %#x has no capability list",
		 vt_le16(cfg, PCI_STATUS));
	return VT_PASS;
}

static enum vt_result capabilities(void)
{
	unsigned pm, msix, exp, vndr;
	uint32_t table, pba;
	uint16_t flags;

	vt_require("config_header");
	pm = vt_pci_find_cap(cfg, PCI_CAP_ID_PM);
	msix = vt_pci_find_cap(cfg, PCI_CAP_ID_MSIX);
	exp = vt_pci_find_cap(cfg, PCI_CAP_ID_EXP);
	vndr = vt_pci_find_cap(cfg, PCI_CAP_ID_VNDR);
	ktap_diag("PM at %#x, MSI-X at %#x, PCIe at %#x, vendor at %#x", pm, msix, exp, vndr);
	VT_CHECK(pm && msix && exp && vndr, "a standard capability is missing");

	flags = vt_le16(cfg, msix + PCI_MSIX_FLAGS);
	table = vt_le32(cfg, msix + PCI_MSIX_TABLE);
	pba = vt_le32(cfg, msix + PCI_MSIX_PBA);
	VT_CHECK((flags & PCI_MSIX_FLAGS_QSIZE) + 1 == SAMPLE_MSIX_VECTORS, "MSI-X table size %u",
		 (flags & PCI_MSIX_FLAGS_QSIZE) + 1);
	VT_CHECK((table & PCI_MSIX_TABLE_BIR) == SAMPLE_MSIX_BAR &&
			 (table & PCI_MSIX_TABLE_OFFSET) == 0,
		 "MSI-X table at BAR%u+%#x", table & PCI_MSIX_TABLE_BIR,
		 table & PCI_MSIX_TABLE_OFFSET);
	VT_CHECK((pba & PCI_MSIX_PBA_BIR) == SAMPLE_MSIX_BAR &&
			 (pba & PCI_MSIX_PBA_OFFSET) == SAMPLE_MSIX_PBA_OFFSET,
		 "MSI-X PBA at BAR%u+%#x", pba & PCI_MSIX_PBA_BIR, pba & PCI_MSIX_PBA_OFFSET);

	flags = vt_le16(cfg, exp + PCI_EXP_FLAGS);
	VT_CHECK((flags & PCI_EXP_FLAGS_TYPE) >> 4 == PCI_EXP_TYPE_ENDPOINT,
		 "PCIe port type %u, want endpoint", (flags & PCI_EXP_FLAGS_TYPE) >> 4);
	VT_CHECK((flags & PCI_EXP_FLAGS_VERS) == 2, "PCIe capability version %u, want 2",
		 flags & PCI_EXP_FLAGS_VERS);

	VT_CHECK(cfg[vndr + 2] == SAMPLE_VNDR_CAP_LEN, "vendor capability length %u, want %u",
		 cfg[vndr + 2], SAMPLE_VNDR_CAP_LEN);
	ktap_diag("device label %#x", vt_le32(cfg, vndr + 4));
	return VT_PASS;
}

static enum vt_result ext_capabilities(void)
{
	unsigned pasid, ats, pri, vsec;
	uint16_t pcap;

	vt_require("config_header");
	pasid = vt_pci_find_ext_cap(cfg, cfg_len, PCI_EXT_CAP_ID_PASID);
	ats = vt_pci_find_ext_cap(cfg, cfg_len, PCI_EXT_CAP_ID_ATS);
	pri = vt_pci_find_ext_cap(cfg, cfg_len, PCI_EXT_CAP_ID_PRI);
	vsec = vt_pci_find_ext_cap(cfg, cfg_len, PCI_EXT_CAP_ID_VNDR);
	ktap_diag("PASID at %#x, ATS at %#x, PRI at %#x, VSEC at %#x", pasid, ats, pri, vsec);
	VT_CHECK(vt_le32(cfg, 0x100) != 0, "no extended capability at 0x100");
	VT_CHECK(pasid && ats && pri && vsec, "an extended capability is missing");

	pcap = vt_le16(cfg, pasid + PCI_PASID_CAP);
	VT_CHECK(((pcap >> 8) & 0x1f) == SAMPLE_PASID_WIDTH, "max PASID width %u, want %u",
		 (pcap >> 8) & 0x1f, SAMPLE_PASID_WIDTH);
	VT_CHECK(!(pcap & (PCI_PASID_CAP_EXEC | PCI_PASID_CAP_PRIV)),
		 "PASID capability %#x advertises exec/priv", pcap);
	return VT_PASS;
}

static enum vt_result uio_bind(void)
{
	char drv[64];

	vt_require("find_device");
	/* driver_override + bind: only this function, not every 5655:0001. */
	VT_CALL(vt_pci_bind_uio(&dev, &uio_fd), "bind to uio_pci_generic");
	VT_CALL(vt_pci_driver(&dev, drv, sizeof(drv)), "driver link");
	VT_CHECK(!strcmp(drv, "uio_pci_generic"), "%s is bound to \"%s\"", dev.bdf, drv);
	ktap_diag("bound to uio_pci_generic");
	return VT_PASS;
}

static enum vt_result bus_master(void)
{
	uint16_t cmd, want;

	vt_require("find_device");
	VT_CHECK(!vt_pci_cfg_read16(&dev, PCI_COMMAND, &cmd), "read PCI_COMMAND");
	/* uio_pci_generic enables memory decoding but never Bus Master (DPDK). */
	want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	VT_CHECK(!vt_pci_cfg_write16(&dev, PCI_COMMAND, want), "write PCI_COMMAND");
	VT_CHECK(!vt_pci_cfg_read16(&dev, PCI_COMMAND, &cmd), "read PCI_COMMAND back");
	VT_CHECK((cmd & want) == want, "PCI_COMMAND %#x, wrote %#x", cmd, want);
	return VT_PASS;
}

static enum vt_result bar0_registers(void)
{
	static const uint32_t patterns[] = { 0xdeadbeef, 0x12345678, 0xffffffff, 0 };

	vt_require("bus_master");
	bar0 = vt_pci_map_bar(&dev, 0, &bar0_len);
	VT_CHECK(bar0, "mmap %s/resource0: %s", dev.dir, strerror(errno));
	VT_CHECK(bar0_len >= 0x1000, "BAR0 is %zu bytes, want 4096", bar0_len);
	VT_CHECK(rd(REG_ID) == SAMPLE_ID, "ID %#x, want %#x", rd(REG_ID), SAMPLE_ID);
	VT_CHECK(rd(REG_VERSION) == 1, "VERSION %u, want 1", rd(REG_VERSION));
	for (unsigned i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
		wr(REG_SCRATCH, patterns[i]);
		VT_CHECK(rd(REG_SCRATCH) == patterns[i], "SCRATCH reads %#x after writing %#x",
			 rd(REG_SCRATCH), patterns[i]);
	}
	wr(REG_ID, 0);
	VT_CHECK(rd(REG_ID) == SAMPLE_ID, "read-only ID changed to %#x", rd(REG_ID));
	return VT_PASS;
}

static enum vt_result dma_to_guest(void)
{
	uint32_t status;

	vt_require("bar0_registers");
	VT_CHECK(!vt_dmabuf_alloc(&buf, DMA_LEN + 1), "DMA buffer: %s", vt_err());
	ktap_diag("DMA buffer at pa %#llx (%s)", (unsigned long long)buf.pa,
		  buf.huge ? "hugepage" : "locked pages");
	memset(buf.va, 0xa5, buf.len);
	completions_before = rd(REG_COMPLETIONS);
	wr(REG_IRQ_VECTOR, 0);
	VT_CHECK(!run_dma(buf.pa, DMA_LEN, DMA_SEED, &status), "DMA did not finish");
	VT_CHECK(!(status & STATUS_ERROR), "STATUS %#x has ERROR", status);
	for (uint32_t i = 0; i < DMA_LEN; i++)
		VT_CHECK(buf.va[i] == (uint8_t)(DMA_SEED + i), "byte %#x is %#x, want %#x", i,
			 buf.va[i], (uint8_t)(DMA_SEED + i));
	VT_CHECK(buf.va[DMA_LEN] == 0xa5, "byte past DMA_LEN overwritten (%#x)", buf.va[DMA_LEN]);
	return VT_PASS;
}

static enum vt_result dma_completion(void)
{
	uint32_t status, count;

	vt_require("dma_to_guest");
	status = rd(REG_STATUS);
	count = rd(REG_COMPLETIONS);
	VT_CHECK(status & STATUS_DONE, "STATUS %#x lacks DONE", status);
	VT_CHECK(!(status & STATUS_BUSY), "STATUS %#x still BUSY", status);
	VT_CHECK(count == completions_before + 1, "COMPLETIONS %u, was %u before the DMA", count,
		 completions_before);
	return VT_PASS;
}

/*
 * INTx through uio_pci_generic (docs/sample-device.md "interrupts"): read()
 * returns the interrupt count. The kernel's handler masks INTx
 * (Command.INTX_DISABLE) when Status.INTERRUPT is set; the driver then acks
 * the device (STATUS = DONE | ERROR, RW1C, which lowers INTx) and unmasks.
 * Debian 12's uio_pci_generic has no irqcontrol, so unmasking goes through
 * the config file, as DPDK does.
 */
static int intx_unmask(void)
{
	uint16_t cmd;

	if (vt_pci_cfg_read16(&dev, PCI_COMMAND, &cmd))
		return -1;
	return vt_pci_cfg_write16(&dev, PCI_COMMAND, cmd & ~PCI_COMMAND_INTX_DISABLE);
}

static enum vt_result intx_interrupt(void)
{
	struct pollfd pfd;
	uint32_t count, status;
	int n;

	vt_require("uio_bind");
	vt_require("dma_to_guest");
	wr(REG_STATUS, STATUS_DONE | STATUS_ERROR);
	status = rd(REG_STATUS);
	VT_CHECK(!(status & (STATUS_DONE | STATUS_ERROR)),
		 "STATUS %#x after writing DONE|ERROR (RW1C)", status);
	pfd.fd = uio_fd;
	pfd.events = POLLIN;
	while (poll(&pfd, 1, 0) == 1) /* events of the earlier DMAs */
		VT_CHECK(read(uio_fd, &count, 4) == 4, "read uio: %s", strerror(errno));
	VT_CHECK(!intx_unmask(), "clear INTX_DISABLE in PCI_COMMAND");
	VT_CHECK(!run_dma(buf.pa, 64, 0, &status), "DMA did not finish");
	n = poll(&pfd, 1, DMA_TIMEOUT_S * 1000);
	VT_CHECK(n == 1, "no interrupt within %d s after the completion (STATUS %#x)",
		 DMA_TIMEOUT_S, status);
	VT_CHECK(read(uio_fd, &count, 4) == 4, "read uio: %s", strerror(errno));
	ktap_diag("INTx event count %u", count);
	wr(REG_STATUS, STATUS_DONE | STATUS_ERROR);
	VT_CHECK(!intx_unmask(), "clear INTX_DISABLE in PCI_COMMAND");
	return VT_PASS;
}

static enum vt_result dma_too_long(void)
{
	uint32_t status, before;

	vt_require("dma_to_guest");
	memset(buf.va, 0xa5, buf.len);
	before = rd(REG_COMPLETIONS);
	VT_CHECK(!run_dma(buf.pa, SAMPLE_DMA_MAX + 1, 0, &status), "DMA did not finish");
	VT_CHECK(status & STATUS_ERROR, "STATUS %#x: a %u-byte DMA did not set ERROR", status,
		 SAMPLE_DMA_MAX + 1);
	VT_CHECK(rd(REG_COMPLETIONS) == before + 1, "COMPLETIONS %u, was %u", rd(REG_COMPLETIONS),
		 before);
	VT_CHECK(buf.va[0] == 0xa5, "buffer written by a rejected DMA");
	return VT_PASS;
}

static enum vt_result dma_unmapped(void)
{
	uint32_t status;

	vt_require("dma_to_guest");
	VT_CHECK(!run_dma(UNMAPPED_BUS_ADDR, 64, 0, &status), "DMA did not finish");
	VT_CHECK(status & STATUS_ERROR, "STATUS %#x: DMA to unmapped %#llx did not set ERROR",
		 status, UNMAPPED_BUS_ADDR);
	/* The device still works after the fault. */
	VT_CHECK(!run_dma(buf.pa, 64, 7, &status), "DMA after the fault did not finish");
	VT_CHECK(!(status & STATUS_ERROR) && buf.va[63] == (uint8_t)(7 + 63),
		 "DMA after the fault: STATUS %#x, byte 63 %#x", status, buf.va[63]);
	return VT_PASS;
}

/* Every vuser device: its label in the vendor capability and in the VSEC. */
static enum vt_result device_labels(void)
{
	uint32_t labels[16];
	int n = 0;

	vt_require("config_header");
	for (int i = 0; i < 16; i++) {
		struct vt_pci d, again;
		uint8_t c[VT_PCI_CFG_MAX];
		uint32_t label;
		unsigned vsec;
		ssize_t len;

		if (vt_pci_find_nth(VT_VUSER_VENDOR, 0, i, &d))
			break;
		VT_CALL(vt_pci_label(&d, &label), "vendor capability label");
		len = vt_pci_cfg_read(&d, c, sizeof(c), 0);
		VT_CHECK(len == VT_PCI_CFG_MAX, "%s: config space %zd bytes", d.bdf, len);
		vsec = vt_pci_find_ext_cap(c, (size_t)len, PCI_EXT_CAP_ID_VNDR);
		ktap_diag("%s %04x:%04x label %#x (VSEC at %#x)", d.bdf, d.vendor, d.device, label,
			  vsec);
		if (d.device != VTD_DEVICE_ID) {
			VT_CHECK(vsec, "%s has no VSEC", d.bdf);
			VT_CHECK(vt_le32(c, vsec + VSEC_LABEL_OFF) == label,
				 "%s: VSEC label %#x, vendor capability %#x", d.bdf,
				 vt_le32(c, vsec + VSEC_LABEL_OFF), label);
		}
		for (int j = 0; j < n; j++)
			VT_CHECK(labels[j] != label, "label %#x given twice", label);
		labels[n++] = label;
		VT_CALL(vt_pci_find_label(d.device, label, &again), "find by label");
		VT_CHECK(!strcmp(again.bdf, d.bdf), "label %#x found at %s, not %s", label, again.bdf,
			 d.bdf);
		vt_pci_close(&d);
	}
	VT_CHECK(n >= 2, "%d vuser devices, want the sample and a vuser-dma", n);
	return VT_PASS;
}

static enum vt_result labels_from_the_host(void)
{
	struct vt_pci s, d;
	struct vdma dma;

	vt_require("device_labels");
	VT_CALL(vt_pci_find_label(SAMPLE_DEVICE, SAMPLE_LABEL, &s), "the sample by its label");
	VT_CHECK(!strcmp(s.bdf, dev.bdf), "label %#x is %s, the sample is %s", SAMPLE_LABEL, s.bdf,
		 dev.bdf);
	VT_CALL(vt_pci_find_label(0, DMA_LABEL, &d), "the vuser-dma by its label (any device id)");
	VT_CHECK(d.device == VDMA_DEVICE_ID, "label %#x is device %04x", DMA_LABEL, d.device);
	VT_CHECK(vt_pci_find_label(0, 0x7777, &s) == -ENOENT, "a label nobody has was found");
	VT_CALL(vdma_open(&dma, &d), "map vuser-dma's registers");
	VT_CHECK(dma.label == DMA_LABEL, "vuser-dma LABEL register %#x, want %#x", dma.label,
		 DMA_LABEL);
	return VT_PASS;
}

VUSER_CASES(find_device, config_header, capabilities, ext_capabilities, uio_bind, bus_master,
	    bar0_registers, dma_to_guest, dma_completion, intx_interrupt, dma_too_long,
	    dma_unmapped, device_labels, labels_from_the_host)
