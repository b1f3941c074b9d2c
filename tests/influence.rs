//! First-order influence on the embedded default model: with SGD and a small learning rate the
//! prediction ⟨∇f_o, Δθ⟩ tracks the actual change (Pearson r ≥ 0.95), the per-example split sums
//! to the prediction (exactly for SGD, and for AdamW's first step, where all of the update is
//! this step's gradient), and `inspect --json` reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::path::Path;

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
    common::ldviz_ok(&args);
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
    let o = common::ldviz(&["inspect", out.to_str().unwrap(), "--json"]);
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
    let r = ldviz::stats::pearson(&run.influence[0].predicted, &run.influence[0].actual);
    assert!(r > 0.95, "Adam lr 1e-5 step 1: r = {r}");
}

/// DPO on the tiny llama fixture, one SGD update of two examples (records 0 and 1), influence
/// observed on probes 0 and 1's chosen and rejected responses, with f_u = `target`.
fn dpo_influence(target: ldviz::train::InfluenceTarget) -> ldviz::run::event::InfluenceRecord {
    use ldviz::data::Family;
    use ldviz::train::{Algo, OptimKind, TrainOptions};
    let cfg = TrainOptions {
        algo: Algo::Dpo,
        optimizer: OptimKind::Sgd,
        lr: Some(0.1),
        steps: Some(1),
        batch_size: 2,
        shuffle: false,
        eval_every: 1000,
        probes: "2".into(),
        top_k: 2,
        influence_every: Some(1),
        influence_probes: 2,
        influence_families: vec![Family::Chosen, Family::Rejected],
        influence_target: target,
        ..common::fixture_options("llama", "prefs.jsonl")
    }
    .to_config()
    .unwrap();
    let h = ldviz::train::spawn(cfg, None);
    let mut recs: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            ldviz::run::Event::Influence(r) => Some(*r),
            _ => None,
        })
        .collect();
    h.join().unwrap();
    assert_eq!(recs.len(), 1);
    recs.remove(0)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    use ldviz::train::influence::{dot, norm};
    dot(a, b) / (norm(a) * norm(b))
}

/// Under DPO, f_u = loss gives the cosine with −∇L_u = β(1 − σ(βΔ))(∇log π(y⁺) − ∇log π(y⁻)),
/// assembled here from flat gradients of the two log-probs at the initial weights (sign
/// included: the rejected term enters with a minus); chosen and rejected give the cosines with
/// each gradient alone, and the three differ.
#[test]
fn dpo_influence_cosine_targets_match_gradients_assembled_by_hand() {
    use ldviz::probe::{Lengths, Seq};
    use ldviz::train::InfluenceTarget;
    use ldviz::train::influence::{grad_of, observed_logp};
    let model = common::fixture_model("llama");
    let text = std::fs::read_to_string(common::fixtures().join("prefs.jsonl")).unwrap();
    // per record 0 and 1: ∇log π(y⁺), ∇log π(y⁻) at θ₀, and Δ = policy minus reference
    // log-ratio (the reference is θ₀ scored without a graph, so Δ is ~0 at the first update)
    let grads: Vec<(Vec<f64>, Vec<f64>, f64)> = text
        .lines()
        .take(2)
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let seq = |k: &str| {
                Seq::encode(
                    &model.tok,
                    r["prompt"].as_str().unwrap(),
                    r[k].as_str().unwrap(),
                    Lengths::default(),
                )
                .unwrap()
            };
            let (c, j) = (seq("chosen"), seq("rejected"));
            let fc = observed_logp(&model, &c, false, true).unwrap();
            let fj = observed_logp(&model, &j, false, true).unwrap();
            let value = |s: &Seq, graph: bool| {
                let t = observed_logp(&model, s, false, graph).unwrap();
                f64::from(t.to_scalar::<f32>().unwrap())
            };
            let delta = (value(&c, true) - value(&c, false)) - (value(&j, true) - value(&j, false));
            (
                grad_of(&model, &fc).unwrap(),
                grad_of(&model, &fj).unwrap(),
                delta,
            )
        })
        .collect();
    // the update's direction for u, −∇L_u = β(1 − σ(βΔ))(∇log π(y⁺) − ∇log π(y⁻)); the
    // positive factor does not change a cosine but is assembled in full
    let beta = 0.1f64;
    let descent: Vec<Vec<f64>> = grads
        .iter()
        .map(|(gc, gj, delta)| {
            assert!(delta.abs() < 1e-3, "Δ at the first update: {delta}");
            let coef = beta * (1.0 - 1.0 / (1.0 + (-beta * delta).exp()));
            gc.iter().zip(gj).map(|(a, b)| coef * (a - b)).collect()
        })
        .collect();
    // observed rows in order: probe 0 chosen, probe 0 rejected, probe 1 chosen, probe 1 rejected
    let observed: Vec<&Vec<f64>> = grads.iter().flat_map(|(gc, gj, _)| [gc, gj]).collect();
    let by_target = |t: InfluenceTarget| -> Vec<Vec<f64>> {
        observed
            .iter()
            .map(|o| {
                (0..2)
                    .map(|u| match t {
                        InfluenceTarget::Loss => cosine(o, &descent[u]),
                        InfluenceTarget::Chosen => cosine(o, &grads[u].0),
                        InfluenceTarget::Rejected => cosine(o, &grads[u].1),
                    })
                    .collect()
            })
            .collect()
    };
    let mut got = Vec::new();
    for t in InfluenceTarget::ALL {
        let rec = dpo_influence(t);
        assert_eq!(rec.target, t);
        assert_eq!(rec.batch, vec![0, 1]);
        assert_eq!(rec.observed.len(), 4);
        let want = by_target(t);
        for (o, (row, wrow)) in rec.cosine.iter().zip(&want).enumerate() {
            for (u, (c, w)) in row.iter().zip(wrow).enumerate() {
                assert!(
                    (c - w).abs() < 1e-4,
                    "f_u = {}: cosine[{o}][{u}] = {c}, by hand {w}",
                    t.key()
                );
            }
        }
        eprintln!("f_u = {}: {:?}", t.key(), rec.cosine);
        got.push(rec.cosine);
    }
    // own chosen vs own rejected: the loss direction raises the chosen response, lowers the
    // rejected one (a sign error in either term would flip these)
    assert!(
        got[0][0][0] > 0.1,
        "loss: probe 0 chosen vs example 0: {}",
        got[0][0][0]
    );
    assert!(
        got[0][1][0] < -0.1,
        "loss: probe 0 rejected vs example 0: {}",
        got[0][1][0]
    );
    let max_diff = |a: &Vec<Vec<f64>>, b: &Vec<Vec<f64>>| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
    };
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let d = max_diff(&got[i], &got[j]);
        assert!(
            d > 0.05,
            "targets {i} and {j} give nearly the same cosines ({d})"
        );
    }
}
