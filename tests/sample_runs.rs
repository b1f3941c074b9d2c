//! The committed sample runs load, stay under 20 MB, and show what sample_runs/README.md says
//! they show (mean over probes, Δ = last − first). Findings that did not appear are asserted the
//! way the README reports them, so a re-recording that changes them fails here.

use std::path::PathBuf;

use ldviz::run::summary::{FamilyStats, Summary, summarize};

fn load(name: &str) -> Summary {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sample_runs")
        .join(format!("{name}.jsonl"));
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

#[test]
fn sft_sample() {
    let s = load("sft");
    let f = &s.families;
    assert!(d(&f["chosen"]) > 0.0 && d(&f["chosen_gptsemantic"]) > 0.0 && d(&f["argmax"]) > 0.0);
    assert!(
        f["irr_train"].max > f["irr_train"].first,
        "irr_train rises at some point"
    );
    // reported in the README: random_nonhum rises here (a bell that has not come back down)
    assert!(d(&f["random_nonhum"]) > 0.0);
}

#[test]
fn dpo_offpolicy_sample() {
    let s = load("dpo_offpolicy");
    let f = &s.families;
    assert!(d(&f["rejected"]) < 0.0 && d(&f["rejected"]) < d(&f["chosen"]));
    assert!(
        f["chosen"].last < f["chosen"].max,
        "chosen ends below its peak"
    );
    assert!(d(&f["argmax"]) > 0.0, "y* rises");
    let falling = f.values().filter(|s| s.last < s.first).count();
    assert!(
        2 * falling >= f.len(),
        "{falling} of {} families fall",
        f.len()
    );
}

#[test]
fn extended_and_onpolicy_samples() {
    let off = load("dpo_offpolicy");
    let ext = load("extended_then_dpo");
    assert_eq!(ext.phases.len(), 2);
    let sft = &ext.phases[0].families;
    assert!(
        d(&sft["rejected"]) > 0.0,
        "rejected rises in the extended SFT phase"
    );
    let dpo = &ext.phases[1].families;
    // reported in the README: chosen drops MORE here than off-policy (the paper's benefit of
    // extended SFT does not appear at this scale)
    assert!(d(&dpo["chosen"]) < d(&off.families["chosen"]));
    let onp = load("dpo_onpolicy");
    assert!(
        d(&onp.families["chosen"]) > d(&off.families["chosen"]),
        "on-policy: chosen drops less"
    );
}
