/* hangs: passes its first case, then blocks for ever in its second
 * (tests/guest/test_guest_crash.py checks the task dump of a hung guest). */
#include <unistd.h>

#include "lib/vuser.h"

static enum vt_result before_the_hang(void)
{
	return VT_PASS;
}

static enum vt_result blocks_for_ever(void)
{
	ktap_diag("about to wait for a signal that never comes");
	for (;;)
		pause();
	return VT_PASS;
}

VUSER_CASES(before_the_hang, blocks_for_ever)
