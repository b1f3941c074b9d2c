//! Hugging Face `config.json` → [`ModelConfig`]: one struct per architecture, with field names
//! mirroring the HF config so each can be compared line by line with transformers.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The architectures ldviz can train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Llama,
    Qwen2,
    GptNeox,
    Gpt2,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::GptNeox => "gpt_neox",
            Arch::Gpt2 => "gpt2",
        }
    }
}

/// llama and qwen2 (qwen2 = llama + q/k/v bias). Field names as in HF's config.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// llama3-style RoPE frequency scaling, when the config has one.
    pub rope_llama3: Option<Llama3Rope>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2; llama with `attention_bias`).
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Pythia / GPT-NeoX.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub rotary_pct: f64,
    pub rotary_emb_base: f64,
    pub layer_norm_eps: f64,
    pub use_parallel_residual: bool,
    pub tie_word_embeddings: bool,
    /// "gelu" (exact) or "gelu_new"/"gelu_fast"/"gelu_pytorch_tanh" (tanh approximation).
    pub hidden_act: String,
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
}

/// GPT-2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub n_positions: usize,
    pub layer_norm_epsilon: f64,
    pub activation_function: String,
}

/// A parsed `config.json` of one of the supported architectures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelConfig {
    Llama(LlamaConfig),
    Qwen2(LlamaConfig),
    GptNeox(GptNeoxConfig),
    Gpt2(Gpt2Config),
}

/// The largest size config.json may give (a dimension, a layer count, a vocabulary, a context
/// length): far above any real model's, low enough that products of two never overflow. Whether
/// the weights really hold what the sizes imply is checked against the safetensors files (see
/// [`crate::model::param_count`]).
pub const MAX_SIZE: u64 = i32::MAX as u64;

fn get_usize(v: &Value, key: &str, file: &str) -> Result<usize> {
    match v.get(key) {
        Some(x) => match x.as_u64() {
            Some(n) if n > MAX_SIZE => bail!(
                "{file}: field \"{key}\": {n} is larger than any size ldviz accepts ({MAX_SIZE})"
            ),
            Some(n) => usize::try_from(n).map_err(|_| {
                anyhow!("{file}: field \"{key}\": {n} does not fit this machine's sizes")
            }),
            None => {
                bail!("{file}: field \"{key}\": expected a non-negative integer, got {x}")
            }
        },
        None => bail!("{file}: missing field \"{key}\""),
    }
}

/// A size that must be at least 1.
fn get_positive(v: &Value, key: &str, file: &str) -> Result<usize> {
    match get_usize(v, key, file)? {
        0 => bail!("{file}: field \"{key}\": must be at least 1, got 0"),
        n => Ok(n),
    }
}

fn opt_usize(v: &Value, key: &str, file: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_usize(v, key, file).map(Some),
    }
}

fn opt_f64(v: &Value, key: &str, file: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| anyhow!("{file}: field \"{key}\": expected a number, got {x}")),
    }
}

fn opt_bool(v: &Value, key: &str, file: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| anyhow!("{file}: field \"{key}\": expected true or false, got {x}")),
    }
}

fn opt_str(v: &Value, key: &str, file: &str) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| anyhow!("{file}: field \"{key}\": expected a string, got {x}")),
    }
}

/// The RoPE base: `rope_theta`, or transformers 5's `rope_parameters.rope_theta`.
fn rope_theta(v: &Value, file: &str, default: f64) -> Result<f64> {
    if let Some(t) = opt_f64(v, "rope_theta", file)? {
        return Ok(t);
    }
    if let Some(p) = v.get("rope_parameters")
        && let Some(t) = opt_f64(p, "rope_theta", file)?
    {
        return Ok(t);
    }
    Ok(default)
}

/// The rope scaling block (`rope_scaling` or `rope_parameters`), when it asks for scaling.
fn rope_scaling(v: &Value, file: &str) -> Result<Option<Llama3Rope>> {
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(s) = v.get(key) else { continue };
        if s.is_null() {
            continue;
        }
        let kind = opt_str(s, "rope_type", file)?.or(opt_str(s, "type", file)?);
        match kind.as_deref() {
            None | Some("default") => {}
            Some("llama3") => {
                let need = |k: &str| -> Result<f64> {
                    opt_f64(s, k, file)?
                        .ok_or_else(|| anyhow!("{file}: field \"{key}.{k}\" is missing"))
                };
                return Ok(Some(Llama3Rope {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: need("original_max_position_embeddings")?,
                }));
            }
            Some(other) => bail!(
                "{file}: field \"{key}.rope_type\" = {other:?} is not supported (ldviz supports default and llama3 RoPE)"
            ),
        }
    }
    Ok(None)
}

impl ModelConfig {
    /// Reads and validates `config.json` in a model folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read"))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{file}: not valid JSON"))?;
        Self::from_value(&v, &file)
    }

    pub fn from_value(v: &Value, file: &str) -> Result<Self> {
        let model_type = opt_str(v, "model_type", file)?
            .ok_or_else(|| anyhow!("{file}: missing field \"model_type\""))?;
        let cfg = match model_type.as_str() {
            "llama" | "qwen2" | "mistral" => {
                let hidden_size = get_positive(v, "hidden_size", file)?;
                let heads = get_usize(v, "num_attention_heads", file)?;
                let kv = opt_usize(v, "num_key_value_heads", file)?.unwrap_or(heads);
                if heads == 0 || kv == 0 || heads % kv != 0 {
                    bail!(
                        "{file}: num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv})"
                    );
                }
                let head_dim = opt_usize(v, "head_dim", file)?.unwrap_or(hidden_size / heads);
                let qwen = model_type == "qwen2";
                let c = LlamaConfig {
                    vocab_size: get_positive(v, "vocab_size", file)?,
                    hidden_size,
                    intermediate_size: get_usize(v, "intermediate_size", file)?,
                    num_hidden_layers: get_usize(v, "num_hidden_layers", file)?,
                    num_attention_heads: heads,
                    num_key_value_heads: kv,
                    head_dim,
                    rms_norm_eps: opt_f64(v, "rms_norm_eps", file)?.unwrap_or(1e-6),
                    rope_theta: rope_theta(v, file, 10000.0)?,
                    rope_llama3: rope_scaling(v, file)?,
                    tie_word_embeddings: opt_bool(v, "tie_word_embeddings", file)?.unwrap_or(false),
                    attention_bias: qwen || opt_bool(v, "attention_bias", file)?.unwrap_or(false),
                    max_position_embeddings: opt_usize(v, "max_position_embeddings", file)?
                        .unwrap_or(4096),
                };
                if let Some(act) = opt_str(v, "hidden_act", file)?
                    && act != "silu"
                {
                    bail!(
                        "{file}: hidden_act {act:?} is not supported for {model_type} (expected silu)"
                    );
                }
                if opt_bool(v, "mlp_bias", file)?.unwrap_or(false) {
                    bail!("{file}: mlp_bias = true is not supported");
                }
                if head_dim % 2 != 0 {
                    bail!("{file}: head_dim {head_dim} must be even for RoPE");
                }
                if qwen {
                    ModelConfig::Qwen2(c)
                } else {
                    ModelConfig::Llama(c)
                }
            }
            "gpt_neox" => {
                let hidden_act = opt_str(v, "hidden_act", file)?.unwrap_or_else(|| "gelu".into());
                if !matches!(
                    hidden_act.as_str(),
                    "gelu" | "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh"
                ) {
                    bail!("{file}: hidden_act {hidden_act:?} is not supported for gpt_neox");
                }
                let rotary_pct = opt_f64(v, "rotary_pct", file)?
                    .or(v
                        .get("rope_parameters")
                        .and_then(|p| p.get("partial_rotary_factor"))
                        .and_then(Value::as_f64))
                    .unwrap_or(0.25);
                let base = match opt_f64(v, "rotary_emb_base", file)? {
                    Some(b) => b,
                    None => rope_theta(v, file, 10000.0)?,
                };
                let c = GptNeoxConfig {
                    vocab_size: get_positive(v, "vocab_size", file)?,
                    hidden_size: get_positive(v, "hidden_size", file)?,
                    intermediate_size: get_usize(v, "intermediate_size", file)?,
                    num_hidden_layers: get_usize(v, "num_hidden_layers", file)?,
                    num_attention_heads: get_usize(v, "num_attention_heads", file)?,
                    rotary_pct,
                    rotary_emb_base: base,
                    layer_norm_eps: opt_f64(v, "layer_norm_eps", file)?.unwrap_or(1e-5),
                    use_parallel_residual: opt_bool(v, "use_parallel_residual", file)?
                        .unwrap_or(true),
                    tie_word_embeddings: opt_bool(v, "tie_word_embeddings", file)?.unwrap_or(false),
                    hidden_act,
                    attention_bias: opt_bool(v, "attention_bias", file)?.unwrap_or(true),
                    max_position_embeddings: opt_usize(v, "max_position_embeddings", file)?
                        .unwrap_or(2048),
                };
                if c.num_attention_heads == 0
                    || !c.hidden_size.is_multiple_of(c.num_attention_heads)
                {
                    bail!("{file}: hidden_size must be a multiple of num_attention_heads");
                }
                ModelConfig::GptNeox(c)
            }
            "gpt2" => {
                let activation_function =
                    opt_str(v, "activation_function", file)?.unwrap_or_else(|| "gelu_new".into());
                if !matches!(
                    activation_function.as_str(),
                    "gelu" | "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh"
                ) {
                    bail!(
                        "{file}: activation_function {activation_function:?} is not supported for gpt2"
                    );
                }
                let c = Gpt2Config {
                    vocab_size: get_positive(v, "vocab_size", file)?,
                    n_embd: get_positive(v, "n_embd", file)?,
                    n_layer: get_usize(v, "n_layer", file)?,
                    n_head: get_usize(v, "n_head", file)?,
                    n_inner: opt_usize(v, "n_inner", file)?,
                    n_positions: get_usize(v, "n_positions", file)?,
                    layer_norm_epsilon: opt_f64(v, "layer_norm_epsilon", file)?.unwrap_or(1e-5),
                    activation_function,
                };
                if c.n_head == 0 || !c.n_embd.is_multiple_of(c.n_head) {
                    bail!("{file}: n_embd must be a multiple of n_head");
                }
                ModelConfig::Gpt2(c)
            }
            other => bail!(
                "{file}: model_type {other:?} is not supported (ldviz trains llama, qwen2, gpt_neox and gpt2)"
            ),
        };
        Ok(cfg)
    }

    pub fn arch(&self) -> Arch {
        match self {
            ModelConfig::Llama(_) => Arch::Llama,
            ModelConfig::Qwen2(_) => Arch::Qwen2,
            ModelConfig::GptNeox(_) => Arch::GptNeox,
            ModelConfig::Gpt2(_) => Arch::Gpt2,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c.vocab_size,
            ModelConfig::GptNeox(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
        }
    }

    /// The longest sequence the model's positions allow (GPT-2's learned positions are a hard
    /// limit; for RoPE models this is the trained context).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c.max_position_embeddings,
            ModelConfig::GptNeox(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
        }
    }

    /// The number of transformer blocks.
    pub fn num_layers(&self) -> usize {
        match self {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c.num_hidden_layers,
            ModelConfig::GptNeox(c) => c.num_hidden_layers,
            ModelConfig::Gpt2(c) => c.n_layer,
        }
    }

    /// This config with `n` transformer blocks.
    pub fn with_num_layers(&self, n: usize) -> ModelConfig {
        let mut c = self.clone();
        match &mut c {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c.num_hidden_layers = n,
            ModelConfig::GptNeox(c) => c.num_hidden_layers = n,
            ModelConfig::Gpt2(c) => c.n_layer = n,
        }
        c
    }

    pub fn tied(&self) -> bool {
        match self {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c.tie_word_embeddings,
            ModelConfig::GptNeox(c) => c.tie_word_embeddings,
            ModelConfig::Gpt2(_) => true,
        }
    }
}
