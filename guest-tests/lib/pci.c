/* libvuser: PCI devices through sysfs (Documentation/PCI/sysfs-pci.rst).
 *
 * /sys/bus/pci/devices/<BDF>/{vendor,device,config,resourceN,enable,driver,
 * driver_override,uio}. "config" gives root the whole config space (256
 * bytes, or 4096 for PCIe behind an express bus); other users see 64 bytes
 * (drivers/pci/pci-sysfs.c pci_read_config). "resourceN" mmaps a BAR unless
 * a driver claimed it (pci_mmap_resource and IO_STRICT_DEVMEM).
 */
#include <dirent.h>
#include <fcntl.h>
#include <linux/pci_regs.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "vuser.h"

int vt_read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return (int)n;
}

int vt_write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n, len = (ssize_t)strlen(text);

	if (fd < 0)
		return -errno;
	n = write(fd, text, len);
	close(fd);
	if (n < 0)
		return -errno;
	return n == len ? 0 : -EIO;
}

static int read_hex_attr(const char *dir, const char *attr, unsigned long *val)
{
	char path[400], buf[64], *end;
	int n;

	snprintf(path, sizeof(path), "%s/%s", dir, attr);
	n = vt_read_file(path, buf, sizeof(buf));
	if (n < 0)
		return n;
	*val = strtoul(buf, &end, 16);
	return end == buf ? -EINVAL : 0;
}

static int bdf_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Visit devices in BDF order; stop when fn returns non-zero (its value is returned). */
static int for_each_pci(int (*fn)(const char *bdf, const char *dir, void *arg), void *arg)
{
	DIR *d = opendir(VT_SYSFS_PCI);
	struct dirent *e;
	char *names[256];
	int n = 0, ret = 0;

	if (!d)
		return vt_fail(errno, "open " VT_SYSFS_PCI ": %s", strerror(errno));
	while ((e = readdir(d)) && n < 256)
		if (e->d_name[0] != '.')
			names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, (size_t)n, sizeof(names[0]), bdf_cmp);
	for (int i = 0; i < n; i++) {
		char dir[400];

		if (!ret && names[i]) {
			snprintf(dir, sizeof(dir), VT_SYSFS_PCI "/%s", names[i]);
			ret = fn(names[i], dir, arg);
		}
		free(names[i]);
	}
	return ret;
}

static void pci_fill(struct vt_pci *pci, const char *bdf, uint16_t vendor, uint16_t device)
{
	memset(pci, 0, sizeof(*pci));
	snprintf(pci->bdf, sizeof(pci->bdf), "%s", bdf);
	snprintf(pci->dir, sizeof(pci->dir), VT_SYSFS_PCI "/%s", bdf);
	pci->cfg_fd = -1;
	pci->vendor = vendor;
	pci->device = device;
}

struct find_arg {
	uint16_t vendor, device;
	int n, seen, by_label;
	uint32_t label;
	struct vt_pci *out;
};

static int find_one(const char *bdf, const char *dir, void *p)
{
	struct find_arg *a = p;
	unsigned long v, dv;

	if (read_hex_attr(dir, "vendor", &v) || read_hex_attr(dir, "device", &dv))
		return 0;
	if (v != a->vendor || (a->device && dv != a->device))
		return 0;
	if (a->by_label) {
		struct vt_pci probe;
		uint32_t label;

		pci_fill(&probe, bdf, (uint16_t)v, (uint16_t)dv);
		if (vt_pci_label(&probe, &label) || label != a->label) {
			vt_pci_close(&probe);
			return 0;
		}
		vt_pci_close(&probe);
	}
	if (a->seen++ < a->n)
		return 0;
	pci_fill(a->out, bdf, (uint16_t)v, (uint16_t)dv);
	return 1;
}

int vt_pci_find_nth(uint16_t vendor, uint16_t device, int n, struct vt_pci *pci)
{
	struct find_arg a = { .vendor = vendor, .device = device, .n = n, .out = pci };
	int ret = for_each_pci(find_one, &a);

	if (ret < 0)
		return ret;
	if (!ret)
		return vt_fail(ENOENT, "no PCI device %04x:%04x #%d in " VT_SYSFS_PCI " (%d found)",
			       vendor, device, n, a.seen);
	return 0;
}

int vt_pci_find(uint16_t vendor, uint16_t device, struct vt_pci *pci)
{
	return vt_pci_find_nth(vendor, device, 0, pci);
}

int vt_pci_find_label(uint16_t device, uint32_t label, struct vt_pci *pci)
{
	struct find_arg a = { .vendor = VT_VUSER_VENDOR, .device = device, .by_label = 1,
			      .label = label, .out = pci };
	int ret = for_each_pci(find_one, &a);

	if (ret < 0)
		return ret;
	if (!ret)
		return vt_fail(ENOENT, "no vuser device %04x:%04x with label %#x", VT_VUSER_VENDOR,
			       device, label);
	return 0;
}

int vt_pci_count(uint16_t vendor, uint16_t device)
{
	struct vt_pci tmp;
	int n = 0;

	while (vt_pci_find_nth(vendor, device, n, &tmp) == 0)
		n++;
	return n;
}

static int open_config(struct vt_pci *pci)
{
	char path[400];

	if (pci->cfg_fd >= 0)
		return 0;
	snprintf(path, sizeof(path), "%s/config", pci->dir);
	pci->cfg_fd = open(path, O_RDWR | O_CLOEXEC);
	if (pci->cfg_fd < 0)
		return vt_fail(errno, "open %s: %s", path, strerror(errno));
	return 0;
}

void vt_pci_close(struct vt_pci *pci)
{
	if (pci->cfg_fd >= 0)
		close(pci->cfg_fd);
	pci->cfg_fd = -1;
}

ssize_t vt_pci_cfg_read(struct vt_pci *pci, void *buf, size_t len, off_t off)
{
	ssize_t n;
	int ret = open_config(pci);

	if (ret)
		return ret;
	n = pread(pci->cfg_fd, buf, len, off);
	if (n < 0)
		return vt_fail(errno, "%s: config read at %#lx: %s", pci->bdf, (long)off,
			       strerror(errno));
	return n;
}

static int cfg_read_n(struct vt_pci *pci, off_t off, void *val, size_t n)
{
	ssize_t got = vt_pci_cfg_read(pci, val, n, off);

	if (got < 0)
		return (int)got;
	if ((size_t)got != n)
		return vt_fail(EIO, "%s: config read of %zu bytes at %#lx gave %zd (not root?)",
			       pci->bdf, n, (long)off, got);
	return 0;
}

int vt_pci_cfg_read8(struct vt_pci *pci, off_t off, uint8_t *val)
{
	return cfg_read_n(pci, off, val, 1);
}

int vt_pci_cfg_read16(struct vt_pci *pci, off_t off, uint16_t *val)
{
	return cfg_read_n(pci, off, val, 2);
}

int vt_pci_cfg_read32(struct vt_pci *pci, off_t off, uint32_t *val)
{
	return cfg_read_n(pci, off, val, 4);
}

static int cfg_write_n(struct vt_pci *pci, off_t off, const void *val, size_t n)
{
	int ret = open_config(pci);

	if (ret)
		return ret;
	if (pwrite(pci->cfg_fd, val, n, off) != (ssize_t)n)
		return vt_fail(errno ? errno : EIO, "%s: config write at %#lx: %s", pci->bdf,
			       (long)off, strerror(errno));
	return 0;
}

int vt_pci_cfg_write16(struct vt_pci *pci, off_t off, uint16_t val)
{
	return cfg_write_n(pci, off, &val, 2);
}

int vt_pci_cfg_write32(struct vt_pci *pci, off_t off, uint32_t val)
{
	return cfg_write_n(pci, off, &val, 4);
}

int vt_pci_cfg_update16(struct vt_pci *pci, off_t off, uint16_t set, uint16_t clear)
{
	uint16_t v;
	int ret = vt_pci_cfg_read16(pci, off, &v);

	if (ret)
		return ret;
	return vt_pci_cfg_write16(pci, off, (uint16_t)((v & ~clear) | set));
}

uint16_t vt_le16(const uint8_t *cfg, unsigned off)
{
	return (uint16_t)(cfg[off] | cfg[off + 1] << 8);
}

uint32_t vt_le32(const uint8_t *cfg, unsigned off)
{
	return (uint32_t)vt_le16(cfg, off) | (uint32_t)vt_le16(cfg, off + 2) << 16;
}

unsigned vt_pci_find_cap(const uint8_t *cfg, uint8_t id)
{
	unsigned pos, guard = 48; /* (256 - 64) / 4 capabilities at most */

	if (!(vt_le16(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		return 0;
	pos = cfg[PCI_CAPABILITY_LIST] & ~3u;
	while (pos >= 0x40 && pos < 256 && guard--) {
		if (cfg[pos + PCI_CAP_LIST_ID] == id)
			return pos;
		pos = cfg[pos + PCI_CAP_LIST_NEXT] & ~3u;
	}
	return 0;
}

unsigned vt_pci_find_ext_cap(const uint8_t *cfg, size_t cfg_len, uint16_t id)
{
	unsigned pos = 0x100, guard = (VT_PCI_CFG_MAX - 0x100) / 8;

	while (pos >= 0x100 && pos + 4 <= cfg_len && guard--) {
		uint32_t hdr = vt_le32(cfg, pos);

		if (hdr == 0 || hdr == 0xffffffffu)
			return 0;
		if (PCI_EXT_CAP_ID(hdr) == id)
			return pos;
		pos = PCI_EXT_CAP_NEXT(hdr);
	}
	return 0;
}

static ssize_t snapshot(struct vt_pci *pci, uint8_t *cfg)
{
	ssize_t n = vt_pci_cfg_read(pci, cfg, VT_PCI_CFG_MAX, 0);

	if (n >= 0 && n < 64)
		return vt_fail(EIO, "%s: config space is %zd bytes", pci->bdf, n);
	return n;
}

unsigned vt_pci_cap(struct vt_pci *pci, uint8_t id)
{
	uint8_t cfg[VT_PCI_CFG_MAX];

	return snapshot(pci, cfg) < 0 ? 0 : vt_pci_find_cap(cfg, id);
}

unsigned vt_pci_ext_cap(struct vt_pci *pci, uint16_t id)
{
	uint8_t cfg[VT_PCI_CFG_MAX];
	ssize_t n = snapshot(pci, cfg);

	return n < 0 ? 0 : vt_pci_find_ext_cap(cfg, (size_t)n, id);
}

int vt_pci_label(struct vt_pci *pci, uint32_t *label)
{
	uint8_t cfg[VT_PCI_CFG_MAX];
	ssize_t n = snapshot(pci, cfg);
	unsigned pos;

	if (n < 0)
		return (int)n;
	pos = vt_pci_find_cap(cfg, PCI_CAP_ID_VNDR);
	if (!pos)
		return vt_fail(ENOENT, "%s has no vendor-specific capability (no label)", pci->bdf);
	if (cfg[pos + 2] < VT_VNDR_CAP_LEN)
		return vt_fail(EINVAL, "%s: vendor capability is %u bytes, want %u", pci->bdf,
			       cfg[pos + 2], VT_VNDR_CAP_LEN);
	*label = vt_le32(cfg, pos + VT_VNDR_LABEL_OFF);
	return 0;
}

volatile void *vt_pci_map_bar(struct vt_pci *pci, int bar, size_t *len)
{
	char path[400];
	struct stat st;
	void *p;
	int fd;

	snprintf(path, sizeof(path), "%s/resource%d", pci->dir, bar);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0) {
		vt_fail(errno, "open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) || st.st_size <= 0) {
		vt_fail(ENODEV, "%s: BAR%d is not implemented", pci->bdf, bar);
		close(fd);
		return NULL;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		vt_fail(errno, "mmap %s: %s%s", path, strerror(errno),
			errno == EINVAL ? " (claimed by a kernel driver?)" : "");
		return NULL;
	}
	*len = (size_t)st.st_size;
	return p;
}

void vt_pci_unmap_bar(volatile void *p, size_t len)
{
	if (p)
		munmap((void *)p, len);
}

int vt_pci_driver(struct vt_pci *pci, char *name, size_t len)
{
	char path[400], target[400];
	ssize_t n;

	snprintf(path, sizeof(path), "%s/driver", pci->dir);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		if (errno != ENOENT)
			return vt_fail(errno, "readlink %s: %s", path, strerror(errno));
		name[0] = '\0';
		return 0;
	}
	target[n] = '\0';
	snprintf(name, len, "%s", strrchr(target, '/') ? strrchr(target, '/') + 1 : target);
	return 0;
}

int vt_pci_unbind(struct vt_pci *pci)
{
	char drv[128], path[400];
	int ret = vt_pci_driver(pci, drv, sizeof(drv));

	if (ret || !drv[0])
		return ret;
	snprintf(path, sizeof(path), "%s/driver/unbind", pci->dir);
	ret = vt_write_file(path, pci->bdf);
	if (ret)
		return vt_fail(-ret, "unbind %s from %s: %s", pci->bdf, drv, strerror(-ret));
	return 0;
}

int vt_pci_bind(struct vt_pci *pci, const char *driver)
{
	char drv[128], path[400];
	int ret = vt_pci_driver(pci, drv, sizeof(drv));

	if (ret)
		return ret;
	if (!strcmp(drv, driver))
		return 0;
	if ((ret = vt_pci_unbind(pci)))
		return ret;
	snprintf(path, sizeof(path), "%s/driver_override", pci->dir);
	if ((ret = vt_write_file(path, driver)))
		return vt_fail(-ret, "write %s: %s", path, strerror(-ret));
	snprintf(path, sizeof(path), "/sys/bus/pci/drivers/%s/bind", driver);
	ret = vt_write_file(path, pci->bdf);
	if (ret && ret != -EEXIST && ret != -EBUSY)
		return vt_fail(-ret, "bind %s to %s: %s%s", pci->bdf, driver, strerror(-ret),
			       ret == -ENOENT ? " (driver not loaded?)" : "");
	if ((ret = vt_pci_driver(pci, drv, sizeof(drv))))
		return ret;
	if (strcmp(drv, driver))
		return vt_fail(ENODEV, "%s: %s did not bind it (driver is \"%s\")", pci->bdf, driver,
			       drv);
	return 0;
}

int vt_pci_bind_uio(struct vt_pci *pci, int *fd)
{
	char path[400], name[256] = "", dev_path[300];
	struct dirent *e;
	DIR *d;
	int ret = vt_pci_bind(pci, "uio_pci_generic");

	if (ret)
		return ret;
	snprintf(path, sizeof(path), "%s/uio", pci->dir);
	d = opendir(path);
	if (!d)
		return vt_fail(errno, "%s: no uio device (INTx disable not implemented?): %s",
			       pci->bdf, strerror(errno));
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, "uio", 3))
			snprintf(name, sizeof(name), "%s", e->d_name);
	closedir(d);
	if (!name[0])
		return vt_fail(ENOENT, "no uio device under %s", path);
	snprintf(dev_path, sizeof(dev_path), "/dev/%s", name);
	*fd = open(dev_path, O_RDWR | O_CLOEXEC);
	if (*fd < 0)
		return vt_fail(errno, "open %s: %s", dev_path, strerror(errno));
	return 0;
}

int vt_pci_enable(struct vt_pci *pci)
{
	char path[400], drv[128], buf[16];
	int ret = vt_pci_driver(pci, drv, sizeof(drv));

	if (ret)
		return ret;
	snprintf(path, sizeof(path), "%s/enable", pci->dir);
	if (!drv[0] && vt_read_file(path, buf, sizeof(buf)) > 0 && buf[0] == '0') {
		ret = vt_write_file(path, "1");
		if (ret)
			return vt_fail(-ret, "write 1 to %s: %s", path, strerror(-ret));
	}
	return vt_pci_cfg_update16(pci, PCI_COMMAND, PCI_COMMAND_MEMORY, 0);
}

int vt_pci_set_master(struct vt_pci *pci, int on)
{
	uint16_t cmd;
	int ret = vt_pci_cfg_update16(pci, PCI_COMMAND, on ? PCI_COMMAND_MASTER : 0,
				      on ? 0 : PCI_COMMAND_MASTER);

	if (ret)
		return ret;
	if ((ret = vt_pci_cfg_read16(pci, PCI_COMMAND, &cmd)))
		return ret;
	if (!!(cmd & PCI_COMMAND_MASTER) != !!on)
		return vt_fail(EIO, "%s: PCI_COMMAND %#x after setting Bus Master %s", pci->bdf,
			       cmd, on ? "on" : "off");
	return 0;
}

static int ext_cap_or_fail(struct vt_pci *pci, uint16_t id, const char *name, unsigned *pos)
{
	*pos = vt_pci_ext_cap(pci, id);
	if (!*pos)
		return vt_fail(ENOENT, "%s has no %s capability (%s)", pci->bdf, name,
			       vt_err()[0] ? vt_err() : "not in the list");
	return 0;
}

int vt_pci_pasid_enable(struct vt_pci *pci, int on)
{
	unsigned pos;
	int ret = ext_cap_or_fail(pci, PCI_EXT_CAP_ID_PASID, "PASID", &pos);

	if (ret)
		return ret;
	return vt_pci_cfg_update16(pci, pos + PCI_PASID_CTRL, on ? PCI_PASID_CTRL_ENABLE : 0,
				   on ? 0 : PCI_PASID_CTRL_ENABLE);
}

int vt_pci_ats_enable(struct vt_pci *pci, int on)
{
	unsigned pos;
	int ret = ext_cap_or_fail(pci, PCI_EXT_CAP_ID_ATS, "ATS", &pos);

	if (ret)
		return ret;
	/* STU 0: 4 KiB translations. */
	return vt_pci_cfg_write16(pci, pos + PCI_ATS_CTRL, on ? PCI_ATS_CTRL_ENABLE : 0);
}

int vt_pci_pri_enable(struct vt_pci *pci, int on, uint32_t requests)
{
	unsigned pos;
	int ret = ext_cap_or_fail(pci, PCI_EXT_CAP_ID_PRI, "PRI", &pos);

	if (ret)
		return ret;
	if (!on)
		return vt_pci_cfg_write16(pci, pos + PCI_PRI_CTRL, 0);
	/* PCIe 6.0 10.5.2: reset while disabled, allocate, then enable. */
	if ((ret = vt_pci_cfg_write16(pci, pos + PCI_PRI_CTRL, PCI_PRI_CTRL_RESET)))
		return ret;
	if ((ret = vt_pci_cfg_write32(pci, pos + PCI_PRI_ALLOC_REQ, requests)))
		return ret;
	return vt_pci_cfg_write16(pci, pos + PCI_PRI_CTRL, PCI_PRI_CTRL_ENABLE);
}

int vt_pci_pri_status(struct vt_pci *pci, uint16_t *status)
{
	unsigned pos;
	int ret = ext_cap_or_fail(pci, PCI_EXT_CAP_ID_PRI, "PRI", &pos);

	if (ret)
		return ret;
	return vt_pci_cfg_read16(pci, pos + PCI_PRI_STATUS, status);
}

int vt_module_loaded(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "/sys/module/%s", name);
	return access(path, F_OK) == 0;
}

int vt_module_load(const char *path, const char *params)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	long ret;

	if (fd < 0)
		return vt_fail(errno, "open %s: %s", path, strerror(errno));
	ret = syscall(SYS_finit_module, fd, params ? params : "", 0);
	close(fd);
	if (ret) {
		int e = errno;

		return vt_fail(e, "finit_module %s: %s%s", path, strerror(e),
			       e == ENOEXEC ? " (vermagic or format refused; see dmesg)" : "");
	}
	return 0;
}
