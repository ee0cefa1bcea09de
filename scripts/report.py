#!/usr/bin/env python3
"""Read the emulated host's console on stdin, echo it to a log file, and
report results as they happen: one line per test, then the summary line
"N passed, N failed, N skipped". Exit status 1 on any failure.

Results come from three places:
  - KUnit (the Rust doctests) at boot: top-level "ok N suite" lines;
  - the init's "@@ END name how value" lines, one per test it ran;
  - the kernel log itself: KVM must initialise at EL2, and no panic, Oops,
    WARN, lockdep or KASAN report, nor any "BUG:" line may appear.

A test that fails has the last TAIL lines of its console output printed
under its result (after a timeout, init.c's "@@ STACK" lines show where
each of its threads waited), so that a CI log alone tells why.
"""
import os
import re
import sys
from collections import deque

from consolelog import END, START

TS = re.compile(r"^\[\s*\d+\.\d+\] ")
BAD = re.compile(r"Kernel panic|Internal error: Oops|\bOops\b|WARNING: CPU|"
                 r"\bBUG:|possible circular locking|possible recursive locking|"
                 r"inconsistent lock state|KASAN|Unable to handle kernel|"
                 r"\bcut here\b|rcu_sched self-detected stall|soft lockup|"
                 r"hung_task|blocked for more than")
KVM_OK = re.compile(r"kvm \[\d+\]: (VHE|Hyp) mode initialized successfully|"
                    r"kvm \[\d+\]: (Protected )?(nVHE|VHE) mode initialized")
KUNIT_SUITE = re.compile(r"^\s*# Subtest: (\S+)")
KUNIT_TOP = re.compile(r"^(not ok|ok) \d+ (\S+)(.*)$")
KUNIT_CASE = re.compile(r"^\s+(not ok|ok) \d+ ")
# Console lines of a failed test printed under its result.
TAIL = 60
# In verbose mode (make run), the console lines shown unless SHOW_ALL=1:
# APF, the e2e driver, the workload, the VMM's statistics and trouble.
SHOWN = re.compile(r"apf|e2e:|workload:|uffd:|CPU\d+: Booted|psci: CPU\d+ killed|"
                   r"error|warn|Oops|BUG|panic|Call trace", re.IGNORECASE)
# What an end-to-end run (apf-e2e) says, for the APF on/hidden comparison.
E2E_PASS = re.compile(r"^e2e: PASS not_present=(\d+) ready=(\d+) wall=([\d.]+)s")
WORKLOAD_OK = re.compile(r"^workload: ok .*compute_iters=(\d+)")
# The VMM command apf-e2e starts; two runs pair when theirs differ only in
# "--apf hidden".
E2E_RUNNING = re.compile(r"^e2e: running (.*)$")
APF_HIDDEN = " --apf hidden"


def compare(runs):
    """Print APF on against APF hidden for each run with "--apf hidden" and
    the latest run before it whose VMM command is the same without it (the
    pair's key)."""
    lines = []
    last_on = {}
    for off_name, off in runs.items():
        if "key" not in off:
            continue
        if not off["hidden"]:
            last_on[off["key"]] = off_name
            continue
        name = last_on.get(off["key"])
        if name is None:
            continue
        on = runs[name]
        if not all(k in r for r in (on, off) for k in ("wall", "iters")):
            continue
        rate_on, rate_off = on["iters"] / on["wall"], off["iters"] / off["wall"]
        lines += [
            f"APF on ({name}) against APF hidden ({off_name}), same kernel and workload:",
            f"  {'':10} {'wall':>8} {'not_present':>12} {'compute iterations/s':>22}",
            f"  {'APF on':10} {on['wall']:7.1f}s {on['np']:12d} {rate_on:22.3e}",
            f"  {'APF hidden':10} {off['wall']:7.1f}s {off['np']:12d} {rate_off:22.3e}",
            f"  the compute thread ran {rate_on / rate_off:.2f}x as fast with APF on "
            f"(ratio within this run; TCG timing, not hardware timing)",
        ]
    return lines


def main():
    log = open(sys.argv[1], "w", buffering=1)
    verbose = len(sys.argv) > 2 and sys.argv[2] == "verbose"
    show_all = os.environ.get("SHOW_ALL") == "1"
    expected = sys.argv[3:]
    passed = failed = skipped = 0
    bad_lines = []
    kvm_ok = done = False
    seen = set()
    cases = {}
    suite = None
    runs = {}
    current = None
    tail = deque(maxlen=TAIL)

    def result(status, name, detail=""):
        nonlocal passed, failed, skipped
        seen.add(name)
        if status == "ok":
            passed += 1
        elif status == "skip":
            skipped += 1
        else:
            failed += 1
        line = {"ok": "ok", "skip": "ok", "fail": "not ok"}[status]
        extra = " # SKIP" if status == "skip" else ""
        print(f"{line} {name}{extra}{' (' + detail + ')' if detail else ''}",
              flush=True)

    for raw in sys.stdin.buffer:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        log.write(text + "\n")
        if verbose and not text.startswith("@@") and (show_all or SHOWN.search(text)):
            print("  | " + text, flush=True)
        kernel = bool(TS.match(text))
        body = TS.sub("", text)
        if current and not START.match(body) and not END.match(body):
            tail.append(body)
        if kernel:
            if KVM_OK.search(body):
                kvm_ok = True
            if BAD.search(body):
                bad_lines.append(body)
            m = KUNIT_SUITE.match(body)
            if m:
                suite = m.group(1)
                cases[suite] = [0, 0]
            elif KUNIT_CASE.match(body) and suite:
                cases[suite][0 if body.lstrip().startswith("ok") else 1] += 1
            m = KUNIT_TOP.match(body)
            # A guest booted by apf-vmm prints its own KUnit results on the
            # same console: only the host's count.
            if m and m.group(2) in cases and f"kunit:{m.group(2)}" not in seen:
                ok_n, bad_n = cases[m.group(2)]
                status = "ok" if m.group(1) == "ok" else "fail"
                if "# SKIP" in m.group(3):
                    status = "skip"
                result(status, f"kunit:{m.group(2)}",
                       f"{ok_n} passed, {bad_n} failed")
                suite = None
            continue
        m = START.match(body)
        if m:
            current = m.group(1)
            tail.clear()
        m = E2E_RUNNING.match(body)
        if m and current and "key" not in runs.get(current, {}):
            cmd = m.group(1)
            runs.setdefault(current, {}).update(
                key=cmd.replace(APF_HIDDEN, ""), hidden=APF_HIDDEN in cmd)
        m = WORKLOAD_OK.match(body)
        if m and current:
            runs.setdefault(current, {})["iters"] = int(m.group(1))
        m = E2E_PASS.match(body)
        if m and current:
            runs.setdefault(current, {}).update(np=int(m.group(1)), wall=float(m.group(3)))
        m = END.match(body)
        if m:
            name, how, value, secs = m.groups()
            secs = f", {secs}s" if secs else ""
            if how == "exit" and value == "0":
                status, detail = "ok", secs.lstrip(", ")
            elif how == "exit" and value == "4":
                status, detail = "skip", "KSFT_SKIP" + secs
            elif how == "timeout":
                status, detail = "fail", f"timeout {value}s"
            else:
                status, detail = "fail", f"{how} {value}{secs}"
            result(status, name, detail)
            if status == "fail":
                for line in tail:
                    print(f"  | {line}", flush=True)
            current = None
        elif body.startswith("@@ DONE"):
            done = True

    result("ok" if kvm_ok else "fail", "boot:kvm-at-el2",
           "" if kvm_ok else "no 'VHE mode initialized' line")
    if not done:
        result("fail", "boot:tests-completed",
               "console ended before the test list did (crash, hang or QEMU failure)")
    for name in expected:
        if name not in seen:
            result("fail", name, "never reported")
    result("fail" if bad_lines else "ok", "console:clean",
           "; ".join(bad_lines[:3]) if bad_lines else "")
    for line in compare(runs):
        print(line, flush=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
