//! Llama and Qwen2 (Qwen2 = Llama with q/k/v biases), written from differentiable candle ops.
//! Compare with transformers' `modeling_llama.py`: pre-norm RMSNorm blocks, RoPE on two halves,
//! grouped-query attention, SwiGLU MLP, final RMSNorm, `lm_head` (or the tied embedding).

use candle_core::{Result, Tensor};

use super::Weights;
use super::config::{Llama3Rope, LlamaConfig};
use super::layers::{
    KvMode, Rope, attention, causal_mask_after, inv_freq, linear, repeat_kv, rms_norm, swiglu,
};
use super::net::{Declare, Proj, WeightSpec};

/// The name of the untied LM head (HF's `lm_head`).
pub const LM_HEAD: &str = "lm_head.weight";

/// One decoder layer's weights: positions in [`super::Params`] (or what the builder kept).
#[derive(Clone, Debug)]
pub struct LlamaLayer<W = usize> {
    pub input_norm: W,
    /// q/k/v projections; their biases for qwen2 (llama with `attention_bias`).
    pub q: Proj<W>,
    pub k: Proj<W>,
    pub v: Proj<W>,
    pub o: W,
    pub post_norm: W,
    pub gate: W,
    pub up: W,
    pub down: W,
}

/// Every weight of a llama/qwen2 model.
#[derive(Clone, Debug)]
pub struct LlamaWeights<W = usize> {
    pub embed: W,
    pub layers: Vec<LlamaLayer<W>>,
    pub norm: W,
    /// `lm_head`; None when tied to the embedding.
    pub lm_head: Option<W>,
}

impl<W> LlamaWeights<W> {
    /// Declares every weight of the model with its HF name, shape and initialisation, in
    /// checkpoint order, keeping what `f` returns for each.
    pub fn build<E>(c: &LlamaConfig, f: &mut Declare<'_, W, E>) -> std::result::Result<Self, E> {
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let qd = c.num_attention_heads * c.head_dim;
        let kvd = c.num_key_value_heads * c.head_dim;
        let embed = f(WeightSpec::normal(
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, h],
        ))?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let input_norm = f(WeightSpec::ones(
                format!("{p}.input_layernorm.weight"),
                vec![h],
            ))?;
            let (qn, kn, vn) = (
                format!("{p}.self_attn.q_proj"),
                format!("{p}.self_attn.k_proj"),
                format!("{p}.self_attn.v_proj"),
            );
            let qw = f(WeightSpec::normal(format!("{qn}.weight"), vec![qd, h]))?;
            let kw = f(WeightSpec::normal(format!("{kn}.weight"), vec![kvd, h]))?;
            let vw = f(WeightSpec::normal(format!("{vn}.weight"), vec![kvd, h]))?;
            // the three biases follow the three weights
            let (qb, kb, vb) = if c.attention_bias {
                (
                    Some(f(WeightSpec::zeros(format!("{qn}.bias"), vec![qd]))?),
                    Some(f(WeightSpec::zeros(format!("{kn}.bias"), vec![kvd]))?),
                    Some(f(WeightSpec::zeros(format!("{vn}.bias"), vec![kvd]))?),
                )
            } else {
                (None, None, None)
            };
            let o = f(WeightSpec::normal(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, qd],
            ))?;
            let post_norm = f(WeightSpec::ones(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
            ))?;
            let gate = f(WeightSpec::normal(
                format!("{p}.mlp.gate_proj.weight"),
                vec![inter, h],
            ))?;
            let up = f(WeightSpec::normal(
                format!("{p}.mlp.up_proj.weight"),
                vec![inter, h],
            ))?;
            let down = f(WeightSpec::normal(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, inter],
            ))?;
            layers.push(LlamaLayer {
                input_norm,
                q: Proj {
                    weight: qw,
                    bias: qb,
                },
                k: Proj {
                    weight: kw,
                    bias: kb,
                },
                v: Proj {
                    weight: vw,
                    bias: vb,
                },
                o,
                post_norm,
                gate,
                up,
                down,
            });
        }
        let norm = f(WeightSpec::ones("model.norm.weight".into(), vec![h]))?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(f(WeightSpec::normal(
                LM_HEAD.into(),
                vec![c.vocab_size, h],
            ))?)
        };
        Ok(LlamaWeights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl LlamaWeights {
    /// The LM head's position (the embedding's when tied).
    pub fn head(&self) -> usize {
        self.lm_head.unwrap_or(self.embed)
    }
}

/// RoPE inverse frequencies, with llama3 scaling when configured.
pub fn rope_freqs(c: &LlamaConfig) -> Vec<f64> {
    let base = inv_freq(c.head_dim, c.rope_theta);
    match &c.rope_llama3 {
        None => base,
        Some(s) => base.into_iter().map(|f| llama3_scale(f, s)).collect(),
    }
}

fn llama3_scale(freq: f64, s: &Llama3Rope) -> f64 {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

/// The final normalized hidden states [B, T, H] for token ids [B, T], at positions starting
/// after the cached prefix when `kv` attends to one.
pub fn hidden(
    c: &LlamaConfig,
    ix: &LlamaWeights,
    w: &Weights,
    ids: &Tensor,
    kv: &mut KvMode,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let dh = c.head_dim;
    let nh = c.num_attention_heads;
    let nkv = c.num_key_value_heads;
    let embed = w.get(ix.embed)?;
    let dtype = embed.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let rope = Rope::at(&rope_freqs(c), off, t, dtype, dev)?;
    let mut x = embed
        .embedding(&ids.flatten_all()?)?
        .reshape((b, t, c.hidden_size))?;
    for (i, l) in ix.layers.iter().enumerate() {
        let hn = rms_norm(&x, &w.get(l.input_norm)?, c.rms_norm_eps)?;
        let proj = |p: &Proj| -> Result<Tensor> {
            let bias = p.bias.map(|b| w.get(b)).transpose()?;
            linear(&hn, &w.get(p.weight)?, bias.as_ref())
        };
        let q = proj(&l.q)?
            .reshape((b, t, nh, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = proj(&l.k)?
            .reshape((b, t, nkv, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = proj(&l.v)?
            .reshape((b, t, nkv, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope.apply(&q)?;
        let (k, v) = kv.keys_values(i, rope.apply(&k)?, v)?;
        let k = repeat_kv(&k, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        let a = attention(&q, &k, &v, &mask)?;
        let a = linear(&a, &w.get(l.o)?, None)?;
        x = (x + a)?;
        let hn = rms_norm(&x, &w.get(l.post_norm)?, c.rms_norm_eps)?;
        let g = linear(&hn, &w.get(l.gate)?, None)?;
        let u = linear(&hn, &w.get(l.up)?, None)?;
        let m = linear(&swiglu(&g, &u)?, &w.get(l.down)?, None)?;
        x = (x + m)?;
    }
    rms_norm(&x, &w.get(ix.norm)?, c.rms_norm_eps)
}
