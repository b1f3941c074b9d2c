//! Differentiable building blocks shared by the architectures. Every op here is a composition of
//! candle ops that have a backward pass (matmul, exp, sum, broadcast, narrow, cat, sqrt…); never
//! use candle_nn's fused `*_no_bwd` kernels here (they silently drop gradients: backward() succeeds, the gradient just stops).

use candle_core::{D, DType, Device, Result, Tensor};

/// y = x·Wᵀ (+ b), with W stored as [out, in] (PyTorch `nn.Linear`). x: [.., in].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, inner))?;
    let y = if super::fused::usable(&x2) {
        super::fused::linear(&x2, w)?
    } else {
        x2.matmul(&w.t()?)?
    };
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

/// The dtype reductions run in: f32 for bf16/f16 inputs, the input's own otherwise.
fn wide(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

/// RMSNorm: x / sqrt(mean(x²) + eps) · w (fused on CPU, see fused.rs). bf16/f16 inputs are
/// normalized in f32 and the result cast back (as transformers does).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if super::fused::usable(x) {
        return super::fused::rms_norm(x, w, eps);
    }
    let dt = x.dtype();
    let xf = x.to_dtype(wide(dt))?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    xf.broadcast_mul(&inv)?
        .broadcast_mul(&w.to_dtype(wide(dt))?)?
        .to_dtype(dt)
}

/// silu(a) · b (fused on CPU).
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::fused::usable(a) {
        return super::fused::swiglu(a, b);
    }
    a.silu()? * b
}

/// LayerNorm: (x − mean) / sqrt(var + eps) · w + b (biased variance, as PyTorch); in f32
/// for bf16/f16 inputs, cast back.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x = x.to_dtype(wide(dt))?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .broadcast_mul(&w.to_dtype(wide(dt))?)?
        .broadcast_add(&b.to_dtype(wide(dt))?)?
        .to_dtype(dt)
}

/// The additive causal mask [T, T]: 0 on and below the diagonal, −inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    causal_mask_after(t, 0, dtype, device)
}

/// The additive causal mask [T, P + T] of T new positions that follow P cached ones: query i
/// sees every cached key and the new keys j ≤ i.
pub fn causal_mask_after(t: usize, p: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let s = p + t;
    let mut m = vec![0f32; t * s];
    for i in 0..t {
        for j in (p + i + 1)..s {
            m[i * s + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (t, s), device)?.to_dtype(dtype)
}

/// Keys and values of a shared prefix (one sequence), per layer, as the attention sees them
/// (after RoPE, before grouped-query repetition): [1, KV heads, P, Dh] each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
    pub len: usize,
}

/// How a forward pass uses a [`KvCache`]: not at all, filling it (the prefix pass), or
/// attending to it first (the rows that continue the prefix, all with the same prefix).
pub enum KvMode<'a> {
    Off,
    Record(&'a mut KvCache),
    Attend(&'a KvCache),
}

impl KvMode<'_> {
    /// Position of the first new token.
    pub fn offset(&self) -> usize {
        match self {
            KvMode::Attend(c) => c.len,
            _ => 0,
        }
    }

    /// The keys and values layer `layer` attends to: its own (`Off`, `Record`, which also stores
    /// them) or the cached prefix's followed by its own (`Attend`; the prefix is broadcast over
    /// the batch). k, v: [B, KV heads, T, Dh].
    pub fn keys_values(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            KvMode::Off => Ok((k, v)),
            KvMode::Record(c) => {
                if layer == 0 {
                    c.layers.clear();
                    c.len = k.dim(2)?;
                }
                c.layers.push((k.clone(), v.clone()));
                Ok((k, v))
            }
            KvMode::Attend(c) => {
                let (pk, pv) = c.layers.get(layer).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the KV cache has no layer {layer}"))
                })?;
                let (b, h, _, dh) = k.dims4()?;
                let grow = |p: &Tensor, x: &Tensor| -> Result<Tensor> {
                    let p = p.broadcast_as((b, h, c.len, dh))?;
                    Tensor::cat(&[&p, x], 2)?.contiguous()
                };
                Ok((grow(pk, &k)?, grow(pv, &v)?))
            }
        }
    }
}

/// Rotary-embedding tables for T positions: cos/sin [T, rot/2] as tensors (composite path)
/// and as shared f64 tables (fused path).
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    cos_v: std::sync::Arc<Vec<f64>>,
    sin_v: std::sync::Arc<Vec<f64>>,
    pub rot: usize,
}

impl Rope {
    pub fn new(inv_freq: &[f64], t: usize, dtype: DType, device: &Device) -> Result<Rope> {
        Rope::at(inv_freq, 0, t, dtype, device)
    }

    /// Tables for the T positions start, start + 1, … (rows continuing a cached prefix).
    pub fn at(
        inv_freq: &[f64],
        start: usize,
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Rope> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos.clone(), (t, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin.clone(), (t, half), device)?.to_dtype(dtype)?,
            cos_v: std::sync::Arc::new(cos),
            sin_v: std::sync::Arc::new(sin),
            rot: 2 * half,
        })
    }

    /// Rotates the first `rot` dims of each head of x [B, H, T, Dh]; the rest pass through.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.rot == 0 {
            return Ok(x.clone());
        }
        if super::fused::usable(x) {
            return super::fused::rope(x, self.cos_v.clone(), self.sin_v.clone(), self.rot);
        }
        let dh = x.dim(D::Minus1)?;
        let r = apply_rope_composite(&x.narrow(D::Minus1, 0, self.rot)?, &self.cos, &self.sin)?;
        if self.rot == dh {
            return Ok(r);
        }
        Tensor::cat(
            &[&r, &x.narrow(D::Minus1, self.rot, dh - self.rot)?],
            D::Minus1,
        )
    }
}

/// Standard RoPE inverse frequencies: base^(−2i/rot).
pub fn inv_freq(rot: usize, base: f64) -> Vec<f64> {
    (0..rot / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f64 / rot as f64))
        .collect()
}

/// Rotates the two halves of the last dimension (HF's `rotate_half` convention).
/// x: [B, H, T, rot]; cos/sin: [T, rot/2].
pub fn apply_rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rot = x.dim(D::Minus1)?;
    let half = rot / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Causal scaled dot-product attention. q: [B, H, T, Dh]; k, v: [B, H, S, Dh] with S ≥ T, the
/// queries being the last T of the S positions; `mask` is the additive causal mask [T, S] used
/// off the fused path. Returns [B, T, H·Dh].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, h, t, dh) = q.dims4()?;
    let scale = 1.0 / (dh as f64).sqrt();
    let y = if super::fused::usable(q) {
        super::fused::attention(q, k, v, scale)?
    } else {
        // scores, mask and softmax in f32 whatever the compute dtype
        let wd = wide(q.dtype());
        let scores =
            (q.matmul(&k.t()?)?.to_dtype(wd)? * scale)?.broadcast_add(&mask.to_dtype(wd)?)?;
        candle_nn::ops::softmax(&scores, D::Minus1)?
            .to_dtype(q.dtype())?
            .matmul(v)?
    };
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
