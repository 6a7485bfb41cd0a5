/* libvuser: the test runner behind VUSER_CASES (see vuser.h). */
#include "vuser.h"

#define VT_MAX_CASES 64

static const struct vt_case *vt_cases;
static enum vt_result vt_results[VT_MAX_CASES];
static int vt_ncases;
static char vt_skip_reason[160];

enum vt_result vt_result_of(const char *name)
{
	for (int i = 0; i < vt_ncases; i++)
		if (!strcmp(vt_cases[i].name, name))
			return vt_results[i];
	return VT_NOT_RUN;
}

void vt_set_skip_reason(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(vt_skip_reason, sizeof(vt_skip_reason), fmt, ap);
	va_end(ap);
}

static int vt_selected(int argc, char **argv, const char *name)
{
	if (argc <= 1)
		return 1;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return 1;
	return 0;
}

int vt_main(int argc, char **argv, const struct vt_case *cases, int n)
{
	const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	int failed = 0;

	ktap_init();
	if (n > VT_MAX_CASES) {
		ktap_diag("%d cases declared, the runner holds %d", n, VT_MAX_CASES);
		return 1;
	}
	vt_cases = cases;
	vt_ncases = n;
	for (int i = 0; i < n; i++)
		vt_results[i] = VT_NOT_RUN;

	ktap_header(prog, n);
	for (int i = 0; i < n; i++) {
		double t0;

		if (!vt_selected(argc, argv, cases[i].name)) {
			ktap_skip(i + 1, cases[i].name, "not selected");
			vt_results[i] = VT_SKIP;
			continue;
		}
		vt_skip_reason[0] = '\0';
		errno = 0;
		t0 = vt_now();
		vt_results[i] = cases[i].fn();
		if (vt_now() - t0 > 1.0)
			ktap_diag("%s took %.1f s", cases[i].name, vt_now() - t0);
		switch (vt_results[i]) {
		case VT_PASS:
			ktap_ok(i + 1, cases[i].name);
			break;
		case VT_SKIP:
			ktap_skip(i + 1, cases[i].name,
				  vt_skip_reason[0] ? vt_skip_reason : "no reason given");
			break;
		case VT_TODO:
			ktap_line("not ok %d %s # TODO %s", i + 1, cases[i].name,
				  vt_skip_reason[0] ? vt_skip_reason : "no reason given");
			break;
		default:
			vt_results[i] = VT_FAIL;
			ktap_not_ok(i + 1, cases[i].name);
			failed++;
		}
	}
	ktap_diag("%s: %d of %d cases failed", prog, failed, n);
	return failed ? 1 : 0;
}
