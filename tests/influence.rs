//! First-order influence on the embedded default model: with SGD and a small learning rate the
//! prediction ⟨∇f_o, Δθ⟩ tracks the actual change (Pearson r ≥ 0.95), the per-example split sums
//! to the prediction (exactly for SGD, and for AdamW's first step, where all of the update is
//! this step's gradient), and `inspect --json` reports it.

use std::path::Path;
use std::process::Command;

use ldviz::run::read_run;

fn train(out: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--algo",
        "dpo",
        "--probes",
        "8",
        "--eval-every",
        "1000",
        "--quiet",
        "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_ldviz"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn split_error(run: &ldviz::run::Run) -> f64 {
    let mut worst = 0f64;
    for r in &run.influence {
        let scale = r.predicted.iter().fold(0f64, |a, p| a.max(p.abs()));
        for (p, c) in r.predicted.iter().zip(&r.contributions) {
            worst = worst.max((p - c.iter().sum::<f64>()).abs() / scale);
        }
    }
    worst
}

#[test]
fn sgd_prediction_tracks_the_actual_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sgd.jsonl");
    train(
        &out,
        &[
            "--optimizer",
            "sgd",
            "--lr",
            "1e-3",
            "--steps",
            "8",
            "--influence-every",
            "2",
        ],
    );
    let run = read_run(&out).unwrap();
    assert_eq!(run.influence.len(), 4);
    for r in &run.influence {
        // 8 probes × 5 families (chosen, rejected, argmax, irr_train, chosen_gptsemantic).
        assert_eq!(r.observed.len(), 40);
        assert_eq!(r.batch.len(), 4);
        assert!(r.contributions.iter().all(|c| c.len() == 4));
        assert!(r.cosine.iter().flatten().all(|c| (-1.0..=1.0).contains(c)));
        assert_eq!(r.lr, 1e-3);
    }
    assert!(
        split_error(&run) < 1e-3,
        "split error {}",
        split_error(&run)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_ldviz"))
        .args(["inspect", out.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = v["influence"]["pearson_r"].as_f64().unwrap();
    println!(
        "SGD lr 1e-3: Pearson r = {r}, median relative error {}",
        v["influence"]["median_rel_error"]
    );
    assert!(r >= 0.95, "Pearson r {r}");
    assert_eq!(v["influence"]["records"], 4);
    assert!(v["influence"]["median_rel_error"].as_f64().unwrap() < 0.1);
}

#[test]
fn adamw_split_is_exact_on_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adam.jsonl");
    train(
        &out,
        &[
            "--optimizer",
            "adamw",
            "--lr",
            "1e-5",
            "--steps",
            "1",
            "--influence-every",
            "1",
        ],
    );
    let run = read_run(&out).unwrap();
    assert_eq!(run.influence.len(), 1);
    assert!(
        split_error(&run) < 1e-3,
        "split error {}",
        split_error(&run)
    );
    let r = ldviz::train::influence::pearson(&run.influence[0].predicted, &run.influence[0].actual);
    assert!(r > 0.95, "Adam lr 1e-5 step 1: r = {r}");
}
