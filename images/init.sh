#!/bin/busybox sh
# /init of a vuser guest image (see images/guest.toml, vuser/guest/image.py).
#
# Mounts proc, sysfs, devtmpfs and hugetlbfs, loads the modules, then either
# runs the guest tests named by vuser.tests=a,b on the kernel command line
# (default: all), printing KTAP on the console, or, with vuser.shell=1, gives
# an interactive shell. It ends through isa-debug-exit: 0 when every test
# passed, 1 otherwise (QEMU exits with (value << 1) | 1).
#
# With vuser.iommu=kernel (the guest kernel owns vuser-iommu) it first sets
# Bus Master Enable in the PCI Command register of every vuser-iommu function:
# no driver binds to it, and QEMU carries out the function's DMA writes (the
# VT-d interrupt messages) only while the bit is set.

/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/hugepages /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp

. /etc/vuser/image.conf
VUSER_TESTS_ALL=$(ls /tests 2>/dev/null | tr '\n' ' ')    # added by the run's overlay
echo 1 > /proc/sys/kernel/sysrq    # every sysrq: the launcher dumps a hung guest's tasks

mount -t hugetlbfs hugetlbfs /dev/hugepages
echo "$VUSER_HUGEPAGES" > /proc/sys/vm/nr_hugepages
notes=""
got=$(cat /proc/sys/vm/nr_hugepages)
[ "$got" = "$VUSER_HUGEPAGES" ] || notes="$notes|reserved $got of $VUSER_HUGEPAGES hugepages"
for m in $VUSER_MODULES; do
	out=$(insmod "/lib/modules/$m.ko" 2>&1) || notes="$notes|insmod $m: $out"
done

tests=$VUSER_TESTS_ALL
shell=0
iommu=user
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vuser.tests=*) tests=$(echo "${arg#vuser.tests=}" | tr , ' ') ;;
	vuser.shell=1) shell=1 ;;
	vuser.iommu=*) iommu=${arg#vuser.iommu=} ;;
	esac
done

if [ "$iommu" = kernel ]; then
	found=0
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor"):$(cat "$d/device")" = "$VUSER_IOMMU_ID" ] || continue
		found=$((found + 1))
		# Command register (offset 4), low byte: read, OR in bit 2, write back.
		cmd=$(dd if="$d/config" bs=1 skip=4 count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
		printf "\\$(printf %o $((cmd | 4)))" |
			dd of="$d/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null ||
			notes="$notes|vuser.iommu=kernel: cannot set Bus Master Enable on ${d##*/}"
	done
	[ "$found" = 1 ] || notes="$notes|vuser.iommu=kernel: found $found vuser-iommu functions, not 1"
fi

# a run's own setup from its initramfs overlay: modules, shares, the agent
# (vuser/guest/runsetup.py); with vuser.agent=1 it serves the agent and never returns
[ -f /etc/vuser/run.sh ] && . /etc/vuser/run.sh

if [ "$shell" = 1 ]; then
	echo "vuser guest: tests are in /tests (${VUSER_TESTS_ALL}); exit the shell to power off"
	echo "$notes" | tr '|' '\n' | sed '/^$/d'
	setsid cttyhack sh -l
	exec /sbin/vuser-debug-exit 0
fi

dmesg -n 1    # keep kernel messages off the console while tests print KTAP
n=0
for t in $tests; do n=$((n + 1)); done
echo "KTAP version 1"
echo "1..$n"
echo "$notes" | tr '|' '\n' | sed '/^$/d; s/^/# /'
i=0
failed=0
for t in $tests; do
	i=$((i + 1))
	if [ ! -x "/tests/$t" ]; then
		echo "not ok $i $t # no guest test called $t"
		failed=1
		continue
	fi
	(cd /tmp && KTAP_INDENT=4 "/tests/$t")
	rc=$?
	if [ "$rc" = 0 ]; then
		echo "ok $i $t"
	else
		dmesg | tail -n 15 | sed 's/^/# dmesg: /'
		echo "not ok $i $t # exit status $rc"
		failed=1
	fi
done
exec /sbin/vuser-debug-exit "$failed"
