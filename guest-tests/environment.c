/* environment: what every guest test relies on, checked inside the guest.
 *
 * Needs no device: it checks the image and /init (root, mounts, hugepages,
 * modules) and the DMA buffer helper (a hugepage and its physical address
 * from /proc/self/pagemap).
 */
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/utsname.h>

#include <stdlib.h>

#include "lib/vuser.h"

#define HUGETLBFS_MAGIC 0x958458f6
#define SYSFS_MAGIC 0x62656572
#define PROC_SUPER_MAGIC 0x9fa0
#define TMPFS_MAGIC 0x01021994 /* devtmpfs is a tmpfs */

static struct vt_dmabuf buf;

static enum vt_result running_as_root(void)
{
	struct utsname u;

	if (uname(&u) == 0)
		ktap_diag("kernel %s", u.release);
	VT_CHECK(getuid() == 0 && geteuid() == 0, "uid %d euid %d", (int)getuid(), (int)geteuid());
	VT_CHECK(getpid() != 1, "running as pid 1, not under /init");
	return VT_PASS;
}

static int fs_type(const char *path, long *type)
{
	struct statfs st;

	if (statfs(path, &st))
		return -errno;
	*type = (long)st.f_type;
	return 0;
}

static enum vt_result mounts(void)
{
	static const struct {
		const char *path;
		long magic;
	} want[] = {
		{ "/proc", PROC_SUPER_MAGIC },
		{ "/sys", SYSFS_MAGIC },
		{ "/dev", TMPFS_MAGIC },
		{ VT_HUGETLBFS_DIR, HUGETLBFS_MAGIC },
	};

	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		long type = 0;
		int ret = fs_type(want[i].path, &type);

		VT_CHECK(ret == 0, "statfs %s: %s", want[i].path, strerror(-ret));
		VT_CHECK(type == want[i].magic, "%s is fs type %#lx, want %#lx", want[i].path, type,
			 want[i].magic);
	}
	VT_CHECK(access("/dev/console", W_OK) == 0, "/dev/console: %s", strerror(errno));
	VT_CHECK(access("/dev/null", W_OK) == 0, "/dev/null (devtmpfs): %s", strerror(errno));
	return VT_PASS;
}

static enum vt_result hugepages_reserved(void)
{
	char text[32];
	int n = vt_read_file("/proc/sys/vm/nr_hugepages", text, sizeof(text));

	VT_CHECK(n > 0, "read nr_hugepages: %s", strerror(-n));
	VT_CHECK(atoi(text) >= 1, "no hugepage reserved (nr_hugepages=%d)", atoi(text));
	return VT_PASS;
}

static enum vt_result uio_driver_loaded(void)
{
	VT_CHECK(access("/sys/bus/pci/drivers/uio_pci_generic", F_OK) == 0,
		 "uio_pci_generic is not registered: %s", strerror(errno));
	VT_CHECK(access("/sys/class/uio", F_OK) == 0, "the uio class is missing: %s",
		 strerror(errno));
	return VT_PASS;
}

static enum vt_result dma_buffer(void)
{
	VT_CHECK(!vt_dmabuf_alloc(&buf, 4096), "%s", vt_err());
	ktap_diag("buffer at pa %#llx (%s)", (unsigned long long)buf.pa,
		  buf.huge ? "hugepage" : "locked pages");
	VT_CHECK(buf.huge, "no 2 MiB hugepage for DMA buffers");
	VT_CHECK(buf.pa % VT_HUGEPAGE_SIZE == 0, "hugepage pa %#llx not 2 MiB aligned",
		 (unsigned long long)buf.pa);
	return VT_PASS;
}

/* Every 4 KiB entry of the hugepage in pagemap must follow the first. */
static enum vt_result pagemap_contiguous(void)
{
	uint64_t pa_last;

	vt_require("dma_buffer");
	pa_last = vt_virt_to_phys(buf.va + buf.len - 1);
	VT_CHECK(pa_last, "%s", vt_err());
	VT_CHECK(pa_last == buf.pa + buf.len - 1, "last byte at pa %#llx, want %#llx",
		 (unsigned long long)pa_last, (unsigned long long)(buf.pa + buf.len - 1));
	return VT_PASS;
}

VUSER_CASES(running_as_root, mounts, hugepages_reserved, uio_driver_loaded, dma_buffer,
	    pagemap_contiguous)
