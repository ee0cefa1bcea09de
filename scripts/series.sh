#!/usr/bin/env bash
# Export base..HEAD of the assembled tree as a git format-patch series with
# a cover letter (from patches/cover-letter.txt: first line the subject, the
# rest the blurb) into out/series, and prove that it applies with git am to
# the pristine base.
source "$(dirname "$0")/lib.sh"

out=${OUT:-$TOP/out/series}
cover=$TOP/patches/cover-letter.txt
[ -f "$cover" ] || die "missing $cover"
n=$(git -C "$TREE" rev-list --count base..HEAD)
[ "$n" -gt 0 ] || die "the series is empty (patches/series names no patch)"

rm -rf "$out"; mkdir -p "$out"
git -C "$TREE" format-patch -q --cover-letter --no-signature \
	--base=base -o "$out" base..HEAD
letter=$(ls "$out"/0000-cover-letter.patch)
subject=$(head -n1 "$cover")
python3 - "$letter" "$cover" "$subject" "$TOP/bench/bench.md" <<'PY'
import os
import sys
path, cover, subject, bench = sys.argv[1:]
blurb = open(cover).read().split("\n", 1)[1].strip("\n")
# The latest committed `make bench` figures, with the command that made them.
if os.path.exists(bench):
    blurb += "\n\nPerformance, from bench/bench.md in the development repository:\n\n"
    blurb += open(bench).read().strip("\n")
text = open(path).read()
text = text.replace("*** SUBJECT HERE ***", subject)
text = text.replace("*** BLURB HERE ***", blurb)
open(path, "w").write(text)
PY

# Does it apply to the pristine base with git am?
wt=$B/am-check
git -C "$TREE" worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
git -C "$TREE" worktree prune
git -C "$TREE" worktree add -q --detach "$wt" base
# shellcheck disable=SC2046
if ! git -C "$wt" -c user.name=am-check -c user.email=am@localhost \
	am -q $(ls "$out"/*.patch | grep -v /0000-cover-letter.patch) 2>"$B/am-check.log"; then
	cat "$B/am-check.log" >&2
	die "the exported series does not apply to base with git am"
fi
[ -z "$(git -C "$wt" diff HEAD "$(git -C "$TREE" rev-parse HEAD)" --stat)" ] ||
	die "git am of the series does not reproduce the tree"
git -C "$TREE" worktree remove --force "$wt"
say "series of $n patches in $out (applies with git am to $(cat "$TOP/patches/BASE"))"
