#!/usr/bin/env bash
# Pack the emulated host's initramfs: our init, the test binaries that the
# given test lists name, and the concatenated list as /etc/tests.list.
# Usage: initramfs.sh OUT.cpio LIST...
source "$(dirname "$0")/lib.sh"

out=$1; shift
stage=$B/initramfs.d
stage_initramfs "$stage" "$@"
mkdir -p "$stage/tests"
while read -r _name _tmo cmd _args; do
	case "$cmd" in
	/tests/*)
		src=$B/selftests/${cmd#/tests/}
		[ -x "$src" ] || die "test binary $src missing (not built by 'make selftests'?)"
		mkdir -p "$stage$(dirname "$cmd")"
		aarch64-linux-gnu-strip -o "$stage$cmd" "$src" ;;
	esac
done <"$stage/etc/tests.list"
# The VMM and the guest's kernel and initramfs (scripts/guest.sh).
[ -d "$B/initramfs-extra" ] && cp -a "$B/initramfs-extra/." "$stage/"
pack_cpio "$stage" "$out"
