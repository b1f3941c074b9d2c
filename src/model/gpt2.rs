//! GPT-2, from differentiable candle ops. Compare with transformers' `modeling_gpt2.py`: learned
//! position embeddings, pre-norm LayerNorm blocks, `Conv1D` weights stored as [in, out], the tanh
//! GELU (`gelu_new`), and an LM head tied to the token embedding. Checkpoints name weights with
//! or without the `transformer.` prefix; [`with_prefix`] reads both.

use std::collections::HashMap;

use candle_core::{D, Result, Tensor};

use super::Weights;
use super::config::Gpt2Config;
use super::layers::{KvMode, attention, causal_mask_after, conv1d, gelu, layer_norm};
use super::net::{Declare, Norm, Proj, WeightSpec};

/// The prefix of GPT-2's weight names in transformers' checkpoints (OpenAI's conversion has
/// none; see [`with_prefix`]).
pub const PREFIX: &str = "transformer.";
/// The token embedding's name, after the prefix.
const WTE: &str = "wte.weight";

/// One GPT-2 block's weights: positions in [`super::Params`] (or what the builder kept). The
/// projections are `Conv1D`s, stored [in, out].
#[derive(Clone, Debug)]
pub struct Gpt2Layer<W = usize> {
    pub ln_1: Norm<W>,
    pub ln_2: Norm<W>,
    pub c_attn: Proj<W>,
    pub attn_proj: Proj<W>,
    pub c_fc: Proj<W>,
    pub mlp_proj: Proj<W>,
}

/// Every weight of a GPT-2 model (the LM head is the token embedding).
#[derive(Clone, Debug)]
pub struct Gpt2Weights<W = usize> {
    pub wte: W,
    pub wpe: W,
    pub layers: Vec<Gpt2Layer<W>>,
    pub ln_f: Norm<W>,
}

impl<W> Gpt2Weights<W> {
    /// Declares every weight of the model with its HF name, shape and initialisation, in
    /// checkpoint order, keeping what `f` returns for each.
    pub fn build<E>(c: &Gpt2Config, f: &mut Declare<'_, W, E>) -> std::result::Result<Self, E> {
        let h = c.n_embd;
        let inner = c.n_inner.unwrap_or(4 * h);
        let wte = f(WeightSpec::normal(
            format!("{PREFIX}{WTE}"),
            vec![c.vocab_size, h],
        ))?;
        let wpe = f(WeightSpec::normal(
            format!("{PREFIX}wpe.weight"),
            vec![c.n_positions, h],
        ))?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("{PREFIX}h.{i}");
            let ln_1 = Norm::build(f, &format!("{p}.ln_1"), h)?;
            let ln_2 = Norm::build(f, &format!("{p}.ln_2"), h)?;
            let c_attn = Proj::build(f, &format!("{p}.attn.c_attn"), vec![h, 3 * h], Some(3 * h))?;
            let attn_proj = Proj::build(f, &format!("{p}.attn.c_proj"), vec![h, h], Some(h))?;
            let c_fc = Proj::build(f, &format!("{p}.mlp.c_fc"), vec![h, inner], Some(inner))?;
            let mlp_proj = Proj::build(f, &format!("{p}.mlp.c_proj"), vec![inner, h], Some(h))?;
            layers.push(Gpt2Layer {
                ln_1,
                ln_2,
                c_attn,
                attn_proj,
                c_fc,
                mlp_proj,
            });
        }
        let ln_f = Norm::build(f, &format!("{PREFIX}ln_f"), h)?;
        Ok(Gpt2Weights {
            wte,
            wpe,
            layers,
            ln_f,
        })
    }
}

/// Tensors named as in OpenAI's conversion (no [`PREFIX`]: "wte.weight", …) renamed as
/// transformers names them; others as they are.
pub fn with_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if !tensors.contains_key(&format!("{PREFIX}{WTE}")) && tensors.contains_key(WTE) {
        tensors
            .into_iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v))
            .collect()
    } else {
        tensors
    }
}

/// The final normalized hidden states [B, T, H], after the cached prefix when `kv` attends to
/// one.
pub fn hidden(
    c: &Gpt2Config,
    ix: &Gpt2Weights,
    w: &Weights,
    ids: &Tensor,
    kv: &mut KvMode,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let h = c.n_embd;
    let nh = c.n_head;
    let dh = h / nh;
    let exact = c.activation_function == "gelu";
    let wte = w.get(ix.wte)?;
    let dtype = wte.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let wpe = w.get(ix.wpe)?.narrow(0, off, t)?;
    let mut x = wte
        .embedding(&ids.flatten_all()?)?
        .reshape((b, t, h))?
        .broadcast_add(&wpe)?;
    let ln = |x: &Tensor, n: &Norm| -> Result<Tensor> {
        layer_norm(x, &w.get(n.weight)?, &w.get(n.bias)?, c.layer_norm_epsilon)
    };
    let cv = |x: &Tensor, p: &Proj| -> Result<Tensor> {
        let bias = p.bias.map(|b| w.get(b)).transpose()?;
        conv1d(x, &w.get(p.weight)?, bias.as_ref())
    };
    for (i, l) in ix.layers.iter().enumerate() {
        let qkv = cv(&ln(&x, &l.ln_1)?, &l.c_attn)?;
        let split = |j: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, j * h, h)?
                .reshape((b, t, nh, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (k, v) = kv.keys_values(i, split(1)?, split(2)?)?;
        let a = attention(&split(0)?, &k, &v, &mask)?;
        x = (x + cv(&a, &l.attn_proj)?)?;
        let m = cv(&gelu(&cv(&ln(&x, &l.ln_2)?, &l.c_fc)?, exact)?, &l.mlp_proj)?;
        x = (x + m)?;
    }
    ln(&x, &ix.ln_f)
}
