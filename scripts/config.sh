#!/usr/bin/env bash
# Make $KOUT/.config: tinyconfig plus the fragments in config/, then check
# that every option a fragment asks for really is set (an unmet dependency
# or an option renamed by a new point release would otherwise be dropped
# without a word).
source "$(dirname "$0")/lib.sh"

# config/*.config, plus the fragments named in EXTRA_CONFIG (test-debug).
frags=("$TOP"/config/*.config)
for f in ${EXTRA_CONFIG:-}; do frags+=("$TOP/$f"); done

STAMP=$KOUT/.apf-config
inputs=$(hash_inputs config)-${EXTRA_CONFIG:-}-$(git -C "$TREE" rev-parse HEAD)
if [ -f "$KOUT/.config" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
	exit 0
fi

say "configuring the kernel from config/*.config ${EXTRA_CONFIG:-}"
rm -f "$STAMP"
mkdir -p "$KOUT"
"${KMAKE[@]}" -s tinyconfig >/dev/null
"$TREE/scripts/kconfig/merge_config.sh" -m -O "$KOUT" "$KOUT/.config" "${frags[@]}" >"$B/merge_config.log" 2>&1 ||
	die "merge_config failed (see $B/merge_config.log)"
"${KMAKE[@]}" -s olddefconfig >/dev/null

# A later fragment may override an option an earlier one set (EXTRA_CONFIG
# does: config/rt/ turns PREEMPT_DYNAMIC off); the last word counts.
declare -A want from
for frag in "${frags[@]}"; do
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) opt=${line%%=*} ;;
		"# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *} ;;
		*) continue ;;
		esac
		want[$opt]=$line
		from[$opt]=$(basename "$frag")
	done <"$frag"
done
bad=0
for opt in "${!want[@]}"; do
	line=${want[$opt]}
	case "$line" in
	CONFIG_*=*) grep -qx "$line" "$KOUT/.config" ;;
	*) ! grep -q "^$opt=" "$KOUT/.config" ;;
	esac || {
		echo "config: ${from[$opt]} asks for $line, but the result has: $(grep "^$opt=" "$KOUT/.config" || echo "$opt not set")" >&2
		bad=1
	}
done
[ $bad = 0 ] || die "stale or unsatisfiable kernel configuration (fix the fragments above)"
echo "$inputs" >"$STAMP"
