//! `ldviz pretrain`: makes the embedded default model from a text corpus: trains a byte-level
//! BPE tokenizer (tokenizers crate, offline), then a small llama on next-token prediction, and
//! writes a Hugging Face folder (config.json, model.safetensors, tokenizer.json) plus
//! pretrain.json with the report (held-out perplexity and mean next-token entropy) and the exact
//! configuration. Deterministic for a given corpus, configuration and seed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{D, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::model::{Model, Tok};
use crate::schema::config::{OptimConfig, OptimKind};
use crate::train::optim::{self, Optimizer};

/// The end-of-text token, id 0 in every tokenizer ldviz trains.
pub const EOS: &str = "<|endoftext|>";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub corpus: PathBuf,
    pub heldout: PathBuf,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    /// Whether the output layer reuses the input embedding (reports written before this field
    /// existed were tied).
    #[serde(default = "tied_before")]
    pub tie_word_embeddings: bool,
    pub seq_len: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for PretrainConfig {
    /// The recipe of the shipped assets/model (`ldviz pretrain` with no options).
    fn default() -> Self {
        PretrainConfig {
            corpus: PathBuf::from("assets/corpus.txt"),
            heldout: PathBuf::from("assets/corpus_heldout.txt"),
            vocab_size: 2048,
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 384,
            tie_word_embeddings: false,
            seq_len: 128,
            batch_size: 16,
            steps: 1500,
            lr: 3e-3,
            warmup: 100,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

fn tied_before() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    pub config: PretrainConfig,
    pub corpus_sha256: String,
    pub heldout_sha256: String,
    pub params: usize,
    pub weights_bytes: u64,
    /// SHA-256 of the model.safetensors this run wrote (so a reproduction can be compared
    /// byte for byte; empty in reports written before it was recorded).
    #[serde(default)]
    pub weights_sha256: String,
    pub final_train_loss: f64,
    /// exp(mean next-token NLL) on the held-out corpus.
    pub heldout_perplexity: f64,
    /// Mean entropy (nats) of the next-token distribution on held-out text.
    pub heldout_mean_entropy: f64,
    /// The same on the training corpus (the demo texts live there).
    pub train_perplexity: f64,
    pub train_mean_entropy: f64,
    /// Entropy of the uniform distribution over the vocabulary, for scale.
    pub uniform_entropy: f64,
    pub seconds: f64,
}

/// Paragraphs (documents) of a corpus file, separated by blank lines.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read corpus", path.display()))?;
    let docs: Vec<String> = text
        .split("\n\n")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if docs.is_empty() {
        bail!("{}: the corpus has no text", path.display());
    }
    Ok(docs)
}

/// Trains a byte-level BPE tokenizer (exact round trip, no prefix space) with `<|endoftext|>`
/// as id 0.
pub fn train_tokenizer(docs: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        TokenizerBuilder,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tk = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::new(false, true, true).into()))
    .build()
    .map_err(|e| anyhow!("tokenizer: {e}"))?;
    tk.train(&mut trainer, docs.iter())
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    let tok = tokenizers::Tokenizer::from(tk);
    if tok.token_to_id(EOS) != Some(0) {
        bail!("tokenizer training did not put {EOS} at id 0");
    }
    Ok(tok)
}

/// The HF config.json of the pretrained model.
pub fn hf_config(c: &PretrainConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.hidden_size / c.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    })
}

/// One token stream: every document's ids followed by EOS.
fn stream(tok: &Tok, docs: &[String]) -> Result<Vec<u32>> {
    let mut s = Vec::new();
    for d in docs {
        s.extend(tok.encode(d)?);
        s.push(tok.eos_id);
    }
    Ok(s)
}

/// Mean next-token cross-entropy over all positions of `ids` [B, T+1], and the logits, without
/// a graph (evaluation; training goes through `Model::train_logps`).
pub fn lm_loss(model: &Model, ids: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, t1) = ids.dims2()?;
    let inputs = ids.narrow(1, 0, t1 - 1)?;
    let targets = ids.narrow(1, 1, t1 - 1)?.contiguous()?;
    let logits = model.forward_eval(&inputs)?;
    let (b, t, v) = logits.dims3()?;
    let lp =
        crate::model::fused::target_logp(&logits.reshape((b * t, v))?, &targets.flatten_all()?)?;
    Ok((lp.neg()?.mean_all()?, logits))
}

/// Perplexity and mean entropy over non-overlapping windows of a token stream.
pub fn evaluate(
    model: &Model,
    ids: &[u32],
    seq_len: usize,
    max_windows: usize,
) -> Result<(f64, f64)> {
    let w = seq_len + 1;
    let n = (ids.len() / w).min(max_windows);
    if n == 0 {
        bail!("evaluation text is shorter than one window of {w} tokens");
    }
    let (mut nll, mut ent, mut count) = (0f64, 0f64, 0usize);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let data: Vec<u32> = chunk
            .iter()
            .flat_map(|&i| ids[i * w..(i + 1) * w].iter().copied())
            .collect();
        let t = Tensor::from_vec(data, (chunk.len(), w), &model.device)?;
        let (loss, logits) = lm_loss(model, &t)?;
        let k = chunk.len() * seq_len;
        nll += f64::from(loss.to_scalar::<f32>()?) * k as f64;
        let lse = logits.log_sum_exp(D::Minus1)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let h = (lse - (p * &logits)?.sum(D::Minus1)?)?;
        ent += f64::from(h.sum_all()?.to_scalar::<f32>()?);
        count += k;
    }
    Ok(((nll / count as f64).exp(), ent / count as f64))
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(crate::data::fingerprint_bytes(&bytes))
}

/// Runs the whole recipe and writes the model folder `out`. `progress(step, loss)` is called
/// after every step.
pub fn pretrain(
    c: &PretrainConfig,
    out: &Path,
    mut progress: impl FnMut(usize, f64),
) -> Result<PretrainReport> {
    let t0 = Instant::now();
    if c.num_attention_heads == 0
        || c.num_key_value_heads == 0
        || !c.hidden_size.is_multiple_of(c.num_attention_heads)
        || !c.num_attention_heads.is_multiple_of(c.num_key_value_heads)
        || c.steps == 0
        || c.batch_size == 0
    {
        bail!(
            "--hidden must be a multiple of --heads, --heads of --kv-heads, and --steps and --batch-size positive"
        );
    }
    let docs = read_documents(&c.corpus)?;
    let held = read_documents(&c.heldout)?;
    let tk = train_tokenizer(&docs, c.vocab_size)?;
    let raw = hf_config(c);
    let config = ModelConfig::from_value(&raw, "pretrain config")?;
    let tok = Tok::from_tokenizer(tk, 0);
    if tok.vocab_size() > c.vocab_size {
        bail!(
            "the tokenizer has {} tokens, more than --vocab {}",
            tok.vocab_size(),
            c.vocab_size
        );
    }
    let device = Device::Cpu;
    let model = Model::random(config, raw, tok, 0.02, c.seed, &device)?;
    let train_ids = stream(&model.tok, &docs)?;
    let held_ids = stream(&model.tok, &held)?;
    let w = c.seq_len + 1;
    if train_ids.len() <= w {
        bail!(
            "{}: the corpus is shorter than one training window ({w} tokens)",
            c.corpus.display()
        );
    }
    let mut rng = StdRng::seed_from_u64(c.seed ^ 0x5EED);
    let mut ocfg = OptimConfig::new(OptimKind::Adamw, c.lr);
    ocfg.weight_decay = c.weight_decay;
    ocfg.adam_betas = (0.9, 0.95);
    let mut opt = Optimizer::new(ocfg, model.params.len());
    let mut last = f64::NAN;
    for s in 0..c.steps {
        let mut data = Vec::with_capacity(c.batch_size * w);
        for _ in 0..c.batch_size {
            let start = rng.random_range(0..train_ids.len() - w);
            data.extend_from_slice(&train_ids[start..start + w]);
        }
        let ids = Tensor::from_vec(data, (c.batch_size, w), &device)?;
        let inputs = ids.narrow(1, 0, w - 1)?;
        let targets = ids.narrow(1, 1, w - 1)?.contiguous()?;
        let tl = model.train_logps(&inputs, &targets)?;
        let loss = tl.logps().mean_all()?.neg()?;
        last = f64::from(loss.to_scalar::<f32>()?);
        if !last.is_finite() {
            bail!("pretraining loss became {last} at step {}", s + 1);
        }
        let grads = loss.backward()?;
        let mut g = tl.param_grads(&model, &grads)?;
        let norm = optim::grad_norm(&g)?;
        optim::clip(&mut g, norm, 1.0)?;
        // linear warm-up, then cosine decay to 10% of the peak
        let lr = if s < c.warmup {
            c.lr * (s + 1) as f64 / c.warmup as f64
        } else {
            let p = (s - c.warmup) as f64 / (c.steps - c.warmup).max(1) as f64;
            c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        opt.step(model.params.vars(), &g, lr)?;
        progress(s + 1, last);
    }
    let (heldout_perplexity, heldout_mean_entropy) = evaluate(&model, &held_ids, c.seq_len, 64)?;
    let (train_perplexity, train_mean_entropy) = evaluate(&model, &train_ids, c.seq_len, 64)?;
    model.save(out)?;
    let weights_bytes = std::fs::metadata(out.join("model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0);
    let report = PretrainReport {
        config: c.clone(),
        corpus_sha256: sha256_file(&c.corpus)?,
        heldout_sha256: sha256_file(&c.heldout)?,
        params: model.n_params(),
        weights_bytes,
        weights_sha256: sha256_file(&out.join("model.safetensors"))?,
        final_train_loss: last,
        heldout_perplexity,
        heldout_mean_entropy,
        train_perplexity,
        train_mean_entropy,
        uniform_entropy: (model.vocab_size() as f64).ln(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let mut saved = report.clone();
    // the report file must be reproducible too: no timing in it
    saved.seconds = 0.0;
    std::fs::write(
        out.join("pretrain.json"),
        serde_json::to_string_pretty(&saved)?,
    )
    .with_context(|| format!("{}: cannot write pretrain.json", out.display()))?;
    Ok(report)
}
