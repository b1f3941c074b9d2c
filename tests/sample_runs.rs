//! The committed sample runs load, stay under 20 MB, and show the learning dynamics that
//! sample_runs/README.md reports, through ldviz's own reader and `inspect` summary (means over
//! probes of summed log-probs, Δ = last − first within the phase). tools/check_findings.py checks
//! the same findings on any directory of runs (re-recordings with other seeds). The findings that
//! did not appear in the shipped runs are asserted the way the README reports them, so a
//! re-recording that changes them fails here and the README must be updated with it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::collections::BTreeMap;

use ldviz::data::Family;
use ldviz::run::summary::{FamilyStats, Summary, summarize};

/// The 12 families other than the greedy response y*.
fn non_argmax() -> Vec<&'static str> {
    Family::ALL
        .iter()
        .filter(|f| **f != Family::Argmax)
        .map(|f| f.key())
        .collect()
}

fn load(name: &str) -> Summary {
    let p = common::sample_run(name);
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size < 20 * 1024 * 1024, "{name}: {size} bytes");
    let run = ldviz::run::read_run(&p).unwrap();
    assert!(!run.truncated);
    assert_eq!(
        run.end.as_ref().map(|e| e.0),
        Some(ldviz::run::EndReason::Completed)
    );
    summarize(&run)
}

fn d(s: &FamilyStats) -> f64 {
    s.last - s.first
}

/// Mean over the 12 non-argmax families of their drop (start − end).
fn mean_drop(f: &BTreeMap<String, FamilyStats>) -> f64 {
    let keys = non_argmax();
    keys.iter().map(|k| -d(&f[*k])).sum::<f64>() / keys.len() as f64
}

fn peak_drop(s: &FamilyStats) -> f64 {
    s.max - s.last
}

#[test]
fn sft_sample() {
    let s = load("sft");
    let f = &s.families;
    for k in ["chosen", "chosen_gptsemantic", "argmax", "irr_train"] {
        assert!(d(&f[k]) > 0.0, "{k} rises: {:?}", f[k]);
    }
    for k in ["random_permute", "random_nonhum"] {
        assert!(d(&f[k]) < 0.0, "{k} falls: {:?}", f[k]);
    }
    let (tr, te) = (d(&f["irr_train"]), d(&f["irr_test"]));
    assert!(te < 0.75 * tr, "irr_test Δ {te} vs irr_train Δ {tr}");
    let r = &f["rejected"];
    let (rise, back) = (r.max - r.first, r.max - r.last);
    assert!(
        d(r) < 0.0 || (rise > 0.0 && back >= 0.25 * rise),
        "rejected is a bell or falls: {r:?}"
    );
    let c = &f["chosen"];
    assert!(
        c.last / c.first >= 0.30,
        "chosen keeps at least 30% of its initial NLL: {c:?}"
    );
    let t = s
        .transfer
        .as_ref()
        .expect("the SFT run records the transfer matrix");
    assert!(
        t.diagonal_delta > 0.0 && t.diagonal_delta >= 4.0 / 3.0 * t.off_diagonal_delta,
        "the diagonal rises at least a third more than the off-diagonal: {t:?}"
    );
}

#[test]
fn dpo_offpolicy_sample() {
    let s = load("dpo_offpolicy");
    let f = &s.families;
    let rejected = d(&f["rejected"]);
    for k in non_argmax().iter().filter(|k| **k != "rejected") {
        assert!(rejected < d(&f[*k]), "rejected falls most ({k})");
    }
    let c = &f["chosen"];
    assert!(
        peak_drop(c) >= 1f64.max(0.03 * c.first.abs()),
        "chosen falls from its peak: {c:?}"
    );
    // reported in the README: y* does not rise here. At the positions where the rejected
    // response sat in a valley the top-1 probability rises (tests/app.rs), but over all of
    // chosen's positions the distribution flattens a little, and y* ends below its start.
    assert!(d(&f["argmax"]) < 0.0, "y* falls: {:?}", f["argmax"]);
    let falling = non_argmax().iter().filter(|k| d(&f[**k]) < 0.0).count();
    assert!(falling >= 10, "{falling} of 12 families fall");
}

#[test]
fn extended_sample() {
    let off = load("dpo_offpolicy");
    let ext = load("extended_then_dpo");
    assert_eq!(ext.phases.len(), 2);
    let sft = &ext.phases[0].families;
    assert!(
        d(&sft["rejected"]) > 0.0,
        "rejected rises in the extended SFT phase"
    );
    let dpo = &ext.phases[1].families;
    let (e, o) = (mean_drop(dpo), mean_drop(&off.families));
    // reported in the README: in the shipped runs the mean drop is about the same as
    // off-policy's (ratio 1.00), not below 85% of it (0.90 and 0.84 with seeds 1 and 2)
    assert!(
        e > 0.85 * o && e < 1.1 * o,
        "mean family drop over DPO: {e} vs off-policy {o}"
    );
    assert!(
        peak_drop(&dpo["chosen"]) < peak_drop(&off.families["chosen"]),
        "chosen drops less from its peak than off-policy"
    );
}

#[test]
fn onpolicy_sample() {
    let off = load("dpo_offpolicy");
    let onp = load("dpo_onpolicy");
    let (on, of) = (&onp.families["chosen"], &off.families["chosen"]);
    assert!(
        on.last > of.last,
        "on-policy: chosen ends higher than off-policy"
    );
    // with rejected responses sampled before every update there is no valley to squeeze:
    // chosen rises over the run, and the dataset's rejected responses barely move
    assert!(on.last > on.first, "{on:?}");
    let r = &onp.families["rejected"];
    assert!(
        d(r).abs() < 0.1 * d(&off.families["rejected"]).abs(),
        "{r:?}"
    );
}
