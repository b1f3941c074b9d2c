//! Every weight gets a gradient, and gradients agree with f64 finite differences, for all four
//! architectures (guards against a fused op without backward sneaking into the model code).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use candle_core::{DType, Device, Tensor};
use common::{encode_pair, fixture_model, prefs};
use ldviz::model::Model;
use ldviz::probe::{Batch, Seq, logprob};
use ldviz::train::loss::log_sigmoid;

fn seqs(model: &Model, n: usize) -> Vec<Seq> {
    prefs()
        .records
        .iter()
        .take(n)
        .flat_map(|r| {
            let (c, j) = encode_pair(model, r);
            [c, j]
        })
        .collect()
}

/// A DPO-shaped loss: −log σ(0.5·(Σ chosen − Σ rejected)) averaged over pairs (fixed
/// reference = 0), so both a positive and a negative gradient flow.
fn loss(model: &Model, s: &[Seq]) -> Tensor {
    let refs: Vec<&Seq> = s.iter().collect();
    let batch = Batch::new(&refs, &model.device).unwrap();
    let logits = model.forward(&batch.ids).unwrap();
    let (_, summed) = logprob::token_logps(&logits, &batch).unwrap();
    let n = s.len() / 2;
    let idx_c = Tensor::from_vec(
        (0..n as u32).map(|i| 2 * i).collect::<Vec<_>>(),
        n,
        &model.device,
    )
    .unwrap();
    let idx_r = Tensor::from_vec(
        (0..n as u32).map(|i| 2 * i + 1).collect::<Vec<_>>(),
        n,
        &model.device,
    )
    .unwrap();
    let c = summed.index_select(&idx_c, 0).unwrap();
    let r = summed.index_select(&idx_r, 0).unwrap();
    let d = ((c - r).unwrap() * 0.05).unwrap();
    log_sigmoid(&d).unwrap().neg().unwrap().mean_all().unwrap()
}

fn every_weight_gets_a_gradient(name: &str) {
    let model = fixture_model(name);
    let s = seqs(&model, 3);
    let grads = loss(&model, &s).backward().unwrap();
    for (n, v) in model.params.names().iter().zip(model.params.vars()) {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: zero gradient for {n}"
        );
    }
}

fn finite_differences(name: &str) {
    let model = fixture_model(name).to_dtype(DType::F64).unwrap();
    let s = seqs(&model, 2);
    let grads = loss(&model, &s).backward().unwrap();
    let h = 1e-5;
    let mut checked = 0;
    let mut worst = 0f64;
    for (pi, (n, v)) in model
        .params
        .names()
        .iter()
        .zip(model.params.vars())
        .enumerate()
    {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig = v.as_tensor().copy().unwrap();
        let base: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        // the element with the largest gradient and one fixed pseudo-random element
        let big = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        for &i in &[big, (pi * 7919 + 13) % base.len()] {
            let eval = |delta: f64| -> f64 {
                let mut x = base.clone();
                x[i] += delta;
                v.set(&Tensor::from_vec(x, orig.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&model, &s).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            v.set(&orig).unwrap();
            let err = (fd - g[i]).abs();
            worst = worst.max(err / (1e-6 + g[i].abs()));
            assert!(
                err <= 1e-6 + 1e-4 * g[i].abs(),
                "{name}: {n}[{i}]: finite difference {fd} vs backward {}",
                g[i]
            );
            checked += 1;
        }
    }
    eprintln!("{name}: {checked} gradient entries checked, worst relative error {worst:.2e}");
}

#[test]
fn llama_gradients() {
    every_weight_gets_a_gradient("llama");
    every_weight_gets_a_gradient("llama_tied");
    finite_differences("llama");
}

#[test]
fn qwen2_gradients() {
    every_weight_gets_a_gradient("qwen2");
    finite_differences("qwen2");
}

#[test]
fn gpt_neox_gradients() {
    every_weight_gets_a_gradient("gpt_neox");
    finite_differences("gpt_neox");
}

#[test]
fn gpt2_gradients() {
    every_weight_gets_a_gradient("gpt2");
    finite_differences("gpt2");
}
