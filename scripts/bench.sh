#!/usr/bin/env bash
# make bench: what APF buys and costs. Boots the emulated host once and runs
# apf-vmm guests (apf-bench, userspace/workload/apf-bench.c) with APF
# offered and hidden, interleaved, each under apf-e2e, which checks that
# the run is sound (the data, the guest's and the host's counters, no
# events when hidden). scripts/bench.py then pairs the runs and writes
# out/bench/: bench.md, bench.json and bench.svg.
#
# Configurations (NAME = workload-regime-vCPUs):
#   storm: a compute thread beside a faulting thread, whose pages are
#          evicted before each pass; regimes uffd200 / uffd1000 / uffd5000
#          (userfaultfd, that fetch latency in us, one page at a time;
#          uffd1000q16 and the like have 16 fetches in progress) and swap
#          (a memory cgroup below the working set, swapping to the host's
#          disk); 1 and 2 vCPUs.
#   gzip, gzipmmap: workload (d), apf-compress (userspace/compress/)
#          gzipping 32 MiB in 4 worker processes under the swap regime,
#          reading its input or mapping it.
#   free:  nothing faults; compute-only and memory-touching loops.
#   trace: the storm with APF on only, under apf-e2e --trace: where a
#          fault's time goes (fetch, delivery, ACK, retry), from KVM's
#          trace events; not paired, as tracing has its own cost.
#   restore, postcopy: workload (e), the time the guest takes to finish
#          a fixed amount of work (apf-workload, 4 MiB per writer pass,
#          3 rounds) after it was moved mid-run: snapshot and lazy
#          restore, or post-copy migration, the destination fetching each
#          page in uffd1000 / uffd5000 / uffd10000 (1, 5, 10 ms). With APF
#          hidden the source VM already hides it (the restore keeps it).
#          Not in the full run (bench/workload-e.md has their results):
#          BENCH_CONFIGS="restore-uffd1000-2 ..." runs them.
# BENCH_REPS (default 5) repetitions of each, APF on and hidden
# interleaved (on first in odd repetitions, hidden first in even ones),
# of 3 rounds each; the trace configurations run in the first 3
# repetitions only. BENCH_QUICK=1: uffd1000 on 2 vCPUs, free and
# the uffd1000 trace, 3 repetitions (about 9 minutes here; swap, whose
# runs take 2 to 6 minutes each, is in the full run only; the full run
# took 61 minutes here, 86 runs, half of it in the swap storms).
# BENCH_OUT:
# the output folder (default out/bench).
source "$(dirname "$0")/lib.sh"

quick=${BENCH_QUICK:-0}
reps=${BENCH_REPS:-$([ "$quick" = 1 ] && echo 3 || echo 5)}
[[ $reps =~ ^[1-9][0-9]?$ ]] || die "bench: BENCH_REPS must be 1..99, not '$reps'"
rounds=3
out=${BENCH_OUT:-$TOP/out/bench}

vmm="/bin/apf-vmm --kernel /guest/Image --initrd /guest/initrd.cpio --mem 256"
cmdline="console=ttyS0 panic=-1 kunit.enable=0 APF_BENCH_ROUNDS=$rounds"

# regime -> apf-e2e options, apf-vmm options, guest settings. The region
# shrinks as the latency grows, so that a pass takes about as long.
declare -A e2e_opt vmm_opt guest_opt
# uffdLAT serves one page at a time, uffdLATq16 has 16 fetches in progress.
for lat in 200 1000 5000; do
	mib=$((lat == 200 ? 8 : lat == 1000 ? 4 : 1))
	for depth in 1 16; do
		r=uffd$lat$([ $depth = 1 ] || echo "q$depth")
		e2e_opt[$r]=""
		vmm_opt[$r]="--mem-mode uffd --uffd-latency-us $lat --uffd-queue-depth $depth --uffd-evict-ms 600000"
		guest_opt[$r]="APF_BENCH=storm APF_BENCH_EVICT=uffd APF_BENCH_MIB=$mib"
	done
done
e2e_opt[swap]="--swap-disk vda"
vmm_opt[swap]="--mem-mode cgroup --cgroup-limit 48"
guest_opt[swap]="APF_BENCH=storm APF_BENCH_EVICT=none APF_BENCH_MIB=64"
# Workload (d): apf-compress (userspace/compress/) in the same cgroup,
# reading its input (gzip) or mapping it (gzipmmap).
guest_opt[gzip-swap]="APF_BENCH=macro APF_MACRO_MIB=32 APF_MACRO_JOBS=4 APF_MACRO_IO=read"
guest_opt[gzipmmap-swap]="APF_BENCH=macro APF_MACRO_MIB=32 APF_MACRO_JOBS=4 APF_MACRO_IO=mmap"
e2e_opt[free]=""
vmm_opt[free]="--mem-mode plain"
guest_opt[free]="APF_BENCH=free APF_BENCH_MIB=16"
# Workload (e): the move happens at the end of the first round.
declare -A move_kind=([restore]=snapshot [postcopy]=postcopy)
move_guest="APF_WL_MIB=4 APF_WL_ROUNDS=3"

if [ "$quick" = 1 ]; then
	configs=(storm-uffd1000-2 free-free-2 trace-uffd1000-2)
else
	configs=(storm-uffd200-2 storm-uffd1000-1 storm-uffd1000-2 storm-uffd5000-2
		storm-swap-2 gzip-swap-2 gzipmmap-swap-2 free-free-2
		trace-uffd1000-2 trace-swap-2)
fi
# BENCH_CONFIGS="storm-swap-2 ..." picks configurations by hand.
[ -z "${BENCH_CONFIGS:-}" ] || read -ra configs <<<"$BENCH_CONFIGS"

list=$B/bench.list
mkdir -p "$B" "$out"
: >"$list"
for rep in $(seq "$reps"); do
	# Each run inherits the host the run before left behind (a swap storm
	# leaves reclaim and swap slots to clean up), so which side of a pair
	# goes first alternates from one repetition to the next.
	order="on hidden"
	[ $((rep % 2)) = 0 ] && order="hidden on"
	for c in "${configs[@]}"; do
		IFS=- read -r work regime vcpus <<<"$c"
		for apf in $order; do
			[ "$work" = trace ] && { [ "$apf" = hidden ] || [ "$rep" -gt 3 ]; } && continue
			# The fault-free runs have no event to expect either way.
			if [ "$apf" = hidden ]; then
				expect="--expect none" hide="--apf hidden"
			elif [ "$work" = trace ]; then
				expect="--expect events --trace" hide=""
			elif [ "$work" != free ]; then
				expect="--expect events" hide=""
			else
				expect="" hide=""
			fi
			if [ -n "${move_kind[$work]:-}" ]; then
				[ "$apf" = on ] && expect="--expect events"
				# uffdLAT or uffdLATqDEPTH.
				lat=${regime#uffd} depth=1
				[[ $lat == *q* ]] && depth=${lat#*q} lat=${lat%q*}
				echo "bench:$c:$apf:$rep 900 /bin/apf-e2e $expect --move ${move_kind[$work]}" \
					"--move-at \"workload: round 1/\" --restore-latency-us $lat" \
					"--restore-queue-depth $depth" \
					"--timeout 880 -- $vmm --vcpus $vcpus --mem-mode plain $hide" \
					"--cmdline \"$cmdline $move_guest\"" >>"$list"
				continue
			fi
			echo "bench:$c:$apf:$rep 900 /bin/apf-e2e $expect ${e2e_opt[$regime]} --timeout 880 --" \
				"$vmm --vcpus $vcpus ${vmm_opt[$regime]} $hide" \
				"--cmdline \"$cmdline ${guest_opt[$work-$regime]:-${guest_opt[$regime]}}\"" >>"$list"
		done
	done
done

n=$(grep -c . "$list")
say "bench: ${#configs[@]} configurations x $reps repetitions x APF on/hidden = $n runs (list: $list)"
set +e
"$TOP/scripts/boot.sh" bench "$list"
boot_rc=$?
set -e
# The command as bench.md states it: what picked the configurations and
# the repetitions, when not the defaults.
command="make bench"
[ "$quick" = 1 ] && command+=" BENCH_QUICK=1"
[ -n "${BENCH_REPS:-}" ] && command+=" BENCH_REPS=$reps"
[ -n "${BENCH_CONFIGS:-}" ] && command+=" BENCH_CONFIGS=\"${configs[*]}\""
python3 "$TOP/scripts/bench.py" "$B/logs/bench-console.log" "$out" "$command" ||
	die "bench: no results"
[ "$boot_rc" = 0 ] || warn "bench: some runs failed (see above); their figures are left out"
say "bench: results in $out (bench.md, bench.json, bench.svg)"
