//! 6-step SGD trajectories (no shuffle, batch 4) of sft, dpo, ipo and cdpo through the real
//! trainer thread, against PyTorch + transformers (tests/fixtures/trajectories.json), and the
//! dpo / cdpo / robust losses and their gradients on given log-probs against PyTorch autograd of
//! TRL's formulas (tests/fixtures/dpo_losses.json); both made by tools/make_fixtures.py.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use common::fixtures;
use ldviz::run::Event;
use ldviz::train::{Algo, TrainConfig, TrainOptions};
use serde_json::Value;

fn config(algo: Algo, lr: f64, beta: f64, label_smoothing: f64) -> TrainConfig {
    TrainOptions {
        beta,
        label_smoothing,
        ..common::trajectory_options(&fixtures(), algo, lr)
    }
    .to_config()
    .unwrap()
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
    let eps = a["label_smoothing"].as_f64().unwrap_or(0.0);
    let h = ldviz::train::spawn(config(algo, lr, beta, eps), None);
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

#[test]
fn cdpo_trajectory_matches_pytorch() {
    check("cdpo", Algo::Cdpo);
}

/// dpo, cdpo and robust on ten pairs with β·Δ from −30 to +40: the batch-mean loss, the
/// per-pair losses (batch of one) and the gradient w.r.t. the policy's chosen and rejected
/// summed log-probs, in f64, against PyTorch autograd of TRL's formulas.
#[test]
fn preference_losses_and_gradients_match_pytorch() {
    use candle_core::{DType, Device, Tensor, Var};
    use ldviz::train::loss::{LossInputs, LossParams, compute};
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("dpo_losses.json")).unwrap())
            .unwrap();
    let vec = |k: &str| -> Vec<f64> {
        fx[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let p = LossParams {
        beta: fx["beta"].as_f64().unwrap(),
        gamma: 0.0,
        label_smoothing: fx["label_smoothing"].as_f64().unwrap(),
    };
    let (pc, pr, rc, rr) = (
        vec("policy_chosen"),
        vec("policy_rejected"),
        vec("ref_chosen"),
        vec("ref_rejected"),
    );
    let n = pc.len();
    let d = Device::Cpu;
    // relative 1e-6, with an absolute floor for values that underflow to ~1e-18
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs() + 1e-12;
    let run = |algo: Algo, idx: &[usize]| -> (f64, Vec<f64>, Vec<f64>) {
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let vc = Var::new(pick(&pc), &d).unwrap();
        let vr = Var::new(pick(&pr), &d).unwrap();
        let trc = Tensor::new(pick(&rc), &d).unwrap();
        let trr = Tensor::new(pick(&rr), &d).unwrap();
        let len = Tensor::ones(idx.len(), DType::F64, &d).unwrap();
        let x = LossInputs {
            policy_chosen: vc.as_tensor(),
            policy_rejected: Some(vr.as_tensor()),
            ref_chosen: Some(&trc),
            ref_rejected: Some(&trr),
            len_chosen: &len,
            len_rejected: Some(&len),
        };
        let (loss, m) = compute(algo, p, &x).unwrap();
        assert_eq!(loss.dtype(), DType::F64);
        let g = loss.backward().unwrap();
        let grad = |v: &Var| -> Vec<f64> { g.get(v.as_tensor()).unwrap().to_vec1().unwrap() };
        (m["loss"], grad(&vc), grad(&vr))
    };
    let mut sign_changes = 0;
    for (name, algo) in [
        ("dpo", Algo::Dpo),
        ("cdpo", Algo::Cdpo),
        ("robust", Algo::Robust),
    ] {
        let want = &fx["algorithms"][name];
        let all: Vec<usize> = (0..n).collect();
        let (loss, gc, gr) = run(algo, &all);
        let wl = want["loss"].as_f64().unwrap();
        assert!(
            close(loss, wl),
            "{name} batch loss: ours {loss} vs PyTorch {wl}"
        );
        for (k, ours) in [("grad_policy_chosen", &gc), ("grad_policy_rejected", &gr)] {
            for (i, (a, b)) in ours.iter().zip(want[k].as_array().unwrap()).enumerate() {
                let b = b.as_f64().unwrap();
                assert!(close(*a, b), "{name} {k}[{i}]: ours {a} vs PyTorch {b}");
            }
        }
        for i in 0..n {
            let (li, _, _) = run(algo, &[i]);
            let wi = want["losses"][i].as_f64().unwrap();
            assert!(
                close(li, wi),
                "{name} pair {i} loss: ours {li} vs PyTorch {wi}"
            );
        }
        // the descent direction of Δ: chosen up while dL/dpc < 0
        let signs: Vec<bool> = gc.iter().map(|g| *g < 0.0).collect();
        if signs.windows(2).any(|w| w[0] != w[1]) {
            sign_changes += 1;
            assert_eq!(name, "cdpo", "only cDPO turns its gradient around");
        }
        eprintln!("{name}: loss {loss:.12} (PyTorch {wl:.12}), d/dpc {gc:?}");
    }
    assert_eq!(
        sign_changes, 1,
        "cDPO's gradient changes sign across the margins"
    );
}
