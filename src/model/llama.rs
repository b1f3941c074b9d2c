//! Llama and Qwen2 (Qwen2 = Llama with q/k/v biases), written from differentiable candle ops.
//! Compare with transformers' `modeling_llama.py`: pre-norm RMSNorm blocks, RoPE on two halves,
//! grouped-query attention, SwiGLU MLP, final RMSNorm, `lm_head` (or the tied embedding).

use candle_core::{D, Result, Tensor};

use super::Weights;
use super::config::{Llama3Rope, LlamaConfig};
use super::layers::{
    KvMode, Rope, attention, causal_mask_after, inv_freq, linear, repeat_kv, rms_norm, swiglu,
};

/// Every weight tensor of the model with its shape, in HF names.
pub fn param_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        if c.attention_bias {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![c.intermediate_size, h],
        ));
        v.push((
            format!("{p}.mlp.up_proj.weight"),
            vec![c.intermediate_size, h],
        ));
        v.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![h, c.intermediate_size],
        ));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    v
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

/// Logits [B, T, V] for token ids [B, T] (right padding is fine: attention is causal).
pub fn forward(c: &LlamaConfig, w: &Weights, ids: &Tensor) -> Result<Tensor> {
    let x = hidden(c, w, ids, &mut KvMode::Off)?;
    let logits = linear(&x, &lm_head(c, w)?, None)?;
    debug_assert_eq!(logits.dim(D::Minus1)?, c.vocab_size);
    Ok(logits)
}

/// The LM head's weight [V, H] (the embedding when tied).
pub fn lm_head(c: &LlamaConfig, w: &Weights) -> Result<Tensor> {
    if c.tie_word_embeddings {
        w.get("model.embed_tokens.weight")
    } else {
        w.get("lm_head.weight")
    }
}

/// The final normalized hidden states [B, T, H] for token ids [B, T], at positions starting
/// after the cached prefix when `kv` attends to one.
pub fn hidden(c: &LlamaConfig, w: &Weights, ids: &Tensor, kv: &mut KvMode) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dev = ids.device();
    let dh = c.head_dim;
    let nh = c.num_attention_heads;
    let nkv = c.num_key_value_heads;
    let dtype = w.get("model.embed_tokens.weight")?.dtype();
    let off = kv.offset();
    let mask = causal_mask_after(t, off, dtype, dev)?;
    let rope = Rope::at(&rope_freqs(c), off, t, dtype, dev)?;
    let embed = w.get("model.embed_tokens.weight")?;
    let mut x = embed
        .embedding(&ids.flatten_all()?)?
        .reshape((b, t, c.hidden_size))?;
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let hn = rms_norm(
            &x,
            &w.get(&format!("{p}.input_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        let proj = |name: &str| -> Result<Tensor> {
            let wt = w.get(&format!("{p}.self_attn.{name}.weight"))?;
            let bias = if c.attention_bias {
                Some(w.get(&format!("{p}.self_attn.{name}.bias"))?)
            } else {
                None
            };
            linear(&hn, &wt, bias.as_ref())
        };
        let q = proj("q_proj")?
            .reshape((b, t, nh, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = proj("k_proj")?
            .reshape((b, t, nkv, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = proj("v_proj")?
            .reshape((b, t, nkv, dh))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope.apply(&q)?;
        let (k, v) = kv.keys_values(i, rope.apply(&k)?, v)?;
        let k = repeat_kv(&k, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        let a = attention(&q, &k, &v, &mask)?;
        let a = linear(&a, &w.get(&format!("{p}.self_attn.o_proj.weight"))?, None)?;
        x = (x + a)?;
        let hn = rms_norm(
            &x,
            &w.get(&format!("{p}.post_attention_layernorm.weight"))?,
            c.rms_norm_eps,
        )?;
        let g = linear(&hn, &w.get(&format!("{p}.mlp.gate_proj.weight"))?, None)?;
        let u = linear(&hn, &w.get(&format!("{p}.mlp.up_proj.weight"))?, None)?;
        let m = linear(
            &swiglu(&g, &u)?,
            &w.get(&format!("{p}.mlp.down_proj.weight"))?,
            None,
        )?;
        x = (x + m)?;
    }
    rms_norm(&x, &w.get("model.norm.weight")?, c.rms_norm_eps)
}
