#!/usr/bin/env bash
# Pack the emulated host's initramfs: our init, the test binaries that the
# given test lists name, and the concatenated list as /etc/tests.list.
# Usage: initramfs.sh OUT.cpio LIST...
source "$(dirname "$0")/lib.sh"

out=$1; shift
stage=$B/initramfs.d
rm -rf "$stage"; mkdir -p "$stage"/{bin,etc,tests,proc,sys,dev,tmp}

aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -Werror -o "$stage/init" \
	"$TOP/userspace/init/init.c" || die "cannot build userspace/init/init.c"

grep -hv '^\s*#' "$@" | sed '/^\s*$/d' >"$stage/etc/tests.list"
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
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
