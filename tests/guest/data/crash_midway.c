/* crash_midway: passes its first case, then dies of SIGSEGV in its second
 * (tests/guest/test_guest_crash.py checks that reports name that case). */
#include "lib/vuser.h"

static enum vt_result before_the_crash(void)
{
	return VT_PASS;
}

static enum vt_result segfaults(void)
{
	volatile int *p = (volatile int *)8;

	ktap_diag("about to write through a bad pointer");
	*p = 1;
	return VT_PASS;
}

static enum vt_result never_reached(void)
{
	return VT_PASS;
}

VUSER_CASES(before_the_crash, segfaults, never_reached)
