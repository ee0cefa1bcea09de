#!/usr/bin/env bash
# The checks a maintainer runs before sending: rustfmt, a CLIPPY=1 build
# that must be warning-free (CONFIG_WERROR turns every warning into an
# error), and checkpatch --strict on every exported patch.
source "$(dirname "$0")/lib.sh"

say "rustfmtcheck"
"${KMAKE[@]}" -s rustfmtcheck || die "rustfmt would change the files above (make -C build/linux ... rustfmt)"

say "CLIPPY=1 build"
run_logged clippy "$B/logs/clippy.log" "${KMAKE[@]}" CLIPPY=1 Image
if grep -E '^(warning|error)(\[|:)' "$B/logs/clippy.log"; then
	die "clippy reported the warnings above"
fi

"$TOP/scripts/series.sh"
say "checkpatch --strict"
fail=0
for p in "$TOP"/out/series/*.patch; do
	case "$p" in */0000-cover-letter.patch) continue ;; esac
	if ! (cd "$TREE" && ./scripts/checkpatch.pl --strict --quiet "$p" ||
		{ echo "checkpatch: $(basename "$p") above"; false; }); then
		fail=1
	fi
done
[ $fail = 0 ] || die "checkpatch found problems"
say "check clean"
