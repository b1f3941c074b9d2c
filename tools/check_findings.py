#!/usr/bin/env python3
"""Checks the demo's learning-dynamics findings on a directory of recorded runs. Reads
sft.jsonl.gz, dpo_offpolicy.jsonl.gz, extended_then_dpo.jsonl.gz and dpo_onpolicy.jsonl.gz as
written by tools/record_sample_runs.sh through `ldviz inspect --json` (the one definition of the per-family
statistics, phases and transfer figures), prints every finding with its figure and PASS/FAIL, and
exits 1 if one fails.

    python3 tools/check_findings.py [DIR]      (default: sample_runs; ldviz: $LDVIZ or
                                               ./target/release/ldviz)

Figures are means over the probes of summed log-probs (nats); Δ is last − first within the
phase named. tests/sample_runs.rs asserts the same findings on the shipped runs.
"""

import json
import os
import subprocess
import sys

NON_ARGMAX = ["chosen", "rejected", "chosen_initial", "chosen_gptsemantic", "chosen_gptformat",
              "reject_gptsemantic", "reject_gptformat", "irr_train", "irr_test", "irr_hum",
              "random_permute", "random_nonhum"]


def inspect(path):
    ldviz = os.environ.get("LDVIZ", "./target/release/ldviz")
    out = subprocess.run([ldviz, "inspect", path, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{path}: ldviz inspect failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "sample_runs"
    runs = {n: inspect(os.path.join(d, n + ".jsonl.gz"))
            for n in ["sft", "dpo_offpolicy", "extended_then_dpo", "dpo_onpolicy"]}
    results = []

    def check(name, ok, figure):
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")

    def delta(st):
        return st["last"] - st["first"]

    def mean_drop(fams):
        return -sum(delta(fams[k]) for k in NON_ARGMAX) / len(NON_ARGMAX)

    f = runs["sft"]["families"]
    print("== SFT (sft.jsonl) ==")
    for k in ["chosen", "chosen_gptsemantic", "argmax", "irr_train"]:
        check(f"{k} rises", delta(f[k]) > 0,
              f"{f[k]['first']:.2f} -> {f[k]['last']:.2f} (Δ {delta(f[k]):+.2f})")
    for k in ["random_permute", "random_nonhum"]:
        check(f"{k} falls", delta(f[k]) < 0,
              f"{f[k]['first']:.2f} -> {f[k]['last']:.2f} (Δ {delta(f[k]):+.2f})")
    dtr, dte = delta(f["irr_train"]), delta(f["irr_test"])
    check("irr_test rises < 3/4 of irr_train's rise", dte < 0.75 * dtr,
          f"irr_test Δ {dte:+.2f} vs irr_train Δ {dtr:+.2f} "
          f"(ratio {dte / dtr if dtr else float('nan'):.2f})")
    rj = f["rejected"]
    rise, back = rj["max"] - rj["first"], rj["max"] - rj["last"]
    check("rejected is a bell (falls back >= 1/4 of its rise) or falls",
          delta(rj) < 0 or (rise > 0 and back >= 0.25 * rise),
          f"{rj['first']:.2f} -> max {rj['max']:.2f} -> {rj['last']:.2f} "
          f"(rise {rise:.2f}, back {back:.2f})")
    c = f["chosen"]
    kept = c["last"] / c["first"] if c["first"] else float("nan")
    check("chosen keeps >= 30% of its initial NLL", kept >= 0.30,
          f"NLL {-c['first']:.2f} -> {-c['last']:.2f} ({100 * kept:.0f}% kept); "
          f"y* at the end {f['argmax']['last']:.2f}")
    print(f"  t=0: chosen {c['first']:.2f}, chosen_initial {f['chosen_initial']['first']:.2f}, "
          f"rejected {rj['first']:.2f}, y* {f['argmax']['first']:.2f}, "
          f"random_permute {f['random_permute']['first']:.2f}")
    tr = runs["sft"].get("transfer")
    if tr:
        dd, od = tr["diagonal_delta"], tr["off_diagonal_delta"]
        check("transfer, the diagonal rises >= 4/3 of the off-diagonal", dd > 0 and dd >= od * 4 / 3,
              f"diagonal Δ {dd:+.2f}, off-diagonal Δ {od:+.2f} at step {tr['step']}")
    else:
        check("transfer recorded", False, "no transfer matrix")

    o = runs["dpo_offpolicy"]["families"]
    print("== off-policy DPO (dpo_offpolicy.jsonl) ==")
    drops = {k: delta(o[k]) for k in NON_ARGMAX}
    check("rejected falls most", min(drops, key=drops.get) == "rejected",
          f"rejected Δ {drops['rejected']:+.2f}; next {sorted(drops.values())[1]:+.2f}")
    c = o["chosen"]
    need = max(1.0, 0.03 * abs(c["first"]))
    off_chosen_drop = c["max"] - c["last"]
    check("chosen falls from its peak by >= max(1, 3% |chosen0|)", off_chosen_drop >= need,
          f"peak {c['max']:.2f} -> {c['last']:.2f} (drop {off_chosen_drop:.2f}, need {need:.2f})")
    y = o["argmax"]
    check("y* rises >= 1 nat", delta(y) >= 1.0,
          f"{y['first']:.2f} -> {y['last']:.2f} (Δ {delta(y):+.2f})")
    falling = [k for k in NON_ARGMAX if drops[k] < 0]
    check(">= 10 of the 12 other families end below start", len(falling) >= 10,
          f"{len(falling)} of 12 fall; rising: {[k for k in NON_ARGMAX if drops[k] >= 0]}")
    off_mean_drop = mean_drop(o)

    ph = runs["extended_then_dpo"]["phases"]
    print("== extended SFT -> DPO (extended_then_dpo.jsonl) ==")
    check("extended SFT phase lifts rejected", delta(ph[0]["families"]["rejected"]) > 0,
          f"Δ {delta(ph[0]['families']['rejected']):+.2f}")
    e = ph[1]["families"]
    ext_mean_drop = mean_drop(e)
    check("over its DPO phase, the mean drop of the 12 families <= 85% of off-policy's",
          ext_mean_drop <= 0.85 * off_mean_drop,
          f"{ext_mean_drop:.2f} vs off-policy {off_mean_drop:.2f} "
          f"(ratio {ext_mean_drop / off_mean_drop if off_mean_drop else float('nan'):.2f})")
    ext_chosen_drop = e["chosen"]["max"] - e["chosen"]["last"]
    check("over its DPO phase, chosen's drop from its peak smaller than off-policy's",
          ext_chosen_drop < off_chosen_drop,
          f"{ext_chosen_drop:.2f} vs off-policy {off_chosen_drop:.2f}")

    on = runs["dpo_onpolicy"]["families"]["chosen"]
    print("== on-policy DPO (dpo_onpolicy.jsonl) ==")
    check("chosen ends higher than off-policy", on["last"] > o["chosen"]["last"],
          f"{on['last']:.2f} vs off-policy {o['chosen']['last']:.2f}")
    n = sum(results)
    print(f"{n} of {len(results)} findings hold")
    return 0 if n == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
