//! Ad-hoc timings of model kernels (numbers only, not a test).
// A benchmark scratchpad: a failed unwrap is a failed run, as in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{D, DType, Device, Tensor, Var};
use std::time::Instant;

fn t<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 5;
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:40} {:8.2} ms",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn main() {
    if std::env::var("ATTN").is_ok() {
        ldviz::perf::init();
        attn_parts();
        return;
    }
    ldviz::perf::init();
    let d = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 128, 128), &d).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (384, 128), &d).unwrap()).unwrap();
    let nw = Var::from_tensor(&Tensor::ones(128, DType::F32, &d).unwrap()).unwrap();
    t("linear fwd 2048x128 @ 128x384", || {
        let _ = ldviz::model::layers::linear(x.as_tensor(), w.as_tensor(), None).unwrap();
    });
    t("linear fwd+bwd", || {
        let y = ldviz::model::layers::linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    t("rms_norm fwd", || {
        let _ = ldviz::model::layers::rms_norm(x.as_tensor(), nw.as_tensor(), 1e-5).unwrap();
    });
    t("rms_norm fwd+bwd", || {
        let y = ldviz::model::layers::rms_norm(x.as_tensor(), nw.as_tensor(), 1e-5).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 4, 128, 32), &d).unwrap()).unwrap();
    let mask = ldviz::model::layers::causal_mask(128, DType::F32, &d).unwrap();
    t("attention fwd", || {
        let _ = ldviz::model::layers::attention(q.as_tensor(), q.as_tensor(), q.as_tensor(), &mask)
            .unwrap();
    });
    t("attention fwd+bwd", || {
        let y = ldviz::model::layers::attention(q.as_tensor(), q.as_tensor(), q.as_tensor(), &mask)
            .unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    let rope = ldviz::model::layers::Rope::new(
        &ldviz::model::layers::inv_freq(32, 1e4),
        128,
        DType::F32,
        &d,
    )
    .unwrap();
    t("rope fwd+bwd", || {
        let y = rope.apply(q.as_tensor()).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    let sc = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 4, 128, 128), &d).unwrap()).unwrap();
    t("softmax fwd+bwd [16,4,128,128]", || {
        let y = candle_nn::ops::softmax(sc.as_tensor(), D::Minus1).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    t("matmul batched q k^T fwd", || {
        let _ = q.as_tensor().matmul(&q.as_tensor().t().unwrap()).unwrap();
    });
    let z = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2048, 2048), &d).unwrap()).unwrap();
    let tg = Tensor::from_vec((0..2048u32).collect::<Vec<_>>(), 2048, &d).unwrap();
    t("target_logp fwd+bwd [2048,2048]", || {
        let y = ldviz::model::fused::target_logp(z.as_tensor(), &tg).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2048, 384), &d).unwrap()).unwrap();
    t("silu*u fwd+bwd [2048,384]", || {
        let y = ldviz::model::layers::swiglu(h.as_tensor(), h.as_tensor()).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    let emb = Var::from_tensor(&Tensor::randn(0f32, 0.02, (2048, 128), &d).unwrap()).unwrap();
    t("embedding fwd+bwd", || {
        let y = emb.as_tensor().embedding(&tg).unwrap();
        let _ = y.sum_all().unwrap().backward().unwrap();
    });
    t("add [16,128,128] contiguous", || {
        let _ = (x.as_tensor() + x.as_tensor()).unwrap();
    });
}

#[allow(dead_code)]
fn attn_parts() {
    let d = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 4, 128, 32), &d).unwrap()).unwrap();
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 4, 128, 32), &d).unwrap()).unwrap();
    let g = Tensor::randn(0f32, 1.0, (16, 4, 128, 128), &d).unwrap();
    t("qk^T fwd+bwd (real upstream grad)", || {
        let s = q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap();
        let _ = (s * &g).unwrap().sum_all().unwrap().backward().unwrap();
    });
    let p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 4, 128, 128), &d).unwrap()).unwrap();
    let g2 = Tensor::randn(0f32, 1.0, (16, 4, 128, 32), &d).unwrap();
    t("pv fwd+bwd", || {
        let s = p.as_tensor().matmul(k.as_tensor()).unwrap();
        let _ = (s * &g2).unwrap().sum_all().unwrap().backward().unwrap();
    });
    t("mul+sum only [16,4,128,128]", || {
        let _ = (p.as_tensor() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    });
    t("grad.matmul(k) batched, contiguous", || {
        let _ = g.matmul(k.as_tensor()).unwrap();
    });
    t("g^T.matmul(q) batched, transposed view", || {
        let _ = g.t().unwrap().matmul(q.as_tensor()).unwrap();
    });
    t("transpose(1,2).contiguous [16,128,4,32]", || {
        let _ = q.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
    });
}
