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
	if (!p)
		return -EINVAL;
	/* 6.1 prints [bus:dev.fn], later kernels pci_name()'s [domain:bus:dev.fn] */
	if (sscanf(p, "Request device [%*x:%x:%x.%u] fault addr %" SCNx64 " [fault reason %x]%n",
		   &f->bus, &f->dev, &f->fn, &f->addr, &f->reason, &used) != 5 || !used) {
		used = 0;
		if (sscanf(p, "Request device [%x:%x.%u] fault addr %" SCNx64 " [fault reason %x]%n",
			   &f->bus, &f->dev, &f->fn, &f->addr, &f->reason, &used) != 5 || !used)
			return -EINVAL;
	}
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

/*
 * The 6.1 fault handler (drivers/iommu/intel/dmar.c dmar_fault) asks one
 * ratelimit state (10 per 5 s) before each message: once for "DRHD:
 * handling fault status", once per fault record ("[DMA ...]"), and once
 * more for the empty record that ends its loop. A fault thus takes three,
 * and the fourth fault within 5 s is handled but not printed. Printed
 * records carry their printk time; a line written to /dev/kmsg now gives
 * the present on the same clock.
 */
#define DMAR_RL_INTERVAL_US 5000000ull
#define DMAR_RL_BURST 10

int vt_dmar_log_ready(unsigned *waited_ms)
{
	static const char marker[] = "vuser: checking the DMAR fault log budget\n";
	unsigned long long now = 0, last = 0, stamps[64];
	int rd, wr, n = 0, cost[64];
	char rec[2048];

	*waited_ms = 0;
	rd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (rd < 0)
		return vt_fail(errno, "open /dev/kmsg: %s", strerror(errno));
	wr = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (wr < 0 || write(wr, marker, sizeof(marker) - 1) < 0) {
		int e = errno;

		close(rd);
		if (wr >= 0)
			close(wr);
		return vt_fail(e, "write /dev/kmsg: %s", strerror(e));
	}
	close(wr);
	for (;;) {
		ssize_t len = read(rd, rec, sizeof(rec) - 1);
		unsigned long long usec;
		char *text;

		if (len < 0 && errno == EPIPE)
			continue;
		if (len <= 0)
			break;
		rec[len] = 0;
		text = strchr(rec, ';');
		if (!text || sscanf(rec, "%*u,%*u,%llu", &usec) != 1)
			continue;
		text++;
		if (!strncmp(text, marker, sizeof(marker) - 2))
			now = usec;
		else if (strstr(text, "DMAR: DRHD: handling fault status")) {
			cost[n % 64] = 2;    /* the line, and the loop's last look */
			stamps[n++ % 64] = usec;
		} else if (strstr(text, "DMAR: [DMA ")) {
			cost[n % 64] = 1;
			stamps[n++ % 64] = usec;
		}
	}
	close(rd);
	if (!now)
		return vt_fail(EIO, "did not read back the marker written to /dev/kmsg");
	{
		int used = 0;

		for (int i = 0; i < (n < 64 ? n : 64); i++) {
			if (stamps[i] + DMAR_RL_INTERVAL_US > now)
				used += cost[i];
			if (stamps[i] > last)
				last = stamps[i];
		}
		/* A fault needs three; with fewer left in the window, wait it out. */
		if (used + 3 > DMAR_RL_BURST) {
			unsigned long long wait = last + DMAR_RL_INTERVAL_US + 200000 - now;

			*waited_ms = (unsigned)(wait / 1000);
			vt_sleep_us((unsigned)wait);
		}
	}
	return 0;
}
