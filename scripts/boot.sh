#!/usr/bin/env bash
# Boot the kernel as an emulated arm64 KVM host under QEMU TCG, run the test
# lists given, and report. Usage: boot.sh NAME [verbose] LIST...
source "$(dirname "$0")/lib.sh"

name=$1; shift
mode=quiet
[ "${1:-}" = verbose ] && { mode=verbose; shift; }
image=$KOUT/arch/arm64/boot/Image
[ -f "$image" ] || die "no kernel image at $image (make kernel)"
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 missing (make deps)"

initrd=$B/$name.cpio
# A disk for the emulated host to swap to (e2e-swap): unlike zram, a disk
# makes swap-ins wait for I/O, which is when APF steps in.
swapdisk=$B/swap-disk.img
[ -f "$swapdisk" ] || truncate -s 512M "$swapdisk"
"$TOP/scripts/initramfs.sh" "$initrd" "$@"
expected=$(awk '!/^[[:space:]]*(#|$)/{print $1}' "$B/initramfs.d/etc/tests.list")
# The whole run may take the sum of the tests' timeouts plus boot time.
budget=$(awk '!/^[[:space:]]*(#|$)/{s+=$2} END{print s+600}' "$B/initramfs.d/etc/tests.list")
log=$B/logs/$name-console.log
mkdir -p "$B/logs"
say "booting the emulated host (QEMU TCG, -cpu max, EL2; console log: $log)"

set +e
timeout -k 10 "$budget" qemu-system-aarch64 \
	-M virt,virtualization=on,gic-version=3 -cpu "${QEMU_CPU:-max,lpa2=off}" -smp "${SMP:-2}" -m "${MEM:-4G}" \
	-nographic -no-reboot -kernel "$image" -initrd "$initrd" \
	-drive file="$swapdisk",if=none,format=raw,cache=unsafe,id=swap \
	-device virtio-blk-pci,drive=swap \
	-append "console=ttyAMA0 panic=-1 ${CMDLINE:-}" </dev/null 2>"$B/logs/$name-qemu.err" |
	python3 "$TOP/scripts/report.py" "$log" "$mode" kunit:rust_doctests_kernel $expected
status=("${PIPESTATUS[@]}")
set -e
qemu_rc=${status[0]} report_rc=${status[1]}
if [ "$qemu_rc" = 124 ]; then
	die "QEMU did not finish within ${budget}s (hang); see $log"
elif [ "$qemu_rc" != 0 ]; then
	cat "$B/logs/$name-qemu.err" >&2
	die "QEMU exited with status $qemu_rc; see $log"
fi
exit "$report_rc"
