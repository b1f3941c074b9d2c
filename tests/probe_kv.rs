//! Probe evaluation with the prompt's keys/values shared across its responses
//! (`EvalMode::SharedPrefix`) gives the same log-probs as one forward per pair and as a padded
//! batch: on every fixture architecture against transformers, and on the default demo's whole
//! evaluation (every family, traces, y*, diagnostics and the transfer matrix).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use common::{cpu_model, encode_pair, fixture_model, fixtures, prefs};
use ldviz::model::Model;
use ldviz::probe::{Batch, EvalMode, Evaluation, Seq, logprob};
use ldviz::train::{Session, TrainOptions};
use serde_json::Value;

/// f32 agreement for a summed log-prob of magnitude |x| (different matmul shapes round
/// differently: ~1e-7 relative per value).
fn tol(x: f64) -> f64 {
    1e-5 + 1e-6 * x.abs()
}

fn summed(model: &Model, seqs: &[&Seq], mode: EvalMode) -> Vec<f64> {
    let batch = Batch::responses(seqs, &model.device).unwrap();
    let z = logprob::response_logits(model, seqs, mode).unwrap();
    let (_, s) = logprob::token_logps(&z, &batch).unwrap();
    s.to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Chosen and rejected of each fixture record share the prompt: scored together with the
/// shared prefix, they match transformers (1e-4) and the per-pair forward (1e-5 + 1e-6·|logp|). GQA (llama,
/// qwen2), partial rotary (gpt_neox), learned positions (gpt2) and tied heads are covered.
#[test]
fn shared_prefix_matches_transformers_on_every_architecture() {
    let ds = prefs();
    for name in ["llama", "llama_tied", "qwen2", "gpt_neox", "gpt2"] {
        let dir = fixtures().join(name);
        let model = cpu_model(&dir);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let recs = expected["records"].as_array().unwrap();
        let mut worst = (0f64, 0f64);
        for (r, e) in ds.records.iter().zip(recs) {
            let (c, j) = encode_pair(&model, r);
            let shared = summed(&model, &[&c, &j], EvalMode::SharedPrefix);
            let naive = summed(&model, &[&c, &j], EvalMode::PerPair);
            let padded = summed(&model, &[&c, &j], EvalMode::Padded);
            for (i, k) in ["chosen", "rejected"].iter().enumerate() {
                let want = e[*k].as_f64().unwrap();
                let d_ref = (shared[i] - want).abs();
                let d_naive = (shared[i] - naive[i]).abs();
                worst = (worst.0.max(d_ref), worst.1.max(d_naive));
                assert!(
                    d_ref < 1e-4,
                    "{name} record {} {k}: shared {} vs transformers {want}",
                    r.index,
                    shared[i]
                );
                assert!(
                    d_naive < tol(want),
                    "{name} record {} {k}: shared {} vs per pair {}",
                    r.index,
                    shared[i],
                    naive[i]
                );
                assert!((padded[i] - naive[i]).abs() < tol(want));
            }
        }
        eprintln!(
            "{name}: shared prefix vs transformers {:.2e}, vs per pair {:.2e}",
            worst.0, worst.1
        );
    }
}

/// Rows with different prompts in one call are grouped by prompt and come back in order.
#[test]
fn mixed_prompts_are_grouped_and_kept_in_order() {
    let model = fixture_model("llama");
    let mut seqs = Vec::new();
    for r in prefs().records.iter().take(3) {
        let (c, j) = encode_pair(&model, r);
        seqs.push(c);
        seqs.push(j);
    }
    // interleave prompts: 0c 1c 2c 0r 1r 2r
    let order = [0, 2, 4, 1, 3, 5];
    let refs: Vec<&Seq> = order.iter().map(|&i| &seqs[i]).collect();
    let shared = summed(&model, &refs, EvalMode::SharedPrefix);
    let naive = summed(&model, &refs, EvalMode::PerPair);
    for (a, b) in shared.iter().zip(&naive) {
        assert!((a - b).abs() < tol(*b), "{shared:?} vs {naive:?}");
    }
    // distinct values: a mix-up of rows would not pass
    assert!((naive[0] - naive[3]).abs() > 1e-3);
}

fn max_diff(a: &Evaluation, b: &Evaluation) -> f64 {
    let mut m = 0f64;
    for (x, y) in a.logps.iter().flatten().zip(b.logps.iter().flatten()) {
        m = m.max((x - y).abs());
    }
    for (x, y) in a.transfer.iter().flatten().zip(b.transfer.iter().flatten()) {
        m = m.max((x - y).abs());
    }
    m
}

/// The demo's full evaluation: all 13 families of every probe, per-token traces, y*,
/// diagnostics and the transfer matrix agree across the three ways of computing them.
#[test]
fn demo_evaluation_is_the_same_in_every_mode() {
    let cfg = TrainOptions::default().to_config().unwrap();
    let mut s = Session::prepare(&cfg).unwrap();
    let shared = s.runner.evaluate(&s.model, true).unwrap();
    s.runner.mode = EvalMode::PerPair;
    let naive = s.runner.evaluate(&s.model, true).unwrap();
    s.runner.mode = EvalMode::Padded;
    let padded = s.runner.evaluate(&s.model, true).unwrap();
    assert_eq!(shared.logps.len(), 13);
    assert!(!shared.transfer.is_empty());
    let n: usize = shared.logps.iter().map(Vec::len).sum();
    assert!(n >= 13 * 8, "{n} scores");
    let d = max_diff(&shared, &naive);
    eprintln!("demo evaluation: shared vs per pair max |Δ| = {d:.2e} over {n} scores");
    assert!(d < 2e-4, "shared vs per pair: {d}");
    assert!(max_diff(&padded, &naive) < 2e-4);
    for (a, b) in shared.traces.iter().zip(&naive.traces) {
        assert_eq!(a.argmax.ids, b.argmax.ids, "y* differs");
        assert_eq!(a.chosen.logp.len(), b.chosen.logp.len());
        for (x, y) in a.chosen.logp.iter().zip(&b.chosen.logp) {
            assert!((x - y).abs() < 1e-4);
        }
        for (x, y) in a.rejected.entropy.iter().zip(&b.rejected.entropy) {
            assert!((x - y).abs() < 1e-4);
        }
    }
    for (x, y) in shared
        .diag
        .iter()
        .flatten()
        .zip(naive.diag.iter().flatten())
    {
        for k in 0..3 {
            assert!((x[k] - y[k]).abs() < 1e-4, "diag {x:?} vs {y:?}");
        }
    }
}
