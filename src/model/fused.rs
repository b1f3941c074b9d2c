//! Fused CPU kernels with hand-written backward passes for the hot spots of training. candle's
//! CPU element-wise ops run one thread and one op at a time, and the backward of a composite
//! (RMSNorm, softmax, SwiGLU, RoPE, log-softmax) is many more such ops, so these were 10–50× the
//! cost of their FLOPs. Each kernel here is one parallel pass forward and one backward:
//! - [`target_logp`] computes logp[n] = z[n, t_n] − logsumexp(z[n, :]), gradient onehot − softmax;
//! - [`rms_norm`] computes y = x·r·w with r = 1/sqrt(mean(x²) + ε);
//! - [`softmax_causal`] computes softmax(scale·x) over the last dim, optionally causal;
//! - [`swiglu`] computes silu(a)·b;
//! - [`rope`] applies the rotary embedding (HF's two halves) to the first `rot` dims of a head.
//!
//! CPU and f32/f64 only: callers use the composite candle ops on other devices and dtypes.
//! Every kernel is checked against its composite in value and gradient (tests below), and the
//! whole model against f64 finite differences (tests/gradients.rs).

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Error, Layout, Result, Shape, Tensor,
    WithDType,
};
use rayon::prelude::*;

/// Whether the fused kernels apply to this tensor.
pub fn usable(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Floats the kernels are written for. The f32 versions of the row kernels run eight lanes at
/// a time (`wide`): written as scalar loops, a float max or sum is one long dependency chain
/// that the compiler may not reorder, and SwiGLU's branch keeps it scalar too (~2 ns per
/// element).
pub(super) trait Real: WithDType + std::ops::Neg<Output = Self> {
    fn abs_(self) -> Self;
    fn min_(self, o: Self) -> Self;
    /// exp of every element, in place, for arguments ≤ 0 (what softmax-like kernels need).
    fn exp_nonpos(xs: &mut [Self]);
    /// The largest element (−∞ for none; NaNs are skipped).
    fn max_of(xs: &[Self]) -> Self {
        xs.iter().copied().fold(
            Self::from_f64(f64::NEG_INFINITY),
            |m, x| if x > m { x } else { m },
        )
    }
    /// Σ xs in f64.
    fn sum_f64(xs: &[Self]) -> f64 {
        xs.iter().map(|x| x.to_f64()).sum()
    }
    /// y = silu(a)·b element-wise.
    fn swiglu(a: &[Self], b: &[Self], y: &mut [Self]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            let e = (-a.abs_()).to_f64().exp();
            let s = Self::from_f64(if a >= Self::zero() {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            });
            *y = a * s * b;
        }
    }
    /// y = silu(a)·b and s = σ(a) element-wise.
    fn swiglu_sig(a: &[Self], b: &[Self], y: &mut [Self], s: &mut [Self]) {
        for j in 0..a.len() {
            let e = (-a[j].abs_()).to_f64().exp();
            s[j] = Self::from_f64(if a[j] >= Self::zero() {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            });
            y[j] = a[j] * s[j] * b[j];
        }
    }
    /// The backward of [`Real::swiglu`]: da = g·b·σ(a)·(1 + a·(1 − σ(a))), db = g·silu(a).
    fn swiglu_grad(a: &[Self], b: &[Self], g: &[Self], da: &mut [Self], db: &mut [Self]) {
        for j in 0..a.len() {
            let e = (-a[j].abs_()).to_f64().exp();
            let s = Self::from_f64(if a[j] >= Self::zero() {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            });
            da[j] = g[j] * b[j] * s * (Self::one() + a[j] * (Self::one() - s));
            db[j] = g[j] * a[j] * s;
        }
    }
}
impl Real for f32 {
    fn abs_(self) -> Self {
        self.abs()
    }
    fn min_(self, o: Self) -> Self {
        self.min(o)
    }
    fn exp_nonpos(xs: &mut [f32]) {
        exp_nonpos_f32(xs);
    }
    fn max_of(xs: &[f32]) -> f32 {
        let mut ch = xs.chunks_exact(8);
        let mut m = f32x8::splat(f32::NEG_INFINITY);
        for c in &mut ch {
            m = m.max(lanes(c));
        }
        let m = m.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max);
        ch.remainder().iter().copied().fold(m, f32::max)
    }
    fn sum_f64(xs: &[f32]) -> f64 {
        // eight f32 lanes over blocks of 256 (32 values per lane), blocks summed in f64
        let mut total = 0f64;
        for block in xs.chunks(256) {
            let mut acc = f32x8::ZERO;
            let mut ch = block.chunks_exact(8);
            for c in &mut ch {
                acc += lanes(c);
            }
            total += acc.to_array().iter().map(|&x| f64::from(x)).sum::<f64>()
                + ch.remainder().iter().map(|&x| f64::from(x)).sum::<f64>();
        }
        total
    }
    fn swiglu(a: &[f32], b: &[f32], y: &mut [f32]) {
        let n8 = a.len() / 8 * 8;
        for ((yc, ac), bc) in y[..n8]
            .chunks_exact_mut(8)
            .zip(a[..n8].chunks_exact(8))
            .zip(b[..n8].chunks_exact(8))
        {
            let a = lanes(ac);
            let s = sigmoid8(a);
            yc.copy_from_slice(&(a * s * lanes(bc)).to_array());
        }
        for j in n8..a.len() {
            let e = (-a[j].abs()).exp();
            y[j] = a[j] * sigmoid_from(a[j], e) * b[j];
        }
    }
    fn swiglu_sig(a: &[f32], b: &[f32], y: &mut [f32], s: &mut [f32]) {
        let n8 = a.len() / 8 * 8;
        for (((yc, sc), ac), bc) in y[..n8]
            .chunks_exact_mut(8)
            .zip(s[..n8].chunks_exact_mut(8))
            .zip(a[..n8].chunks_exact(8))
            .zip(b[..n8].chunks_exact(8))
        {
            let a = lanes(ac);
            let sg = sigmoid8(a);
            sc.copy_from_slice(&sg.to_array());
            yc.copy_from_slice(&(a * sg * lanes(bc)).to_array());
        }
        for j in n8..a.len() {
            let e = (-a[j].abs()).exp();
            s[j] = sigmoid_from(a[j], e);
            y[j] = a[j] * s[j] * b[j];
        }
    }
    fn swiglu_grad(a: &[f32], b: &[f32], g: &[f32], da: &mut [f32], db: &mut [f32]) {
        let n8 = a.len() / 8 * 8;
        let one = f32x8::splat(1.0);
        for (((dac, dbc), (ac, bc)), gc) in da[..n8]
            .chunks_exact_mut(8)
            .zip(db[..n8].chunks_exact_mut(8))
            .zip(a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)))
            .zip(g[..n8].chunks_exact(8))
        {
            let (a, b, g) = (lanes(ac), lanes(bc), lanes(gc));
            let s = sigmoid8(a);
            dac.copy_from_slice(&(g * b * s * (one + a * (one - s))).to_array());
            dbc.copy_from_slice(&(g * a * s).to_array());
        }
        for j in n8..a.len() {
            let e = (-a[j].abs()).exp();
            let s = sigmoid_from(a[j], e);
            da[j] = g[j] * b[j] * s * (1.0 + a[j] * (1.0 - s));
            db[j] = g[j] * a[j] * s;
        }
    }
}
impl Real for f64 {
    fn abs_(self) -> Self {
        self.abs()
    }
    fn min_(self, o: Self) -> Self {
        self.min(o)
    }
    fn exp_nonpos(xs: &mut [f64]) {
        for x in xs {
            *x = x.exp();
        }
    }
}

use wide::{CmpGe, f32x8};

/// Eight consecutive f32s (the caller passes chunks of exactly 8).
#[inline]
fn lanes(c: &[f32]) -> f32x8 {
    let mut a = [0f32; 8];
    a.copy_from_slice(c);
    f32x8::from(a)
}

/// σ(a) per lane from e = exp(−|a|): 1/(1+e) for a ≥ 0, e/(1+e) below (stable at ±∞).
#[inline]
fn sigmoid8(a: f32x8) -> f32x8 {
    let one = f32x8::splat(1.0);
    let e = (-a.abs()).exp();
    let inv = one / (one + e);
    a.cmp_ge(f32x8::ZERO).blend(inv, e * inv)
}

/// exp(x) in place for x ≤ 0 (−∞ gives 0), eight lanes at a time with `wide`'s polynomial
/// exp (relative error ~1e-7 against libm, see the test): the scalar libm call was the cost of
/// SwiGLU, softmax and the log-softmax of the logits. Arguments below −87.3 give 0 (their
/// exp is subnormal or 0 anyway, and FTZ is on).
pub fn exp_nonpos_f32(xs: &mut [f32]) {
    use wide::f32x8;
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0f32; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&f32x8::from(a).exp().to_array());
    }
    for x in chunks.into_remainder() {
        *x = x.exp();
    }
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

/// logsumexp of a row: max and exponentials in T (in blocks of 512), their sum in f64.
fn row_lse<T: Real>(z: &[T]) -> f64 {
    let m = T::max_of(z);
    let mut buf = [T::zero(); 512];
    let mut s = 0f64;
    for ch in z.chunks(512) {
        let b = &mut buf[..ch.len()];
        for (o, &x) in b.iter_mut().zip(ch) {
            *o = x - m;
        }
        T::exp_nonpos(b);
        s += T::sum_f64(b);
    }
    m.to_f64() + s.ln()
}

fn tl_fwd<T: Real>(z: &[T], t: &[u32], v: usize) -> Result<Vec<T>> {
    z.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &ti)| {
            let x = row.get(ti as usize).copied().ok_or_else(|| {
                Error::Msg(format!("target-logp: target {ti} outside vocabulary {v}"))
            })?;
            Ok(T::from_f64(x.to_f64() - row_lse(row)))
        })
        .collect()
}

/// `gl` holds (upstream gradient, logsumexp) per row: the normalizer needs no second pass.
fn tl_bwd<T: Real>(z: &[T], t: &[u32], gl: &[T], v: usize) -> Result<Vec<T>> {
    let mut out = vec![T::zero(); z.len()];
    out.par_chunks_mut(v)
        .zip(z.par_chunks(v))
        .zip(t.par_iter().zip(gl.par_chunks(2)))
        .for_each(|((o, row), (&ti, gl))| {
            let (gi, lse) = (gl[0], gl[1]);
            if gi == T::zero() {
                return;
            }
            for (oj, &zj) in o.iter_mut().zip(row) {
                *oj = (zj - lse).min_(T::zero());
            }
            T::exp_nonpos(o);
            for oj in o.iter_mut() {
                *oj = -gi * *oj;
            }
            if let Some(x) = o.get_mut(ti as usize) {
                *x += gi;
            }
        });
    Ok(out)
}

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
                CpuStorage::F32(tl_fwd(slice::<f32>(s1, l1, self.name())?, t, v)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(tl_fwd(slice::<f64>(s1, l1, self.name())?, t, v)?)
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
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(tl_bwd(
                slice::<f32>(s1, l1, self.name())?,
                t,
                slice::<f32>(s3, l3, self.name())?,
                v,
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(tl_bwd(
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

pub(super) fn rms_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Result<Vec<T>> {
    let h = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(yr, xr)| {
            let ms = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / h as f64;
            let r = T::from_f64(1.0 / (ms + eps).sqrt());
            for j in 0..h {
                yr[j] = xr[j] * r * w[j];
            }
        });
    Ok(y)
}

/// [dx (x.len()) ; dw (h)] in one buffer.
pub(super) fn rms_bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Result<Vec<T>> {
    let h = w.len();
    let rows = x.len() / h;
    let mut out = vec![T::zero(); x.len() + h];
    let (dx, _) = out.split_at_mut(x.len());
    let block = rows
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    let partial: Vec<Vec<f64>> = dx
        .par_chunks_mut(h * block)
        .zip(x.par_chunks(h * block).zip(g.par_chunks(h * block)))
        .map(|(dxb, (xb, gb))| {
            let mut dw = vec![0f64; h];
            for ((dxr, xr), gr) in dxb.chunks_mut(h).zip(xb.chunks(h)).zip(gb.chunks(h)) {
                let ms = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / h as f64;
                let r = 1.0 / (ms + eps).sqrt();
                let c = (0..h)
                    .map(|j| w[j].to_f64() * gr[j].to_f64() * xr[j].to_f64())
                    .sum::<f64>()
                    / h as f64;
                for j in 0..h {
                    let (xj, gj) = (xr[j].to_f64(), gr[j].to_f64());
                    dxr[j] = T::from_f64(r * w[j].to_f64() * gj - xj * r * r * r * c);
                    dw[j] += gj * xj * r;
                }
            }
            dw
        })
        .collect();
    for p in partial {
        for j in 0..h {
            out[x.len() + j] += T::from_f64(p[j]);
        }
    }
    Ok(out)
}

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

/// One row of softmax(scale · x) in place, over its first `n` entries (the rest become 0: keys
/// a causal query does not see). Shared by the softmax node and the fused attention.
pub(super) fn softmax_row<T: Real>(row: &mut [T], n: usize, scale: f64) {
    let sc = T::from_f64(scale);
    for x in &mut row[..n] {
        *x *= sc;
    }
    let m = T::max_of(&row[..n]);
    for x in &mut row[..n] {
        *x = (*x - m).min_(T::zero());
    }
    T::exp_nonpos(&mut row[..n]);
    let sum = T::sum_f64(&row[..n]);
    let inv = T::from_f64(1.0 / sum);
    for x in &mut row[..n] {
        *x *= inv;
    }
    for x in &mut row[n..] {
        *x = T::zero();
    }
}

/// The backward of [`softmax_row`] in place: g ← scale · p ⊙ (g − ⟨p, g⟩).
pub(super) fn softmax_grad_row<T: Real>(p: &[T], g: &mut [T], scale: f64) {
    let dot: f64 = p
        .iter()
        .zip(g.iter())
        .map(|(a, b)| a.to_f64() * b.to_f64())
        .sum();
    let (dot, sc) = (T::from_f64(dot), T::from_f64(scale));
    for (x, &pj) in g.iter_mut().zip(p) {
        *x = sc * pj * (*x - dot);
    }
}

/// Causal (query i of T sees keys j ≤ i + (S − T)) or full softmax over rows of length `s`.
pub(super) fn softmax_n(i: usize, t: usize, s: usize, causal: bool) -> usize {
    if causal { (i + 1 + s - t).min(s) } else { s }
}

fn softmax_fwd<T: Real>(x: &[T], t: usize, s: usize, scale: f64, causal: bool) -> Result<Vec<T>> {
    let mut y = x.to_vec();
    y.par_chunks_mut(s)
        .enumerate()
        .for_each(|(row, yr)| softmax_row(yr, softmax_n(row % t, t, s, causal), scale));
    Ok(y)
}

fn softmax_bwd<T: Real>(y: &[T], g: &[T], s: usize, scale: f64) -> Result<Vec<T>> {
    let mut dx = g.to_vec();
    dx.par_chunks_mut(s)
        .zip(y.par_chunks(s))
        .for_each(|(dr, yr)| softmax_grad_row(yr, dr, scale));
    Ok(dx)
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

fn swiglu_fwd<T: Real>(a: &[T], b: &[T]) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(4096)
        .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
        .for_each(|(yc, (ac, bc))| T::swiglu(ac, bc, yc));
    Ok(y)
}

/// σ(a) from e = exp(−|a|), stable for any a.
#[inline]
fn sigmoid_from<T: Real>(a: T, e: T) -> T {
    if a >= T::zero() {
        T::one() / (T::one() + e)
    } else {
        e / (T::one() + e)
    }
}

/// [da ; db] in one buffer.
fn swiglu_bwd<T: Real>(a: &[T], b: &[T], g: &[T]) -> Result<Vec<T>> {
    let n = a.len();
    let mut out = vec![T::zero(); 2 * n];
    let (da, db) = out.split_at_mut(n);
    da.par_chunks_mut(4096)
        .zip(db.par_chunks_mut(4096))
        .zip(
            a.par_chunks(4096)
                .zip(b.par_chunks(4096))
                .zip(g.par_chunks(4096)),
        )
        .for_each(|((dac, dbc), ((ac, bc), gc))| T::swiglu_grad(ac, bc, gc, dac, dbc));
    Ok(out)
}

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

fn rope_apply<T: Real>(
    x: &[T],
    d: usize,
    t: usize,
    rot: usize,
    cos: &[f64],
    sin: &[f64],
    sign: f64,
) -> Result<Vec<T>> {
    let half = rot / 2;
    let mut y = x.to_vec();
    y.par_chunks_mut(d).enumerate().for_each(|(row, yr)| {
        let p = row % t;
        for i in 0..half {
            let (c, s) = (cos[p * half + i], sign * sin[p * half + i]);
            let (a, b) = (yr[i].to_f64(), yr[i + half].to_f64());
            yr[i] = T::from_f64(a * c - b * s);
            yr[i + half] = T::from_f64(b * c + a * s);
        }
    });
    Ok(y)
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
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(gemm_xwt(
                slice::<f64>(s1, l1, self.name())?,
                slice::<f64>(s2, l2, self.name())?,
                n,
                k,
                out,
            )),
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

/// y = x·Wᵀ straight from the storages (x [n, k], W [out, k], both contiguous), with the gemm
/// crate on rayon's threads: no input copies.
fn gemm_xwt<T: WithDType + 'static>(x: &[T], w: &[T], n: usize, k: usize, out: usize) -> Vec<T> {
    let mut y = vec![T::zero(); n * out];
    if n == 0 || out == 0 {
        return y;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && n * out * k >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover x (n·k), W (out·k) and y (n·out) with the strides given:
    // y[i, j] at i·out + j, x[i, l] at i·k + l, and Wᵀ[l, j] = W[j, l] at j·k + l.
    unsafe {
        gemm::gemm(
            n,
            out,
            k,
            y.as_mut_ptr(),
            1,
            out as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
    y
}

/// x [N, in] · W [out, in]ᵀ on the fused path.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// C (m×n, row stride `c_rs`) = A·B on one thread, with A and B given by (row, column)
/// strides: the per-head products of attention are far too small to split across threads.
#[allow(clippy::too_many_arguments)]
fn mm1<T: WithDType + 'static>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    c_rs: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
) {
    debug_assert!(c.len() >= (m - 1) * c_rs + n);
    // SAFETY: the callers pass slices that cover (m−1)·rs + (cols−1)·cs + 1 elements of each
    // operand with the strides given (one head's q, k, v, scores or gradients).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Causal softmax(scale·s) of one head's scores [T, S] in place: query i sees keys
/// j ≤ i + (S − T); the rest become 0.
fn softmax_rows_causal<T: Real>(p: &mut [T], t: usize, s: usize, scale: f64) {
    for (i, row) in p.chunks_mut(s).take(t).enumerate() {
        softmax_row(row, softmax_n(i, t, s, true), scale);
    }
}

/// Per head (in parallel over B·H): p = causal softmax(scale·q·kᵀ), out = p·v.
/// q [BH, T, D], k, v [BH, S, D] → [BH, T, D].
#[allow(clippy::too_many_arguments)]
fn attn_fwd<T: Real + 'static>(
    q: &[T],
    k: &[T],
    v: &[T],
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); bh * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each(|(h, o)| {
        let (qh, kh, vh) = (
            &q[h * t * d..(h + 1) * t * d],
            &k[h * s * d..(h + 1) * s * d],
            &v[h * s * d..(h + 1) * s * d],
        );
        let mut p = vec![T::zero(); t * s];
        mm1(t, s, d, &mut p, s, qh, d, 1, kh, 1, d); // q·kᵀ
        softmax_rows_causal(&mut p, t, s, scale);
        mm1(t, d, s, o, d, &p, s, 1, vh, d, 1); // p·v
    });
    out
}

/// The backward of [`attn_fwd`] per head (heads in parallel): (dq [BH, T, D], dk [BH, S, D],
/// dv [BH, S, D]).
#[allow(clippy::too_many_arguments)]
fn attn_bwd<T: Real + 'static>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: &[T],
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dq_all = vec![T::zero(); bh * t * d];
    let mut dk_all = vec![T::zero(); bh * s * d];
    let mut dv_all = vec![T::zero(); bh * s * d];
    dq_all
        .par_chunks_mut(t * d)
        .zip(dk_all.par_chunks_mut(s * d))
        .zip(dv_all.par_chunks_mut(s * d))
        .enumerate()
        .for_each(|(h, ((dq, dk), dv))| {
            let (qh, kh, vh, gh) = (
                &q[h * t * d..(h + 1) * t * d],
                &k[h * s * d..(h + 1) * s * d],
                &v[h * s * d..(h + 1) * s * d],
                &g[h * t * d..(h + 1) * t * d],
            );
            let mut p = vec![T::zero(); t * s];
            mm1(t, s, d, &mut p, s, qh, d, 1, kh, 1, d);
            softmax_rows_causal(&mut p, t, s, scale);
            mm1(s, d, t, dv, d, &p, 1, s, gh, d, 1); // dv = pᵀ·g
            let mut dp = vec![T::zero(); t * s];
            mm1(t, s, d, &mut dp, s, gh, d, 1, vh, 1, d); // dp = g·vᵀ
            // ds = scale · p ⊙ (dp − rowsum(p ⊙ dp)), in dp
            for (pr, dr) in p.chunks(s).zip(dp.chunks_mut(s)) {
                softmax_grad_row(pr, dr, scale);
            }
            mm1(t, d, s, dq, d, &dp, s, 1, kh, d, 1); // dq = ds·k
            mm1(s, d, t, dk, d, &dp, 1, s, qh, d, 1); // dk = dsᵀ·q
        });
    (dq_all, dk_all, dv_all)
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
            attn_fwd_r(s1, l1, s2, l2, s3, l3),
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
                        with_slice::<T, _>(g, |gs| {
                            Ok(attn_bwd(qs, ks, vs, gs, b * h, t, s, d, scale))
                        })
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

#[allow(clippy::too_many_arguments)]
fn attn_fwd_r<T: Real + 'static>(
    q: &[T],
    k: &[T],
    v: &[T],
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
) -> Result<Vec<T>> {
    Ok(attn_fwd(q, k, v, bh, t, s, d, scale))
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
                );
                let out = CpuStorage::F32(tl_fwd(&z, t, v)?);
                (out, Tensor::from_vec(z, (n, v), &dev)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let z = gemm_xwt(
                    slice::<f64>(s1, l1, self.name())?,
                    slice::<f64>(s2, l2, self.name())?,
                    n,
                    h,
                    v,
                );
                let out = CpuStorage::F64(tl_fwd(&z, t, v)?);
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
    fn vector_exp_matches_libm() {
        let xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.0044).collect(); // 0 … −88
        let mut got = xs.clone();
        exp_nonpos_f32(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            if *x > -87.0 {
                assert!(
                    (g - want).abs() <= 2e-7 * want,
                    "exp({x}) = {g}, libm {want}"
                );
            } else {
                assert!(*g <= 1e-37);
            }
        }
        let mut inf = [f32::NEG_INFINITY; 9];
        exp_nonpos_f32(&mut inf);
        assert!(inf.iter().all(|&e| e == 0.0));
    }

    /// The eight-lane f32 row kernels (max, f64 sum, SwiGLU and its gradient) against the
    /// scalar f64 definitions, on lengths that are and are not multiples of 8, with extremes.
    #[test]
    fn f32_lane_kernels_match_f64_scalar() {
        let mut r = 0x2545f4914f6cdd1du64;
        let mut rnd = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in [1usize, 7, 8, 9, 255, 256, 257, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| match i % 97 {
                    0 => 120.0,
                    1 => -120.0,
                    _ => ((rnd() - 0.5) * 16.0) as f32,
                })
                .collect();
            let b: Vec<f32> = (0..n).map(|_| (rnd() - 0.5) as f32 * 4.0).collect();
            let g: Vec<f32> = (0..n).map(|_| (rnd() - 0.5) as f32).collect();
            let a64: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
            let b64: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();

            assert_eq!(
                f64::from(f32::max_of(&a)),
                f64::max_of(&a64),
                "max, n = {n}"
            );
            let pos: Vec<f32> = b.iter().map(|x| x.abs()).collect();
            let (s32, s64) = (
                f32::sum_f64(&pos),
                f64::sum_f64(&pos.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
            );
            assert!(
                (s32 - s64).abs() <= 1e-6 * s64,
                "sum {s32} vs {s64}, n = {n}"
            );

            let mut y = vec![0f32; n];
            let mut y64 = vec![0f64; n];
            f32::swiglu(&a, &b, &mut y);
            f64::swiglu(&a64, &b64, &mut y64);
            let (mut da, mut db) = (vec![0f32; n], vec![0f32; n]);
            let (mut da64, mut db64) = (vec![0f64; n], vec![0f64; n]);
            f32::swiglu_grad(&a, &b, &g, &mut da, &mut db);
            f64::swiglu_grad(&a64, &b64, &g64, &mut da64, &mut db64);
            for j in 0..n {
                for (got, want, what) in [
                    (y[j], y64[j], "silu(a)·b"),
                    (da[j], da64[j], "da"),
                    (db[j], db64[j], "db"),
                ] {
                    assert!(got.is_finite(), "{what} at a = {}", a[j]);
                    let tol = 1e-6 * (1.0 + want.abs() + f64::from(a[j]).abs() * 1e-1);
                    assert!(
                        (f64::from(got) - want).abs() <= tol,
                        "{what}: {got} vs {want} at a = {}, n = {n}",
                        a[j]
                    );
                }
            }
        }
        assert_eq!(f32::max_of(&[]), f32::NEG_INFINITY);
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
