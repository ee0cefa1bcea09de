#!/usr/bin/env bash
# The checks a maintainer runs before sending: rustfmt, a CLIPPY=1 build
# that must be warning-free (CONFIG_WERROR turns every warning into an
# error), the kernel crate built for x86_64 without OF or ACPI, and
# checkpatch --strict on every exported patch.
source "$(dirname "$0")/lib.sh"

# Debian's linux-source drops upstream's .rustfmt.toml, without which
# `make rustfmtcheck` parses the tree as edition 2015 and fails on code we
# did not write; check our Rust files with upstream's settings instead.
say "rustfmt --check (edition 2021) on the series' Rust files"
mapfile -t rs < <(cd "$TOP/kernel" && find . -name '*.rs' | sed 's|^\./||')
(cd "$TREE" && rustfmt --check --edition 2021 "${rs[@]}") ||
	die "rustfmt would change the files above (fix in build/linux, then make refresh)"

# 6.12's own kernel crate does not pass clippy 1.95 (new lints in
# init/macros.rs, print.rs, ...). Cap lints at "warn" so the build goes on
# through our code, and fail on any diagnostic that points into it.
say "CLIPPY=1 build"
run_logged clippy "$B/logs/clippy.log" "${KMAKE[@]}" CLIPPY=1 KRUSTFLAGS=--cap-lints=warn Image
ours=$(grep -E -A3 '^(warning|error)' "$B/logs/clippy.log" | grep -- '--> ' |
	grep -F -f <(printf '%s\n' "${rs[@]}") || true)
if [ -n "$ours" ]; then
	echo "$ours"
	die "clippy reported the warnings above in the series' Rust code (see $B/logs/clippy.log)"
fi
echo "    clippy: no warning in the series' Rust code ($(grep -c '^warning' "$B/logs/clippy.log") in the base's own code)"

# The kernel crate must build where the guest's firmware interfaces do not
# exist: x86_64 with Rust, no device tree, no ACPI (tinyconfig). Rust's
# crates are built in `make prepare`.
say "kernel crate on x86_64 without OF or ACPI (tinyconfig + RUST)"
x86=(make -C "$TREE" O="$B/kbuild-x86" ARCH=x86_64 LLVM=1 "CC=ccache clang" -j"$JOBS")
"${x86[@]}" -s tinyconfig >/dev/null
"$TREE/scripts/config" --file "$B/kbuild-x86/.config" -e 64BIT -e RUST
"${x86[@]}" -s olddefconfig >/dev/null
for opt in CONFIG_RUST=y "# CONFIG_OF is not set" "# CONFIG_ACPI is not set"; do
	grep -qx "$opt" "$B/kbuild-x86/.config" || die "x86_64 tinyconfig: expected $opt"
done
run_logged x86-rust "$B/logs/x86-rust.log" "${x86[@]}" prepare

"$TOP/scripts/series.sh"
say "checkpatch --strict"
# checkpatch asks "does MAINTAINERS need updating?" for every new file; we
# answer that instead by checking that each new file has a maintainer entry
# (the KVM/arm64 one) and skip that one question.
fail=0
for p in "$TOP"/out/series/*.patch; do
	case "$p" in */0000-cover-letter.patch) continue ;; esac
	# Debian's python3 (with python3-ply) for spdxcheck.py, not a pyenv one.
	if ! (cd "$TREE" && PATH=/usr/bin:$PATH ./scripts/checkpatch.pl --strict --quiet \
		--ignore FILE_PATH_CHANGES "$p" ||
		{ echo "checkpatch: $(basename "$p") above"; false; }); then
		fail=1
	fi
done
while read -r f; do
	# KVM/arm64 files go to kvmarm; generic kernel-crate abstractions
	# (rust/kernel/*.rs outside kvm/, rust/helpers/) to rust-for-linux.
	case "$f" in
	rust/kernel/kvm/* | rust/helpers/kvm.c | arch/* | Documentation/* | tools/*)
		list=kvmarm@lists.linux.dev ;;
	*)	list=rust-for-linux@vger.kernel.org ;;
	esac
	(cd "$TREE" && ./scripts/get_maintainer.pl --no-git --no-rolestats -f "$f" |
		grep -q "$list") ||
		{ echo "MAINTAINERS: no entry with $list covers $f"; fail=1; }
done < <(cd "$TOP/kernel" && find . -type f | sed 's|^\./||')
[ $fail = 0 ] || die "checkpatch found problems"
say "check clean"
