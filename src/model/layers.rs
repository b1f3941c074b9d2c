//! Differentiable building blocks shared by the architectures. Every op here is a composition of
//! candle ops that have a backward pass (matmul, exp, sum, broadcast, narrow, cat, sqrt…); never
//! use candle_nn's fused `*_no_bwd` kernels here (see DESIGN.md: they silently drop gradients).

use candle_core::{D, DType, Device, Result, Tensor};

/// y = x·Wᵀ (+ b), with W stored as [out, in] (PyTorch `nn.Linear`). x: [.., in].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(0)?;
    y.reshape(out)
}

/// y = x·W (+ b), with W stored as [in, out] (GPT-2's `Conv1D`).
pub fn conv1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, inner))?.matmul(w)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(1)?;
    y.reshape(out)
}

/// RMSNorm: x / sqrt(mean(x²) + eps) · w, in the input's dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// LayerNorm: (x − mean) / sqrt(var + eps) · w + b (biased variance, as PyTorch).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?.broadcast_mul(w)?.broadcast_add(b)
}

/// The additive causal mask [T, T]: 0 on and below the diagonal, −inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in (i + 1)..t {
            m[i * t + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (t, t), device)?.to_dtype(dtype)
}

/// cos/sin tables [T, rot/2] for rotary embeddings with the given inverse frequencies.
pub fn rope_tables(
    inv_freq: &[f64],
    t: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for f in inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, half), device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (t, half), device)?.to_dtype(dtype)?,
    ))
}

/// Standard RoPE inverse frequencies: base^(−2i/rot).
pub fn inv_freq(rot: usize, base: f64) -> Vec<f64> {
    (0..rot / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f64 / rot as f64))
        .collect()
}

/// Rotates the two halves of the last dimension (HF's `rotate_half` convention).
/// x: [B, H, T, rot]; cos/sin: [T, rot/2].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rot = x.dim(D::Minus1)?;
    let half = rot / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Scaled dot-product attention with an additive mask. q: [B, H, T, Dh]; k, v: [B, H, S, Dh];
/// mask: [T, S]. Returns [B, T, H·Dh].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, h, t, dh) = q.dims4()?;
    let scale = 1.0 / (dh as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores.broadcast_add(mask)?;
    let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let y = p.matmul(v)?;
    y.transpose(1, 2)?.reshape((b, t, h * dh))
}

/// Repeats key/value heads for grouped-query attention: [B, KV, S, Dh] → [B, KV·n, S, Dh].
pub fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, dh) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n, s, dh))?
        .reshape((b, kv * n, s, dh))
}

/// GELU: exact (erf) or the tanh approximation, both differentiable in candle.
pub fn gelu(x: &Tensor, exact: bool) -> Result<Tensor> {
    if exact { x.gelu_erf() } else { x.gelu() }
}

/// Row-major f32 tensor from anything, for reading values back.
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        Ok(x.clone())
    } else {
        x.to_dtype(DType::F32)
    }
}
