//! `ldviz bench`: times training steps of a fixed llama config (vocab 8192, hidden 256, 8 layers,
//! 4 heads, intermediate 1024, untied, batch 8 × 64, AdamW, f32): the median of N steps after 3
//! warm-ups, split into forward (incl. loss), backward and optimizer; `--arch` gives gpt_neox or
//! gpt2 the same sizes.

use std::time::Instant;

use anyhow::{Result, anyhow};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::device::Precision;
use crate::model::config::{GptNeoxConfig, LlamaConfig, ModelConfig};
use crate::model::{Model, Tok};
use crate::schema::config::{OptimConfig, OptimKind};
use crate::train::optim::Optimizer;

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub step_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    pub params: usize,
}

/// The benchmark's model shape.
pub fn bench_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 8192,
        hidden_size: 256,
        intermediate_size: 1024,
        num_hidden_layers: 8,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_llama3: None,
        tie_word_embeddings: false,
        attention_bias: false,
        max_position_embeddings: 2048,
    }
}

/// A tokenizer-free stand-in for models built in code (benchmarks): one token, id 0 = EOS.
pub fn placeholder_tok() -> Result<Tok> {
    use tokenizers::models::wordlevel::WordLevel;
    let vocab = [("<eos>".to_string(), 0u32)].into_iter().collect();
    let wl = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<eos>".into())
        .build()
        .map_err(|e| anyhow!("placeholder tokenizer: {e}"))?;
    Ok(Tok::from_tokenizer(tokenizers::Tokenizer::new(wl), 0))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn train_step(steps: usize) -> Result<BenchResult> {
    train_step_on(steps, &Device::Cpu, Precision::F32, BenchArch::Llama)
}

/// The architecture of the training-step benchmark (`ldviz bench --arch`), at the bench
/// config's sizes; tools/bench_torch.py --arch builds the same in transformers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchArch {
    /// llama: RMSNorm, RoPE, SwiGLU, untied head.
    Llama,
    /// gpt_neox (Pythia): LayerNorm, fused q/k/v with bias, RoPE on a quarter of each head,
    /// exact GELU, parallel residual, untied head.
    #[value(name = "gpt_neox")]
    GptNeox,
    /// gpt2: LayerNorm, Conv1D projections, learned positions, tanh GELU, tied head.
    Gpt2,
}

/// The benchmark model's config for `arch`, with its raw config.json.
pub fn bench_model_config(arch: BenchArch) -> Result<(ModelConfig, serde_json::Value)> {
    let c = bench_config();
    let raw = match arch {
        BenchArch::Llama => {
            return Ok((
                ModelConfig::Llama(c),
                serde_json::json!({"model_type": "llama"}),
            ));
        }
        BenchArch::GptNeox => serde_json::json!({
            "model_type": "gpt_neox",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "rotary_pct": 0.25,
            "rotary_emb_base": 10000.0,
            "layer_norm_eps": 1e-5,
            "use_parallel_residual": true,
            "tie_word_embeddings": false,
            "hidden_act": "gelu",
            "attention_bias": true,
            "max_position_embeddings": 2048
        }),
        BenchArch::Gpt2 => serde_json::json!({
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_embd": c.hidden_size,
            "n_inner": c.intermediate_size,
            "n_layer": c.num_hidden_layers,
            "n_head": c.num_attention_heads,
            "n_positions": 2048,
            "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new",
            "tie_word_embeddings": true
        }),
    };
    Ok((ModelConfig::from_value(&raw, "the bench config")?, raw))
}

/// [`train_step`] on any device and precision (timings synchronize the device).
pub fn train_step_on(
    steps: usize,
    dev: &Device,
    prec: Precision,
    arch: BenchArch,
) -> Result<BenchResult> {
    let c = bench_config();
    let (b, t) = (8usize, 64usize);
    let (cfg, raw) = bench_model_config(arch)?;
    let mut model = Model::random(cfg, raw, placeholder_tok()?, 0.02, 0, dev)?;
    model.set_precision(prec);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919 + 13) % c.vocab_size) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    // targets: the ids shifted left, the last position padded with 0 (and left out of the loss)
    let targets = Tensor::cat(
        &[
            &ids.narrow(1, 1, t - 1)?,
            &ids.narrow(1, 0, 1)?.zeros_like()?,
        ],
        1,
    )?;
    // the loss uses the first T − 1 positions of each row
    let mask = Tensor::cat(
        &[
            &Tensor::ones((b, t - 1), DType::F32, dev)?,
            &Tensor::zeros((b, 1), DType::F32, dev)?,
        ],
        1,
    )?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-4), model.params.len());
    let (mut f, mut bw, mut o) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..steps + 3 {
        dev.synchronize()?;
        let t0 = Instant::now();
        // next-token loss over the first T − 1 positions (the last target is padding, masked)
        let tl = model.train_logps_masked(&ids, &targets, &mask)?;
        let loss = (tl.logps().sum_all()? / ((b * (t - 1)) as f64))?.neg()?;
        let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let g = tl.param_grads(&model, &grads)?;
        dev.synchronize()?;
        let t2 = Instant::now();
        opt.step(model.params.vars(), &g, 1e-4)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        if i >= 3 {
            f.push((t1 - t0).as_secs_f64() * 1e3);
            bw.push((t2 - t1).as_secs_f64() * 1e3);
            o.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    let mut total: Vec<f64> = (0..f.len()).map(|i| f[i] + bw[i] + o[i]).collect();
    let step_ms = median(&mut total);
    let params = model.n_params();
    let tokens = (b * t) as f64;
    // 6 × params × tokens, plus attention (QKᵀ and PV: 2·2·T·T·hidden per layer per sequence, ×3 for fwd+bwd)
    let attn = 3.0
        * 4.0
        * (b as f64)
        * (t as f64).powi(2)
        * c.hidden_size as f64
        * c.num_hidden_layers as f64;
    let flops = 6.0 * params as f64 * tokens + attn;
    Ok(BenchResult {
        step_ms,
        forward_ms: median(&mut f),
        backward_ms: median(&mut bw),
        optimizer_ms: median(&mut o),
        tokens_per_s: tokens * 1e3 / step_ms,
        gflops: flops / (step_ms * 1e6),
        params,
    })
}

/// The machine's measured f32 matmul rate: a 2048 × 2048 × 2048 product through candle's CPU
/// matmul (the gemm crate, all threads), median of 7 after 2 warm-ups, in GFLOP/s.
pub fn matmul_peak() -> Result<f64> {
    let n = 2048usize;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let mut times = Vec::new();
    for i in 0..9 {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        // Touch the result so the product is not skipped.
        let _ = c.get(0)?.get(0)?.to_scalar::<f32>()?;
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let s = median(&mut times);
    Ok(2.0 * (n as f64).powi(3) / s / 1e9)
}

/// Peak resident set size of this process so far, in MiB (Linux: VmHWM of /proc/self/status;
/// None elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `ldviz bench --load`: the time to load a run file into a `RunStore`.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub steps: usize,
    pub evaluations: usize,
    pub families: usize,
    pub probes: usize,
    pub file_mib: f64,
    /// Median of 3 loads (page cache warm), seconds.
    pub load_s: f64,
}

/// Writes the synthetic run of `spec` to `path`, loads it 3 times, removes it.
pub fn load_run(spec: crate::synth::SynthSpec, path: &std::path::Path) -> Result<LoadReport> {
    crate::synth::write(path, spec, 3)?;
    let size = std::fs::metadata(path)?.len() as f64 / (1024.0 * 1024.0);
    let mut times = Vec::new();
    let mut shape = (0, 0, 0);
    for _ in 0..3 {
        let t0 = Instant::now();
        let store = crate::run::RunStore::open(path)?;
        times.push(t0.elapsed().as_secs_f64());
        shape = (
            store.n_evals(),
            store.run.header.families.len(),
            store.n_probes(),
        );
        drop(store);
    }
    let _ = std::fs::remove_file(path);
    Ok(LoadReport {
        steps: spec.steps,
        evaluations: shape.0,
        families: shape.1,
        probes: shape.2,
        file_mib: size,
        load_s: median(&mut times),
    })
}

/// `ldviz bench --probes`: one full probe evaluation of the default demo, three ways.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub probes: usize,
    pub families: usize,
    /// Sequences scored per evaluation (argmax excluded: it comes from the chosen logits).
    pub sequences: usize,
    pub transfer_prompts: usize,
    /// Median seconds of one evaluation (every family of every probe, traces, diagnostics).
    pub shared_s: f64,
    pub padded_s: f64,
    pub per_pair_s: f64,
    /// per_pair_s / shared_s.
    pub speedup: f64,
    /// The transfer matrix alone, shared prefix vs per pair.
    pub transfer_shared_s: f64,
    pub transfer_per_pair_s: f64,
    /// Largest |Δ| of a summed log-prob (families and transfer) between shared and per pair.
    pub max_abs_diff: f64,
}

/// Times one evaluation of the default demo's probe set (as `ldviz train` builds it) with the
/// shared prompt KV, a padded batch per prompt, and one forward per pair: median of `reps`
/// (the three interleaved) after one warm-up each.
pub fn probe_eval(reps: usize) -> Result<ProbeReport> {
    use crate::probe::EvalMode;
    let cfg = crate::train::TrainOptions::default().to_config()?;
    let mut s = crate::train::Session::prepare(&cfg)?;
    let reps = reps.max(1);
    let modes = [EvalMode::SharedPrefix, EvalMode::Padded, EvalMode::PerPair];
    // warm-up and the results to compare
    let mut results = Vec::new();
    for mode in modes {
        s.runner.mode = mode;
        let ev = s.runner.evaluate(&s.model, false)?;
        let tm = s.runner.transfer_matrix(&s.model)?;
        results.push((ev, tm));
    }
    // modes interleaved in every repetition, so drifts of a shared machine hit all alike
    let mut eval_t = vec![Vec::new(); 3];
    let mut transfer_t = vec![Vec::new(); 3];
    for _ in 0..reps {
        for (k, mode) in modes.iter().enumerate() {
            s.runner.mode = *mode;
            let t0 = Instant::now();
            s.runner.evaluate(&s.model, false)?;
            eval_t[k].push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            s.runner.transfer_matrix(&s.model)?;
            transfer_t[k].push(t0.elapsed().as_secs_f64());
        }
    }
    let times: Vec<(f64, f64)> = (0..3)
        .map(|k| (median(&mut eval_t[k]), median(&mut transfer_t[k])))
        .collect();
    let mut max_abs_diff = 0f64;
    let (a, b) = (&results[0], &results[2]);
    for (x, y) in a.0.logps.iter().flatten().zip(b.0.logps.iter().flatten()) {
        max_abs_diff = max_abs_diff.max((x - y).abs());
    }
    for (x, y) in a.1.iter().flatten().zip(b.1.iter().flatten()) {
        max_abs_diff = max_abs_diff.max((x - y).abs());
    }
    Ok(ProbeReport {
        probes: s.runner.probes.len(),
        families: s.runner.families.len(),
        sequences: s.runner.probes.iter().map(|p| p.seqs.len()).sum(),
        transfer_prompts: s.runner.transfer.len(),
        shared_s: times[0].0,
        padded_s: times[1].0,
        per_pair_s: times[2].0,
        speedup: times[2].0 / times[0].0,
        transfer_shared_s: times[0].1,
        transfer_per_pair_s: times[2].1,
        max_abs_diff,
    })
}

/// `ldviz bench --preset`: model shapes for GPU benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Preset {
    /// gpt_neox of Pythia-410M's shape: hidden 1024, 24 layers, 16 heads, intermediate 4096,
    /// vocab 50304, rotary_pct 0.25, untied; DPO 4 pairs x 512 tokens, probe evaluation
    /// 32 prompts x 13 responses x 384 tokens.
    #[value(name = "pythia-410m")]
    #[serde(rename = "pythia-410m")]
    Pythia410m,
    /// The same code path at toy size (hidden 64, 2 layers, vocab 512; DPO 2 pairs x 64
    /// tokens, evaluation 2 prompts x 13 x 48 tokens): for tests and CPU smoke runs.
    #[value(name = "pythia-tiny")]
    #[serde(rename = "pythia-tiny")]
    PythiaTiny,
}

/// The workload of a preset.
struct PresetShape {
    config: GptNeoxConfig,
    pairs: usize,
    seq: usize,
    prompts: usize,
    responses: usize,
    eval_seq: usize,
}

impl Preset {
    fn shape(self) -> PresetShape {
        let (hidden, layers, heads, inter, vocab) = match self {
            Preset::Pythia410m => (1024, 24, 16, 4096, 50304),
            Preset::PythiaTiny => (64, 2, 4, 256, 512),
        };
        let config = GptNeoxConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            rotary_pct: 0.25,
            rotary_emb_base: 10000.0,
            layer_norm_eps: 1e-5,
            use_parallel_residual: true,
            tie_word_embeddings: false,
            hidden_act: "gelu".into(),
            attention_bias: true,
            max_position_embeddings: 2048,
        };
        match self {
            Preset::Pythia410m => PresetShape {
                config,
                pairs: 4,
                seq: 512,
                prompts: 32,
                responses: 13,
                eval_seq: 384,
            },
            Preset::PythiaTiny => PresetShape {
                config,
                pairs: 2,
                seq: 64,
                prompts: 2,
                responses: 13,
                eval_seq: 48,
            },
        }
    }
}

/// `ldviz bench --preset` figures; times are medians in milliseconds, synchronized.
#[derive(Clone, Debug, Serialize)]
pub struct PresetReport {
    pub preset: Preset,
    pub device: String,
    pub dtype: String,
    pub params: usize,
    /// One DPO step: reference log-probs + policy forward/backward + AdamW.
    pub dpo_step_ms: f64,
    pub dpo_reference_ms: f64,
    pub dpo_forward_backward_ms: f64,
    pub dpo_optimizer_ms: f64,
    /// One probe evaluation (summed log-probs of every response, no grad), prompt KV shared.
    pub probe_eval_ms: f64,
    /// The same as one padded batch per prompt (what the PyTorch script does).
    pub probe_eval_padded_ms: f64,
    /// Largest |Δ| between the two evaluations' summed log-probs.
    pub probe_eval_max_abs_diff: f64,
    pub dpo_tokens: usize,
    pub eval_tokens: usize,
}

fn lcg_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Runs a preset: random-init model on `dev` in `prec`, then `reps` timed repetitions (after
/// 2 warm-ups) of one DPO step and of one probe evaluation. Sequences: each pair shares a
/// prompt of half the length; each evaluation prompt has `responses` responses, prompt a
/// third of the length.
pub fn preset(p: Preset, dev: &Device, prec: Precision, reps: usize) -> Result<PresetReport> {
    use crate::probe::{Batch, EvalMode, Seq, logprob};
    use crate::train::loss::{LossInputs, LossParams, compute};
    let sh = p.shape();
    let v = sh.config.vocab_size;
    let raw = serde_json::json!({"model_type": "gpt_neox"});
    let mut model = Model::random(
        ModelConfig::GptNeox(sh.config.clone()),
        raw,
        placeholder_tok()?,
        0.02,
        0,
        dev,
    )?;
    model.set_precision(prec);
    let seq = |prompt: usize, resp: usize, seed: u64| Seq {
        prompt: lcg_tokens(prompt, v, seed),
        response: lcg_tokens(resp, v, seed + 1_000_003),
    };
    // DPO batch: chosen rows then rejected rows, same prompts.
    let half = sh.seq / 2;
    let mut rows = Vec::new();
    for i in 0..sh.pairs {
        rows.push(seq(half, sh.seq - half, 2 * i as u64));
    }
    for i in 0..sh.pairs {
        let mut r = seq(half, sh.seq - half, 2 * i as u64 + 1);
        r.prompt = rows[i].prompt.clone();
        rows.push(r);
    }
    let refs: Vec<&Seq> = rows.iter().collect();
    let batch = Batch::new(&refs, dev)?;
    let lens = Tensor::from_vec(vec![(sh.seq - half) as f32; sh.pairs], sh.pairs, dev)?;
    let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Adamw, 1e-6), model.params.len());
    let params = LossParams {
        beta: 0.1,
        gamma: 0.5,
        label_smoothing: 0.0,
    };
    let (mut tr, mut tfb, mut to) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps.max(1) + 2 {
        dev.synchronize()?;
        let t0 = Instant::now();
        let logits = model.forward_eval(&batch.ids)?;
        let (_, r) = logprob::token_logps(&logits, &batch)?;
        drop(logits);
        let (rc, rr) = (r.narrow(0, 0, sh.pairs)?, r.narrow(0, sh.pairs, sh.pairs)?);
        dev.synchronize()?;
        let t1 = Instant::now();
        let tl = model.train_logps_masked(&batch.ids, &batch.targets, &batch.mask)?;
        let s = logprob::masked_sums(tl.logps(), &batch)?;
        let (pc, pr) = (s.narrow(0, 0, sh.pairs)?, s.narrow(0, sh.pairs, sh.pairs)?);
        let (loss, _) = compute(
            crate::train::Algo::Dpo,
            params,
            &LossInputs {
                policy_chosen: &pc,
                policy_rejected: Some(&pr),
                ref_chosen: Some(&rc),
                ref_rejected: Some(&rr),
                len_chosen: &lens,
                len_rejected: Some(&lens),
            },
        )?;
        let grads = loss.backward()?;
        let g = tl.param_grads(&model, &grads)?;
        drop(grads);
        dev.synchronize()?;
        let t2 = Instant::now();
        opt.step(model.params.vars(), &g, 1e-6)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        if i >= 2 {
            tr.push((t1 - t0).as_secs_f64() * 1e3);
            tfb.push((t2 - t1).as_secs_f64() * 1e3);
            to.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    let mut total: Vec<f64> = (0..tr.len()).map(|i| tr[i] + tfb[i] + to[i]).collect();
    // Probe evaluation: `prompts` prompts x `responses` responses.
    let ep = sh.eval_seq / 3;
    let probes: Vec<Vec<Seq>> = (0..sh.prompts)
        .map(|pi| {
            let prompt = lcg_tokens(ep, v, 7_000 + pi as u64);
            (0..sh.responses)
                .map(|ri| Seq {
                    prompt: prompt.clone(),
                    response: lcg_tokens(sh.eval_seq - ep, v, 9_000 + (pi * 100 + ri) as u64),
                })
                .collect()
        })
        .collect();
    let eval = |mode: EvalMode| -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for p in &probes {
            let refs: Vec<&Seq> = p.iter().collect();
            let b = Batch::responses(&refs, dev)?;
            let z = logprob::response_logits(&model, &refs, mode)?;
            let (_, s) = logprob::token_logps(&z, &b)?;
            out.extend(s.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(out)
    };
    let times = |mode: EvalMode| -> Result<(f64, Vec<f64>)> {
        let mut t = Vec::new();
        let mut last = Vec::new();
        for i in 0..reps.max(1) + 2 {
            dev.synchronize()?;
            let t0 = Instant::now();
            last = eval(mode)?;
            dev.synchronize()?;
            if i >= 2 {
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok((median(&mut t), last))
    };
    let (shared_ms, a) = times(EvalMode::SharedPrefix)?;
    let (padded_ms, b) = times(EvalMode::Padded)?;
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    Ok(PresetReport {
        preset: p,
        device: format!("{dev:?}"),
        dtype: prec.to_string(),
        params: model.n_params(),
        dpo_step_ms: median(&mut total),
        dpo_reference_ms: median(&mut tr),
        dpo_forward_backward_ms: median(&mut tfb),
        dpo_optimizer_ms: median(&mut to),
        probe_eval_ms: shared_ms,
        probe_eval_padded_ms: padded_ms,
        probe_eval_max_abs_diff: diff,
        dpo_tokens: 2 * sh.pairs * sh.seq,
        eval_tokens: sh.prompts * sh.responses * sh.eval_seq,
    })
}

/// `ldviz bench --influence`: on the embedded demo (DPO, batch 4, the default observed set:
/// 8 probes × chosen, rejected, y*, irr_train, chosen_gptsemantic), plain updates alternating
/// with updates that record their first-order influence; medians of `reps` after 2 warm-ups.
/// With `flat`, also the flat-gradient reference's median time (ms).
pub fn influence(reps: usize, flat: bool) -> Result<(crate::train::InfluenceBench, Option<f64>)> {
    let opts = crate::train::TrainOptions {
        algo: crate::train::Algo::Dpo,
        batch_size: 4,
        ..crate::train::TrainOptions::default()
    };
    let s = crate::train::Session::prepare(&opts.to_config()?)?;
    s.bench_influence(reps.max(1), flat)
}
