/* Test case declaration and runner for vuser guest tests.
 *
 * A program declares its cases once, in order, at the end of its source:
 *
 *     static enum vt_result find_device(void) { ... }
 *     static enum vt_result read_config(void) { ... }
 *     VUSER_CASES(find_device, read_config)
 *
 * VUSER_CASES emits:
 *   - the section ".vuser_cases": the case names, each followed by a NUL.
 *     The host reads it with pyelftools before boot (vuser/guest/elfcases.py),
 *     so pytest knows every case even if the guest dies before reporting it;
 *   - the table the runner walks, and main().
 *
 * main() prints one KTAP subtest document: a plan for every declared case,
 * then one result line per case. Arguments, if any, name the cases to run;
 * the others are reported as skipped. The exit status is 0 when no case
 * failed, 1 otherwise.
 *
 * Inside a case: VT_CHECK(cond, fmt, ...) prints a diagnostic and fails the
 * case when cond is false; vt_require("other") fails the case when an
 * earlier case it builds on did not pass.
 */
#ifndef VUSER_TEST_H
#define VUSER_TEST_H

#include <errno.h>
#include <string.h>

#include "ktap.h"

enum vt_result { VT_PASS, VT_FAIL, VT_SKIP, VT_NOT_RUN };

struct vt_case {
	const char *name;
	enum vt_result (*fn)(void);
};

static const struct vt_case *vt_cases;
static enum vt_result *vt_results;
static int vt_ncases;
static char vt_skip_reason[160];

#define VT_CHECK(cond, ...)                                         \
	do {                                                        \
		if (!(cond)) {                                      \
			ktap_diag(__VA_ARGS__);                     \
			ktap_diag("check failed: %s (%s:%d)", #cond, \
				  __FILE__, __LINE__);              \
			return VT_FAIL;                             \
		}                                                   \
	} while (0)

/* Skip only for a real missing prerequisite, and say which. */
#define VT_SKIP_BECAUSE(...)                                                   \
	do {                                                                   \
		snprintf(vt_skip_reason, sizeof(vt_skip_reason), __VA_ARGS__); \
		return VT_SKIP;                                                \
	} while (0)

/* Fail when the named earlier case did not pass. */
#define vt_require(name)                                                  \
	do {                                                              \
		if (vt_result_of(name) != VT_PASS) {                      \
			ktap_diag("needs case %s, which did not pass", name); \
			return VT_FAIL;                                   \
		}                                                         \
	} while (0)

static inline enum vt_result vt_result_of(const char *name)
{
	for (int i = 0; i < vt_ncases; i++)
		if (!strcmp(vt_cases[i].name, name))
			return vt_results[i];
	return VT_NOT_RUN;
}

static inline int vt_selected(int argc, char **argv, const char *name)
{
	if (argc <= 1)
		return 1;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return 1;
	return 0;
}

static inline int vt_main(int argc, char **argv, const struct vt_case *cases, int n)
{
	static enum vt_result results[64];
	const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	int failed = 0;

	ktap_init();
	if (n > (int)(sizeof(results) / sizeof(results[0]))) {
		ktap_diag("%d cases declared, the runner holds 64", n);
		return 1;
	}
	vt_cases = cases;
	vt_results = results;
	vt_ncases = n;
	for (int i = 0; i < n; i++)
		results[i] = VT_NOT_RUN;

	ktap_header(prog, n);
	for (int i = 0; i < n; i++) {
		if (!vt_selected(argc, argv, cases[i].name)) {
			ktap_skip(i + 1, cases[i].name, "not selected");
			results[i] = VT_SKIP;
			continue;
		}
		vt_skip_reason[0] = '\0';
		errno = 0;
		results[i] = cases[i].fn();
		switch (results[i]) {
		case VT_PASS:
			ktap_ok(i + 1, cases[i].name);
			break;
		case VT_SKIP:
			ktap_skip(i + 1, cases[i].name,
				  vt_skip_reason[0] ? vt_skip_reason : "no reason given");
			break;
		default:
			results[i] = VT_FAIL;
			ktap_not_ok(i + 1, cases[i].name);
			failed++;
		}
	}
	ktap_diag("%s: %d of %d cases failed", prog, failed, n);
	return failed ? 1 : 0;
}

/* VT_MAP(m, a, b, c) expands to m(a) m(b) m(c); up to 32 arguments. */
#define VT_CAT_(a, b) a##b
#define VT_CAT(a, b) VT_CAT_(a, b)
#define VT_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14,  \
		  _15, _16, _17, _18, _19, _20, _21, _22, _23, _24, _25, _26,   \
		  _27, _28, _29, _30, _31, _32, N, ...) N
#define VT_NARGS(...)                                                         \
	VT_NARGS_(__VA_ARGS__, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, \
		  20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, \
		  3, 2, 1)
#define VT_MAP_1(m, a) m(a)
#define VT_MAP_2(m, a, ...) m(a) VT_MAP_1(m, __VA_ARGS__)
#define VT_MAP_3(m, a, ...) m(a) VT_MAP_2(m, __VA_ARGS__)
#define VT_MAP_4(m, a, ...) m(a) VT_MAP_3(m, __VA_ARGS__)
#define VT_MAP_5(m, a, ...) m(a) VT_MAP_4(m, __VA_ARGS__)
#define VT_MAP_6(m, a, ...) m(a) VT_MAP_5(m, __VA_ARGS__)
#define VT_MAP_7(m, a, ...) m(a) VT_MAP_6(m, __VA_ARGS__)
#define VT_MAP_8(m, a, ...) m(a) VT_MAP_7(m, __VA_ARGS__)
#define VT_MAP_9(m, a, ...) m(a) VT_MAP_8(m, __VA_ARGS__)
#define VT_MAP_10(m, a, ...) m(a) VT_MAP_9(m, __VA_ARGS__)
#define VT_MAP_11(m, a, ...) m(a) VT_MAP_10(m, __VA_ARGS__)
#define VT_MAP_12(m, a, ...) m(a) VT_MAP_11(m, __VA_ARGS__)
#define VT_MAP_13(m, a, ...) m(a) VT_MAP_12(m, __VA_ARGS__)
#define VT_MAP_14(m, a, ...) m(a) VT_MAP_13(m, __VA_ARGS__)
#define VT_MAP_15(m, a, ...) m(a) VT_MAP_14(m, __VA_ARGS__)
#define VT_MAP_16(m, a, ...) m(a) VT_MAP_15(m, __VA_ARGS__)
#define VT_MAP_17(m, a, ...) m(a) VT_MAP_16(m, __VA_ARGS__)
#define VT_MAP_18(m, a, ...) m(a) VT_MAP_17(m, __VA_ARGS__)
#define VT_MAP_19(m, a, ...) m(a) VT_MAP_18(m, __VA_ARGS__)
#define VT_MAP_20(m, a, ...) m(a) VT_MAP_19(m, __VA_ARGS__)
#define VT_MAP_21(m, a, ...) m(a) VT_MAP_20(m, __VA_ARGS__)
#define VT_MAP_22(m, a, ...) m(a) VT_MAP_21(m, __VA_ARGS__)
#define VT_MAP_23(m, a, ...) m(a) VT_MAP_22(m, __VA_ARGS__)
#define VT_MAP_24(m, a, ...) m(a) VT_MAP_23(m, __VA_ARGS__)
#define VT_MAP_25(m, a, ...) m(a) VT_MAP_24(m, __VA_ARGS__)
#define VT_MAP_26(m, a, ...) m(a) VT_MAP_25(m, __VA_ARGS__)
#define VT_MAP_27(m, a, ...) m(a) VT_MAP_26(m, __VA_ARGS__)
#define VT_MAP_28(m, a, ...) m(a) VT_MAP_27(m, __VA_ARGS__)
#define VT_MAP_29(m, a, ...) m(a) VT_MAP_28(m, __VA_ARGS__)
#define VT_MAP_30(m, a, ...) m(a) VT_MAP_29(m, __VA_ARGS__)
#define VT_MAP_31(m, a, ...) m(a) VT_MAP_30(m, __VA_ARGS__)
#define VT_MAP_32(m, a, ...) m(a) VT_MAP_31(m, __VA_ARGS__)
#define VT_MAP(m, ...) VT_CAT(VT_MAP_, VT_NARGS(__VA_ARGS__))(m, __VA_ARGS__)

#define VT_CASE_NAME(c) #c "\0"
#define VT_CASE_ENTRY(c) { #c, c },

#define VUSER_CASES(...)                                                      \
	__attribute__((section(".vuser_cases"), used, aligned(1)))            \
	static const char vuser_case_names[] = VT_MAP(VT_CASE_NAME, __VA_ARGS__); \
	static const struct vt_case vuser_case_table[] = {                    \
		VT_MAP(VT_CASE_ENTRY, __VA_ARGS__)                            \
	};                                                                    \
	int main(int argc, char **argv)                                       \
	{                                                                     \
		return vt_main(argc, argv, vuser_case_table,                  \
			       (int)(sizeof(vuser_case_table) /               \
				     sizeof(vuser_case_table[0])));           \
	}

#endif
