//! GPT-2, from differentiable candle ops. Compare with transformers' `modeling_gpt2.py`: learned
//! position embeddings, pre-norm LayerNorm blocks, `Conv1D` weights stored as [in, out], the tanh
//! GELU (`gelu_new`), and an LM head tied to the token embedding. Checkpoints name weights with
//! or without the `transformer.` prefix; [`Weights`] resolves both (see weights.rs).

use candle_core::{D, Result, Tensor};

use super::Weights;
use super::config::Gpt2Config;
use super::layers::{KvMode, attention, causal_mask_after, conv1d, gelu, layer_norm, linear};

pub fn param_shapes(c: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let h = c.n_embd;
    let inner = c.n_inner.unwrap_or(4 * h);
    let mut v = vec![
        ("transformer.wte.weight".to_string(), vec![c.vocab_size, h]),
        ("transformer.wpe.weight".to_string(), vec![c.n_positions, h]),
    ];
    for i in 0..c.n_layer {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            v.push((format!("{p}.{ln}.weight"), vec![h]));
            v.push((format!("{p}.{ln}.bias"), vec![h]));
        }
        v.push((format!("{p}.attn.c_attn.weight"), vec![h, 3 * h]));
        v.push((format!("{p}.attn.c_attn.bias"), vec![3 * h]));
        v.push((format!("{p}.attn.c_proj.weight"), vec![h, h]));
        v.push((format!("{p}.attn.c_proj.bias"), vec![h]));
        v.push((format!("{p}.mlp.c_fc.weight"), vec![h, inner]));
        v.push((format!("{p}.mlp.c_fc.bias"), vec![inner]));
        v.push((format!("{p}.mlp.c_proj.weight"), vec![inner, h]));
        v.push((format!("{p}.mlp.c_proj.bias"), vec![h]));
    }
    v.push(("transformer.ln_f.weight".to_string(), vec![h]));
    v.push(("transformer.ln_f.bias".to_string(), vec![h]));
    v
}

pub fn forward(c: &Gpt2Config, w: &Weights, ids: &Tensor) -> Result<Tensor> {
    let x = hidden(c, w, ids, &mut KvMode::Off)?;
    linear(&x, &w.get("transformer.wte.weight")?, None)
}

/// The LM head's weight [V, H] (GPT-2 ties it to the token embedding).
pub fn lm_head(_c: &Gpt2Config, w: &Weights) -> Result<Tensor> {
    w.get("transformer.wte.weight")
}

/// The final normalized hidden states [B, T, H], after the cached prefix when `kv` attends to
/// one.
pub fn hidden(c: &Gpt2Config, w: &Weights, ids: &Tensor, kv: &mut KvMode) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let h = c.n_embd;
    let nh = c.n_head;
    let dh = h / nh;
    let exact = c.activation_function == "gelu";
    let dtype = w.get("transformer.wte.weight")?.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let wte = w.get("transformer.wte.weight")?;
    let wpe = w.get("transformer.wpe.weight")?.narrow(0, off, t)?;
    let mut x = wte
        .embedding(&ids.flatten_all()?)?
        .reshape((b, t, h))?
        .broadcast_add(&wpe)?;
    for i in 0..c.n_layer {
        let p = format!("transformer.h.{i}");
        let ln = |x: &Tensor, n: &str| -> Result<Tensor> {
            layer_norm(
                x,
                &w.get(&format!("{p}.{n}.weight"))?,
                &w.get(&format!("{p}.{n}.bias"))?,
                c.layer_norm_epsilon,
            )
        };
        let cv = |x: &Tensor, n: &str| -> Result<Tensor> {
            conv1d(
                x,
                &w.get(&format!("{p}.{n}.weight"))?,
                Some(&w.get(&format!("{p}.{n}.bias"))?),
            )
        };
        let qkv = cv(&ln(&x, "ln_1")?, "attn.c_attn")?;
        let split = |j: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, j * h, h)?
                .reshape((b, t, nh, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (k, v) = kv.keys_values(i, split(1)?, split(2)?)?;
        let a = attention(&split(0)?, &k, &v, &mask)?;
        x = (x + cv(&a, "attn.c_proj")?)?;
        let m = cv(
            &gelu(&cv(&ln(&x, "ln_2")?, "mlp.c_fc")?, exact)?,
            "mlp.c_proj",
        )?;
        x = (x + m)?;
    }
    layer_norm(
        &x,
        &w.get("transformer.ln_f.weight")?,
        &w.get("transformer.ln_f.bias")?,
        c.layer_norm_epsilon,
    )
}
