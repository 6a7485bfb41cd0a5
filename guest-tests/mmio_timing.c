/* mmio_timing: what a guest pays per MMIO access to vuser-dma's BAR0, beside
 * QEMU's own `edu` device in the same boot (opt-in: `make bench` boots it with
 * `-device edu`; the manifest marks it opt_in, so `make test` times nothing).
 *
 * Each timing case runs ROUNDS loops of 4-byte accesses, each between two
 * CLOCK_MONOTONIC reads, and prints the best round's time per access (the host
 * is shared; the best round is the least disturbed) on one line to parse:
 *   # mmio_timing: <device> <read|write> <µs per access> us n=<accesses per round>
 * Reads go to an ID register (vuser-dma ID, edu's identification register)
 * and check the value each time. Writes are posted (memory BAR, NO_REPLY on
 * vfio-user) to a register without side effects: vuser-dma's queue 0 RING_LO
 * while the queue is disabled, edu's liveness register; one read after the
 * loop checks the last value landed (the drain is not in the time).
 */
#include <time.h>

#include "lib/vuser.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_REG_ID 0x00       /* RO 0x010000ed: major 1, minor 0, 0xed */
#define EDU_REG_LIVENESS 0x04 /* RW: reads back the bitwise inverse */
#define EDU_ID 0x010000edu

#define ROUNDS 5
#define VDMA_READS 400 /* per round */
#define EDU_READS 40000

static struct vdma vd;
static volatile uint32_t *edu;
static size_t edu_len;

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void report(const char *dev, const char *what, double us, unsigned n)
{
	ktap_diag("mmio_timing: %s %s %.3f us n=%u", dev, what, us / n, n);
}

/* The shortest of ROUNDS runs of loop(arg), in µs. */
static double best_of(void (*loop)(void *), void *arg)
{
	double best = 1e300;

	for (int r = 0; r < ROUNDS; r++) {
		double t = now_us();

		loop(arg);
		t = now_us() - t;
		if (t < best)
			best = t;
	}
	return best;
}

static void vdma_reads(void *bad)
{
	for (unsigned i = 0; i < VDMA_READS; i++)
		*(uint32_t *)bad |= vdma_read(&vd, VDMA_REG_ID) ^ VDMA_ID;
}

static void vdma_writes(void *last)
{
	for (unsigned i = 0; i < VDMA_READS; i++)
		vdma_write(&vd, VDMA_QUEUE_BASE + VDMA_QUEUE_REG_RING_LO,
			   *(uint32_t *)last = (i + 1) << 12);
}

static void edu_reads(void *bad)
{
	for (unsigned i = 0; i < EDU_READS; i++)
		*(uint32_t *)bad |= edu[EDU_REG_ID / 4] ^ EDU_ID;
}

static void edu_writes(void *last)
{
	for (unsigned i = 0; i < EDU_READS; i++)
		edu[EDU_REG_LIVENESS / 4] = *(uint32_t *)last = i;
}

static enum vt_result vuser_dma_found(void)
{
	struct vt_pci pci;

	VT_CALL(vt_pci_find(VDMA_VENDOR_ID, VDMA_DEVICE_ID, &pci), "find vuser-dma");
	VT_CALL(vdma_open(&vd, &pci), "vuser-dma BAR0");
	return VT_PASS;
}

static enum vt_result edu_found(void)
{
	struct vt_pci pci;
	int ret = vt_pci_find(EDU_VENDOR, EDU_DEVICE, &pci);

	if (ret == -ENOENT)
		VT_SKIP_BECAUSE("no edu device: the guest was booted without -device edu");
	VT_CHECK(ret == 0, "find edu: %s", vt_err());
	VT_CALL(vt_pci_unbind(&pci), "unbind edu");
	VT_CALL(vt_pci_enable(&pci), "enable edu");
	edu = vt_pci_map_bar(&pci, 0, &edu_len);
	VT_CHECK(edu != NULL, "map edu BAR0: %s", vt_err());
	VT_CHECK(edu[EDU_REG_ID / 4] == EDU_ID, "edu ID %#x", edu[EDU_REG_ID / 4]);
	return VT_PASS;
}

static enum vt_result vuser_dma_read(void)
{
	uint32_t bad = 0;
	double t;

	vt_require("vuser_dma_found");
	t = best_of(vdma_reads, &bad);
	VT_CHECK(bad == 0, "an ID read differed from %#x (xor %#x)", VDMA_ID, bad);
	report("vuser-dma", "read", t, VDMA_READS);
	return VT_PASS;
}

static enum vt_result vuser_dma_posted_write(void)
{
	unsigned ring = VDMA_QUEUE_BASE + VDMA_QUEUE_REG_RING_LO;
	uint32_t last = 0;
	double t;

	vt_require("vuser_dma_found");
	t = best_of(vdma_writes, &last);
	VT_CHECK(vdma_read(&vd, ring) == last, "RING_LO reads %#x after writing %#x",
		 vdma_read(&vd, ring), last);
	vdma_write(&vd, ring, 0);
	report("vuser-dma", "write", t, VDMA_READS);
	return VT_PASS;
}

static enum vt_result edu_read(void)
{
	uint32_t bad = 0;
	double t;

	vt_require("edu_found");
	t = best_of(edu_reads, &bad);
	VT_CHECK(bad == 0, "an edu ID read differed (xor %#x)", bad);
	report("edu", "read", t, EDU_READS);
	return VT_PASS;
}

static enum vt_result edu_posted_write(void)
{
	uint32_t last = 0;
	double t;

	vt_require("edu_found");
	t = best_of(edu_writes, &last);
	VT_CHECK(edu[EDU_REG_LIVENESS / 4] == ~last, "liveness reads %#x after writing %#x",
		 edu[EDU_REG_LIVENESS / 4], last);
	report("edu", "write", t, EDU_READS);
	return VT_PASS;
}

VUSER_CASES(vuser_dma_found, edu_found, vuser_dma_read, vuser_dma_posted_write, edu_read,
	    edu_posted_write)
