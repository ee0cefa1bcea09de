#!/usr/bin/env bash
# Save the commits of $B/linux (base..HEAD) back into the repo: files a
# commit adds go to kernel/ at their kernel paths, its edits to existing
# files go to patches/NNNN-*.patch, and patches/series records which new
# files each commit adds. The inverse of tree.sh.
#
# Work with git inside build/linux as usual (commit, rebase -i, commit
# --fixup), then run `make refresh` and commit the result in this repo.
source "$(dirname "$0")/lib.sh"

[ -d "$TREE/.git" ] || die "no tree at $TREE (make tree)"
cd "$TREE"
[ -z "$(git status --porcelain)" ] ||
	die "$TREE has uncommitted changes; commit them there first (git commit / --fixup)"

commits=$(git rev-list --reverse base..HEAD)
added_all=$(git diff --name-only --diff-filter=A base HEAD)
new_patches=$B/refresh.patches
rm -rf "$new_patches" "$B/refresh.kernel"
mkdir -p "$new_patches" "$B/refresh.kernel"

n=0
: >"$new_patches/series"
for c in $commits; do
	n=$((n + 1))
	name=$(printf '%04d-%s.patch' "$n" "$(git log -1 --format=%f "$c" | cut -c1-52)")
	added=$(git diff-tree -r --no-commit-id --name-only --diff-filter=A "$c" |
		grep -Fx -f <(printf '%s\n' "$added_all") || true)
	# Edits to files that exist in the base; later edits to new files
	# are folded into kernel/ (their final content).
	edited=$(git diff-tree -r --no-commit-id --name-only --diff-filter=MDR "$c" |
		grep -vFx -f <(printf '%s\n' "$added_all") || true)
	{
		git log -1 --format=email "$c"
		if [ -n "$edited" ]; then
			echo "---"
			# shellcheck disable=SC2086
			git diff --stat=72 "$c^" "$c" -- $edited
			echo
			# shellcheck disable=SC2086
			git diff "$c^" "$c" -- $edited
		fi
	} >"$new_patches/$name"
	echo "$name" $added >>"$new_patches/series"
done
for f in $added_all; do
	mkdir -p "$B/refresh.kernel/$(dirname "$f")"
	git show "HEAD:$f" >"$B/refresh.kernel/$f"
	[ -x "$f" ] && chmod +x "$B/refresh.kernel/$f"
done

cp "$TOP/patches/BASE" "$new_patches/"
[ -f "$TOP/patches/cover-letter.txt" ] && cp "$TOP/patches/cover-letter.txt" "$new_patches/"
rm -rf "$TOP/patches" "$TOP/kernel"
mv "$new_patches" "$TOP/patches"
mv "$B/refresh.kernel" "$TOP/kernel"
# The tree now matches the repo: record that so tree.sh stays quick.
{ hash_inputs patches kernel; git rev-parse HEAD; } >"$TREE/.git/apf-inputs"
say "saved $n commits into patches/ and kernel/; review with 'git status' and commit"
