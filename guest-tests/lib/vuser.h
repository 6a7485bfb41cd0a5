/* libvuser: a small userspace driver library for vuser guests.
 *
 * Every declaration of the library is in this header; the code is in
 * guest-tests/lib/ (one .c per part), built into a static library that every guest test
 * program links (vuser/guest/programs.py). Users include this header and
 * link libvuser.a in their own guest programs.
 *
 *   - errors:    functions return 0 or a negative errno and leave a one-line
 *                explanation in vt_err();
 *   - KTAP:      ktap_*() and the test runner (VUSER_CASES, VT_CHECK);
 *   - PCI:       vt_pci_*(): sysfs discovery by id or device label, config
 *                space, capabilities, BAR mapping, enabling, Bus Master,
 *                driver binding (uio_pci_generic), kernel modules;
 *   - memory:    vt_dmabuf_*() / vt_dmapool_*(): DMA-able guest memory with
 *                its guest physical address (/proc/self/pagemap);
 *   - vIOMMU:    vtd_*(): the vuser-iommu function, a VT-d scalable-mode
 *                register file (docs/vuser-iommu.md): root, context, PASID
 *                directory and table, first-stage page tables, queued
 *                invalidation, page requests, fault recording;
 *   - vuser-dma: vdma_*(): rings, descriptors, completions
 *                (docs/vuser-dma.md), and the kernel driver's ioctls.
 *
 * Register and memory layouts come from vdma_layout.h and vtd_layout.h,
 * which are generated from the server's Python declarations
 * (vuser/devices/dma_layout.py, vtd_layout.py); the C structs below are
 * tied to them by static assertions, and tests/guest/test_layout_header.py
 * checks the generated headers are current.
 */
#ifndef VUSER_H
#define VUSER_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "vdma_layout.h"
#include "vtd_layout.h"
#include "../kmod/vuser_dma_ioctl.h"

/* ------------------------------------------------------------------ */
/* Errors, fields, time                                                */

/* The last failure of a library call, one line ("" if none). */
const char *vt_err(void);
/* Set it (for helpers built on the library); returns -err, for "return vt_fail(...)". */
int vt_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Field access with the generated NAME_SHIFT / NAME_MASK pairs. */
#define VT_GET(v, F) (((uint64_t)(v) & F##_MASK) >> F##_SHIFT)
#define VT_PUT(F, x) (((uint64_t)(x) << F##_SHIFT) & F##_MASK)
#define VT_FITS(F, x) ((((uint64_t)(x) << F##_SHIFT) & ~F##_MASK) == 0 && \
		       ((uint64_t)(x) >> (64 - F##_SHIFT)) == 0)

double vt_now(void);                 /* CLOCK_MONOTONIC, seconds */
void vt_sleep_us(unsigned us);
/* Busy-wait (with short sleeps) until *p & mask == want, or timeout; 0 or -ETIMEDOUT. */
int vt_wait32(volatile const uint32_t *p, uint32_t mask, uint32_t want, unsigned timeout_ms);

/* ------------------------------------------------------------------ */
/* KTAP output (Documentation/dev-tools/ktap.rst)                      */

void ktap_init(void);
void ktap_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ktap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ktap_header(const char *name, int ncases);
void ktap_ok(int n, const char *name);
void ktap_not_ok(int n, const char *name);
void ktap_skip(int n, const char *name, const char *reason);
/* Hex dump as diagnostics, 16 bytes a line. */
void ktap_hexdump(const char *what, const void *p, size_t len);

/* ------------------------------------------------------------------ */
/* Test cases and the runner                                           */
/*
 * A program declares its cases once, in order, at the end of its source:
 *
 *     static enum vt_result find_device(void) { ... }
 *     VUSER_CASES(find_device, read_config)
 *
 * VUSER_CASES emits the ELF section ".vuser_cases" (case names, NUL-ended;
 * the host reads it before boot, vuser/guest/elfcases.py), the case table
 * and main(). main() prints one KTAP subtest document; arguments name the
 * cases to run (the others are reported skipped). Exit status: 0 when no
 * case failed.
 */
enum vt_result { VT_PASS, VT_FAIL, VT_SKIP, VT_NOT_RUN, VT_TODO };

struct vt_case {
	const char *name;
	enum vt_result (*fn)(void);
};

int vt_main(int argc, char **argv, const struct vt_case *cases, int n);
enum vt_result vt_result_of(const char *name);
void vt_set_skip_reason(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define VT_CHECK(cond, ...)                                         \
	do {                                                        \
		if (!(cond)) {                                      \
			ktap_diag(__VA_ARGS__);                     \
			ktap_diag("check failed: %s (%s:%d)", #cond, \
				  __FILE__, __LINE__);              \
			return VT_FAIL;                             \
		}                                                   \
	} while (0)

/* VT_CHECK on a library call: "what: <vt_err()>" when it does not return 0. */
#define VT_CALL(call, what) VT_CHECK((call) == 0, "%s: %s", what, vt_err())

/* Skip only for a real missing prerequisite, and say which. */
#define VT_SKIP_BECAUSE(...)                      \
	do {                                      \
		vt_set_skip_reason(__VA_ARGS__);  \
		return VT_SKIP;                   \
	} while (0)

/* A known failure that stays listed as open work: "not ok N name # TODO why"
 * (KTAP: an expected failure; the host reports it as xfail). Only for a
 * check that fails for a reason outside this program, described in `why`. */
#define VT_TODO_BECAUSE(...)                      \
	do {                                      \
		vt_set_skip_reason(__VA_ARGS__);  \
		return VT_TODO;                   \
	} while (0)

/* Fail when the named earlier case did not pass. */
#define vt_require(name)                                                  \
	do {                                                              \
		if (vt_result_of(name) != VT_PASS) {                      \
			ktap_diag("needs case %s, which did not pass", name); \
			return VT_FAIL;                                   \
		}                                                         \
	} while (0)

/* VT_MAP(m, a, b, c) expands to m(a) m(b) m(c); up to 32 arguments. */
#define VT_CAT_(a, b) a##b
#define VT_CAT(a, b) VT_CAT_(a, b)
#define VT_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14,  \
		  _15, _16, _17, _18, _19, _20, _21, _22, _23, _24, _25, _26,   \
		  _27, _28, _29, _30, _31, _32, N, ...) N
#define VT_NARGS(...)                                                         \
	VT_NARGS_(__VA_ARGS__, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, \
		  20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, \
		  3, 2, 1)
#define VT_MAP_1(m, a) m(a)
#define VT_MAP_2(m, a, ...) m(a) VT_MAP_1(m, __VA_ARGS__)
#define VT_MAP_3(m, a, ...) m(a) VT_MAP_2(m, __VA_ARGS__)
#define VT_MAP_4(m, a, ...) m(a) VT_MAP_3(m, __VA_ARGS__)
#define VT_MAP_5(m, a, ...) m(a) VT_MAP_4(m, __VA_ARGS__)
#define VT_MAP_6(m, a, ...) m(a) VT_MAP_5(m, __VA_ARGS__)
#define VT_MAP_7(m, a, ...) m(a) VT_MAP_6(m, __VA_ARGS__)
#define VT_MAP_8(m, a, ...) m(a) VT_MAP_7(m, __VA_ARGS__)
#define VT_MAP_9(m, a, ...) m(a) VT_MAP_8(m, __VA_ARGS__)
#define VT_MAP_10(m, a, ...) m(a) VT_MAP_9(m, __VA_ARGS__)
#define VT_MAP_11(m, a, ...) m(a) VT_MAP_10(m, __VA_ARGS__)
#define VT_MAP_12(m, a, ...) m(a) VT_MAP_11(m, __VA_ARGS__)
#define VT_MAP_13(m, a, ...) m(a) VT_MAP_12(m, __VA_ARGS__)
#define VT_MAP_14(m, a, ...) m(a) VT_MAP_13(m, __VA_ARGS__)
#define VT_MAP_15(m, a, ...) m(a) VT_MAP_14(m, __VA_ARGS__)
#define VT_MAP_16(m, a, ...) m(a) VT_MAP_15(m, __VA_ARGS__)
#define VT_MAP_17(m, a, ...) m(a) VT_MAP_16(m, __VA_ARGS__)
#define VT_MAP_18(m, a, ...) m(a) VT_MAP_17(m, __VA_ARGS__)
#define VT_MAP_19(m, a, ...) m(a) VT_MAP_18(m, __VA_ARGS__)
#define VT_MAP_20(m, a, ...) m(a) VT_MAP_19(m, __VA_ARGS__)
#define VT_MAP_21(m, a, ...) m(a) VT_MAP_20(m, __VA_ARGS__)
#define VT_MAP_22(m, a, ...) m(a) VT_MAP_21(m, __VA_ARGS__)
#define VT_MAP_23(m, a, ...) m(a) VT_MAP_22(m, __VA_ARGS__)
#define VT_MAP_24(m, a, ...) m(a) VT_MAP_23(m, __VA_ARGS__)
#define VT_MAP_25(m, a, ...) m(a) VT_MAP_24(m, __VA_ARGS__)
#define VT_MAP_26(m, a, ...) m(a) VT_MAP_25(m, __VA_ARGS__)
#define VT_MAP_27(m, a, ...) m(a) VT_MAP_26(m, __VA_ARGS__)
#define VT_MAP_28(m, a, ...) m(a) VT_MAP_27(m, __VA_ARGS__)
#define VT_MAP_29(m, a, ...) m(a) VT_MAP_28(m, __VA_ARGS__)
#define VT_MAP_30(m, a, ...) m(a) VT_MAP_29(m, __VA_ARGS__)
#define VT_MAP_31(m, a, ...) m(a) VT_MAP_30(m, __VA_ARGS__)
#define VT_MAP_32(m, a, ...) m(a) VT_MAP_31(m, __VA_ARGS__)
#define VT_MAP(m, ...) VT_CAT(VT_MAP_, VT_NARGS(__VA_ARGS__))(m, __VA_ARGS__)

#define VT_CASE_NAME(c) #c "\0"
#define VT_CASE_ENTRY(c) { #c, c },

#define VUSER_CASES(...)                                                      \
	__attribute__((section(".vuser_cases"), used, aligned(1)))            \
	static const char vuser_case_names[] = VT_MAP(VT_CASE_NAME, __VA_ARGS__); \
	static const struct vt_case vuser_case_table[] = {                    \
		VT_MAP(VT_CASE_ENTRY, __VA_ARGS__)                            \
	};                                                                    \
	int main(int argc, char **argv)                                       \
	{                                                                     \
		return vt_main(argc, argv, vuser_case_table,                  \
			       (int)(sizeof(vuser_case_table) /               \
				     sizeof(vuser_case_table[0])));           \
	}

/* ------------------------------------------------------------------ */
/* PCI through sysfs (Documentation/PCI/sysfs-pci.rst)                 */

#define VT_SYSFS_PCI "/sys/bus/pci/devices"
#define VT_PCI_CFG_MAX 4096
#define VT_VUSER_VENDOR 0x5655
#define VT_VNDR_CAP_LEN 8    /* vendor capability: id, next, len, pad, label u32 */
#define VT_VNDR_LABEL_OFF 4

struct vt_pci {
	char bdf[64];
	char dir[320];
	int cfg_fd;
	uint16_t vendor, device;
};

int vt_read_file(const char *path, char *buf, size_t len);   /* bytes read or -errno */
int vt_write_file(const char *path, const char *text);       /* 0 or -errno */

/* The n-th (from 0, in sysfs order) device with these ids; -ENOENT if none. */
int vt_pci_find_nth(uint16_t vendor, uint16_t device, int n, struct vt_pci *pci);
int vt_pci_find(uint16_t vendor, uint16_t device, struct vt_pci *pci);
/* The vuser device (vendor 0x5655, any device id, or this one if device != 0)
 * whose vendor capability carries this device label; -ENOENT if none. */
int vt_pci_find_label(uint16_t device, uint32_t label, struct vt_pci *pci);
/* A vuser device's label, from its vendor-specific capability. */
int vt_pci_label(struct vt_pci *pci, uint32_t *label);
/* Count the devices with these ids. */
int vt_pci_count(uint16_t vendor, uint16_t device);

/* Config space (root sees all of it; others only 64 bytes). */
ssize_t vt_pci_cfg_read(struct vt_pci *pci, void *buf, size_t len, off_t off);
int vt_pci_cfg_read8(struct vt_pci *pci, off_t off, uint8_t *val);
int vt_pci_cfg_read16(struct vt_pci *pci, off_t off, uint16_t *val);
int vt_pci_cfg_read32(struct vt_pci *pci, off_t off, uint32_t *val);
int vt_pci_cfg_write16(struct vt_pci *pci, off_t off, uint16_t val);
int vt_pci_cfg_write32(struct vt_pci *pci, off_t off, uint32_t val);
/* Set and clear bits of a 16-bit config register. */
int vt_pci_cfg_update16(struct vt_pci *pci, off_t off, uint16_t set, uint16_t clear);
void vt_pci_close(struct vt_pci *pci);

/* Little-endian reads from a config space snapshot. */
uint16_t vt_le16(const uint8_t *cfg, unsigned off);
uint32_t vt_le32(const uint8_t *cfg, unsigned off);
/* Capability offsets in a snapshot, 0 if absent (PCI 3.0 6.7, PCIe 6.0 7.6). */
unsigned vt_pci_find_cap(const uint8_t *cfg, uint8_t id);
unsigned vt_pci_find_ext_cap(const uint8_t *cfg, size_t cfg_len, uint16_t id);
/* The same, reading the device's config space; 0 if absent or unreadable. */
unsigned vt_pci_cap(struct vt_pci *pci, uint8_t id);
unsigned vt_pci_ext_cap(struct vt_pci *pci, uint16_t id);

/* mmap BAR "resource<bar>" read/write; NULL (and vt_err()) on failure. A BAR
 * claimed by a kernel driver cannot be mapped (IO_STRICT_DEVMEM). */
volatile void *vt_pci_map_bar(struct vt_pci *pci, int bar, size_t *len);
void vt_pci_unmap_bar(volatile void *p, size_t len);

/* Enable the device (sysfs "enable") and memory decoding. */
int vt_pci_enable(struct vt_pci *pci);
/* Bus Master on or off (PCI_COMMAND; uio_pci_generic never sets it). */
int vt_pci_set_master(struct vt_pci *pci, int on);
/* The bound driver's name into name ("" if none). */
int vt_pci_driver(struct vt_pci *pci, char *name, size_t len);
/* Unbind whatever driver is bound (no-op if none). */
int vt_pci_unbind(struct vt_pci *pci);
/* Bind to uio_pci_generic (loaded by /init) and open /dev/uioN; *fd gets it. */
int vt_pci_bind_uio(struct vt_pci *pci, int *fd);
/* Bind to a named driver through driver_override. */
int vt_pci_bind(struct vt_pci *pci, const char *driver);

/* PCIe capabilities of PASID devices: enable bits in their control registers. */
int vt_pci_pasid_enable(struct vt_pci *pci, int on);
int vt_pci_ats_enable(struct vt_pci *pci, int on);
/* PRI: reset, set the outstanding page request allocation, enable. */
int vt_pci_pri_enable(struct vt_pci *pci, int on, uint32_t requests);
int vt_pci_pri_status(struct vt_pci *pci, uint16_t *status);

/* Load a kernel module from a file (finit_module); -EEXIST if loaded. */
int vt_module_load(const char *path, const char *params);
int vt_module_loaded(const char *name);

/* ------------------------------------------------------------------ */
/* DMA-able guest memory                                               */
/*
 * A buffer is a 2 MiB hugetlbfs page when one is available (physically
 * contiguous, never migrated), else locked ordinary pages that must turn out
 * to be contiguous. Its guest physical address comes from /proc/self/pagemap
 * (PFN bits 0-54, present bit 63; the PFN reads 0 without CAP_SYS_ADMIN,
 * Documentation/admin-guide/mm/pagemap.rst): allocation fails loudly when
 * not root or when the PFN reads 0.
 */
#define VT_PAGE_SIZE 4096u
#define VT_HUGEPAGE_SIZE (2u << 20)
#define VT_HUGETLBFS_DIR "/dev/hugepages"

struct vt_dmabuf {
	uint8_t *va;
	uint64_t pa;
	size_t len;
	int huge;
};

/* The k-th 4 KiB page of a DMA buffer: guest-physical address and pointer. */
static inline uint64_t vt_dmabuf_page_pa(const struct vt_dmabuf *b, unsigned k)
{
	return b->pa + (uint64_t)k * VT_PAGE_SIZE;
}

static inline uint8_t *vt_dmabuf_page_va(const struct vt_dmabuf *b, unsigned k)
{
	return b->va + (size_t)k * VT_PAGE_SIZE;
}

/* Index of the first of the n bytes at p that is not v; -1 if all are v. */
long vt_first_not(const void *p, size_t n, uint8_t v);

/* Guest physical address of va; 0 (and vt_err()) on failure. */
uint64_t vt_virt_to_phys(const void *va);
int vt_dmabuf_alloc(struct vt_dmabuf *b, size_t len);
/* Exactly one 2 MiB hugepage (2 MiB aligned physically). */
int vt_dmabuf_alloc_huge(struct vt_dmabuf *b);
void vt_dmabuf_free(struct vt_dmabuf *b);
static inline uint64_t vt_dmabuf_pa(const struct vt_dmabuf *b, const void *p)
{
	return b->pa + (uint64_t)((const uint8_t *)p - b->va);
}

/* A bump allocator over hugepages, for tables, rings and small buffers.
 * Pieces are zeroed; nothing is freed before vt_dmapool_destroy. */
#define VT_DMAPOOL_MAX_CHUNKS 8
struct vt_dmapool {
	struct vt_dmabuf chunk[VT_DMAPOOL_MAX_CHUNKS];
	int nchunks;
	size_t used;       /* in the last chunk */
};

int vt_dmapool_init(struct vt_dmapool *pool);
/* size bytes aligned to align (a power of two, <= 2 MiB); NULL and vt_err() if out. */
void *vt_dmapool_alloc(struct vt_dmapool *pool, size_t size, size_t align, uint64_t *pa);
/* Guest physical address of a pointer into the pool; 0 if not in it. */
uint64_t vt_dmapool_pa(const struct vt_dmapool *pool, const void *p);
void vt_dmapool_destroy(struct vt_dmapool *pool);

/* ------------------------------------------------------------------ */
/* The vIOMMU (vuser-iommu: VT-d scalable mode, docs/vuser-iommu.md)   */
/*
 * Source-id = the device's label: the root table is indexed by label >> 8,
 * the context table by label & 0xff (scalable mode: devfn < 128 in the lower
 * context table, >= 128 in the upper). One PASID directory per device; a
 * PASID table (64 entries) per directory entry, allocated on first use.
 *
 * Memory the vIOMMU reads (tables, queues) is guest memory from the pool and
 * is named by guest physical address.
 */
#define VTD_MAX_LABELS 16
#define VTD_PASID_MAX (1u << 20)
/* Page group response codes (VT-d 7.7.1). */
#define VTD_PGRESP_RC_SUCCESS 0x0
#define VTD_PGRESP_RC_INVALID 0x1
#define VTD_PGRESP_RC_FAILURE 0xf
/* MSI-X vectors of the vIOMMU function (docs/vuser-iommu.md). */
#define VTD_VECTOR_FAULT 0
#define VTD_VECTOR_INV_COMPLETION 1
#define VTD_VECTOR_PAGE_REQUEST 2

struct vtd_page_req {
	uint16_t rid;
	int pasid_present;
	uint32_t pasid;
	int read, write, lpig, exec_req, priv_req;
	uint16_t prgi;
	uint64_t addr;
	uint64_t raw[4];
};

struct vtd_fault {
	int index;
	uint16_t sid;
	uint8_t reason;
	uint64_t addr;
	int pasid_present;
	uint32_t pasid;
	int is_read;    /* T: 1 read, 0 write */
	uint64_t raw_lo, raw_hi;
};

struct vtd_dev_ctx {
	uint16_t sid;
	int used;
	uint64_t *pasid_dir;
	uint64_t pasid_dir_pa;
	unsigned pdts;        /* directory entries = 2^(pdts + 7) */
	uint64_t *pasid_tables[64];  /* first 64 directory entries (PASIDs < 4096) */
};

struct vtd {
	struct vt_pci pci;
	volatile uint8_t *regs;
	size_t regs_len;
	uint64_t cap, ecap;
	unsigned fro, nfr;          /* fault recording: offset (bytes), count */
	struct vt_dmapool pool;
	uint64_t *root;
	uint64_t root_pa;
	uint64_t *ctx_tables[256][2];
	struct vtd_dev_ctx devs[VTD_MAX_LABELS];
	/* queued invalidation (256-bit descriptors) */
	uint64_t *iq;
	uint64_t iq_pa;
	unsigned iq_entries;
	unsigned iq_tail;
	volatile uint32_t *wait_status;
	uint64_t wait_status_pa;
	uint32_t wait_seq;
	/* page request queue */
	uint64_t *prq;
	uint64_t prq_pa;
	unsigned prq_entries;
	unsigned timeout_ms;
};

uint32_t vtd_read32(struct vtd *v, unsigned off);
uint64_t vtd_read64(struct vtd *v, unsigned off);
void vtd_write32(struct vtd *v, unsigned off, uint32_t val);
void vtd_write64(struct vtd *v, unsigned off, uint64_t val);

/* Find the vuser-iommu function, map its registers, read CAP/ECAP. */
int vtd_open(struct vtd *v);
/* Root table (scalable mode), invalidation queue, page request queue; then
 * SRTP, QIE; translation is enabled separately. */
int vtd_init(struct vtd *v);
int vtd_enable_translation(struct vtd *v, int on);
void vtd_close(struct vtd *v);

/* Context entry for a device label: PASID directory with 2^(pdts+7)
 * entries, RID_PASID for requests without a PASID, PRE and DTE as asked. */
#define VTD_CTX_PRE 0x1
#define VTD_CTX_DTE 0x2
int vtd_context_setup(struct vtd *v, uint16_t sid, uint32_t rid_pasid, unsigned flags);
/* The PASID table entry (64 bytes) for (sid, pasid), allocating its table. */
uint64_t *vtd_pasid_entry(struct vtd *v, uint16_t sid, uint32_t pasid);
/* PASID entries; each is followed by a PASID-cache invalidation and a wait,
 * as a driver must before the entry is used (VT-d 6.5.2.4). */
int vtd_pasid_set_first_stage(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did,
			      uint64_t flptr, int levels);
int vtd_pasid_set_pass_through(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did);
int vtd_pasid_clear(struct vtd *v, uint16_t sid, uint32_t pasid, uint16_t did);

/* Queued invalidation. vtd_qi_submit queues one descriptor (4 qwords) and
 * moves IQT; vtd_qi_wait queues a wait descriptor (SW: status write) and
 * polls the status word until the vIOMMU wrote it, or IQE/ITE/ICE is set. */
int vtd_qi_submit(struct vtd *v, const uint64_t desc[4]);
int vtd_qi_wait(struct vtd *v);
int vtd_inv_context_global(struct vtd *v);
int vtd_inv_pasid_cache(struct vtd *v, uint16_t did, uint32_t pasid);
int vtd_inv_iotlb_global(struct vtd *v);
/* PASID-based IOTLB: all of a PASID, or 2^am pages at addr. */
int vtd_inv_piotlb_pasid(struct vtd *v, uint16_t did, uint32_t pasid);
int vtd_inv_piotlb_pages(struct vtd *v, uint16_t did, uint32_t pasid, uint64_t addr, unsigned am,
			 int ih);
/* Device TLB (ATS): with a PASID (type 8) or without (type 3); size_bytes is
 * a power of two >= 4096 (encoded with the S bit). */
int vtd_inv_devtlb(struct vtd *v, uint16_t sid, int pasid_present, uint32_t pasid,
		   uint64_t addr, uint64_t size_bytes);

/* Page requests: 1 and *req filled when one was read (PQH advanced), 0 when
 * the queue is empty; vtd_prq_wait polls up to timeout_ms. */
int vtd_prq_read(struct vtd *v, struct vtd_page_req *req);
int vtd_prq_wait(struct vtd *v, struct vtd_page_req *req, unsigned timeout_ms);
/* Page group response (descriptor type 9) for a request's group. */
int vtd_page_group_response(struct vtd *v, const struct vtd_page_req *req, unsigned rc);

/* Fault recording: FSTS, one record, all pending records (cleared as read). */
uint32_t vtd_fsts(struct vtd *v);
int vtd_fault_read(struct vtd *v, unsigned index, struct vtd_fault *f); /* 1 if F set */
void vtd_fault_clear(struct vtd *v, unsigned index);
int vtd_faults_collect(struct vtd *v, struct vtd_fault *out, int max);
void vtd_faults_clear_all(struct vtd *v);
const char *vtd_fault_reason_name(unsigned reason);
void vtd_fault_describe(const struct vtd_fault *f, char *buf, size_t len);

/* ------------------------------------------------------------------ */
/* First-stage page tables (VT-d 9.7: x86-64 paging, 4 or 5 levels)     */
/*
 * Tables come from a DMA pool (the vIOMMU reads them by guest physical
 * address). Every level gets P|RW|US|A (the requests are user-mode: the
 * device has no privileged-mode PASID); leaves get P|US|A, plus RW|D when
 * writable. After changing a live table the caller invalidates the PASID
 * IOTLB (and the device TLB with ATS): nothing is snooped.
 */
#define VTD_PROT_READ 0x1
#define VTD_PROT_WRITE 0x2
#define VTD_PAGE_4K 0x1000ull
#define VTD_PAGE_2M 0x200000ull

struct vtd_pgtable {
	struct vt_dmapool *pool;
	int levels;
	uint64_t *root;
	uint64_t root_pa;
};

int vtd_pgtable_init(struct vtd_pgtable *pt, struct vt_dmapool *pool, int levels);
/* Map [iova, iova+size) to [pa, pa+size) with pages of page_size (4K or 2M;
 * all three aligned to it); -EEXIST if something is mapped there. */
int vtd_pgtable_map(struct vtd_pgtable *pt, uint64_t iova, uint64_t pa, uint64_t size,
		    unsigned prot, uint64_t page_size);
/* Clear the leaves of [iova, iova+size); -ENOENT if part was not mapped. */
int vtd_pgtable_unmap(struct vtd_pgtable *pt, uint64_t iova, uint64_t size);
/* Change the leaves' permissions (VTD_PROT_READ alone: read-only). */
int vtd_pgtable_protect(struct vtd_pgtable *pt, uint64_t iova, uint64_t size, unsigned prot);
/* Re-point one mapped leaf at a new physical address (same size). */
int vtd_pgtable_remap(struct vtd_pgtable *pt, uint64_t iova, uint64_t new_pa);
/* The leaf entry for iova and its level (1 = 4K, 2 = 2M); -ENOENT if none. */
int vtd_pgtable_lookup(struct vtd_pgtable *pt, uint64_t iova, uint64_t *pte, int *level);

/* ------------------------------------------------------------------ */
/* vuser-dma from userspace (docs/vuser-dma.md)                        */

struct vdma_desc {
	uint8_t opcode;
	uint8_t flags;
	uint16_t reserved0;
	uint32_t pasid;       /* VDMA_DESC_PASID_VALID | pasid */
	uint64_t src;
	uint64_t dst;
	uint64_t length;
	uint64_t completion;
	uint64_t pattern;
	uint8_t reserved1[16];
};

struct vdma_completion {
	uint8_t status;
	uint8_t fault_info;
	uint16_t reserved0;
	uint32_t result;
	uint64_t bytes_done;
	uint64_t fault_addr;
	uint64_t reserved1;
};

_Static_assert(sizeof(struct vdma_desc) == VDMA_DESCRIPTOR_SIZE, "vdma_desc size");
_Static_assert(offsetof(struct vdma_desc, opcode) == VDMA_DESCRIPTOR_OPCODE_OFF, "opcode");
_Static_assert(offsetof(struct vdma_desc, flags) == VDMA_DESCRIPTOR_FLAGS_OFF, "flags");
_Static_assert(offsetof(struct vdma_desc, pasid) == VDMA_DESCRIPTOR_PASID_OFF, "pasid");
_Static_assert(offsetof(struct vdma_desc, src) == VDMA_DESCRIPTOR_SRC_OFF, "src");
_Static_assert(offsetof(struct vdma_desc, dst) == VDMA_DESCRIPTOR_DST_OFF, "dst");
_Static_assert(offsetof(struct vdma_desc, length) == VDMA_DESCRIPTOR_LENGTH_OFF, "length");
_Static_assert(offsetof(struct vdma_desc, completion) == VDMA_DESCRIPTOR_COMPLETION_OFF, "completion");
_Static_assert(offsetof(struct vdma_desc, pattern) == VDMA_DESCRIPTOR_PATTERN_OFF, "pattern");
_Static_assert(sizeof(struct vdma_completion) == VDMA_COMPLETION_RECORD_SIZE, "vdma_completion size");
_Static_assert(offsetof(struct vdma_completion, status) == VDMA_COMPLETION_RECORD_STATUS_OFF, "status");
_Static_assert(offsetof(struct vdma_completion, fault_info) == VDMA_COMPLETION_RECORD_FAULT_INFO_OFF, "info");
_Static_assert(offsetof(struct vdma_completion, result) == VDMA_COMPLETION_RECORD_RESULT_OFF, "result");
_Static_assert(offsetof(struct vdma_completion, bytes_done) == VDMA_COMPLETION_RECORD_BYTES_DONE_OFF, "done");
_Static_assert(offsetof(struct vdma_completion, fault_addr) == VDMA_COMPLETION_RECORD_FAULT_ADDR_OFF, "addr");

#define VDMA_MAX_QUEUES 8
#define VDMA_NO_PASID UINT32_MAX

struct vdma_queue {
	struct vdma_desc *ring;
	uint64_t ring_bus;        /* the address the device fetches it at */
	uint32_t size;
	uint32_t tail;
	int enabled;
};

struct vdma {
	struct vt_pci pci;
	volatile uint32_t *regs;
	size_t regs_len;
	uint32_t cap, label;
	unsigned nqueues;
	struct vdma_queue q[VDMA_MAX_QUEUES];
	unsigned timeout_ms;
};

uint32_t vdma_read(struct vdma *d, unsigned off);
void vdma_write(struct vdma *d, unsigned off, uint32_t val);
uint32_t vdma_qread(struct vdma *d, unsigned q, unsigned off);
void vdma_qwrite(struct vdma *d, unsigned q, unsigned off, uint32_t val);

/* Map BAR0 of this vuser-dma function (found with vt_pci_find*), check ID,
 * read CAP and LABEL; unbinds any kernel driver first. */
int vdma_open(struct vdma *d, struct vt_pci *pci);
/* CTRL.ENABLE and Bus Master (and memory decoding). */
int vdma_enable(struct vdma *d);
/* CTRL.RESET: every queue stops, registers return to their defaults. */
int vdma_reset(struct vdma *d);
/* Ring of `entries` descriptors at (va, bus address), queue enabled, IRQ on
 * `vector` if irq (used through the kernel driver only). */
int vdma_queue_setup(struct vdma *d, unsigned q, struct vdma_desc *ring, uint64_t ring_bus,
		     uint32_t entries, int irq, unsigned vector);
/* Same, with the ring taken from a pool (bus address = guest physical). */
int vdma_queue_setup_pool(struct vdma *d, unsigned q, struct vt_dmapool *pool, uint32_t entries);
int vdma_queue_disable(struct vdma *d, unsigned q);
/* Copy the descriptor into the ring at TAIL, advance TAIL, ring the doorbell. */
int vdma_submit(struct vdma *d, unsigned q, const struct vdma_desc *desc);
/* Poll a completion record until its status is not 0; the status, or
 * -ETIMEDOUT (the queue's state is in vt_err()). */
int vdma_wait(struct vdma *d, unsigned q, volatile struct vdma_completion *c, unsigned timeout_ms);
/* Submit and wait. The record is cleared first; returns the status. */
int vdma_run(struct vdma *d, unsigned q, const struct vdma_desc *desc,
	     volatile struct vdma_completion *c);
/* Flush the device TLB (DEVTLB_CTRL), waiting for the bit to clear. */
int vdma_devtlb_flush(struct vdma *d);

/* Descriptor builders; pasid is VDMA_NO_PASID or a PASID. */
void vdma_desc_memcpy(struct vdma_desc *x, uint32_t pasid, uint64_t src, uint64_t dst,
		      uint64_t len, uint64_t completion);
void vdma_desc_fill(struct vdma_desc *x, uint32_t pasid, uint64_t dst, uint64_t len,
		    uint64_t pattern, uint64_t completion);
void vdma_desc_compare(struct vdma_desc *x, uint32_t pasid, uint64_t a, uint64_t b,
		       uint64_t len, uint64_t completion);
void vdma_desc_nop(struct vdma_desc *x, uint32_t pasid, uint64_t completion);
const char *vdma_status_name(unsigned status);
const char *vdma_qerror_name(unsigned err);
/* One line: "status X, fault_info Y, fault_addr Z, bytes_done N". */
void vdma_completion_describe(const volatile struct vdma_completion *c, char *buf, size_t len);

/* ------------------------------------------------------------------ */
/* Nested translation set-ups: a vuser-dma behind the vIOMMU            */
/*
 * vt_nested_open finds the vIOMMU and a vuser-dma (by label, or the first),
 * initialises both, gives the device a context entry whose RID_PASID entry
 * (PASID 0) is pass-through (so the ring, and every request without a
 * PASID, reaches guest physical memory through stage 2), enables PASID on
 * the device and translation on the vIOMMU. Queue 0 is set up.
 *
 * vt_space_init gives a PASID its own first-stage table (4 or 5 levels),
 * with a completion record mapped at VT_SPACE_COMP_IOVA, and programs the
 * PASID entry. Descriptors tagged with that PASID use IOVAs of that table.
 */
#define VT_NESTED_PRI 0x1        /* context PRE, and the device's PRI enabled */
#define VT_NESTED_ATS 0x2        /* context DTE, and the device's ATS enabled */
#define VT_NESTED_ANY_LABEL UINT32_MAX
#define VT_NESTED_RID_DID 1      /* domain id of the pass-through RID_PASID entry */
#define VT_SPACE_COMP_IOVA 0x7ff000ull

struct vt_nested {
	struct vtd iommu;
	struct vdma dma;
	uint16_t sid;            /* the device's label, its source-id */
	unsigned flags;
	volatile struct vdma_completion *gpa_comp;   /* record of untagged descriptors */
	uint64_t gpa_comp_pa;
};

struct vt_space {
	struct vt_nested *env;
	struct vtd_pgtable pt;
	uint32_t pasid;
	uint16_t did;
	volatile struct vdma_completion *comp;   /* mapped at VT_SPACE_COMP_IOVA */
	uint64_t comp_pa;
};

int vt_nested_open(struct vt_nested *e, uint32_t label, unsigned flags);
int vt_space_init(struct vt_nested *e, struct vt_space *s, uint32_t pasid, uint16_t did,
		  int levels);
/* Map in the space's table (see vtd_pgtable_map); the IOTLB is not touched. */
int vt_space_map(struct vt_space *s, uint64_t iova, uint64_t pa, uint64_t size, unsigned prot,
		 uint64_t page_size);
/* Run one descriptor tagged with the space's PASID on queue 0, its completion
 * record at VT_SPACE_COMP_IOVA; returns the status (or -errno). */
int vt_space_run(struct vt_space *s, struct vdma_desc *d);
/* Run one untagged descriptor (GPAs) with its record in pool memory. */
int vt_nested_run_gpa(struct vt_nested *e, struct vdma_desc *d,
		      volatile struct vdma_completion **rec);

/* ------------------------------------------------------------------ */
/* The vuser_dma kernel driver (guest-tests/kmod/vuser_dma.c)           */

#define VDMA_KMOD_PATH "/lib/modules/vuser_dma.ko"
#define VDMA_KMOD_NAME "vuser_dma"

/* Load the module if needed and open /dev/vuser_dma<index>. */
int vdma_kmod_open(unsigned index, int *fd);
int vdma_kmod_info(int fd, struct vuser_dma_info *info);
int vdma_kmod_memcpy(int fd, struct vuser_dma_memcpy *m);
/* MEMCPY `len` patterned bytes between two fresh buffers on queue `q` with
 * `flags`; fails unless it completes with SUCCESS and every byte arrived.
 * `m` keeps the driver's report (IOVAs, physical addresses). */
int vdma_kmod_copy(int fd, struct vuser_dma_memcpy *m, unsigned q, unsigned flags, size_t len,
		   unsigned seed, const char *what);
int vdma_kmod_submit(int fd, struct vuser_dma_submit *s);
int vdma_kmod_irq_counts(int fd, struct vuser_dma_irq_counts *c);
int vdma_kmod_mask(int fd, unsigned vector, int masked);
int vdma_kmod_pending(int fd, struct vuser_dma_pending *p);
/* With the guest kernel's IOMMU driver owning the device (kernel-owned vIOMMU): */
int vdma_kmod_stale(int fd, struct vuser_dma_stale *st);
/* Fills b (features, and the PASID on success) also when the bind fails. */
int vdma_kmod_sva_bind(int fd, struct vuser_dma_sva_bind *b);
int vdma_kmod_sva_unbind(int fd);
int vdma_kmod_sva_copy(int fd, struct vuser_dma_sva_copy *c);
int vdma_kmod_sva_unbind_queued(int fd, struct vuser_dma_sva_unbind_queued *u);
const char *vdma_kmod_domain_name(uint32_t domain);   /* VUSER_DMA_DOMAIN_* */

/* ------------------------------------------------------------------ */
/* The kernel's own view: its log and its IOMMU (kernel-owned vIOMMU)   */

/* The kernel log (/dev/kmsg) from now on: records written before the call
 * are skipped. */
struct vt_kmsg {
	int fd;
};
int vt_kmsg_open(struct vt_kmsg *k);
void vt_kmsg_close(struct vt_kmsg *k);
/* The next record (its message text, without the prefix) that contains
 * `needle`, waiting up to timeout_ms for it; -ENOENT if none came. */
int vt_kmsg_find(struct vt_kmsg *k, const char *needle, char *msg, size_t len,
		 unsigned timeout_ms);
/* Count the records from now that contain `needle`, waiting `ms` first. */
int vt_kmsg_count(struct vt_kmsg *k, const char *needle, unsigned ms);

/* One DMAR fault as the 6.1 intel_iommu fault handler logs it
 * ("DMAR: [DMA Write NO_PASID] Request device [02:00.0] fault addr 0x...
 * [fault reason 0x71] ..."). */
struct vt_dmar_fault {
	int write;               /* "DMA Write" (1) or "DMA Read" (0) */
	int has_pasid;
	uint32_t pasid;
	unsigned bus, dev, fn;
	uint64_t addr;
	unsigned reason;
	char text[160];          /* the reason's words */
};
/* Parse one kernel log message; -EINVAL if it is not such a line. */
int vt_dmar_fault_parse(const char *msg, struct vt_dmar_fault *f);
/* Wait, if needed, until the intel_iommu fault handler's log ratelimit (10
 * per 5 s, three per fault) will print the next fault; *waited_ms says how
 * long. For programs that share a guest with others that fault. */
int vt_dmar_log_ready(unsigned *waited_ms);
/* A PCI function's BDF as the 16-bit source-id (bus << 8 | dev << 3 | fn). */
int vt_pci_bdf_sid(const struct vt_pci *pci, uint16_t *sid);
/* The function's IOMMU group type (/sys/.../iommu_group/type: "DMA",
 * "DMA-FQ", "identity", ...); -ENOENT if it has no IOMMU group. */
int vt_pci_iommu_group_type(const struct vt_pci *pci, char *type, size_t len);
/* How many of the pages spanning [p, p+len) are present (/proc/self/pagemap). */
int vt_pages_present(const void *p, size_t len);
/* Interrupts counted for the action `name` (the last column of
 * /proc/interrupts, e.g. "dmar0", "dmar0-prq") on all CPUs; -1 if none. */
long vt_irq_count(const char *name);

#endif
