#!/usr/bin/env python3
"""Checks the demo's learning-dynamics findings on a directory of recorded runs (standard library
only). Reads sft.jsonl, dpo_offpolicy.jsonl, extended_then_dpo.jsonl and dpo_onpolicy.jsonl as
written by tools/record_sample_runs.sh, prints every finding with its figure and PASS/FAIL, and
exits 1 if one fails.

    python3 tools/check_findings.py [DIR]      (default: sample_runs)

Figures are means over the probes of summed log-probs (nats); Δ is last − first within the
phase named. tests/sample_runs.rs asserts the same findings on the shipped runs through ldviz's
own reader, so the two must agree.
"""

import json
import os
import sys

NON_ARGMAX = ["chosen", "rejected", "chosen_initial", "chosen_gptsemantic", "chosen_gptformat",
              "reject_gptsemantic", "reject_gptformat", "irr_train", "irr_test", "irr_hum",
              "random_permute", "random_nonhum"]


def load(path):
    evals, phases = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("type") == "eval":
                means = {k: sum(v) / len(v) for k, v in r["logps"].items() if v}
                evals.append((r["step"], r.get("phase"), means, r.get("transfer") or []))
            elif r.get("type") == "phase":
                phases.append((r["name"], r["step"]))
    return evals, phases


def series(evals, fam, lo=0, hi=10**12):
    return [m[fam] for s, _, m, _ in evals if lo <= s <= hi and fam in m]


def phase_range(evals, phases, i):
    lo = phases[i][1]
    hi = phases[i + 1][1] if i + 1 < len(phases) else evals[-1][0]
    return lo, hi


def transfer(evals):
    tr = [(s, t) for s, _, _, t in evals if t]
    if len(tr) < 2:
        return None
    (s0, t0), (s1, t1) = tr[0], tr[-1]
    n = len(t0)
    dd = [t1[i][i] - t0[i][i] for i in range(n)]
    od = [t1[i][j] - t0[i][j] for i in range(n) for j in range(n) if i != j]
    return sum(dd) / len(dd), sum(od) / len(od), s1


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "sample_runs"
    runs = {n: load(os.path.join(d, n + ".jsonl"))
            for n in ["sft", "dpo_offpolicy", "extended_then_dpo", "dpo_onpolicy"]}
    results = []

    def check(name, ok, figure):
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")

    def delta(s):
        return s[-1] - s[0]

    ev, _ = runs["sft"]
    f = {k: series(ev, k) for k in NON_ARGMAX + ["argmax"]}
    print("== SFT (sft.jsonl) ==")
    for k in ["chosen", "chosen_gptsemantic", "argmax", "irr_train"]:
        check(f"{k} rises", delta(f[k]) > 0, f"{f[k][0]:.2f} -> {f[k][-1]:.2f} (Δ {delta(f[k]):+.2f})")
    for k in ["random_permute", "random_nonhum"]:
        check(f"{k} falls", delta(f[k]) < 0, f"{f[k][0]:.2f} -> {f[k][-1]:.2f} (Δ {delta(f[k]):+.2f})")
    dtr, dte = delta(f["irr_train"]), delta(f["irr_test"])
    check("irr_test rises < 3/4 of irr_train's rise", dte < 0.75 * dtr,
          f"irr_test Δ {dte:+.2f} vs irr_train Δ {dtr:+.2f} (ratio {dte / dtr if dtr else float('nan'):.2f})")
    rj = f["rejected"]
    rise, back = max(rj) - rj[0], max(rj) - rj[-1]
    check("rejected is a bell (falls back >= 1/4 of its rise) or falls",
          delta(rj) < 0 or (rise > 0 and back >= 0.25 * rise),
          f"{rj[0]:.2f} -> max {max(rj):.2f} -> {rj[-1]:.2f} (rise {rise:.2f}, back {back:.2f})")
    c = f["chosen"]
    kept = c[-1] / c[0] if c[0] else float("nan")
    check("chosen keeps >= 30% of its initial NLL", kept >= 0.30,
          f"NLL {-c[0]:.2f} -> {-c[-1]:.2f} ({100 * kept:.0f}% kept); y* at the end {f['argmax'][-1]:.2f}")
    # t = 0 regime
    print(f"  t=0: chosen {c[0]:.2f}, chosen_initial {f['chosen_initial'][0]:.2f}, "
          f"rejected {rj[0]:.2f}, y* {f['argmax'][0]:.2f}, random_permute {f['random_permute'][0]:.2f}")
    tr = transfer(ev)
    if tr:
        check("transfer, the diagonal rises >= 4/3 of the off-diagonal", tr[0] >= tr[1] * 4 / 3 and tr[0] > 0,
              f"diagonal Δ {tr[0]:+.2f}, off-diagonal Δ {tr[1]:+.2f} at step {tr[2]}")
    else:
        check("transfer recorded", False, "no transfer matrix")

    ev, _ = runs["dpo_offpolicy"]
    o = {k: series(ev, k) for k in NON_ARGMAX + ["argmax"]}
    print("== off-policy DPO (dpo_offpolicy.jsonl) ==")
    drops = {k: delta(o[k]) for k in NON_ARGMAX}
    check("rejected falls most", min(drops, key=drops.get) == "rejected",
          f"rejected Δ {drops['rejected']:+.2f}; next {sorted(drops.values())[1]:+.2f}")
    c = o["chosen"]
    need = max(1.0, 0.03 * abs(c[0]))
    check("chosen falls from its peak by >= max(1, 3% |chosen0|)", max(c) - c[-1] >= need,
          f"peak {max(c):.2f} -> {c[-1]:.2f} (drop {max(c) - c[-1]:.2f}, need {need:.2f})")
    check("y* rises >= 1 nat", delta(o["argmax"]) >= 1.0,
          f"{o['argmax'][0]:.2f} -> {o['argmax'][-1]:.2f} (Δ {delta(o['argmax']):+.2f})")
    below = [k for k in NON_ARGMAX if k != "chosen" and o[k][-1] < o[k][0]]
    others = [k for k in NON_ARGMAX if k != "chosen"]
    check(">= 10 of the 12 other families end below start", len(below) + (o["chosen"][-1] < o["chosen"][0]) >= 10,
          f"{len(below) + (o['chosen'][-1] < o['chosen'][0])} of 12 fall; rising: "
          f"{[k for k in NON_ARGMAX if o[k][-1] >= o[k][0]]}")
    off_mean_drop = -sum(drops.values()) / len(drops)
    off_chosen_drop = max(c) - c[-1]

    ev, ph = runs["extended_then_dpo"]
    print("== extended SFT -> DPO (extended_then_dpo.jsonl) ==")
    lo, hi = phase_range(ev, ph, 0)
    rj = series(ev, "rejected", lo, hi)
    check("extended SFT phase lifts rejected", delta(rj) > 0, f"Δ {delta(rj):+.2f}")
    lo, hi = phase_range(ev, ph, 1)
    e = {k: series(ev, k, lo, hi) for k in NON_ARGMAX + ["argmax"]}
    ext_mean_drop = -sum(delta(e[k]) for k in NON_ARGMAX) / len(NON_ARGMAX)
    check("over its DPO phase, the mean drop of the 12 families <= 85% of off-policy's",
          ext_mean_drop <= 0.85 * off_mean_drop,
          f"{ext_mean_drop:.2f} vs off-policy {off_mean_drop:.2f} "
          f"(ratio {ext_mean_drop / off_mean_drop if off_mean_drop else float('nan'):.2f})")
    c = e["chosen"]
    check("over its DPO phase, chosen's drop from its peak smaller than off-policy's",
          max(c) - c[-1] < off_chosen_drop, f"{max(c) - c[-1]:.2f} vs off-policy {off_chosen_drop:.2f}")

    ev, _ = runs["dpo_onpolicy"]
    print("== on-policy DPO (dpo_onpolicy.jsonl) ==")
    c = series(ev, "chosen")
    check("chosen ends higher than off-policy", c[-1] > o["chosen"][-1],
          f"{c[-1]:.2f} vs off-policy {o['chosen'][-1]:.2f}")
    n = sum(results)
    print(f"{n} of {len(results)} findings hold")
    return 0 if n == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
