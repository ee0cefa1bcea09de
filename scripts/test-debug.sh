#!/usr/bin/env bash
# make test-debug: build the host kernel again with KASAN, lockdep,
# kmemleak and debug objects (config/debug/*.config, in its own O=
# directory), boot it as the emulated KVM host and run tests/debug.list on
# it. The guests keep the normal kernel. report.py fails on any splat in the
# console (console:clean) and kmemleak-scan on any leak.
source "$(dirname "$0")/lib.sh"

export KOUT=$B/kbuild-debug
export EXTRA_CONFIG="config/debug/70-host-debug.config"
start=$SECONDS
"$TOP/scripts/config.sh"
"$TOP/scripts/kernel.sh"
say "debug host kernel: $(( SECONDS - start ))s"

aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -Werror -o "$B/initramfs-extra/bin/kmemleak-scan" \
	"$TOP/userspace/debug/kmemleak-scan.c" || die "cannot build kmemleak-scan"
# More memory: KASAN's shadow and kmemleak's pool come out of it.
MEM=${MEM:-6G} "$TOP/scripts/boot.sh" test-debug "$TOP/tests/debug.list"
say "test-debug: $(( SECONDS - start ))s in all"
