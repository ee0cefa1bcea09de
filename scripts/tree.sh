#!/usr/bin/env bash
# Assemble $B/linux, a git tree: the pristine Debian source as the base
# commit, then one commit per line of patches/series. A line names a patch
# (edits to existing files) followed by the overlay files (new files, kept
# under kernel/ at their kernel paths) that the same commit adds.
#
# Quick when nothing changed. Refuses to throw away work done inside the
# tree that is not in the repo: `make refresh` saves it, FORCE=1 drops it.
source "$(dirname "$0")/lib.sh"

STAMP=$TREE/.git/apf-inputs
inputs=$(hash_inputs patches kernel)

base_version_of() { make -s -C "$1" kernelversion 2>/dev/null; }

check_version() {
	local have=$1
	[ "$have" = "$BASE_VERSION" ] && return 0
	case "$have" in
	6.12.*)
		warn "Debian ships linux-source $have; the series was last made against $BASE_VERSION."
		warn "Applying it anyway. See README.md, 'Moving to a new 6.12.y'." ;;
	*)	die "linux source is $have, not a 6.12.y kernel (the series targets $BASE_VERSION)" ;;
	esac
}

tree_is_clean() {
	[ -z "$(git -C "$TREE" status --porcelain)" ] &&
		[ "$(git -C "$TREE" rev-parse HEAD)" = "$(sed -n 2p "$STAMP")" ]
}

make_base() {
	[ -f "$KSRC_TARBALL" ] || die "$KSRC_TARBALL missing: run 'make deps' (apt package linux-source-6.12)"
	say "extracting $KSRC_TARBALL into $TREE"
	rm -rf "$TREE" "$B/linux.tmp"
	mkdir -p "$B/linux.tmp"
	tar -C "$B/linux.tmp" --strip-components=1 -xf "$KSRC_TARBALL"
	mv "$B/linux.tmp" "$TREE"
	# Debian appends "ignore everything at the top level" to .gitignore,
	# which would hide new files from git status; drop that block so the
	# base matches upstream.
	sed -i '/^# Debian packaging/,$d' "$TREE/.gitignore"
	sed -i -e '${/^#$/d}' "$TREE/.gitignore"
	sed -i -e '${/^$/d}' "$TREE/.gitignore"
	local v; v=$(base_version_of "$TREE")
	git -C "$TREE" init -q -b base-branch
	git -C "$TREE" add -A
	git -C "$TREE" -c user.name=apf-harness -c user.email=apf@localhost \
		commit -q -m "Linux $v (Debian linux-source-6.12)"
	git -C "$TREE" tag base
	tarball_id >"$TREE/.git/apf-tarball"
}

tarball_id() { stat -L -c '%n %s %Y' "$KSRC_TARBALL"; }

# Apply one series line: patch (message + edits) plus the overlay files.
apply_entry() {
	local patch=$1; shift
	local work=$B/.mailinfo
	rm -rf "$work"; mkdir -p "$work"
	[ -f "$TOP/patches/$patch" ] || die "series names $patch, which is not in patches/"
	git -C "$TREE" mailinfo "$work/msg" "$work/diff" <"$TOP/patches/$patch" >"$work/info"
	if [ -s "$work/diff" ] && ! git -C "$TREE" apply --index --whitespace=nowarn "$work/diff" 2>"$work/err"; then
		cat "$work/err" >&2
		die "patch patches/$patch no longer applies to $(base_version_of "$TREE") (files above)"
	fi
	local f
	for f in "$@"; do
		[ -e "$TOP/kernel/$f" ] || die "series line for $patch names kernel/$f, which does not exist"
		[ -e "$TREE/$f" ] && [ ! -d "$TREE/$f" ] && die "kernel/$f is in the overlay but the tree already has it (overlay files must be new)"
		mkdir -p "$TREE/$(dirname "$f")"
		cp -r "$TOP/kernel/$f" "$TREE/$(dirname "$f")/"
		git -C "$TREE" add "$f"
	done
	local subj author email date
	subj=$(sed -n 's/^Subject: //p' "$work/info")
	author=$(sed -n 's/^Author: //p' "$work/info")
	email=$(sed -n 's/^Email: //p' "$work/info")
	date=$(sed -n 's/^Date: //p' "$work/info")
	{ echo "$subj"; echo; cat "$work/msg"; } >"$work/commitmsg"
	GIT_AUTHOR_NAME=$author GIT_AUTHOR_EMAIL=$email GIT_AUTHOR_DATE=$date \
	GIT_COMMITTER_NAME=$author GIT_COMMITTER_EMAIL=$email GIT_COMMITTER_DATE=$date \
		git -C "$TREE" commit -q --allow-empty -F "$work/commitmsg" ||
		die "cannot commit $patch"
}

if [ -d "$TREE/.git" ] && [ -f "$STAMP" ]; then
	if ! tree_is_clean && [ "${FORCE:-0}" != 1 ]; then
		git -C "$TREE" status --short | head -n 10 >&2
		die "$TREE has changes that are not in the repo. Run 'make refresh' to save them into patches/ and kernel/, or 'make tree FORCE=1' to drop them."
	fi
	if [ "$(head -n1 "$STAMP")" = "$inputs" ] && tree_is_clean; then
		check_version "$(base_version_of "$TREE")"
		exit 0
	fi
fi

if [ ! -d "$TREE/.git" ] || ! git -C "$TREE" rev-parse -q --verify base >/dev/null; then
	make_base
fi
# A new Debian tarball (a newer 6.12.y) replaces the base.
[ "$(cat "$TREE/.git/apf-tarball" 2>/dev/null)" = "$(tarball_id)" ] || make_base
check_version "$(base_version_of "$TREE")"

say "applying patches/series to $(base_version_of "$TREE")"
rm -f "$STAMP"
# Checkout only rewrites files that differ, so unchanged files keep their
# mtimes and the incremental kernel build stays incremental.
git -C "$TREE" checkout -q -f -B apf base
git -C "$TREE" clean -q -fdx
n=0
while read -r patch files; do
	case "$patch" in ''|'#'*) continue ;; esac
	# shellcheck disable=SC2086
	apply_entry "$patch" $files
	n=$((n + 1))
done <"$TOP/patches/series"

# Every overlay file must belong to some commit.
stray=$(cd "$TOP/kernel" && find . -type f | sed 's|^\./||' | while read -r f; do
	git -C "$TREE" ls-files --error-unmatch "$f" >/dev/null 2>&1 || echo "$f"; done)
[ -z "$stray" ] || die "overlay files not named by any line of patches/series: $stray"

{ echo "$inputs"; git -C "$TREE" rev-parse HEAD; } >"$STAMP"
say "tree ready: $n commits on top of base"
