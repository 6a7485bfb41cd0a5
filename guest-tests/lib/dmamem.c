/* libvuser: DMA-able guest memory with its guest physical address (see vuser.h).
 *
 * Without a guest IOMMU in the kernel's view (the vIOMMU is programmed by
 * these tests, not by Linux), the address a device uses for untranslated
 * DMA is the guest physical address, read from /proc/self/pagemap.
 */
#include <fcntl.h>
#include <sys/mman.h>

#include "vuser.h"

#define PAGEMAP_PFN_MASK ((1ull << 55) - 1)
#define PAGEMAP_PRESENT (1ull << 63)

uint64_t vt_virt_to_phys(const void *va)
{
	long psz = sysconf(_SC_PAGESIZE);
	uint64_t entry, vaddr = (uintptr_t)va;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		vt_fail(errno, "open /proc/self/pagemap: %s", strerror(errno));
		return 0;
	}
	if (pread(fd, &entry, 8, (off_t)(vaddr / (uint64_t)psz * 8)) != 8) {
		vt_fail(errno, "read /proc/self/pagemap: %s", strerror(errno));
		close(fd);
		return 0;
	}
	close(fd);
	if (!(entry & PAGEMAP_PRESENT)) {
		vt_fail(EFAULT, "page at %p not present", va);
		return 0;
	}
	if (!(entry & PAGEMAP_PFN_MASK)) {
		vt_fail(EPERM, "pagemap PFN reads 0 for %p (needs CAP_SYS_ADMIN; euid %d)", va,
			(int)geteuid());
		return 0;
	}
	return (entry & PAGEMAP_PFN_MASK) * (uint64_t)psz + vaddr % (uint64_t)psz;
}

static void *map_hugepage(void)
{
	static unsigned seq;
	char path[96];
	void *p;
	int fd;

	snprintf(path, sizeof(path), VT_HUGETLBFS_DIR "/vuser-dma-%d-%u", (int)getpid(), seq++);
	fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0) {
		unlink(path);
		p = mmap(NULL, VT_HUGEPAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			 fd, 0);
		close(fd);
		if (p != MAP_FAILED)
			return p;
	}
	p = mmap(NULL, VT_HUGEPAGE_SIZE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static int finish(struct vt_dmabuf *b, size_t maplen)
{
	long psz = sysconf(_SC_PAGESIZE);
	int ret = 0;

	if (mlock(b->va, maplen)) {
		ret = vt_fail(errno, "mlock %zu bytes: %s", maplen, strerror(errno));
		goto fail;
	}
	memset(b->va, 0, maplen);
	b->len = maplen;
	b->pa = vt_virt_to_phys(b->va);
	if (!b->pa) {
		ret = -EFAULT; /* vt_err() says why */
		goto fail;
	}
	/* Ordinary pages: every page must follow the first physically. */
	for (size_t off = (size_t)psz; !b->huge && off < maplen; off += (size_t)psz) {
		uint64_t pa = vt_virt_to_phys(b->va + off);

		if (!pa) {
			ret = -EFAULT;
			goto fail;
		}
		if (pa != b->pa + off) {
			ret = vt_fail(ENOMEM, "%zu bytes of ordinary pages are not physically "
				      "contiguous at +%#zx (no hugepage free?)", maplen, off);
			goto fail;
		}
	}
	return 0;
fail:
	munmap(b->va, maplen);
	b->va = NULL;
	return ret;
}

static int need_root(void)
{
	if (geteuid() != 0)
		return vt_fail(EPERM, "guest DMA buffers need root (pagemap PFNs), euid is %d",
			       (int)geteuid());
	return 0;
}

int vt_dmabuf_alloc_huge(struct vt_dmabuf *b)
{
	int ret = need_root();

	memset(b, 0, sizeof(*b));
	if (ret)
		return ret;
	b->va = map_hugepage();
	if (!b->va)
		return vt_fail(ENOMEM, "no 2 MiB hugepage free (%s)", strerror(errno));
	b->huge = 1;
	ret = finish(b, VT_HUGEPAGE_SIZE);
	if (!ret && (b->pa & (VT_HUGEPAGE_SIZE - 1)))
		return vt_fail(EINVAL, "hugepage at pa %#llx is not 2 MiB aligned",
			       (unsigned long long)b->pa);
	return ret;
}

int vt_dmabuf_alloc(struct vt_dmabuf *b, size_t len)
{
	long psz = sysconf(_SC_PAGESIZE);
	size_t maplen;
	int ret = need_root();

	memset(b, 0, sizeof(*b));
	if (ret)
		return ret;
	if (len <= VT_HUGEPAGE_SIZE && (b->va = map_hugepage())) {
		b->huge = 1;
		return finish(b, VT_HUGEPAGE_SIZE);
	}
	maplen = (len + (size_t)psz - 1) / (size_t)psz * (size_t)psz;
	b->va = mmap(NULL, maplen, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (b->va == MAP_FAILED) {
		b->va = NULL;
		return vt_fail(errno, "mmap %zu bytes: %s", maplen, strerror(errno));
	}
	return finish(b, maplen);
}

void vt_dmabuf_free(struct vt_dmabuf *b)
{
	if (b->va)
		munmap(b->va, b->len);
	b->va = NULL;
}

int vt_dmapool_init(struct vt_dmapool *pool)
{
	memset(pool, 0, sizeof(*pool));
	return 0;
}

void *vt_dmapool_alloc(struct vt_dmapool *pool, size_t size, size_t align, uint64_t *pa)
{
	struct vt_dmabuf *c;
	size_t off;

	if (!size || size > VT_HUGEPAGE_SIZE || (align & (align - 1)) || align > VT_HUGEPAGE_SIZE) {
		vt_fail(EINVAL, "pool allocation of %zu bytes aligned %zu", size, align);
		return NULL;
	}
	if (!align)
		align = 1;
	c = pool->nchunks ? &pool->chunk[pool->nchunks - 1] : NULL;
	off = (pool->used + align - 1) & ~(align - 1);
	if (!c || off + size > c->len) {
		int ret;

		if (pool->nchunks == VT_DMAPOOL_MAX_CHUNKS) {
			vt_fail(ENOMEM, "DMA pool full (%d hugepages)", VT_DMAPOOL_MAX_CHUNKS);
			return NULL;
		}
		c = &pool->chunk[pool->nchunks];
		if ((ret = vt_dmabuf_alloc_huge(c)))
			return NULL;
		pool->nchunks++;
		off = 0;
	}
	pool->used = off + size;
	memset(c->va + off, 0, size);
	if (pa)
		*pa = c->pa + off;
	return c->va + off;
}

uint64_t vt_dmapool_pa(const struct vt_dmapool *pool, const void *p)
{
	const uint8_t *b = p;

	for (int i = 0; i < pool->nchunks; i++)
		if (b >= pool->chunk[i].va && b < pool->chunk[i].va + pool->chunk[i].len)
			return pool->chunk[i].pa + (uint64_t)(b - pool->chunk[i].va);
	return 0;
}

void vt_dmapool_destroy(struct vt_dmapool *pool)
{
	for (int i = 0; i < pool->nchunks; i++)
		vt_dmabuf_free(&pool->chunk[i]);
	memset(pool, 0, sizeof(*pool));
}
