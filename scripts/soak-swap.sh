#!/usr/bin/env bash
# Soak the swap case: boot the emulated host once and run e2e-swap and
# e2e-swap-hidden, their lines as tests/e2e.list has them, RUNS times each,
# interleaved (e2e-swap-1, e2e-swap-hidden-1, e2e-swap-2, ...). Prints one
# line per run with what apf-e2e measured, then the pass counts; exits
# non-zero unless every run passed.
# Usage: soak-swap.sh [RUNS]  (default 20; make soak-swap SOAK_RUNS=N)
source "$(dirname "$0")/lib.sh"

runs=${1:-20}
[[ $runs =~ ^[1-9][0-9]{0,2}$ ]] || die "soak-swap: RUNS must be 1..999, not '$runs'"
cases=(e2e-swap e2e-swap-hidden)

list=$B/soak-swap.list
mkdir -p "$B"
: >"$list"
declare -A body
for c in "${cases[@]}"; do
	line=$(awk -v n="$c" '$1 == n' "$TOP/tests/e2e.list")
	[ "$(printf '%s\n' "$line" | grep -c .)" = 1 ] ||
		die "soak-swap: expected one '$c' line in tests/e2e.list"
	body[$c]=${line#"$c "}
done
for i in $(seq "$runs"); do
	for c in "${cases[@]}"; do
		echo "$c-$i ${body[$c]}" >>"$list"
	done
done

say "soak-swap: ${cases[*]}, $runs runs each, interleaved ($((2 * runs)) runs; list: $list)"
set +e
"$TOP/scripts/boot.sh" soak-swap "$list"
boot_rc=$?
set -e

# One line per run from the console log, then the counts per case.
summary_rc=0
PYTHONPATH="$TOP/scripts" python3 - "$B/logs/soak-swap-console.log" "$runs" "${cases[@]}" <<'EOF' || summary_rc=$?
import re
import sys

from consolelog import FAILED, VERDICT, WALL, cases, exited_ok

log, runs, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
AGREE = re.compile(r"^e2e: check host-guest-agree: \S+ \(not_present host=(\d+) guest=(\d+), "
                   r"ready host=(\d+) guest=(\d+)\)")
FIELD = re.compile(r"\b(swap_read_kib|peak_mib)=([\d.]+)")

runs_seen = {}
for name, lines, end in cases(log):
    current = runs_seen.setdefault(name, {"name": name})
    for line in lines:
        m = AGREE.match(line)
        if m:
            current.update(np_host=int(m.group(1)), np_guest=int(m.group(2)),
                           rd_host=int(m.group(3)), rd_guest=int(m.group(4)))
        m = VERDICT.match(line)
        if m:
            current["verdict"] = m.group(1)
            wall = WALL.search(line)
            if wall:
                current["wall"] = float(wall.group(1))
            current.update({k: float(v) for k, v in FIELD.findall(line)})
            f2 = FAILED.match(line)
            if f2:
                current["failed"] = f2.group(1)
    if end is not None:
        current["ok"] = exited_ok(end)

def rng(vals, fmt):
    return f"{fmt.format(min(vals))}..{fmt.format(max(vals))}" if vals else "-"

print(f"{'run':22} {'result':6} {'not_present':>17} {'ready':>17} {'swap read':>11} "
      f"{'peak':>9} {'wall':>7}")
print(f"{'':22} {'':6} {'host/guest':>17} {'host/guest':>17} {'MiB':>11} {'MiB':>9} {'s':>7}")
summary = []
all_ok = True
for c in wanted:
    names = [f"{c}-{i}" for i in range(1, runs + 1)]
    got = [runs_seen.get(n, {"name": n}) for n in names]
    for r in got:
        res = "ok" if r.get("ok") else "FAIL"
        np = f"{r['np_host']}/{r['np_guest']}" if "np_host" in r else "-"
        rd = f"{r['rd_host']}/{r['rd_guest']}" if "rd_host" in r else "-"
        sw = f"{r['swap_read_kib'] / 1024:.1f}" if "swap_read_kib" in r else "-"
        pk = f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-"
        wall = f"{r['wall']:.1f}" if "wall" in r else "-"
        why = f"  ({r['failed']})" if "failed" in r else ""
        print(f"{r['name']:22} {res:6} {np:>17} {rd:>17} {sw:>11} {pk:>9} {wall:>7}{why}")
    ok = [r for r in got if r.get("ok")]
    all_ok &= len(ok) == runs
    summary.append(
        f"{c}: {len(ok)}/{runs} passed; of those: not_present "
        f"{rng([r['np_guest'] for r in ok if 'np_guest' in r], '{}')}, swap read "
        f"{rng([r['swap_read_kib'] / 1024 for r in ok if 'swap_read_kib' in r], '{:.1f}')} MiB, "
        f"peak {rng([r['peak_mib'] for r in ok if 'peak_mib' in r], '{:.1f}')} MiB, wall "
        f"{rng([r['wall'] for r in ok if 'wall' in r], '{:.1f}')} s")
print()
for s in summary:
    print(s)
sys.exit(0 if all_ok else 1)
EOF
[ "$summary_rc" = 0 ] && [ "$boot_rc" = 0 ]
