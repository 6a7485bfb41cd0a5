/* libvuser: first-stage page tables for the vIOMMU (VT-d 9.7).
 *
 * The x86-64 paging format: 512 entries of 8 bytes per 4 KiB table, 4 or 5
 * levels (level 1 holds 4 KiB leaves; level 2 with PS holds 2 MiB leaves).
 * Tables live in a DMA pool and entries hold guest physical addresses; the
 * vIOMMU fetches them through stage 2 (VT-d §3.8, nested translation).
 */
#include "vuser.h"

#define PTE_TABLE (VTD_FIRST_STAGE_PTE_P_MASK | VTD_FIRST_STAGE_PTE_RW_MASK | VTD_FIRST_STAGE_PTE_US_MASK | VTD_FIRST_STAGE_PTE_A_MASK)

static unsigned level_shift(int level)
{
	return 12 + 9 * (unsigned)(level - 1);
}

static unsigned pt_index(uint64_t iova, int level)
{
	return (unsigned)(iova >> level_shift(level)) & 511;
}

static uint64_t *table_va(struct vtd_pgtable *pt, uint64_t pa, void *hint)
{
	(void)hint;
	for (int i = 0; i < pt->pool->nchunks; i++) {
		struct vt_dmabuf *c = &pt->pool->chunk[i];

		if (pa >= c->pa && pa < c->pa + c->len)
			return (uint64_t *)(c->va + (pa - c->pa));
	}
	return NULL;
}

static uint64_t leaf_bits(unsigned prot)
{
	uint64_t v = VTD_FIRST_STAGE_PTE_P_MASK | VTD_FIRST_STAGE_PTE_US_MASK | VTD_FIRST_STAGE_PTE_A_MASK;

	if (prot & VTD_PROT_WRITE)
		v |= VTD_FIRST_STAGE_PTE_RW_MASK | VTD_FIRST_STAGE_PTE_D_MASK;
	return v;
}

int vtd_pgtable_init(struct vtd_pgtable *pt, struct vt_dmapool *pool, int levels)
{
	memset(pt, 0, sizeof(*pt));
	if (levels != 4 && levels != 5)
		return vt_fail(EINVAL, "first-stage tables have 4 or 5 levels, not %d", levels);
	pt->pool = pool;
	pt->levels = levels;
	pt->root = vt_dmapool_alloc(pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &pt->root_pa);
	return pt->root ? 0 : -ENOMEM;
}

static int check_range(struct vtd_pgtable *pt, uint64_t iova, uint64_t size, uint64_t align)
{
	/* Canonical lower half: below 2^47 (4-level) or 2^56 (5-level). */
	uint64_t limit = 1ull << (level_shift(pt->levels) + 9 - 1);

	if (!size || (iova | size) & (align - 1))
		return vt_fail(EINVAL, "range %#llx+%#llx is not %#llx-aligned",
			       (unsigned long long)iova, (unsigned long long)size,
			       (unsigned long long)align);
	if (iova >= limit || size > limit - iova)
		return vt_fail(EINVAL, "range %#llx+%#llx is beyond the %d-level canonical limit",
			       (unsigned long long)iova, (unsigned long long)size, pt->levels);
	return 0;
}

/* The entry at `level` for iova, creating tables above it when create. */
static uint64_t *walk(struct vtd_pgtable *pt, uint64_t iova, int level, int create)
{
	uint64_t *table = pt->root;

	for (int l = pt->levels; l > level; l--) {
		uint64_t *e = &table[pt_index(iova, l)];

		if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK)) {
			uint64_t pa;
			uint64_t *next;

			if (!create) {
				vt_fail(ENOENT, "iova %#llx: no table at level %d",
					(unsigned long long)iova, l - 1);
				return NULL;
			}
			next = vt_dmapool_alloc(pt->pool, VT_PAGE_SIZE, VT_PAGE_SIZE, &pa);
			if (!next)
				return NULL;
			__atomic_store_n(e, PTE_TABLE | (pa & VTD_FIRST_STAGE_PTE_ADDR_MASK), __ATOMIC_RELEASE);
		} else if (*e & VTD_FIRST_STAGE_PTE_PS_MASK) {
			vt_fail(EEXIST, "iova %#llx: a large page at level %d",
				(unsigned long long)iova, l);
			return NULL;
		}
		table = table_va(pt, *e & VTD_FIRST_STAGE_PTE_ADDR_MASK, NULL);
		if (!table) {
			vt_fail(EFAULT, "table at %#llx is not in the pool",
				(unsigned long long)(*e & VTD_FIRST_STAGE_PTE_ADDR_MASK));
			return NULL;
		}
	}
	return &table[pt_index(iova, level)];
}

int vtd_pgtable_map(struct vtd_pgtable *pt, uint64_t iova, uint64_t pa, uint64_t size,
		    unsigned prot, uint64_t page_size)
{
	int level = page_size == VTD_PAGE_2M ? 2 : 1;
	int ret;

	if (page_size != VTD_PAGE_4K && page_size != VTD_PAGE_2M)
		return vt_fail(EINVAL, "page size %#llx (4K or 2M)", (unsigned long long)page_size);
	if (!(prot & VTD_PROT_READ))
		return vt_fail(EINVAL, "first-stage pages are always readable: give VTD_PROT_READ");
	if ((ret = check_range(pt, iova, size, page_size)))
		return ret;
	if (pa & (page_size - 1))
		return vt_fail(EINVAL, "pa %#llx not aligned to the page size",
			       (unsigned long long)pa);
	for (uint64_t off = 0; off < size; off += page_size) {
		uint64_t *e = walk(pt, iova + off, level, 1);
		uint64_t v = leaf_bits(prot) | ((pa + off) & VTD_FIRST_STAGE_PTE_ADDR_MASK);

		if (!e)
			return -errno ? -errno : -ENOMEM;
		if (*e & VTD_FIRST_STAGE_PTE_P_MASK)
			return vt_fail(EEXIST, "iova %#llx is already mapped (%#llx)",
				       (unsigned long long)(iova + off), (unsigned long long)*e);
		if (level == 2)
			v |= VTD_FIRST_STAGE_PTE_PS_MASK;
		__atomic_store_n(e, v, __ATOMIC_RELEASE);
	}
	return 0;
}

/* The present leaf for iova, and its level. */
static uint64_t *find_leaf(struct vtd_pgtable *pt, uint64_t iova, int *level)
{
	uint64_t *table = pt->root;

	for (int l = pt->levels; l >= 1; l--) {
		uint64_t *e = &table[pt_index(iova, l)];

		if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK) && l == 1) {
			*level = 1;
			return e;  /* a not-present leaf: the caller decides */
		}
		if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK)) {
			vt_fail(ENOENT, "iova %#llx: not mapped (level %d)", (unsigned long long)iova, l);
			return NULL;
		}
		if (l == 1 || (l <= 3 && (*e & VTD_FIRST_STAGE_PTE_PS_MASK))) {
			*level = l;
			return e;
		}
		table = table_va(pt, *e & VTD_FIRST_STAGE_PTE_ADDR_MASK, NULL);
		if (!table) {
			vt_fail(EFAULT, "table not in the pool");
			return NULL;
		}
	}
	return NULL;
}

static uint64_t level_size(int level)
{
	return 1ull << level_shift(level);
}

int vtd_pgtable_lookup(struct vtd_pgtable *pt, uint64_t iova, uint64_t *pte, int *level)
{
	uint64_t *e = find_leaf(pt, iova, level);

	if (!e)
		return -ENOENT;
	*pte = *e;
	if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK))
		return vt_fail(ENOENT, "iova %#llx: leaf not present", (unsigned long long)iova);
	return 0;
}

/* Apply fn to every leaf of [iova, iova+size); leaves must be present and
 * lie wholly inside the range. */
static int for_each_leaf(struct vtd_pgtable *pt, uint64_t iova, uint64_t size,
			 void (*fn)(uint64_t *e, unsigned arg, uint64_t arg2), unsigned arg,
			 uint64_t arg2)
{
	int ret = check_range(pt, iova, size, VTD_PAGE_4K);

	if (ret)
		return ret;
	for (uint64_t off = 0; off < size;) {
		int level;
		uint64_t *e = find_leaf(pt, iova + off, &level);
		uint64_t step;

		if (!e)
			return -ENOENT;
		if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK))
			return vt_fail(ENOENT, "iova %#llx is not mapped",
				       (unsigned long long)(iova + off));
		step = level_size(level);
		if ((iova + off) & (step - 1) || size - off < step)
			return vt_fail(EINVAL, "range %#llx+%#llx splits a %#llx page at %#llx",
				       (unsigned long long)iova, (unsigned long long)size,
				       (unsigned long long)step, (unsigned long long)(iova + off));
		fn(e, arg, arg2);
		off += step;
	}
	return 0;
}

static void clear_leaf(uint64_t *e, unsigned arg, uint64_t arg2)
{
	(void)arg;
	(void)arg2;
	__atomic_store_n(e, 0, __ATOMIC_RELEASE);
}

static void protect_leaf(uint64_t *e, unsigned prot, uint64_t arg2)
{
	uint64_t v = *e & ~(VTD_FIRST_STAGE_PTE_RW_MASK | VTD_FIRST_STAGE_PTE_D_MASK);

	(void)arg2;
	if (prot & VTD_PROT_WRITE)
		v |= VTD_FIRST_STAGE_PTE_RW_MASK | VTD_FIRST_STAGE_PTE_D_MASK;
	__atomic_store_n(e, v, __ATOMIC_RELEASE);
}

int vtd_pgtable_unmap(struct vtd_pgtable *pt, uint64_t iova, uint64_t size)
{
	return for_each_leaf(pt, iova, size, clear_leaf, 0, 0);
}

int vtd_pgtable_protect(struct vtd_pgtable *pt, uint64_t iova, uint64_t size, unsigned prot)
{
	if (!(prot & VTD_PROT_READ))
		return vt_fail(EINVAL, "first-stage pages are always readable: give VTD_PROT_READ");
	return for_each_leaf(pt, iova, size, protect_leaf, prot, 0);
}

int vtd_pgtable_remap(struct vtd_pgtable *pt, uint64_t iova, uint64_t new_pa)
{
	int level;
	uint64_t *e = find_leaf(pt, iova, &level);

	if (!e)
		return -ENOENT;
	if (!(*e & VTD_FIRST_STAGE_PTE_P_MASK))
		return vt_fail(ENOENT, "iova %#llx is not mapped", (unsigned long long)iova);
	if (new_pa & (level_size(level) - 1))
		return vt_fail(EINVAL, "pa %#llx not aligned to the level-%d page",
			       (unsigned long long)new_pa, level);
	__atomic_store_n(e, (*e & ~VTD_FIRST_STAGE_PTE_ADDR_MASK) | (new_pa & VTD_FIRST_STAGE_PTE_ADDR_MASK),
			 __ATOMIC_RELEASE);
	return 0;
}
