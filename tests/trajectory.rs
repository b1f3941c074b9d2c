//! 6-step SGD trajectories (no shuffle, batch 4) of sft, dpo and ipo through the real trainer
//! thread, against PyTorch + transformers (tests/fixtures/trajectories.json, made by
//! tools/make_fixtures.py).

use std::path::PathBuf;

use ldviz::data::ProbeCount;
use ldviz::probe::Lengths;
use ldviz::run::Event;
use ldviz::train::{Algo, Duration, OptimConfig, OptimKind, TrainConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config(algo: Algo, lr: f64, beta: f64) -> TrainConfig {
    let optim = OptimConfig::new(OptimKind::Sgd, lr);
    TrainConfig {
        model: fixtures().join("llama").display().to_string(),
        data: fixtures().join("prefs.jsonl").display().to_string(),
        test_data: None,
        format: None,
        test_fraction: 0.0,
        algo,
        phases: TrainConfig::phases_for(
            algo,
            (Duration::Steps(6), optim.clone()),
            (Duration::Steps(6), optim),
        ),
        beta,
        gamma: 0.5,
        label_smoothing: 0.0,
        batch_size: 4,
        seed: 0,
        shuffle: false,
        eval_every: 1000,
        probes: ProbeCount::N(2),
        lengths: Lengths::default(),
        sample_temperature: 1.0,
        save_model: None,
        transfer_prompts: 0,
        transfer_every: 0,
        influence_every: Some(0),
        influence_probes: 8,
        influence_families: ldviz::train::config::influence_families(),
        device: Default::default(),
        precision: Default::default(),
        top_k: 5,
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

fn check(name: &str, algo: Algo) {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("trajectories.json")).unwrap(),
    )
    .unwrap();
    let a = &fx["algorithms"][name];
    let lr = a["lr"].as_f64().unwrap();
    let beta = a["beta"].as_f64().unwrap_or(0.1);
    let h = ldviz::train::spawn(config(algo, lr, beta), None);
    let steps: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    h.join().unwrap();
    let want = a["steps"].as_array().unwrap();
    assert_eq!(steps.len(), want.len());
    let mean = |v: &Value| -> f64 {
        let a = v.as_array().unwrap();
        a.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / a.len() as f64
    };
    for (s, w) in steps.iter().zip(want) {
        let recs: Vec<usize> = w["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(s.batch, recs, "{name} step {}: batch", s.step);
        let pairs = [
            ("loss", w["loss"].as_f64().unwrap()),
            ("grad_norm", w["grad_norm"].as_f64().unwrap()),
            ("logps/chosen", mean(&w["logps_chosen"])),
        ];
        for (k, want) in pairs {
            let got = s.metrics[k];
            // step 1 (identical weights) to 1e-4 relative; later steps accumulate f32 rounding
            // differences of two implementations, so 1e-3 relative.
            let tol = if s.step == 1 { 1e-4 } else { 1e-3 };
            assert!(
                close(got, want, tol),
                "{name} step {} {k}: ours {got} vs PyTorch {want}",
                s.step
            );
        }
        if algo != Algo::Sft {
            let got = s.metrics["logps/rejected"];
            let want = mean(&w["logps_rejected"]);
            assert!(
                close(got, want, 1e-3),
                "{name} step {} logps/rejected: {got} vs {want}",
                s.step
            );
        }
        eprintln!(
            "{name} step {}: loss {:.6} (PyTorch {:.6})",
            s.step,
            s.metrics["loss"],
            w["loss"].as_f64().unwrap()
        );
    }
}

#[test]
fn sft_trajectory_matches_pytorch() {
    check("sft", Algo::Sft);
}

#[test]
fn dpo_trajectory_matches_pytorch() {
    check("dpo", Algo::Dpo);
}

#[test]
fn ipo_trajectory_matches_pytorch() {
    check("ipo", Algo::Ipo);
}
