/* libvuser: errors, time, polling (see vuser.h). */
#include <time.h>

#include "vuser.h"

static char vt_err_buf[512];

const char *vt_err(void)
{
	return vt_err_buf;
}

int vt_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vt_err_buf, sizeof(vt_err_buf), fmt, ap);
	va_end(ap);
	errno = err > 0 ? err : -err;  /* callers returning NULL report through errno too */
	return err > 0 ? -err : err;
}

double vt_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void vt_sleep_us(unsigned us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int vt_wait32(volatile const uint32_t *p, uint32_t mask, uint32_t want, unsigned timeout_ms)
{
	double deadline = vt_now() + timeout_ms / 1000.0;
	unsigned spin = 0;

	for (;;) {
		uint32_t v = *p;

		if ((v & mask) == want)
			return 0;
		if (vt_now() > deadline)
			return vt_fail(ETIMEDOUT, "value %#x & %#x still not %#x after %u ms", v, mask,
				       want, timeout_ms);
		/* The device works in another process on the host: yield to it. */
		if (++spin > 100)
			vt_sleep_us(200);
	}
}

long vt_first_not(const void *p, size_t n, uint8_t v)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i] != v)
			return (long)i;
	return -1;
}
