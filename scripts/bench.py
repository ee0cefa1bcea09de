#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Collect the figures of `make bench` from the emulated host's console log.

Each run is "bench:WORK-REGIME-VCPUS:APF:REP" (scripts/bench.sh). Runs are
paired by that key, APF on with APF hidden of the same repetition, and
every ratio is taken within such a pair of one boot. Writes bench.json
(every run and every figure), bench.md (the table) and bench.svg (the
plot) into the output folder.

Usage: bench.py CONSOLE_LOG OUT_DIR COMMAND
       bench.py --compare FIRST.json SECOND.json   (two runs' stability)
"""

import json
import os
import re
import statistics
import sys

from consolelog import VERDICT, cases, exited_ok

STORM = re.compile(r"^apf-bench: storm round=(\d+) pages=(\d+) fault_ms=([\d.]+) "
                   r"compute_frac=([\d.]+)")
MACRO = re.compile(r"^apf-bench: macro round=(\d+) files=(\d+) jobs=(\d+) ms=([\d.]+)")
FREE = re.compile(r"^apf-bench: free round=(\d+) compute_ms=([\d.]+) touch_ms=([\d.]+)")
AFTER_MOVE = re.compile(r"^e2e: after-move wall=([\d.]+)s")
TRACE = re.compile(r"^e2e: trace (.*)")
# Where a fault's time goes (apf-e2e --trace, src/e2e/trace.rs).
TRACE_SPANS = ("fetch", "delivery", "wait", "ack", "retry")
MOVE_WORK = ("restore", "postcopy")
MACRO_WORK = ("gzip", "gzipmmap")
HOST = re.compile(r"^(?:apf|kvm): vcpu\d+ (.*)")
FIELD = re.compile(r"(\w+)=(\d+)")


def parse(log):
    runs = {}
    for name, lines, end in cases(log):
        if not name.startswith("bench:"):
            continue
        _, config, apf, rep = name.split(":")
        work, regime, vcpus = config.split("-")
        cur = runs[name] = {
            "name": name, "config": config, "work": work, "regime": regime,
            "vcpus": int(vcpus), "apf": apf, "rep": int(rep),
            "rounds": [], "host": {}, "ok": False,
        }
        for line in lines:
            m = STORM.match(line)
            if m:
                cur["rounds"].append({"round": int(m.group(1)), "pages": int(m.group(2)),
                                      "fault_ms": float(m.group(3)),
                                      "compute_frac": float(m.group(4))})
            m = FREE.match(line)
            if m:
                cur["rounds"].append({"round": int(m.group(1)),
                                      "compute_ms": float(m.group(2)),
                                      "touch_ms": float(m.group(3))})
            m = MACRO.match(line)
            if m:
                cur["rounds"].append({"round": int(m.group(1)), "macro_ms": float(m.group(4))})
            m = AFTER_MOVE.match(line)
            if m:
                cur["rounds"].append({"after_move_s": float(m.group(1))})
            m = TRACE.match(line)
            if m:
                cur["trace"] = {k: int(v) for k, v in FIELD.findall(m.group(1))}
            m = HOST.match(line)
            if m:
                for k, v in FIELD.findall(m.group(1)):
                    cur["host"][k] = cur["host"].get(k, 0) + int(v)
            m = VERDICT.match(line)
            if m:
                cur["verdict"] = m.group(1)
        cur["ok"] = end is not None and exited_ok(end) and \
            cur.get("verdict") == "PASS" and bool(cur["rounds"])
    return runs


def mapped_frac(run):
    """The share of a run's PAGE_READYs whose page KVM mapped first."""
    host = run["host"]
    return host.get("apf_ready_mapped", 0) / host["apf_ready"] if host.get("apf_ready") else None


def med(values):
    return statistics.median(values) if values else None


def per_run(run, key):
    """The median over a run's rounds, the first (warm-up) left out when
    there are more than two."""
    vals = [r[key] for r in run["rounds"] if key in r]
    if len(vals) > 2:
        vals = vals[1:]
    return med(vals)


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": med(values), "min": min(values), "max": max(values), "n": len(values)}


def figures(runs):
    configs = {}
    for r in runs.values():
        configs.setdefault(r["config"], []).append(r)
    out = {}
    for config, rs in sorted(configs.items()):
        pairs = {}
        for r in rs:
            if r["ok"]:
                pairs.setdefault(r["rep"], {})[r["apf"]] = r
        pairs = [p for _, p in sorted(pairs.items()) if "on" in p and "hidden" in p]
        work = rs[0]["work"]
        if work == "trace":
            traced = [r for r in rs if r["ok"] and r["apf"] == "on" and "trace" in r]
            f = {"work": work, "regime": rs[0]["regime"], "vcpus": rs[0]["vcpus"],
                 "pairs": 0, "runs": len(traced), "failed": sum(not r["ok"] for r in rs),
                 "faults": summary([r["trace"].get("faults") for r in traced]),
                 # PAGE_READYs whose page still faulted: KVM maps it first
                 # when it can (apf_ready_mapped), and the retry then does not.
                 "retry_frac": summary([r["trace"].get("retry_n", 0) / r["trace"]["faults"]
                                        for r in traced if r["trace"].get("faults")]),
                 "mapped_frac": summary([mapped_frac(r) for r in traced])}
            for span in TRACE_SPANS:
                for q in ("us", "p90_us"):
                    f[f"{span}_{q}"] = summary([r["trace"].get(f"{span}_{q}") for r in traced])
            out[config] = f
            continue
        f = {"work": work, "regime": rs[0]["regime"], "vcpus": rs[0]["vcpus"],
             "pairs": len(pairs), "runs": len(rs), "failed": sum(not r["ok"] for r in rs)}
        if work == "storm":
            f["compute_frac_on"] = summary([per_run(p["on"], "compute_frac") for p in pairs])
            f["compute_frac_hidden"] = summary([per_run(p["hidden"], "compute_frac")
                                                for p in pairs])
            f["fault_time_ratio"] = summary([per_run(p["on"], "fault_ms") /
                                             per_run(p["hidden"], "fault_ms") for p in pairs])
            f["fault_ms_on"] = summary([per_run(p["on"], "fault_ms") for p in pairs])
            f["fault_ms_hidden"] = summary([per_run(p["hidden"], "fault_ms") for p in pairs])
            f["not_present_on"] = summary([p["on"]["host"].get("apf_not_present", 0)
                                           for p in pairs])
            # What one PAGE_NOT_PRESENT costs the host, in exits more than
            # the same run with APF hidden (boot and the rest cancel out).
            for key in ("exits", "hvc_exit_stat", "wfi_exit_stat"):
                f[f"extra_{key}_per_fault"] = summary([
                    (p["on"]["host"].get(key, 0) - p["hidden"]["host"].get(key, 0)) /
                    p["on"]["host"]["apf_not_present"]
                    for p in pairs if p["on"]["host"].get("apf_not_present")])
            f["mapped_frac"] = summary([mapped_frac(p["on"]) for p in pairs])
            f["refaults_per_fault"] = summary([
                p["on"]["host"].get("apf_sync_refault", 0) / p["on"]["host"]["apf_not_present"]
                for p in pairs if p["on"]["host"].get("apf_not_present")])
            f["fallbacks_on"] = {k: sum(p["on"]["host"].get(k, 0) for p in pairs)
                                 for k in sorted({k for p in pairs for k in p["on"]["host"]
                                                  if k.startswith("apf_sync_")})}
        elif work in MOVE_WORK:
            f["after_move_s_on"] = summary([per_run(p["on"], "after_move_s") for p in pairs])
            f["after_move_s_hidden"] = summary([per_run(p["hidden"], "after_move_s")
                                                for p in pairs])
            f["after_move_ratio"] = summary([per_run(p["on"], "after_move_s") /
                                             per_run(p["hidden"], "after_move_s")
                                             for p in pairs])
            f["not_present_on"] = summary([p["on"]["host"].get("apf_not_present", 0)
                                           for p in pairs])
        elif work in MACRO_WORK:
            f["macro_s_on"] = summary([per_run(p["on"], "macro_ms") / 1e3 for p in pairs])
            f["macro_s_hidden"] = summary([per_run(p["hidden"], "macro_ms") / 1e3
                                           for p in pairs])
            f["macro_time_ratio"] = summary([per_run(p["on"], "macro_ms") /
                                             per_run(p["hidden"], "macro_ms") for p in pairs])
            f["not_present_on"] = summary([p["on"]["host"].get("apf_not_present", 0)
                                           for p in pairs])
        else:
            f["compute_ratio"] = summary([per_run(p["on"], "compute_ms") /
                                          per_run(p["hidden"], "compute_ms") for p in pairs])
            f["touch_ratio"] = summary([per_run(p["on"], "touch_ms") /
                                        per_run(p["hidden"], "touch_ms") for p in pairs])
        out[config] = f
    return out


def fmt(s, pct=False, digits=2):
    if not s:
        return "-"
    if pct:
        c = lambda v: f"{(v - 1) * 100:+.1f}%"
        return f"{c(s['median'])} ({c(s['min'])} .. {c(s['max'])})"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f} .. {s['max']:.{digits}f})"


def med_only(s):
    return f"{s['median']:.2f}" if s else "-"


def med_only0(s):
    return f"{s['median']:.0f}" if s else "-"


def mapped_first(f):
    """Whether KVM mapped (almost) every page before PAGE_READY: the retry
    then takes no fault, and the faults the trace still pairs with a
    PAGE_READY are later ones, on a page evicted again, not retries."""
    return (f.get("mapped_frac") or {}).get("median", 0) >= 0.99


def span_cell(f, span):
    """A traced configuration's median (and 90th percentile) of a span."""
    # Logs from before a span was traced have none.
    if span == "retry" and mapped_first(f) or not f.get(f"{span}_us"):
        return "-"
    return f"{med_only0(f[f'{span}_us'])} (p90 {med_only0(f[f'{span}_p90_us'])})"


def section(head, rows):
    """A markdown table: its header cells, then a row of cells per row."""
    row = lambda cells: "| " + " | ".join(cells) + " |"
    return [row(head), "|" + "---|" * len(head)] + [row(r) for r in rows]


def fetch_label(regime):
    """"uffd1000" as "1 ms", "uffd1000q16" as "1 ms, 16 at once"."""
    m = re.fullmatch(r"uffd(\d+)(?:q(\d+))?", regime)
    if not m:
        return regime
    label = f"{int(m.group(1)) / 1000:g} ms"
    return label + (f", {m.group(2)} at once" if m.group(2) else "")


def of_work(figs, *works):
    return [(c, f) for c, f in figs.items() if f["work"] in works]


def table(figs, command):
    lines = [
        f"`{command}`: median (min .. max) over the pairs; every ratio is APF on "
        "against APF hidden within one pair of one boot of the emulated host (QEMU TCG: "
        "ratios, not hardware timings).",
        "",
    ]
    lines += section(
        ["configuration", "vCPUs", "pairs", "compute progress, APF on",
         "compute progress, hidden", "faulting thread's time, on vs hidden",
         "PAGE_NOT_PRESENT per run", "mapped before PAGE_READY",
         "exits per fault, more than hidden (of which HVC, WFI)"],
        [[f["regime"], str(f["vcpus"]), str(f["pairs"]), fmt(f["compute_frac_on"]),
          fmt(f["compute_frac_hidden"]), fmt(f["fault_time_ratio"], pct=True),
          fmt(f["not_present_on"], digits=0), med_only(f.get("mapped_frac")),
          f"{med_only(f['extra_exits_per_fault'])} "
          f"({med_only(f['extra_hvc_exit_stat_per_fault'])}, "
          f"{med_only(f['extra_wfi_exit_stat_per_fault'])})"]
         for _, f in of_work(figs, "storm")])
    free = of_work(figs, "free")
    if free:
        lines += [""] + section(
            ["fault-free", "vCPUs", "pairs", "compute-only time, on vs hidden",
             "memory-touching time, on vs hidden"],
            [[config, str(f["vcpus"]), str(f["pairs"]), fmt(f["compute_ratio"], pct=True),
              fmt(f["touch_ratio"], pct=True)] for config, f in free])
    macro = of_work(figs, *MACRO_WORK)
    if macro:
        lines += [""] + section(
            ["workload (d): parallel gzip under a memory cgroup", "vCPUs", "pairs",
             "time per round, APF on", "APF hidden", "on vs hidden",
             "PAGE_NOT_PRESENT per run"],
            [[f"{f['work']} ({f['regime']})", str(f["vcpus"]), str(f["pairs"]),
              f"{fmt(f['macro_s_on'], digits=1)} s",
              f"{fmt(f['macro_s_hidden'], digits=1)} s", fmt(f["macro_time_ratio"], pct=True),
              fmt(f["not_present_on"], digits=0)] for _, f in macro])
    moved = of_work(figs, *MOVE_WORK)
    if moved:
        lines += [""] + section(
            ["workload (e): moved mid-run", "fetch latency", "vCPUs", "pairs",
             "time to finish after the move, APF on", "APF hidden", "on vs hidden",
             "PAGE_NOT_PRESENT per run"],
            [[f["work"], fetch_label(f["regime"]),
              str(f["vcpus"]), str(f["pairs"]), f"{fmt(f['after_move_s_on'], digits=1)} s",
              f"{fmt(f['after_move_s_hidden'], digits=1)} s",
              fmt(f["after_move_ratio"], pct=True), fmt(f["not_present_on"], digits=0)]
             for _, f in moved])
    traced = of_work(figs, "trace")
    if traced:
        lines += [""] + section(
            ["where a fault's time goes (APF on, traced)", "vCPUs", "runs",
             "PAGE_NOT_PRESENT per run", "fetch, us", "delivery, us",
             "of which waiting for the block, us", "ACK, us", "retry, us",
             "mapped before PAGE_READY", "retries that faulted"],
            [[f["regime"], str(f["vcpus"]), str(f["runs"]), fmt(f["faults"], digits=0)] +
             [span_cell(f, s) for s in TRACE_SPANS] + [med_only(f.get("mapped_frac")),
                                                       "-" if mapped_first(f) else
                                                       med_only(f.get("retry_frac"))]
             for _, f in traced])
        lines += ["", "Where a fault's time goes: medians over the runs of each run's "
                  "median (and 90th percentile) from KVM's trace events. Fetch: "
                  "PAGE_NOT_PRESENT to the page fetched; delivery: to PAGE_READY "
                  "written and the PPI raised, of which waiting for the block: until the "
                  "ACK of the PAGE_READY the vCPU's block held when the page was "
                  "fetched (0 if it was free); ACK: to the vCPU's next hypercall; "
                  "retry: PAGE_READY to the next stage-2 fault on the page, the woken "
                  "task repeating its access (retries that faulted: the share of "
                  "PAGE_READYs followed by one). Where KVM mapped the page before "
                  "PAGE_READY (apf_ready_mapped of apf_ready, from the host's stats), the "
                  "retry takes no fault, and both retry columns read \"-\": the faults "
                  "the trace still finds on such a page come later, often seconds later, "
                  "after the page was evicted again, and are not retries."]
    lines += ["", "Compute progress: the compute thread's rate while the faulting thread "
              "reads its evicted pages, as a fraction of its rate with nothing faulting. "
              "Faulting thread's time: one pass over its pages."]
    return "\n".join(lines) + "\n"


def svg(figs):
    storm = [(c, f) for c, f in figs.items() if f["work"] == "storm" and f["pairs"]]
    w, h, left, top, bar = 760, 300, 60, 30, 16
    group = (w - left - 20) / max(len(storm), 1)
    y = lambda v: top + (h - top - 60) * (1 - min(v, 1.2) / 1.2)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="16" font-size="13">Compute progress during the fault '
             'storm (fraction of fault-free rate; bars: median, lines: min..max)</text>']
    for v in (0, 0.5, 0.9, 1.0):
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#ccc"/><text x="{left - 30}" y="{y(v) + 4:.1f}">{v}</text>')
    for i, (config, f) in enumerate(storm):
        x0 = left + i * group + group / 2 - bar
        for j, (key, colour) in enumerate((("compute_frac_on", "#2a7"),
                                           ("compute_frac_hidden", "#c44"))):
            s = f[key]
            if not s:
                continue
            x = x0 + j * bar
            parts.append(f'<rect x="{x:.1f}" y="{y(s["median"]):.1f}" width="{bar - 2}" '
                         f'height="{y(0) - y(s["median"]):.1f}" fill="{colour}"/>')
            parts.append(f'<line x1="{x + bar / 2 - 1:.1f}" x2="{x + bar / 2 - 1:.1f}" '
                         f'y1="{y(s["min"]):.1f}" y2="{y(s["max"]):.1f}" stroke="#000"/>')
        parts.append(f'<text x="{x0 - 10:.1f}" y="{h - 40}">{f["regime"]}</text>'
                     f'<text x="{x0 - 10:.1f}" y="{h - 26}">{f["vcpus"]} vCPU</text>')
    parts.append(f'<rect x="{w - 190}" y="{h - 20}" width="10" height="10" fill="#2a7"/>'
                 f'<text x="{w - 176}" y="{h - 11}">APF on</text>'
                 f'<rect x="{w - 110}" y="{h - 20}" width="10" height="10" fill="#c44"/>'
                 f'<text x="{w - 96}" y="{h - 11}">APF hidden</text></svg>')
    return "\n".join(parts) + "\n"


FIGURES = ("compute_frac_on", "compute_frac_hidden", "fault_time_ratio",
           "extra_exits_per_fault", "compute_ratio", "touch_ratio", "after_move_ratio", "macro_time_ratio",
           "fetch_us", "delivery_us", "wait_us", "ack_us", "retry_us", "mapped_frac", "retry_frac")


def compare(first, second):
    """Each figure's median in two runs of make bench, and how far apart."""
    a = json.load(open(first))["figures"]
    b = json.load(open(second))["figures"]
    print("| configuration | figure | first run | second run | difference |")
    print("|---|---|---|---|---|")
    for config in sorted(set(a) & set(b)):
        for key in FIGURES:
            fa, fb = a[config].get(key), b[config].get(key)
            if not fa or not fb:
                continue
            # A run whose pages were mapped before PAGE_READY has no
            # retry to time or count (see mapped_first()).
            if key in ("retry_us", "retry_frac") and any(
                    mapped_first(c[config]) for c in (a, b)):
                continue
            ma, mb = fa["median"], fb["median"]
            print(f"| {config} | {key} | {ma:.3f} | {mb:.3f} | {mb - ma:+.3f} |")


def main():
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
        return
    log, out, command = sys.argv[1:4]
    runs = parse(log)
    if not runs:
        sys.exit(f"bench.py: no bench runs in {log}")
    figs = figures(runs)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump({"command": command, "figures": figs, "runs": list(runs.values())}, f,
                  indent=1)
    md = table(figs, command)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "bench.svg"), "w") as f:
        f.write(svg(figs))
    print(md)
    bad = [r["name"] for r in runs.values() if not r["ok"]]
    if bad:
        print(f"runs left out (failed or no figures): {' '.join(bad)}")


if __name__ == "__main__":
    main()
