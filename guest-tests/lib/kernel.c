/* libvuser: the guest kernel's own view, for guests whose kernel owns the
 * vIOMMU: its log (/dev/kmsg, Documentation/ABI/testing/dev-kmsg), the DMAR
 * fault lines of its intel_iommu driver, and a function's IOMMU group.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>

#include "vuser.h"

int vt_kmsg_open(struct vt_kmsg *k)
{
	k->fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (k->fd < 0)
		return vt_fail(errno, "open /dev/kmsg: %s", strerror(errno));
	if (lseek(k->fd, 0, SEEK_END) < 0) {
		int e = errno;

		close(k->fd);
		k->fd = -1;
		return vt_fail(e, "seek /dev/kmsg to its end: %s", strerror(e));
	}
	return 0;
}

void vt_kmsg_close(struct vt_kmsg *k)
{
	if (k->fd >= 0)
		close(k->fd);
	k->fd = -1;
}

/* The next record's message ("prio,seq,usec,flags;message\n[continuation]"),
 * 1 if one was read, 0 if none is there, or -errno. */
static int kmsg_next(struct vt_kmsg *k, char *msg, size_t len)
{
	char rec[2048];

	for (;;) {
		ssize_t n = read(k->fd, rec, sizeof(rec) - 1);
		char *text, *nl;

		if (n < 0 && errno == EPIPE)
			continue;    /* records were overwritten before we read them */
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n < 0)
			return vt_fail(errno, "read /dev/kmsg: %s", strerror(errno));
		rec[n] = 0;
		text = strchr(rec, ';');
		text = text ? text + 1 : rec;
		nl = strchr(text, '\n');
		if (nl)
			*nl = 0;
		n = (ssize_t)strlen(text);
		if ((size_t)n >= len)
			n = (ssize_t)len - 1;   /* long records are cut */
		memcpy(msg, text, (size_t)n);
		msg[n] = 0;
		return 1;
	}
}

int vt_kmsg_find(struct vt_kmsg *k, const char *needle, char *msg, size_t len,
		 unsigned timeout_ms)
{
	double end = vt_now() + timeout_ms / 1000.0;
	char line[1024];

	for (;;) {
		int r = kmsg_next(k, line, sizeof(line));

		if (r < 0)
			return r;
		if (r && strstr(line, needle)) {
			snprintf(msg, len, "%s", line);
			return 0;
		}
		if (!r) {
			if (vt_now() > end)
				return vt_fail(ENOENT, "no kernel log line with \"%s\" within %u ms",
					       needle, timeout_ms);
			vt_sleep_us(10000);
		}
	}
}

int vt_kmsg_count(struct vt_kmsg *k, const char *needle, unsigned ms)
{
	char line[1024];
	int n = 0, r;

	vt_sleep_us(ms * 1000u);
	while ((r = kmsg_next(k, line, sizeof(line))) > 0)
		n += strstr(line, needle) != NULL;
	return r < 0 ? r : n;
}

/*
 * drivers/iommu/intel/dmar.c dmar_fault_do_one() (6.1):
 *   "[DMA Write NO_PASID] Request device [02:00.0] fault addr 0x1000 [fault reason 0x71] SM: ..."
 *   "[DMA Read PASID 0x5] Request device [02:00.0] fault addr 0x1000 [fault reason 0x..] ..."
 * after the "DMAR: " prefix of pr_fmt.
 */
int vt_dmar_fault_parse(const char *msg, struct vt_dmar_fault *f)
{
	const char *p = strstr(msg, "[DMA ");
	char kind[8], pas[16];
	int used = 0;

	memset(f, 0, sizeof(*f));
	if (!p)
		return -EINVAL;
	if (sscanf(p, "[DMA %7s %15[^] ]", kind, pas) != 2)
		return -EINVAL;
	f->write = !strcmp(kind, "Write");
	if (!f->write && strcmp(kind, "Read"))
		return -EINVAL;
	if (!strcmp(pas, "PASID")) {
		if (sscanf(strstr(p, "PASID") + 5, " %" SCNx32, &f->pasid) != 1)
			return -EINVAL;
		f->has_pasid = 1;
	} else if (strcmp(pas, "NO_PASID")) {
		return -EINVAL;
	}
	p = strstr(p, "Request device [");
	if (!p || sscanf(p, "Request device [%x:%x.%u] fault addr %" SCNx64 " [fault reason %x]%n",
			 &f->bus, &f->dev, &f->fn, &f->addr, &f->reason, &used) != 5 || !used)
		return -EINVAL;
	p += used;
	while (*p == ' ')
		p++;
	snprintf(f->text, sizeof(f->text), "%s", p);
	return 0;
}

int vt_pci_bdf_sid(const struct vt_pci *pci, uint16_t *sid)
{
	unsigned dom, bus, dev, fn;

	if (sscanf(pci->bdf, "%x:%x:%x.%u", &dom, &bus, &dev, &fn) != 4 || bus > 255 ||
	    dev > 31 || fn > 7)
		return vt_fail(EINVAL, "%s: not a domain:bus:dev.fn address", pci->bdf);
	*sid = (uint16_t)(bus << 8 | dev << 3 | fn);
	return 0;
}

int vt_pci_iommu_group_type(const struct vt_pci *pci, char *type, size_t len)
{
	char path[400];
	int n;

	snprintf(path, sizeof(path), "%s/iommu_group/type", pci->dir);
	n = vt_read_file(path, type, len);
	if (n == -ENOENT)
		return vt_fail(ENOENT, "%s has no IOMMU group (is the kernel's IOMMU driver on?)",
			       pci->bdf);
	if (n < 0)
		return n;
	type[strcspn(type, "\n")] = 0;
	return 0;
}

int vt_pages_present(const void *p, size_t len)
{
	uintptr_t first = (uintptr_t)p & ~(uintptr_t)(VT_PAGE_SIZE - 1);
	uintptr_t end = (uintptr_t)p + len;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC), n = 0;

	if (fd < 0)
		return vt_fail(errno, "open /proc/self/pagemap: %s", strerror(errno));
	for (uintptr_t a = first; a < end; a += VT_PAGE_SIZE) {
		uint64_t e;

		if (pread(fd, &e, sizeof(e), (off_t)(a / VT_PAGE_SIZE * sizeof(e))) != sizeof(e)) {
			int err = errno ? errno : EIO;

			close(fd);
			return vt_fail(err, "read /proc/self/pagemap: %s", strerror(err));
		}
		n += (int)(e >> 63);
	}
	close(fd);
	return n;
}

long vt_irq_count(const char *name)
{
	char buf[32768], *save = NULL;
	long total = -1;

	if (vt_read_file("/proc/interrupts", buf, sizeof(buf)) < 0)
		return -1;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':'), *end = line + strlen(line), *p;
		size_t nl = strlen(name);
		long n = 0;

		/* the action name is the line's last word */
		while (end > line && end[-1] == ' ')
			end--;
		if (!colon || (size_t)(end - line) < nl || strncmp(end - nl, name, nl) ||
		    (end - nl > line && end[-nl - 1] != ' '))
			continue;
		for (p = colon + 1;;) {
			char *next;
			long v = strtol(p, &next, 10);

			if (next == p)
				break;
			n += v;
			p = next;
		}
		total = total < 0 ? n : total + n;
	}
	return total;
}
