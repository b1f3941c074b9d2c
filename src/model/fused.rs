//! Fused CPU nodes with hand-written backward passes for the hot spots of training, as candle
//! CustomOps. candle's CPU element-wise ops run one thread and one op at a time, and the
//! backward of a composite (RMSNorm, softmax, SwiGLU, RoPE, log-softmax) is many more such ops,
//! so these were 10–50× the cost of their FLOPs. Each node here is one parallel pass forward and
//! one backward, run by the slice kernels of [`super::kernels`]:
//! - [`target_logp`] computes logp[n] = z[n, t_n] − logsumexp(z[n, :]), gradient onehot − softmax;
//! - [`rms_norm`] computes y = x·r·w with r = 1/sqrt(mean(x²) + ε);
//! - [`softmax_causal`] computes softmax(scale·x) over the last dim, optionally causal;
//! - [`swiglu`] computes silu(a)·b;
//! - [`rope`] applies the rotary embedding (HF's two halves) to the first `rot` dims of a head;
//! - [`linear`] and [`attention`] are matmul nodes whose gradients are contiguous;
//! - [`head_logp`] is the LM head fused with the target log-prob (the logits never enter the
//!   graph).
//!
//! CPU and f32/f64 only: callers use the composite candle ops on other devices and dtypes.
//! Every node is checked against its composite in value and gradient (tests below), and the
//! whole model against f64 finite differences (tests/gradients.rs).

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Error, Layout, Result, Shape, Tensor,
    WithDType,
};

use super::kernels::{
    Real, attn_bwd, attn_fwd, gemm_xwt, rms_bwd, rms_fwd, rope_apply, softmax_bwd, softmax_fwd,
    swiglu_bwd, swiglu_fwd, target_logp_grad_rows, target_logp_rows,
};

/// Whether the fused kernels apply to this tensor.
pub fn usable(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Runs `$f::<T>` on the storages' slices for T = f32 or f64 and wraps the Vec result.
macro_rules! by_dtype {
    ($op:expr, $first:expr, $f:ident ( $( $s:expr, $l:expr ),+ ) $(, $extra:expr)* ) => {
        match $first {
            CpuStorage::F32(_) => f32::to_cpu_storage_owned($f::<f32>($( slice::<f32>($s, $l, $op)? ),+ $(, $extra)*)?),
            CpuStorage::F64(_) => f64::to_cpu_storage_owned($f::<f64>($( slice::<f64>($s, $l, $op)? ),+ $(, $extra)*)?),
            _ => return Err(Error::Msg(format!("{}: only f32 and f64", $op))),
        }
    };
}

// ---------------------------------------------------------------- target log-prob

struct TargetLogp;
struct TargetLogpGrad;

impl CustomOp2 for TargetLogp {
    fn name(&self) -> &'static str {
        "target-logp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = slice::<u32>(s2, l2, self.name())?;
        if t.len() != n {
            return Err(Error::Msg(format!(
                "target-logp: {n} rows but {} targets",
                t.len()
            )));
        }
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(target_logp_rows(slice::<f32>(s1, l1, self.name())?, t, v)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(target_logp_rows(slice::<f64>(s1, l1, self.name())?, t, v)?)
            }
            _ => return Err(Error::Msg("target-logp: logits must be f32 or f64".into())),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        t: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // logsumexp per row = z[n, t_n] − logp[n]
        let lse = (z.gather(&t.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)? - res)?;
        let gl = Tensor::stack(&[g, &lse], 1)?;
        let gz = z.contiguous()?.apply_op3_no_bwd(t, &gl, &TargetLogpGrad)?;
        Ok((Some(gz), None))
    }
}

impl CustomOp3 for TargetLogpGrad {
    fn name(&self) -> &'static str {
        "target-logp-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l1.shape().dims2()?;
        let t = slice::<u32>(s2, l2, self.name())?;
        let out = match (s1, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(target_logp_grad_rows(
                slice::<f32>(s1, l1, self.name())?,
                t,
                slice::<f32>(s3, l3, self.name())?,
                v,
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(target_logp_grad_rows(
                slice::<f64>(s1, l1, self.name())?,
                t,
                slice::<f64>(s3, l3, self.name())?,
                v,
            )?),
            _ => {
                return Err(Error::Msg(
                    "target-logp-grad: dtypes must be f32 or f64 and match".into(),
                ));
            }
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm(f64);
struct RmsNormGrad(f64);

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_dtype!(self.name(), s1, rms_fwd(s1, l1, s2, l2), self.0);
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &g.contiguous()?,
            &RmsNormGrad(self.0),
        )?;
        let n = x.elem_count();
        let dx = both.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = both.narrow(0, n, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_dtype!(self.name(), s1, rms_bwd(s1, l1, s2, l2, s3, l3), self.0);
        let n = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, Shape::from(n)))
    }
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm(eps))
}

// ---------------------------------------------------------------- softmax (scaled, causal)

struct Softmax {
    scale: f64,
    causal: bool,
}
struct SoftmaxGrad {
    scale: f64,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        if dims.len() < 2 {
            return Err(Error::Msg("fused-softmax: needs [.., T, S]".into()));
        }
        let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if self.causal && t > s {
            return Err(Error::Msg("fused-softmax: causal needs T <= S".into()));
        }
        let out = by_dtype!(
            self.name(),
            st,
            softmax_fwd(st, l),
            t,
            s,
            self.scale,
            self.causal
        );
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &g.contiguous()?,
            &SoftmaxGrad { scale: self.scale },
        )?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = *l1.shape().dims().last().unwrap_or(&1);
        let out = by_dtype!(self.name(), s1, softmax_bwd(s1, l1, s2, l2), s, self.scale);
        Ok((out, l1.shape().clone()))
    }
}

/// softmax(scale · x) over the last dimension of x [.., T, S]; with `causal`, query i of T sees
/// keys j ≤ i + (S − T) (the rest get probability 0).
pub fn softmax_causal(x: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { scale, causal })
}

// ---------------------------------------------------------------- SwiGLU

struct Swiglu;
struct SwigluGrad;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(Error::Msg("fused-swiglu: shapes differ".into()));
        }
        let out = by_dtype!(self.name(), s1, swiglu_fwd(s1, l1, s2, l2));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both =
            a.contiguous()?
                .apply_op3_no_bwd(&b.contiguous()?, &g.contiguous()?, &SwigluGrad)?;
        let n = a.elem_count();
        Ok((
            Some(both.narrow(0, 0, n)?.reshape(a.shape())?),
            Some(both.narrow(0, n, n)?.reshape(a.shape())?),
        ))
    }
}

impl CustomOp3 for SwigluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = by_dtype!(self.name(), s1, swiglu_bwd(s1, l1, s2, l2, s3, l3));
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }
}

/// silu(a) · b, element-wise.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Swiglu)
}

// ---------------------------------------------------------------- RoPE

/// Rotary embedding on x [B, H, T, D] (first `rot` dims of each head, two halves), with tables
/// cos/sin [T, rot/2]; `sign` −1 applies the inverse rotation (the backward pass).
#[derive(Clone)]
struct Rope {
    cos: Arc<Vec<f64>>,
    sin: Arc<Vec<f64>>,
    rot: usize,
    sign: f64,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, t, d) = l.shape().dims4()?;
        if self.rot > d || self.cos.len() < t * (self.rot / 2) {
            return Err(Error::Msg("fused-rope: tables do not fit the input".into()));
        }
        let out = by_dtype!(
            self.name(),
            st,
            rope_apply(st, l),
            d,
            t,
            self.rot,
            &self.cos,
            &self.sin,
            self.sign
        );
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope {
            sign: -self.sign,
            ..self.clone()
        };
        Ok(Some(g.contiguous()?.apply_op1(inv)?))
    }
}

/// Applies RoPE (HF's rotate-half convention) to the first `rot` dims of each head of
/// x [B, H, T, D]; `cos`/`sin` are [T, rot/2] row-major tables.
pub fn rope(x: &Tensor, cos: Arc<Vec<f64>>, sin: Arc<Vec<f64>>, rot: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        cos,
        sin,
        rot,
        sign: 1.0,
    })
}

// ---------------------------------------------------------------- matmul-based ops

/// y = x·Wᵀ for x [N, in] and W [out, in]. Its backward writes dW = gᵀ·x and dx = g·W as fresh
/// contiguous tensors; candle's own matmul backward hands W a transposed view of its gradient,
/// whose accumulation then crawls through a strided copy.
struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (out, k2) = l2.shape().dims2()?;
        if k != k2 {
            return Err(Error::Msg(format!(
                "fused-linear: x has {k} features but the weight expects {k2}"
            )));
        }
        let st = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(gemm_xwt(
                slice::<f32>(s1, l1, self.name())?,
                slice::<f32>(s2, l2, self.name())?,
                n,
                k,
                out,
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(gemm_xwt(
                slice::<f64>(s1, l1, self.name())?,
                slice::<f64>(s2, l2, self.name())?,
                n,
                k,
                out,
            )?),
            _ => {
                return Err(Error::Msg(
                    "fused-linear: x and W must both be f32 or f64".into(),
                ));
            }
        };
        Ok((st, Shape::from((n, out))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), g.detach());
        let dx = g.matmul(&w)?;
        let dw = g.t()?.matmul(&x)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x [N, in] · W [out, in]ᵀ on the fused path.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// A contiguous CPU tensor's elements, borrowed for `f`.
fn with_slice<T: WithDType, R>(x: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (st, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(c) = &*st else {
        return Err(Error::Msg("fused: expected a CPU tensor".into()));
    };
    f(slice::<T>(c, l, "fused")?)
}

/// Causal attention softmax(scale·q·kᵀ)·v for q [B, H, T, Dh] and k, v [B, H, S, Dh] (same H:
/// repeat kv heads first; S ≥ T, the queries being the last T positions), as one node. Each
/// head runs on one thread with direct gemm calls (the heads in parallel); the backward
/// recomputes the probabilities.
struct Attention {
    scale: f64,
}

impl Attention {
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b, h, t, d) = lq.shape().dims4()?;
        let (b2, h2, s, d2) = lk.shape().dims4()?;
        if (b, h, d) != (b2, h2, d2) || s < t {
            return Err(Error::Msg(format!(
                "fused-attention: q {:?} and k/v {:?} do not fit",
                lq.shape(),
                lk.shape()
            )));
        }
        Ok((b * h, t, s, d))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bh, t, s, d) = self.dims(l1, l2)?;
        let out = by_dtype!(
            self.name(),
            s1,
            attn_fwd(s1, l1, s2, l2, s3, l3),
            bh,
            t,
            s,
            d,
            self.scale
        );
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            g.contiguous()?,
        );
        let (b, h, t, d) = q.dims4()?;
        let s = k.dim(2)?;
        fn run<T: Real + 'static>(
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            g: &Tensor,
            (b, h, t, s, d): (usize, usize, usize, usize, usize),
            scale: f64,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let (dq, dk, dv) = with_slice::<T, _>(q, |qs| {
                with_slice::<T, _>(k, |ks| {
                    with_slice::<T, _>(v, |vs| {
                        with_slice::<T, _>(g, |gs| attn_bwd(qs, ks, vs, gs, b * h, t, s, d, scale))
                    })
                })
            })?;
            let dev = candle_core::Device::Cpu;
            Ok((
                Tensor::from_vec(dq, (b, h, t, d), &dev)?,
                Tensor::from_vec(dk, (b, h, s, d), &dev)?,
                Tensor::from_vec(dv, (b, h, s, d), &dev)?,
            ))
        }
        let dims = (b, h, t, s, d);
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => run::<f32>(&q, &k, &v, &g, dims, self.scale)?,
            DType::F64 => run::<f64>(&q, &k, &v, &g, dims, self.scale)?,
            dt => {
                return Err(Error::Msg(format!(
                    "fused-attention: {dt:?} is not f32/f64"
                )));
            }
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal scaled dot-product attention on the fused path; q [B, H, T, Dh], k, v [B, H, S, Dh].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { scale })
}

/// The LM head and the target log-prob as one node: logp[n] = log softmax(x·Wᵀ)[n, t_n] for
/// hidden states x [N, H], head W [V, H] and targets [N]. The [N, V] logits never enter the
/// graph: the forward keeps them for its own backward (dx = dz·W, dW = dzᵀ·x with
/// dz = g ⊙ (onehot − softmax)), so no logits-sized gradient is zero-filled, added or copied
/// by candle's backprop. Recomputed if the backward runs twice.
struct HeadLogp {
    logits: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp3 for HeadLogp {
    fn name(&self) -> &'static str {
        "fused-head-logp"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = l1.shape().dims2()?;
        let (v, h2) = l2.shape().dims2()?;
        if h != h2 {
            return Err(Error::Msg(format!(
                "fused-head-logp: hidden size {h} but the head expects {h2}"
            )));
        }
        let t = slice::<u32>(s3, l3, self.name())?;
        if t.len() != n {
            return Err(Error::Msg(format!(
                "fused-head-logp: {n} rows but {} targets",
                t.len()
            )));
        }
        let dev = candle_core::Device::Cpu;
        let (out, z) = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let z = gemm_xwt(
                    slice::<f32>(s1, l1, self.name())?,
                    slice::<f32>(s2, l2, self.name())?,
                    n,
                    h,
                    v,
                )?;
                let out = CpuStorage::F32(target_logp_rows(&z, t, v)?);
                (out, Tensor::from_vec(z, (n, v), &dev)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let z = gemm_xwt(
                    slice::<f64>(s1, l1, self.name())?,
                    slice::<f64>(s2, l2, self.name())?,
                    n,
                    h,
                    v,
                )?;
                let out = CpuStorage::F64(target_logp_rows(&z, t, v)?);
                (out, Tensor::from_vec(z, (n, v), &dev)?)
            }
            _ => {
                return Err(Error::Msg(
                    "fused-head-logp: x and W must both be f32 or f64".into(),
                ));
            }
        };
        if let Ok(mut c) = self.logits.lock() {
            *c = Some(z);
        }
        Ok((out, Shape::from(n)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        t: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (x.detach(), w.detach());
        let cached = self.logits.lock().ok().and_then(|mut c| c.take());
        let z = match cached {
            Some(z) => z,
            None => x.matmul(&w.t()?)?,
        };
        let lse = (z.gather(&t.unsqueeze(1)?.contiguous()?, 1)?.squeeze(1)? - res)?;
        let gl = Tensor::stack(&[g, &lse], 1)?;
        let gz = z.apply_op3_no_bwd(t, &gl, &TargetLogpGrad)?;
        drop(z);
        let dx = gz.matmul(&w)?;
        let dw = gz.t()?.matmul(&x)?;
        Ok((Some(dx), Some(dw), None))
    }
}

/// log softmax(x·Wᵀ)[n, t_n] for x [N, H], W [V, H], u32 targets [N], as one differentiable
/// node (CPU, f32/f64; see [`HeadLogp`]).
pub fn head_logp(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &targets.contiguous()?,
        HeadLogp {
            logits: std::sync::Mutex::new(None),
        },
    )
}

/// logp[n] = z[n, t_n] − logsumexp(z[n, :]) for logits [N, V] and u32 targets [N], differentiable
/// with respect to the logits. Fused on CPU for f32/f64; composite candle ops otherwise.
pub fn target_logp(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let fused = logits.device().is_cpu() && matches!(logits.dtype(), DType::F32 | DType::F64);
    if fused {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TargetLogp)
    } else {
        let picked = logits
            .gather(&targets.unsqueeze(1)?.contiguous()?, 1)?
            .squeeze(1)?;
        picked - logits.log_sum_exp(1)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn composite(z: &Tensor, t: &Tensor) -> Tensor {
        let picked = z
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        (picked - z.log_sum_exp(1).unwrap()).unwrap()
    }

    #[test]
    fn fused_matches_composite_values_and_gradients() {
        let d = Device::Cpu;
        let (n, v) = (7usize, 11usize);
        let data: Vec<f64> = (0..n * v)
            .map(|i| ((i * 31 % 17) as f64 - 8.0) / 3.0)
            .collect();
        let z = Var::from_vec(data, (n, v), &d).unwrap();
        let t = Tensor::new(&[0u32, 3, 10, 5, 5, 1, 9], &d).unwrap();
        let w = Tensor::new(&[1.0f64, -2.0, 0.5, 0.0, 3.0, 1.5, -1.0], &d).unwrap();
        let a = target_logp(z.as_tensor(), &t).unwrap();
        let b = composite(z.as_tensor(), &t);
        let (va, vb): (Vec<f64>, Vec<f64>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-12);
        }
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let ga: Vec<Vec<f64>> = ga.get(z.as_tensor()).unwrap().to_vec2().unwrap();
        let gb: Vec<Vec<f64>> = gb.get(z.as_tensor()).unwrap().to_vec2().unwrap();
        for (ra, rb) in ga.iter().zip(&gb) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < 1e-12, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn fused_head_matches_linear_then_target_logp() {
        let d = Device::Cpu;
        let (n, h, v) = (6usize, 5usize, 9usize);
        let x = var(&[n, h], 1);
        let w = var(&[v, h], 2);
        let t = Tensor::new(&[0u32, 8, 3, 3, 7, 1], &d).unwrap();
        let up = Tensor::new(&[1.0f64, -0.5, 2.0, 0.0, 0.25, -1.5], &d).unwrap();
        let a = head_logp(x.as_tensor(), w.as_tensor(), &t).unwrap();
        let b = target_logp(
            &x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap(),
            &t,
        )
        .unwrap();
        let (va, vb): (Vec<f64>, Vec<f64>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (p, q) in va.iter().zip(&vb) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
        let ga = (&a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &w] {
            let p: Vec<f64> = ga
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let q: Vec<f64> = gb
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (p, q) in p.iter().zip(&q) {
                assert!((p - q).abs() < 1e-10, "grad {p} vs {q}");
            }
        }
        // a second backward (logits no longer cached) recomputes them
        let gc = (&a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let p: Vec<f64> = gc
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let q: Vec<f64> = gb
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (p, q) in p.iter().zip(&q) {
            assert!((p - q).abs() < 1e-10);
        }
    }

    #[test]
    fn swiglu_is_stable_at_extremes_in_f32() {
        let a = Tensor::new(
            &[-200.0f32, -90.0, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0, 200.0],
            &Device::Cpu,
        )
        .unwrap();
        let b = a.ones_like().unwrap();
        let got: Vec<f32> = swiglu(&a, &b).unwrap().to_vec1().unwrap();
        for (x, g) in a.to_vec1::<f32>().unwrap().iter().zip(&got) {
            let want = f64::from(*x) / (1.0 + (-f64::from(*x)).exp());
            assert!(
                (f64::from(*g) - want).abs() <= 1e-6 * want.abs().max(1e-30),
                "silu({x}) = {g}, want {want}"
            );
        }
    }

    fn var(shape: &[usize], seed: usize) -> Var {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n)
            .map(|i| (((i + seed) * 7919 % 211) as f64 - 105.0) / 60.0)
            .collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Value and gradients (w.r.t. every input) of `fused` equal those of `composite`.
    fn same(
        inputs: &[&Var],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composite: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&ts);
        let b = composite(&ts);
        let w = var(a.dims(), 3).as_tensor().detach();
        let va: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-10, "value {x} vs {y}");
        }
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in inputs {
            let x: Vec<f64> = ga
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let y: Vec<f64> = gb
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-10, "gradient {p} vs {q}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_composite() {
        let (x, w) = (var(&[3, 5, 8], 1), var(&[8], 2));
        same(
            &[&x, &w],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| {
                let inv = ((t[0].sqr().unwrap().mean_keepdim(2).unwrap() + 1e-5)
                    .unwrap()
                    .sqrt()
                    .unwrap())
                .recip()
                .unwrap();
                t[0].broadcast_mul(&inv)
                    .unwrap()
                    .broadcast_mul(&t[1])
                    .unwrap()
            },
        );
    }

    #[test]
    fn softmax_matches_composite_with_and_without_causal_mask() {
        for (tq, s) in [(6usize, 6usize), (3, 7)] {
            let x = var(&[2, 3, tq, s], 5);
            let mut m = vec![0f64; tq * s];
            for i in 0..tq {
                for j in 0..s {
                    if j > i + s - tq {
                        m[i * s + j] = f64::NEG_INFINITY;
                    }
                }
            }
            let mask = Tensor::from_vec(m, (tq, s), &Device::Cpu).unwrap();
            same(
                &[&x],
                |t| softmax_causal(&t[0], 0.7, true).unwrap(),
                |t| {
                    candle_nn::ops::softmax(
                        &(&t[0] * 0.7).unwrap().broadcast_add(&mask).unwrap(),
                        3,
                    )
                    .unwrap()
                },
            );
            same(
                &[&x],
                |t| softmax_causal(&t[0], 1.3, false).unwrap(),
                |t| candle_nn::ops::softmax(&(&t[0] * 1.3).unwrap(), 3).unwrap(),
            );
        }
    }

    #[test]
    fn swiglu_matches_composite() {
        let (a, b) = (var(&[4, 9], 1), var(&[4, 9], 2));
        same(
            &[&a, &b],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        );
    }

    #[test]
    fn rope_matches_composite_full_and_partial() {
        let (tq, d) = (5usize, 8usize);
        for rot in [8usize, 4] {
            let x = var(&[2, 3, tq, d], 4);
            let freqs = crate::model::layers::inv_freq(rot, 100.0);
            let mut cos = Vec::new();
            let mut sin = Vec::new();
            for p in 0..tq {
                for f in &freqs {
                    cos.push((p as f64 * f).cos());
                    sin.push((p as f64 * f).sin());
                }
            }
            let ct = Tensor::from_vec(cos.clone(), (tq, rot / 2), &Device::Cpu).unwrap();
            let st = Tensor::from_vec(sin.clone(), (tq, rot / 2), &Device::Cpu).unwrap();
            let (c, s) = (Arc::new(cos), Arc::new(sin));
            same(
                &[&x],
                |t| rope(&t[0], c.clone(), s.clone(), rot).unwrap(),
                |t| {
                    let r = crate::model::layers::apply_rope_composite(
                        &t[0].narrow(3, 0, rot).unwrap(),
                        &ct,
                        &st,
                    )
                    .unwrap();
                    if rot == d {
                        r
                    } else {
                        Tensor::cat(&[&r, &t[0].narrow(3, rot, d - rot).unwrap()], 3).unwrap()
                    }
                },
            );
        }
    }

    #[test]
    fn linear_and_attention_match_composite() {
        let (x, w) = (var(&[6, 5], 1), var(&[4, 5], 2));
        same(
            &[&x, &w],
            |t| linear(&t[0], &t[1]).unwrap(),
            |t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        );
        let (q, k, v) = (
            var(&[2, 3, 5, 4], 1),
            var(&[2, 3, 5, 4], 2),
            var(&[2, 3, 5, 4], 3),
        );
        let mut m = vec![0f64; 25];
        for i in 0..5 {
            for j in (i + 1)..5 {
                m[i * 5 + j] = f64::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (5, 5), &Device::Cpu).unwrap();
        same(
            &[&q, &k, &v],
            |t| attention(&t[0], &t[1], &t[2], 0.5).unwrap(),
            |t| {
                let s = (t[0].matmul(&t[1].t().unwrap()).unwrap() * 0.5)
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap();
                candle_nn::ops::softmax(&s, 3)
                    .unwrap()
                    .matmul(&t[2])
                    .unwrap()
            },
        );
        // 3 queries after 4 cached positions (S = 7 > T = 3): query i sees keys j ≤ i + 4
        let (q, k, v) = (
            var(&[2, 3, 3, 4], 4),
            var(&[2, 3, 7, 4], 5),
            var(&[2, 3, 7, 4], 6),
        );
        let mut m = vec![0f64; 21];
        for i in 0..3 {
            for j in (i + 5)..7 {
                m[i * 7 + j] = f64::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (3, 7), &Device::Cpu).unwrap();
        same(
            &[&q, &k, &v],
            |t| attention(&t[0], &t[1], &t[2], 0.7).unwrap(),
            |t| {
                let s = (t[0].matmul(&t[1].t().unwrap()).unwrap() * 0.7)
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap();
                candle_nn::ops::softmax(&s, 3)
                    .unwrap()
                    .matmul(&t[2])
                    .unwrap()
            },
        );
    }

    #[test]
    fn out_of_range_target_is_an_error() {
        let d = Device::Cpu;
        let z = Tensor::zeros((2, 4), DType::F32, &d).unwrap();
        let t = Tensor::new(&[1u32, 4], &d).unwrap();
        assert!(target_logp(&z, &t).is_err());
    }
}
