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

pub fn param_shapes(c: &GptNeoxConfig) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let mut v = vec![(
        "gpt_neox.embed_in.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("gpt_neox.layers.{i}");
        for ln in ["input_layernorm", "post_attention_layernorm"] {
            v.push((format!("{p}.{ln}.weight"), vec![h]));
            v.push((format!("{p}.{ln}.bias"), vec![h]));
        }
        v.push((
            format!("{p}.attention.query_key_value.weight"),
            vec![3 * h, h],
        ));
        if c.attention_bias {
            v.push((format!("{p}.attention.query_key_value.bias"), vec![3 * h]));
        }
        v.push((format!("{p}.attention.dense.weight"), vec![h, h]));
        if c.attention_bias {
            v.push((format!("{p}.attention.dense.bias"), vec![h]));
        }
        v.push((
            format!("{p}.mlp.dense_h_to_4h.weight"),
            vec![c.intermediate_size, h],
        ));
        v.push((
            format!("{p}.mlp.dense_h_to_4h.bias"),
            vec![c.intermediate_size],
        ));
        v.push((
            format!("{p}.mlp.dense_4h_to_h.weight"),
            vec![h, c.intermediate_size],
        ));
        v.push((format!("{p}.mlp.dense_4h_to_h.bias"), vec![h]));
    }
    v.push(("gpt_neox.final_layer_norm.weight".to_string(), vec![h]));
    v.push(("gpt_neox.final_layer_norm.bias".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        v.push(("embed_out.weight".to_string(), vec![c.vocab_size, h]));
    }
    v
}

/// Number of rotary dimensions per head (even).
pub fn rotary_ndims(c: &GptNeoxConfig) -> usize {
    let dh = c.hidden_size / c.num_attention_heads;
    let r = (dh as f64 * c.rotary_pct) as usize;
    r - r % 2
}

pub fn forward(c: &GptNeoxConfig, w: &Weights, ids: &Tensor) -> Result<Tensor> {
    let x = hidden(c, w, ids, &mut KvMode::Off)?;
    linear(&x, &lm_head(c, w)?, None)
}

/// The LM head's weight [V, H] (the input embedding when tied).
pub fn lm_head(c: &GptNeoxConfig, w: &Weights) -> Result<Tensor> {
    if c.tie_word_embeddings {
        w.get("gpt_neox.embed_in.weight")
    } else {
        w.get("embed_out.weight")
    }
}

/// The final normalized hidden states [B, T, H], after the cached prefix when `kv` attends to
/// one.
pub fn hidden(c: &GptNeoxConfig, w: &Weights, ids: &Tensor, kv: &mut KvMode) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let h = c.hidden_size;
    let nh = c.num_attention_heads;
    let dh = h / nh;
    let rot = rotary_ndims(c);
    let exact = c.hidden_act == "gelu";
    let dtype = w.get("gpt_neox.embed_in.weight")?.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let rope = Rope::at(&inv_freq(rot, c.rotary_emb_base), off, t, dtype, dev)?;
    let embed = w.get("gpt_neox.embed_in.weight")?;
    let mut x = embed.embedding(&ids.flatten_all()?)?.reshape((b, t, h))?;
    for i in 0..c.num_hidden_layers {
        let p = format!("gpt_neox.layers.{i}");
        let bias = |name: &str| -> Result<Option<Tensor>> {
            if c.attention_bias {
                w.get(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let ln1 = layer_norm(
            &x,
            &w.get(&format!("{p}.input_layernorm.weight"))?,
            &w.get(&format!("{p}.input_layernorm.bias"))?,
            c.layer_norm_eps,
        )?;
        let qkv = linear(
            &ln1,
            &w.get(&format!("{p}.attention.query_key_value.weight"))?,
            bias(&format!("{p}.attention.query_key_value.bias"))?.as_ref(),
        )?
        .reshape((b, t, nh, 3 * dh))?;
        let head = |j: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, j * dh, dh)?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply(&head(0)?)?;
        let (k, v) = kv.keys_values(i, rope.apply(&head(1)?)?, head(2)?)?;
        let a = attention(&q, &k, &v, &mask)?;
        let a = linear(
            &a,
            &w.get(&format!("{p}.attention.dense.weight"))?,
            bias(&format!("{p}.attention.dense.bias"))?.as_ref(),
        )?;
        let mlp = |inp: &Tensor| -> Result<Tensor> {
            let ln2 = layer_norm(
                inp,
                &w.get(&format!("{p}.post_attention_layernorm.weight"))?,
                &w.get(&format!("{p}.post_attention_layernorm.bias"))?,
                c.layer_norm_eps,
            )?;
            let u = linear(
                &ln2,
                &w.get(&format!("{p}.mlp.dense_h_to_4h.weight"))?,
                Some(&w.get(&format!("{p}.mlp.dense_h_to_4h.bias"))?),
            )?;
            linear(
                &gelu(&u, exact)?,
                &w.get(&format!("{p}.mlp.dense_4h_to_h.weight"))?,
                Some(&w.get(&format!("{p}.mlp.dense_4h_to_h.bias"))?),
            )
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
    layer_norm(
        &x,
        &w.get("gpt_neox.final_layer_norm.weight")?,
        &w.get("gpt_neox.final_layer_norm.bias")?,
        c.layer_norm_eps,
    )
}
