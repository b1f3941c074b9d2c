//! The hand-written training pass (`model::manual`) against candle's graph
//! (`Model::forward_logps` + `backward`, itself checked against f64 finite differences in
//! tests/gradients.rs and against transformers in tests/reference.rs): the log-probs and every
//! weight's gradient, for llama, tied llama, qwen2 (q/k/v biases), grouped-query attention,
//! gpt_neox and gpt2 (`model::manual_ln`, with their variants), in f64 (to rounding) and f32.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixture_model;
use ldviz::bench::{bench_config, placeholder_tok};
use ldviz::model::Model;
use ldviz::model::config::ModelConfig;

/// A deterministic pseudo-random stream in [0, 1).
fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// ids, targets [B, T] and per-position loss weights (a quarter of them 0, like padding).
fn batch(vocab: usize, b: usize, t: usize, seed: u64) -> (Tensor, Tensor, Vec<f64>) {
    let mut r = lcg(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| (r() * vocab as f64) as u32).collect();
    let tg: Vec<u32> = (0..b * t).map(|_| (r() * vocab as f64) as u32).collect();
    let c: Vec<f64> = (0..b * t)
        .map(|_| if r() < 0.25 { 0.0 } else { r() - 0.3 })
        .collect();
    let d = Device::Cpu;
    (
        Tensor::from_vec(ids, (b, t), &d).unwrap(),
        Tensor::from_vec(tg, (b, t), &d).unwrap(),
        c,
    )
}

/// (max |Δ log-prob|, worst over weights of max |Δ grad| / max |grad|) between the two paths.
fn compare(model: &Model, b: usize, t: usize, seed: u64) -> (f64, f64) {
    let (ids, tg, c) = batch(model.vocab_size(), b, t, seed);
    let dt = model.compute;
    let coef = Tensor::from_vec(c, (b, t), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    // candle's graph
    let lp = model.forward_logps(&ids, &tg).unwrap();
    let loss = (&lp * &coef).unwrap().sum_all().unwrap();
    let want = model.params.grads(&loss.backward().unwrap());
    // hand-written
    let tl = model.train_logps(&ids, &tg).unwrap();
    assert!(tl.is_manual());
    let lp2 = tl.logps().clone();
    let loss2 = (&lp2 * &coef).unwrap().sum_all().unwrap();
    let got = tl.param_grads(model, &loss2.backward().unwrap()).unwrap();

    let v = |x: &Tensor| -> Vec<f64> {
        x.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let dlp = v(&lp)
        .iter()
        .zip(v(&lp2))
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    let mut worst = 0f64;
    for ((name, w), g) in model.params.names().iter().zip(&want).zip(&got) {
        let (w, g) = match (w, g) {
            (Some(w), Some(g)) => (v(w), v(g)),
            (None, None) => continue,
            _ => panic!("{name}: one path has a gradient and the other none"),
        };
        assert_eq!(w.len(), g.len(), "{name}");
        let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: zero gradient");
        let d = w
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        if std::env::var("LDVIZ_DEBUG_GRADS").is_ok() {
            eprintln!("  {name}: {:.2e}", d / scale);
        }
        worst = worst.max(d / scale);
    }
    (dlp, worst)
}

/// llama with grouped-query attention (4 query heads on 2 key/value heads) and q/k/v biases.
fn gqa_model() -> Model {
    let mut c = bench_config();
    c.vocab_size = 101;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.attention_bias = true;
    Model::random(
        ModelConfig::Qwen2(c),
        serde_json::json!({"model_type": "qwen2"}),
        placeholder_tok().unwrap(),
        0.2,
        3,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn matches_candles_graph_in_f64() {
    let mut models: Vec<(&str, Model)> = ["llama", "llama_tied", "qwen2"]
        .into_iter()
        .map(|n| (n, fixture_model(n)))
        .collect();
    models.push(("gqa+bias", gqa_model()));
    for (name, m) in models {
        let m = m.to_dtype(DType::F64).unwrap();
        let (dlp, dg) = compare(&m, 3, 9, 7);
        eprintln!("{name} f64: |Δ logp| {dlp:.2e}, grad {dg:.2e}");
        assert!(dlp < 1e-11, "{name}: log-probs differ by {dlp}");
        assert!(dg < 1e-10, "{name}: gradients differ by {dg} (relative)");
    }
}

#[test]
fn matches_candles_graph_in_f32() {
    for (name, m) in [("llama", fixture_model("llama")), ("gqa+bias", gqa_model())] {
        let (dlp, dg) = compare(&m, 4, 16, 11);
        eprintln!("{name} f32: |Δ logp| {dlp:.2e}, grad {dg:.2e}");
        assert!(dlp < 1e-4, "{name}: log-probs differ by {dlp}");
        assert!(dg < 1e-4, "{name}: gradients differ by {dg} (relative)");
    }
}

/// (loss(w_e + ε) − loss(w_e − ε)) / 2ε for element `e` of the f64 weight `var` (ε = 1e-5),
/// which is put back afterwards.
fn central_difference(var: &candle_core::Var, e: usize, loss: impl Fn() -> f64) -> f64 {
    let orig = var.as_tensor().copy().unwrap();
    let flat: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-5;
    let at = |delta: f64| -> f64 {
        let mut v = flat.clone();
        v[e] += delta;
        var.set(&Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap())
            .unwrap();
        loss()
    };
    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
    var.set(&orig).unwrap();
    fd
}

/// A random model from a fixture's config.json with some fields changed.
fn variant(fixture: &str, changes: serde_json::Value) -> Model {
    let path = common::fixtures().join(fixture).join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, x) in changes.as_object().unwrap() {
        v[k] = x.clone();
    }
    let cfg = ModelConfig::from_value(&v, "config.json").unwrap();
    Model::random(cfg, v, placeholder_tok().unwrap(), 0.2, 5, &Device::Cpu).unwrap()
}

/// gpt_neox (Pythia: parallel residual, partial rotary, exact GELU, untied head) and gpt2
/// (learned positions, Conv1D projections, tanh GELU, tied head) from the fixtures, and
/// variants: gpt_neox with a sequential residual, a tied head, the tanh GELU and full rotary;
/// gpt2 with the exact GELU.
fn layernorm_models() -> Vec<(&'static str, Model)> {
    use serde_json::json;
    vec![
        ("gpt_neox", fixture_model("gpt_neox")),
        ("gpt2", fixture_model("gpt2")),
        (
            "gpt_neox sequential+tied+tanh",
            variant(
                "gpt_neox",
                json!({"use_parallel_residual": false, "tie_word_embeddings": true,
                       "hidden_act": "gelu_new",
                       "rope_parameters": {"partial_rotary_factor": 1.0, "rope_theta": 10000,
                                           "rope_type": "default"}}),
            ),
        ),
        (
            "gpt2 exact gelu",
            variant("gpt2", json!({"activation_function": "gelu"})),
        ),
    ]
}

/// gpt_neox and gpt2 take their own hand-written pass, equal to candle's graph: the log-probs
/// to rounding; the gradients to 1e-6 in f64, because candle's GELU backward rounds its
/// constants to six digits (0.398942 for 1/√(2π), 0.797885 for √(2/π), …), which this pass
/// does not (finite differences decide, below).
#[test]
fn layernorm_architectures_match_candles_graph() {
    for (name, m) in layernorm_models() {
        let (dlp, dg) = compare(&m, 3, 9, 13);
        eprintln!("{name} f32: |Δ logp| {dlp:.2e}, grad {dg:.2e}");
        assert!(dlp < 1e-4, "{name} f32: log-probs differ by {dlp}");
        assert!(dg < 1e-4, "{name} f32: gradients differ by {dg} (relative)");
        let m = m.to_dtype(DType::F64).unwrap();
        let (dlp, dg) = compare(&m, 3, 9, 7);
        eprintln!("{name} f64: |Δ logp| {dlp:.2e}, grad {dg:.2e}");
        assert!(dlp < 1e-11, "{name} f64: log-probs differ by {dlp}");
        assert!(dg < 1e-6, "{name} f64: gradients differ by {dg} (relative)");
    }
}

/// Every weight of gpt_neox and gpt2 (and their variants) against f64 central differences of
/// the pass's own loss, at two elements each (embeddings: in rows the batch uses).
#[test]
fn layernorm_architectures_match_finite_differences_in_f64() {
    for (name, m) in layernorm_models() {
        let m = m.to_dtype(DType::F64).unwrap();
        let (b, t) = (2, 6);
        let (ids, tg, c) = batch(m.vocab_size(), b, t, 9);
        let coef = Tensor::from_vec(c, (b, t), &Device::Cpu).unwrap();
        let loss = |m: &Model| -> f64 {
            let tl = m.train_logps(&ids, &tg).unwrap();
            assert!(tl.is_manual());
            (tl.logps() * &coef)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let tl = m.train_logps(&ids, &tg).unwrap();
        let l = (tl.logps() * &coef).unwrap().sum_all().unwrap();
        let grads = tl.param_grads(&m, &l.backward().unwrap()).unwrap();
        let id0 = ids.flatten_all().unwrap().to_vec1::<u32>().unwrap()[1] as usize;
        let mut nonzero = 0;
        for (i, (wname, var)) in m.params.names().iter().zip(m.params.vars()).enumerate() {
            let g: Vec<f64> = grads[i]
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {wname} has no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let embedding = wname.contains("embed_in") || wname.contains("wte");
            let elems = if embedding {
                let h = var.dims()[1];
                vec![id0 * h, id0 * h + h - 1]
            } else {
                vec![0, var.elem_count() / 2 + 1]
            };
            for e in elems {
                let fd = central_difference(var, e, || loss(&m));
                let tol = 1e-8 + 1e-7 * fd.abs();
                assert!(
                    (g[e] - fd).abs() <= tol,
                    "{name}: {wname}[{e}] pass {} vs finite difference {fd}",
                    g[e]
                );
                if fd.abs() > 1e-6 {
                    nonzero += 1;
                }
            }
        }
        assert!(
            nonzero > 20,
            "{name}: only {nonzero} non-zero gradients checked"
        );
    }
}

/// A loss that does not use the log-probs gives no gradients; a target outside the vocabulary
/// is refused with its value named.
#[test]
fn edge_cases() {
    let m = fixture_model("llama");
    let (ids, tg, _) = batch(m.vocab_size(), 2, 5, 2);
    let tl = m.train_logps(&ids, &tg).unwrap();
    let other = candle_core::Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let store = other.as_tensor().sum_all().unwrap().backward().unwrap();
    let g = tl.param_grads(&m, &store).unwrap();
    assert!(g.iter().all(|g| g.is_none()));

    let bad = Tensor::new(&[[1u32, 2, m.vocab_size() as u32 + 5]], &Device::Cpu).unwrap();
    let err = m.train_logps(&bad.clone(), &bad).err().unwrap().to_string();
    assert!(err.contains(&format!("{}", m.vocab_size() + 5)), "{err}");
}

/// Central finite differences in f64 on the hand-written pass alone (its own forward), for
/// elements of every kind of weight of a GQA model with q/k/v biases.
#[test]
fn matches_finite_differences_in_f64() {
    let m = gqa_model().to_dtype(DType::F64).unwrap();
    let (b, t) = (2, 6);
    let (ids, tg, c) = batch(m.vocab_size(), b, t, 5);
    let coef = Tensor::from_vec(c, (b, t), &Device::Cpu).unwrap();
    let loss = |m: &Model| -> f64 {
        let tl = m.train_logps(&ids, &tg).unwrap();
        (tl.logps() * &coef)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let tl = m.train_logps(&ids, &tg).unwrap();
    let l = (tl.logps() * &coef).unwrap().sum_all().unwrap();
    let grads = tl.param_grads(&m, &l.backward().unwrap()).unwrap();
    let first_id = ids.flatten_all().unwrap().to_vec1::<u32>().unwrap()[0] as usize;
    let h = 32;
    let (mut checked, mut nonzero) = (0, 0);
    for (name, elems) in [
        (
            "model.embed_tokens.weight",
            vec![first_id * h, first_id * h + 7],
        ),
        ("model.layers.0.input_layernorm.weight", vec![3]),
        ("model.layers.0.self_attn.q_proj.weight", vec![0, 100]),
        ("model.layers.0.self_attn.k_proj.bias", vec![5]),
        ("model.layers.1.self_attn.v_proj.weight", vec![17]),
        ("model.layers.1.self_attn.o_proj.weight", vec![40]),
        ("model.layers.1.post_attention_layernorm.weight", vec![9]),
        ("model.layers.0.mlp.gate_proj.weight", vec![33]),
        ("model.layers.1.mlp.up_proj.weight", vec![250]),
        ("model.layers.1.mlp.down_proj.weight", vec![61]),
        ("model.norm.weight", vec![2]),
        ("lm_head.weight", vec![12, 2000]),
    ] {
        let i = m.params.position(name).unwrap();
        let var = &m.params.vars()[i];
        let g: Vec<f64> = grads[i]
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for e in elems {
            let fd = central_difference(var, e, || loss(&m));
            let tol = 1e-7 + 1e-6 * fd.abs();
            assert!(
                (fd - g[e]).abs() <= tol,
                "{name}[{e}]: finite difference {fd}, hand-written {}",
                g[e]
            );
            checked += 1;
            nonzero += usize::from(fd.abs() > 1e-4);
        }
    }
    assert_eq!(checked, 15);
    assert!(
        nonzero >= 13,
        "only {nonzero} of 15 checked gradients are non-zero"
    );
}

/// With a loss mask, the hand-written pass runs the LM head on the masked-in positions only:
/// log-probs are those of the unmasked pass times the mask, and the gradients of a masked loss
/// are the same (f64); candle's graph takes the mask the same way.
#[test]
fn masked_positions_skip_the_head_with_the_same_gradients() {
    for (name, m) in [("gqa+bias", gqa_model()), ("gpt2", fixture_model("gpt2"))] {
        let m = m.to_dtype(DType::F64).unwrap();
        let (b, t) = (3, 7);
        let (ids, tg, c) = batch(m.vocab_size(), b, t, 9);
        let mask_v: Vec<f64> = (0..b * t).map(|i| f64::from(i % 3 != 0)).collect();
        let mask = Tensor::from_vec(mask_v.clone(), (b, t), &Device::Cpu).unwrap();
        let coef = (Tensor::from_vec(c, (b, t), &Device::Cpu).unwrap() * &mask).unwrap();
        let run = |masked: bool| -> (Vec<f64>, Vec<Option<Tensor>>) {
            let tl = if masked {
                m.train_logps_masked(&ids, &tg, &mask).unwrap()
            } else {
                m.train_logps(&ids, &tg).unwrap()
            };
            let lp = tl.logps().clone();
            let l = (&lp * &coef).unwrap().sum_all().unwrap();
            let g = tl.param_grads(&m, &l.backward().unwrap()).unwrap();
            (lp.flatten_all().unwrap().to_vec1().unwrap(), g)
        };
        let (lp_full, g_full) = run(false);
        let (lp_mask, g_mask) = run(true);
        for i in 0..b * t {
            assert!(
                (lp_mask[i] - lp_full[i] * mask_v[i]).abs() < 1e-12,
                "{name}: position {i}"
            );
        }
        for (w, (a, bb)) in m.params.names().iter().zip(g_full.iter().zip(&g_mask)) {
            let (a, bb) = (a.as_ref().unwrap(), bb.as_ref().unwrap());
            let d = (a - bb)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(d < 1e-12, "{name}: {w} differs by {d}");
        }
    }
}
