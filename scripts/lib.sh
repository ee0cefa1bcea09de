# Shared settings for the harness scripts. Sourced, not run.
# shellcheck shell=bash
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${B:-$TOP/build}			# all build output; ignored by git
TREE=$B/linux				# assembled kernel git tree
KOUT=${KOUT:-$B/kbuild}			# kernel O= directory
KSRC_TARBALL=${KSRC_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
BASE_VERSION=$(cat "$TOP/patches/BASE")	# the 6.12.y the series was made against
JOBS=${JOBS:-$(nproc)}
# ccache wraps the target compiler only: HOSTCC doubles as rustc's host
# linker, which must be a single word.
KMAKE=(make -C "$TREE" O="$KOUT" ARCH=arm64 LLVM=1 "CC=ccache clang" -j"$JOBS")
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
# Compile commands name absolute paths; rewriting them relative to the
# checkout lets a fresh clone (CI) hit the cache a previous one filled.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$TOP}
export PATH=$HOME/.cargo/bin:$PATH

die() { echo "error: $*" >&2; exit 1; }
warn() { echo "warning: $*" >&2; }
say() { echo "==> $*"; }

# Run a long command with its output in a log file, printing a progress
# line every 30 s and the tail of the log if it fails.
run_logged() {
	local what=$1 log=$2; shift 2
	mkdir -p "$(dirname "$log")"
	local start=$SECONDS
	"$@" >"$log" 2>&1 &
	local pid=$! last=$SECONDS
	while kill -0 "$pid" 2>/dev/null; do
		sleep 2
		if (( SECONDS - last >= 30 )); then
			last=$SECONDS
			echo "    $what: $(( SECONDS - start ))s, $(wc -l <"$log") log lines, last: $(tail -n1 "$log" | cut -c1-70)"
		fi
	done
	if ! wait "$pid"; then
		echo "---- last lines of $log ----" >&2
		grep -E -B2 -A4 'error|Error|\*\*\*' "$log" | tail -n 40 >&2 || tail -n 40 "$log" >&2
		die "$what failed (full log: $log)"
	fi
	echo "    $what: done in $(( SECONDS - start ))s"
}

# Hash of the files that make up an input set, so a change forces a rebuild.
hash_inputs() {
	(cd "$TOP" && find "$@" -type f -print0 2>/dev/null | sort -z |
		xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# Print the test lists given, without comments and blank lines. A line
# "include LIST NAME..." stands for the cases of tests/LIST with those
# names, so that a list can reuse cases instead of repeating them.
expand_lists() {
	local f line name
	local -a words
	for f in "$@"; do
		while IFS= read -r line; do
			[[ $line =~ ^[[:space:]]*(#|$) ]] && continue
			read -ra words <<<"$line"
			if [ "${words[0]}" != include ]; then
				printf '%s\n' "$line"
				continue
			fi
			for name in "${words[@]:2}"; do
				grep -E "^$name " "$TOP/tests/${words[1]}" ||
					die "$f: no case $name in tests/${words[1]}"
			done
		done <"$f"
	done
}

# Stage a fresh initramfs tree in $1: our init (userspace/init/init.c),
# the usual directories, and the test lists given after it, expanded
# (expand_lists), as /etc/tests.list (empty without any).
stage_initramfs() {
	local stage=$1; shift
	rm -rf "$stage"; mkdir -p "$stage"/{bin,etc,proc,sys,dev,tmp}
	aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -Werror -o "$stage/init" \
		"$TOP/userspace/init/init.c" || die "cannot build userspace/init/init.c"
	expand_lists "$@" >"$stage/etc/tests.list"
}

# Pack the tree $1 into the newc cpio archive $2, owned by root, in a
# stable order.
pack_cpio() {
	(cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$2.tmp"
	mv "$2.tmp" "$2"
}
