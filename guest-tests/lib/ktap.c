/* libvuser: KTAP output (Documentation/dev-tools/ktap.rst).
 *
 * Every line goes to stdout, line buffered, so results and diagnostics stay
 * in order on the serial console. The guest's /init runs each program as a
 * subtest and sets KTAP_INDENT to the number of spaces its lines need.
 */
#include <stdlib.h>

#include "vuser.h"

static int ktap_indent_spaces;

void ktap_init(void)
{
	const char *s = getenv("KTAP_INDENT");

	setvbuf(stdout, NULL, _IOLBF, 0);
	ktap_indent_spaces = s ? atoi(s) : 0;
	if (ktap_indent_spaces < 0 || ktap_indent_spaces > 64)
		ktap_indent_spaces = 0;
}

static void ktap_vline(const char *prefix, const char *fmt, va_list ap)
{
	printf("%*s%s", ktap_indent_spaces, "", prefix);
	vprintf(fmt, ap);
	putchar('\n');
}

void ktap_line(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ktap_vline("", fmt, ap);
	va_end(ap);
}

/* "# ..." diagnostic: belongs to the result line that follows it. */
void ktap_diag(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ktap_vline("# ", fmt, ap);
	va_end(ap);
}

void ktap_header(const char *name, int ncases)
{
	ktap_line("KTAP version 1");
	ktap_line("# Subtest: %s", name);
	ktap_line("1..%d", ncases);
}

void ktap_ok(int n, const char *name)
{
	ktap_line("ok %d %s", n, name);
}

void ktap_not_ok(int n, const char *name)
{
	ktap_line("not ok %d %s", n, name);
}

void ktap_skip(int n, const char *name, const char *reason)
{
	ktap_line("ok %d %s # SKIP %s", n, name, reason);
}

void ktap_hexdump(const char *what, const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t off = 0; off < len; off += 16) {
		char line[16 * 3 + 1], *o = line;

		for (size_t i = off; i < len && i < off + 16; i++)
			o += sprintf(o, "%02x ", b[i]);
		ktap_diag("%s +%#05zx: %s", what, off, line);
	}
}
