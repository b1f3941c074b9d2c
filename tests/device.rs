//! The engine off the CPU f32 path.
//!
//! Always (CPU): low-precision compute on f32 master weights. candle's CPU backend has no bf16
//! matmul, so f16 stands in for bf16 here: the same casts in the graph, f32 norms and softmax,
//! f32 log-probs, and f32 gradients arriving at the f32 masters.
//!
//! With `--features cuda` (tools/gpu_check.sh runs these on a GPU machine): fixture log-probs
//! on the GPU equal the CPU's within 1e-3, a 6-step SGD DPO trajectory on the GPU follows the
//! CPU's within 1e-3 (relative), and bf16 stays within the tolerance documented in README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use candle_core::DType;
use common::{cpu_model, dataset, encode_pair, portable_fixtures};
use ldviz::model::Model;
use ldviz::probe::{Batch, Seq, logprob};

fn pairs(model: &Model) -> Vec<(Seq, Seq)> {
    let ds = dataset(&portable_fixtures().join("prefs.jsonl"));
    ds.records.iter().map(|r| encode_pair(model, r)).collect()
}

fn scores(model: &Model, pairs: &[(Seq, Seq)]) -> Vec<f64> {
    let seqs: Vec<Seq> = pairs
        .iter()
        .flat_map(|(c, j)| [c.clone(), j.clone()])
        .collect();
    logprob::score(model, &seqs, 8).unwrap()
}

/// f16 compute (bf16's stand-in on the CPU) on f32 masters: log-probs close to f32, the loss
/// gradient reaches every master weight in f32 and points the same way as the f32 gradient.
#[test]
fn low_precision_compute_keeps_f32_masters_and_gradients() {
    for name in ["llama", "gpt_neox", "gpt2"] {
        let model = cpu_model(&portable_fixtures().join(name));
        let pairs = pairs(&model);
        let want = scores(&model, &pairs);
        let mut low = cpu_model(&portable_fixtures().join(name));
        low.compute = DType::F16;
        let got = scores(&low, &pairs);
        let mut worst = 0f64;
        for (g, w) in got.iter().zip(&want) {
            let rel = (g - w).abs() / w.abs().max(1.0);
            worst = worst.max(rel);
        }
        eprintln!("{name}: f16 compute vs f32, worst relative |Δ log-prob| = {worst:.2e}");
        assert!(
            worst < 2e-2,
            "{name}: f16 log-probs off by {worst:.3e} relative"
        );
        // a real difference: the f16 path did run in f16
        assert!(got.iter().zip(&want).any(|(g, w)| g != w));

        // gradients of a summed log-prob loss, f32 vs f16 compute
        let (c, j) = &pairs[0];
        let grads_of = |m: &Model| {
            let batch = Batch::new(&[c, j], &m.device).unwrap();
            let logits = m.forward(&batch.ids).unwrap();
            let (_, s) = logprob::token_logps(&logits, &batch).unwrap();
            assert_eq!(s.dtype(), DType::F32, "log-probs are reduced in f32");
            let loss = s.sum_all().unwrap().neg().unwrap();
            let g = loss.backward().unwrap();
            m.params
                .vars()
                .iter()
                .map(|v| {
                    let t = g.get(v.as_tensor()).expect("every weight gets a gradient");
                    assert_eq!(t.dtype(), DType::F32, "gradients reach the masters in f32");
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect::<Vec<_>>()
        };
        let (g32, g16) = (grads_of(&model), grads_of(&low));
        let (mut dot, mut n1, mut n2) = (0f64, 0f64, 0f64);
        for (a, b) in g32.iter().flatten().zip(g16.iter().flatten()) {
            dot += f64::from(*a) * f64::from(*b);
            n1 += f64::from(*a).powi(2);
            n2 += f64::from(*b).powi(2);
        }
        let cos = dot / (n1.sqrt() * n2.sqrt());
        eprintln!("{name}: gradient cosine f16 vs f32 = {cos:.6}");
        assert!(cos > 0.999, "{name}: gradient cosine {cos}");
        assert!(
            low.params.vars().iter().all(|v| v.dtype() == DType::F32),
            "master weights stay f32"
        );
    }
}

/// The on-policy reference (the frozen copy of the starting weights that scores the sampled
/// rejected responses) computes in the policy's precision: with f16 compute (bf16's stand-in on
/// the CPU) on f32 masters it scores exactly as the policy did, not as an f32 copy would, so
/// the DPO margins do not mix precisions; later updates of the policy leave it unchanged.
#[test]
fn the_frozen_reference_scores_in_the_policys_precision() {
    let mut low = cpu_model(&portable_fixtures().join("llama"));
    low.compute = DType::F16;
    let pairs = pairs(&low);
    let policy = scores(&low, &pairs);
    let f32_scores = scores(&low.to_dtype(DType::F32).unwrap(), &pairs);
    assert!(policy.iter().zip(&f32_scores).any(|(a, b)| a != b));
    let reference = low.frozen_copy().unwrap();
    assert_eq!(reference.compute, DType::F16);
    assert!(
        reference
            .params
            .vars()
            .iter()
            .all(|v| v.dtype() == DType::F32)
    );
    assert_eq!(scores(&reference, &pairs), policy);
    // an update of the policy does not reach the reference
    for v in low.params.vars() {
        v.set(&v.as_tensor().affine(1.0, 0.01).unwrap()).unwrap();
    }
    assert_ne!(scores(&low, &pairs), policy);
    assert_eq!(scores(&reference, &pairs), policy);
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use candle_core::Device;
    use ldviz::device::{DeviceSpec, Precision};
    use ldviz::run::Event;
    use ldviz::train::{Algo, TrainConfig, TrainOptions};

    fn gpu() -> Device {
        DeviceSpec::Cuda(0)
            .open()
            .expect("these tests need a CUDA GPU (built with --features cuda)")
    }

    #[test]
    fn fixture_logprobs_on_the_gpu_equal_the_cpu() {
        for name in ["llama", "llama_tied", "qwen2", "gpt_neox", "gpt2"] {
            let cpu = cpu_model(&portable_fixtures().join(name));
            let gpu = Model::load(&portable_fixtures().join(name), &gpu()).unwrap();
            let pairs = pairs(&cpu);
            let (a, b) = (scores(&cpu, &pairs), scores(&gpu, &pairs));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f64, f64::max);
            eprintln!("{name}: GPU f32 vs CPU max |Δ log-prob| = {worst:.2e}");
            assert!(worst < 1e-3, "{name}: {worst}");
        }
    }

    #[test]
    fn bf16_logprobs_stay_within_the_documented_tolerance() {
        for name in ["llama", "gpt_neox"] {
            let cpu = cpu_model(&portable_fixtures().join(name));
            let mut gpu = Model::load(&portable_fixtures().join(name), &gpu()).unwrap();
            gpu.set_precision(Precision::Bf16);
            let pairs = pairs(&cpu);
            let (a, b) = (scores(&cpu, &pairs), scores(&gpu, &pairs));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                .fold(0f64, f64::max);
            eprintln!("{name}: GPU bf16 vs CPU f32 worst relative |Δ log-prob| = {worst:.2e}");
            assert!(worst < 2e-2, "{name}: {worst}");
        }
    }

    fn config(device: DeviceSpec, precision: Precision) -> TrainConfig {
        TrainOptions {
            device,
            precision,
            ..common::trajectory_options(&portable_fixtures(), Algo::Dpo, 0.05)
        }
        .to_config()
        .unwrap()
    }

    fn steps(cfg: TrainConfig) -> Vec<std::collections::BTreeMap<String, f64>> {
        let h = ldviz::train::spawn(cfg, None);
        let out: Vec<_> = h
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Step(s) => Some(s.metrics.clone()),
                _ => None,
            })
            .collect();
        h.join().unwrap();
        out
    }

    #[test]
    fn dpo_trajectory_on_the_gpu_follows_the_cpu() {
        let cpu = steps(config(DeviceSpec::Cpu, Precision::F32));
        let gpu = steps(config(DeviceSpec::Cuda(0), Precision::F32));
        let bf = steps(config(DeviceSpec::Cuda(0), Precision::Bf16));
        assert_eq!(cpu.len(), 6);
        assert_eq!(gpu.len(), 6);
        let mut worst_bf = 0f64;
        for (i, ((c, g), b)) in cpu.iter().zip(&gpu).zip(&bf).enumerate() {
            for k in ["loss", "logps/chosen", "logps/rejected", "grad_norm"] {
                let rel = (c[k] - g[k]).abs() / c[k].abs().max(1.0);
                eprintln!(
                    "step {}: {k} cpu {} gpu {} (rel {rel:.1e})",
                    i + 1,
                    c[k],
                    g[k]
                );
                assert!(rel < 1e-3, "step {} {k}: cpu {} gpu {}", i + 1, c[k], g[k]);
                worst_bf = worst_bf.max((c[k] - b[k]).abs() / c[k].abs().max(1.0));
            }
        }
        eprintln!("bf16 trajectory: worst relative difference to CPU f32 = {worst_bf:.2e}");
        assert!(worst_bf < 5e-2, "bf16 trajectory off by {worst_bf}");
    }
}
