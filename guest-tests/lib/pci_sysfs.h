/* PCI devices through sysfs (Documentation/PCI/sysfs-pci.rst).
 *
 * /sys/bus/pci/devices/<BDF>/{vendor,device,config,resourceN,driver,uio}.
 * "config" gives root the whole config space (256 bytes, or 4096 for PCIe
 * behind an express bus); non-root users see only 64 bytes
 * (drivers/pci/pci-sysfs.c pci_read_config). Writes go through the same file.
 * "resourceN" mmaps a BAR (pci_mmap_resource).
 */
#ifndef VUSER_PCI_SYSFS_H
#define VUSER_PCI_SYSFS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/pci_regs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define VT_SYSFS_PCI "/sys/bus/pci/devices"
#define VT_PCI_CFG_MAX 4096

struct vt_pci {
	char bdf[256];
	char dir[300];
	int cfg_fd;
};

static inline int vt_read_file(const char *path, char *buf, size_t len)
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

static inline int vt_write_file(const char *path, const char *text)
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

static inline int vt_read_hex_attr(const char *dir, const char *attr, unsigned long *val)
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

/* Find the first device with this vendor and device id; -ENOENT if none. */
static inline int vt_pci_find(uint16_t vendor, uint16_t device, struct vt_pci *pci)
{
	DIR *d = opendir(VT_SYSFS_PCI);
	struct dirent *e;
	int ret = -ENOENT;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		char dir[300];
		unsigned long v, dv;

		if (e->d_name[0] == '.')
			continue;
		snprintf(dir, sizeof(dir), VT_SYSFS_PCI "/%s", e->d_name);
		if (vt_read_hex_attr(dir, "vendor", &v) || vt_read_hex_attr(dir, "device", &dv))
			continue;
		if (v != vendor || dv != device)
			continue;
		snprintf(pci->bdf, sizeof(pci->bdf), "%s", e->d_name);
		snprintf(pci->dir, sizeof(pci->dir), "%s", dir);
		pci->cfg_fd = -1;
		ret = 0;
		break;
	}
	closedir(d);
	return ret;
}

static inline int vt_pci_open_config(struct vt_pci *pci)
{
	char path[400];

	if (pci->cfg_fd >= 0)
		return 0;
	snprintf(path, sizeof(path), "%s/config", pci->dir);
	pci->cfg_fd = open(path, O_RDWR | O_CLOEXEC);
	return pci->cfg_fd < 0 ? -errno : 0;
}

/* Read up to len bytes of config space at off; returns the count read. */
static inline ssize_t vt_pci_cfg_read(struct vt_pci *pci, void *buf, size_t len, off_t off)
{
	ssize_t n;

	if (vt_pci_open_config(pci))
		return -errno;
	n = pread(pci->cfg_fd, buf, len, off);
	return n < 0 ? -errno : n;
}

static inline int vt_pci_cfg_read16(struct vt_pci *pci, off_t off, uint16_t *val)
{
	return vt_pci_cfg_read(pci, val, 2, off) == 2 ? 0 : -EIO;
}

static inline int vt_pci_cfg_write16(struct vt_pci *pci, off_t off, uint16_t val)
{
	if (vt_pci_open_config(pci))
		return -errno;
	return pwrite(pci->cfg_fd, &val, 2, off) == 2 ? 0 : -EIO;
}

/* Little-endian field reads from a config space snapshot. */
static inline uint16_t vt_le16(const uint8_t *cfg, unsigned off)
{
	return (uint16_t)(cfg[off] | cfg[off + 1] << 8);
}

static inline uint32_t vt_le32(const uint8_t *cfg, unsigned off)
{
	return (uint32_t)vt_le16(cfg, off) | (uint32_t)vt_le16(cfg, off + 2) << 16;
}

/* Offset of standard capability id in a snapshot, 0 if absent (PCI 3.0 6.7). */
static inline unsigned vt_pci_find_cap(const uint8_t *cfg, uint8_t id)
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

/* Offset of extended capability id, 0 if absent (PCIe 6.0 7.6). */
static inline unsigned vt_pci_find_ext_cap(const uint8_t *cfg, size_t cfg_len, uint16_t id)
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

/* mmap BAR "resource<bar>" read/write; NULL with errno set on failure. */
static inline volatile uint32_t *vt_pci_map_bar(struct vt_pci *pci, int bar, size_t *len)
{
	char path[400];
	struct stat st;
	void *p;
	int fd;

	snprintf(path, sizeof(path), "%s/resource%d", pci->dir, bar);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) || st.st_size <= 0) {
		close(fd);
		errno = errno ? errno : ENODEV;
		return NULL;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return NULL;
	*len = (size_t)st.st_size;
	return p;
}

#endif
