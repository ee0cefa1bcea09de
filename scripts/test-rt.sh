#!/usr/bin/env bash
# make test-rt: build the guest kernel again with PREEMPT_RT
# (config/rt/*.config, in its own O= directory) and run e2e-preempt-full and
# e2e-migrate-stress of tests/e2e.list with it as the guest kernel. The
# emulated host keeps the normal kernel.
source "$(dirname "$0")/lib.sh"

start=$SECONDS
rt_out=$B/kbuild-rt
KOUT=$rt_out EXTRA_CONFIG="config/rt/70-guest-rt.config" "$TOP/scripts/config.sh"
KOUT=$rt_out "$TOP/scripts/kernel.sh"
say "PREEMPT_RT guest kernel: $(( SECONDS - start ))s"

cp "$rt_out/arch/arm64/boot/Image" "$B/initramfs-extra/guest/Image-rt"
# The same cases as in make test, with the RT kernel as the guest's.
list=$B/rt.list
grep -E '^(e2e-preempt-full|e2e-migrate-stress) ' "$TOP/tests/e2e.list" |
	sed 's#--kernel /guest/Image #--kernel /guest/Image-rt #' >"$list"
[ "$(grep -c -- '--kernel /guest/Image-rt ' "$list")" = 2 ] ||
	die "tests/e2e.list no longer has e2e-preempt-full and e2e-migrate-stress"
"$TOP/scripts/boot.sh" test-rt "$list"
rm -f "$B/initramfs-extra/guest/Image-rt"
say "test-rt: $(( SECONDS - start ))s in all"
