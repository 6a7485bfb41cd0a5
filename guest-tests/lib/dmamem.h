/* Guest memory a device can DMA into, without a guest IOMMU.
 *
 * The buffer is a 2 MiB hugetlbfs page when one is available (physically
 * contiguous, never migrated), else locked ordinary pages that must turn out
 * to be contiguous. Its physical address comes from /proc/self/pagemap: one
 * u64 per virtual page, PFN in bits 0-54, "present" in bit 63; the PFN reads
 * as 0 without CAP_SYS_ADMIN (Documentation/admin-guide/mm/pagemap.rst).
 * Without a guest IOMMU the bus address is the physical address.
 */
#ifndef VUSER_DMAMEM_H
#define VUSER_DMAMEM_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define VT_HUGEPAGE_SIZE (2u << 20)
#define VT_HUGETLBFS_DIR "/dev/hugepages"
#define VT_PAGEMAP_PFN_MASK ((1ull << 55) - 1)
#define VT_PAGEMAP_PRESENT (1ull << 63)

struct vt_dmabuf {
	uint8_t *va;
	uint64_t pa;
	size_t len;
	int huge;
};

/* Physical address of va; 0 and a message in err on failure. */
static inline uint64_t vt_virt_to_phys(const void *va, char *err, size_t errlen)
{
	long psz = sysconf(_SC_PAGESIZE);
	uint64_t entry, vaddr = (uintptr_t)va;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(err, errlen, "open /proc/self/pagemap: %s", strerror(errno));
		return 0;
	}
	if (pread(fd, &entry, 8, (off_t)(vaddr / psz * 8)) != 8) {
		snprintf(err, errlen, "read /proc/self/pagemap: %s", strerror(errno));
		close(fd);
		return 0;
	}
	close(fd);
	if (!(entry & VT_PAGEMAP_PRESENT)) {
		snprintf(err, errlen, "page at %p not present", va);
		return 0;
	}
	if (!(entry & VT_PAGEMAP_PFN_MASK)) {
		snprintf(err, errlen, "pagemap PFN reads 0 (needs CAP_SYS_ADMIN; euid %d)",
			 (int)geteuid());
		return 0;
	}
	return (entry & VT_PAGEMAP_PFN_MASK) * (uint64_t)psz + vaddr % (uint64_t)psz;
}

static inline void *vt_map_hugepage(void)
{
	char path[96];
	void *p;
	int fd;

	snprintf(path, sizeof(path), VT_HUGETLBFS_DIR "/vuser-dma-%d", (int)getpid());
	fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0) {
		unlink(path);
		p = mmap(NULL, VT_HUGEPAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
		if (p != MAP_FAILED)
			return p;
	}
	p = mmap(NULL, VT_HUGEPAGE_SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* Allocate len bytes of DMA-able memory; 0, or -1 with a message in err. */
static inline int vt_dmabuf_alloc(struct vt_dmabuf *b, size_t len, char *err, size_t errlen)
{
	long psz = sysconf(_SC_PAGESIZE);
	size_t maplen;

	memset(b, 0, sizeof(*b));
	if (geteuid() != 0) {
		snprintf(err, errlen, "guest DMA buffers need root (pagemap PFNs), euid is %d",
			 (int)geteuid());
		return -1;
	}
	if (len <= VT_HUGEPAGE_SIZE && (b->va = vt_map_hugepage())) {
		b->huge = 1;
		maplen = VT_HUGEPAGE_SIZE;
	} else {
		maplen = (len + (size_t)psz - 1) / (size_t)psz * (size_t)psz;
		b->va = mmap(NULL, maplen, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (b->va == MAP_FAILED) {
			b->va = NULL;
			snprintf(err, errlen, "mmap %zu bytes: %s", maplen, strerror(errno));
			return -1;
		}
	}
	if (mlock(b->va, maplen)) {
		snprintf(err, errlen, "mlock: %s", strerror(errno));
		munmap(b->va, maplen);
		return -1;
	}
	memset(b->va, 0, maplen);
	b->len = maplen;
	b->pa = vt_virt_to_phys(b->va, err, errlen);
	if (!b->pa) {
		munmap(b->va, maplen);
		return -1;
	}
	/* Ordinary pages: every page must follow the first physically. */
	for (size_t off = (size_t)psz; !b->huge && off < maplen; off += (size_t)psz) {
		uint64_t pa = vt_virt_to_phys(b->va + off, err, errlen);

		if (pa != b->pa + off) {
			if (pa)
				snprintf(err, errlen, "pages not contiguous at +%#zx (no hugepage)", off);
			munmap(b->va, maplen);
			return -1;
		}
	}
	return 0;
}

static inline void vt_dmabuf_free(struct vt_dmabuf *b)
{
	if (b->va)
		munmap(b->va, b->len);
	b->va = NULL;
}

#endif
