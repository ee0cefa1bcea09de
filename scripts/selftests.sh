#!/usr/bin/env bash
# Cross-build the KVM selftests statically for aarch64 against the
# assembled tree's uAPI headers.
source "$(dirname "$0")/lib.sh"

[ -d "$B/headers/include" ] || die "no uAPI headers in $B/headers: build the kernel first (make kernel)"
mkdir -p "$B/selftests-gen/tools"
say "building KVM selftests (static aarch64; log: $B/logs/selftests.log)"
# The selftests write generated sysreg headers next to their sources unless
# told otherwise; abs_objdir keeps them out of the git tree.
run_logged selftests "$B/logs/selftests.log" \
	make -C "$TREE/tools/testing/selftests/kvm" -j"$JOBS" ARCH=arm64 \
	CROSS_COMPILE=aarch64-linux-gnu- "CC=ccache aarch64-linux-gnu-gcc" \
	OUTPUT="$B/selftests" abs_objdir="$B/selftests-gen" \
	KHDR_INCLUDES="-isystem $B/headers/include" EXTRA_CFLAGS=-static
