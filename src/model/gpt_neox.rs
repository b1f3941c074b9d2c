//! GPT-NeoX / Pythia, from differentiable candle ops. Compare with transformers'
//! `modeling_gpt_neox.py`: LayerNorm with bias, a fused QKV projection laid out per head
//! ([H, 3, Dh] along the output), RoPE on the first `rotary_pct` of each head only, exact GELU,
//! and (by default) a parallel residual: x + attn(ln1(x)) + mlp(ln2(x)).

use candle_core::{D, Result, Tensor};

use super::Weights;
use super::config::GptNeoxConfig;
use super::layers::{
    KvMode, Rope, attention, causal_mask_after, gelu, inv_freq, layer_norm, linear,
};
use super::net::{Declare, Norm, Proj, WeightSpec};

/// The name of the untied LM head (GPT-NeoX's `embed_out`).
pub const EMBED_OUT: &str = "embed_out.weight";

/// One GPT-NeoX layer's weights: positions in [`super::Params`] (or what the builder kept).
#[derive(Clone, Debug)]
pub struct GptNeoxLayer<W = usize> {
    pub input_norm: Norm<W>,
    pub post_norm: Norm<W>,
    /// The fused q/k/v projection, laid out per head ([H, 3, Dh] along the output).
    pub qkv: Proj<W>,
    pub dense: Proj<W>,
    /// dense_h_to_4h and dense_4h_to_h.
    pub up: Proj<W>,
    pub down: Proj<W>,
}

/// Every weight of a GPT-NeoX (Pythia) model.
#[derive(Clone, Debug)]
pub struct GptNeoxWeights<W = usize> {
    pub embed_in: W,
    pub layers: Vec<GptNeoxLayer<W>>,
    pub final_norm: Norm<W>,
    /// `embed_out`; None when tied to the input embedding.
    pub embed_out: Option<W>,
}

impl<W> GptNeoxWeights<W> {
    /// Declares every weight of the model with its HF name, shape and initialisation, in
    /// checkpoint order, keeping what `f` returns for each.
    pub fn build<E>(c: &GptNeoxConfig, f: &mut Declare<'_, W, E>) -> std::result::Result<Self, E> {
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let attn_bias = |n: usize| c.attention_bias.then_some(n);
        let embed_in = f(WeightSpec::normal(
            "gpt_neox.embed_in.weight".into(),
            vec![c.vocab_size, h],
        ))?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("gpt_neox.layers.{i}");
            let input_norm = Norm::build(f, &format!("{p}.input_layernorm"), h)?;
            let post_norm = Norm::build(f, &format!("{p}.post_attention_layernorm"), h)?;
            let qkv = Proj::build(
                f,
                &format!("{p}.attention.query_key_value"),
                vec![3 * h, h],
                attn_bias(3 * h),
            )?;
            let dense = Proj::build(f, &format!("{p}.attention.dense"), vec![h, h], attn_bias(h))?;
            let up = Proj::build(
                f,
                &format!("{p}.mlp.dense_h_to_4h"),
                vec![inter, h],
                Some(inter),
            )?;
            let down = Proj::build(
                f,
                &format!("{p}.mlp.dense_4h_to_h"),
                vec![h, inter],
                Some(h),
            )?;
            layers.push(GptNeoxLayer {
                input_norm,
                post_norm,
                qkv,
                dense,
                up,
                down,
            });
        }
        let final_norm = Norm::build(f, "gpt_neox.final_layer_norm", h)?;
        let embed_out = if c.tie_word_embeddings {
            None
        } else {
            Some(f(WeightSpec::normal(
                EMBED_OUT.into(),
                vec![c.vocab_size, h],
            ))?)
        };
        Ok(GptNeoxWeights {
            embed_in,
            layers,
            final_norm,
            embed_out,
        })
    }
}

impl GptNeoxWeights {
    /// The LM head's position (the input embedding's when tied).
    pub fn head(&self) -> usize {
        self.embed_out.unwrap_or(self.embed_in)
    }
}

/// Number of rotary dimensions per head (even).
pub fn rotary_ndims(c: &GptNeoxConfig) -> usize {
    let dh = c.hidden_size / c.num_attention_heads;
    let r = (dh as f64 * c.rotary_pct) as usize;
    r - r % 2
}

/// The final normalized hidden states [B, T, H], after the cached prefix when `kv` attends to
/// one.
pub fn hidden(
    c: &GptNeoxConfig,
    ix: &GptNeoxWeights,
    w: &Weights,
    ids: &Tensor,
    kv: &mut KvMode,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let h = c.hidden_size;
    let nh = c.num_attention_heads;
    let dh = h / nh;
    let rot = rotary_ndims(c);
    let exact = c.hidden_act == "gelu";
    let embed = w.get(ix.embed_in)?;
    let dtype = embed.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let rope = Rope::at(&inv_freq(rot, c.rotary_emb_base), off, t, dtype, dev)?;
    let mut x = embed.embedding(&ids.flatten_all()?)?.reshape((b, t, h))?;
    let norm = |x: &Tensor, n: &Norm| -> Result<Tensor> {
        layer_norm(x, &w.get(n.weight)?, &w.get(n.bias)?, c.layer_norm_eps)
    };
    let proj = |x: &Tensor, p: &Proj| -> Result<Tensor> {
        let bias = p.bias.map(|b| w.get(b)).transpose()?;
        linear(x, &w.get(p.weight)?, bias.as_ref())
    };
    for (i, l) in ix.layers.iter().enumerate() {
        let ln1 = norm(&x, &l.input_norm)?;
        let qkv = proj(&ln1, &l.qkv)?.reshape((b, t, nh, 3 * dh))?;
        let head = |j: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, j * dh, dh)?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply(&head(0)?)?;
        let (k, v) = kv.keys_values(i, rope.apply(&head(1)?)?, head(2)?)?;
        let a = attention(&q, &k, &v, &mask)?;
        let a = proj(&a, &l.dense)?;
        let mlp = |inp: &Tensor| -> Result<Tensor> {
            let ln2 = norm(inp, &l.post_norm)?;
            proj(&gelu(&proj(&ln2, &l.up)?, exact)?, &l.down)
        };
        x = if c.use_parallel_residual {
            let m = mlp(&x)?;
            ((&x + a)? + m)?
        } else {
            let x1 = (&x + a)?;
            let m = mlp(&x1)?;
            (x1 + m)?
        };
    }
    norm(&x, &ix.final_norm)
}
