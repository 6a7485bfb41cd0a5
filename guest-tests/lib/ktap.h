/* KTAP output for guest tests (Documentation/dev-tools/ktap.rst).
 *
 * Every line goes to stdout, line buffered, so results and diagnostics stay
 * in order on the serial console. The guest's /init runs each program as a
 * subtest and sets KTAP_INDENT to the number of spaces its lines need.
 */
#ifndef VUSER_KTAP_H
#define VUSER_KTAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int ktap_indent_spaces;

static inline void ktap_init(void)
{
	const char *s = getenv("KTAP_INDENT");

	setvbuf(stdout, NULL, _IOLBF, 0);
	ktap_indent_spaces = s ? atoi(s) : 0;
	if (ktap_indent_spaces < 0 || ktap_indent_spaces > 64)
		ktap_indent_spaces = 0;
}

static inline void ktap_vline(const char *fmt, va_list ap)
{
	printf("%*s", ktap_indent_spaces, "");
	vprintf(fmt, ap);
	putchar('\n');
}

static inline void __attribute__((format(printf, 1, 2))) ktap_line(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ktap_vline(fmt, ap);
	va_end(ap);
}

/* "# ..." diagnostic: belongs to the result line that follows it. */
static inline void __attribute__((format(printf, 1, 2))) ktap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("%*s# ", ktap_indent_spaces, "");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static inline void ktap_header(const char *name, int ncases)
{
	ktap_line("KTAP version 1");
	ktap_line("# Subtest: %s", name);
	ktap_line("1..%d", ncases);
}

static inline void ktap_ok(int n, const char *name)
{
	ktap_line("ok %d %s", n, name);
}

static inline void ktap_not_ok(int n, const char *name)
{
	ktap_line("not ok %d %s", n, name);
}

static inline void ktap_skip(int n, const char *name, const char *reason)
{
	ktap_line("ok %d %s # SKIP %s", n, name, reason);
}

#endif
