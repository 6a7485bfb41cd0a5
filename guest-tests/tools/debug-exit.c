/* debug-exit STATUS: leave QEMU through isa-debug-exit, else power off.
 *
 * QEMU's isa-debug-exit (hw/misc/debugexit.c), configured by the launcher as
 * iobase=0xf4,iosize=0x04, exits QEMU with status (value << 1) | 1 on a
 * write. Without that device the write is ignored and the guest powers off,
 * so the host sees no debug-exit status and treats the run as an error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <sys/reboot.h>
#include <unistd.h>

#define DEBUG_EXIT_PORT 0xf4
#define DEBUG_EXIT_SIZE 4

int main(int argc, char **argv)
{
	unsigned long status;
	char *end;

	if (argc != 2 || (status = strtoul(argv[1], &end, 0), *end) || status > 0x7f) {
		fprintf(stderr, "usage: %s STATUS (0..127)\n", argv[0]);
		return 2;
	}
	sync();
	if (ioperm(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, 1))
		perror("ioperm");
	else
		outl((unsigned)status, DEBUG_EXIT_PORT);
	fprintf(stderr, "debug-exit: still running, powering off\n");
	reboot(RB_POWER_OFF);
	perror("reboot");
	return 1;
}
