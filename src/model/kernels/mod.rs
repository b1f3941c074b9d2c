//! The slice-level numerics of the CPU training path, with no candle tensors: the `Real` float
//! trait and its eight-lane f32 row kernels (via `wide`: exp, max, blocked f64 sums, sigmoid,
//! SwiGLU), the row kernels built on them (`rows`), per-head attention (`attention`) and the one
//! checked gemm wrapper every matrix product of the crate goes through (`gemm`). The candle
//! nodes of [`super::fused`] and the hand-written training pass of [`super::manual`] are both
//! written on these.

mod attention;
mod gemm;
mod rows;

pub(crate) use attention::*;
pub(crate) use gemm::*;
pub(crate) use rows::*;

use std::mem::MaybeUninit;

use candle_core::WithDType;
use wide::{CmpGe, f32x8};

/// Floats the kernels are written for. The f32 versions of the row kernels run eight lanes at
/// a time (`wide`): written as scalar loops, a float max or sum is one long dependency chain
/// that the compiler may not reorder, and SwiGLU's branch keeps it scalar too (~2 ns per
/// element).
pub(crate) trait Real: WithDType + std::ops::Neg<Output = Self> {
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
    /// Σ a·b over the shorter of the two, in f64.
    fn dot_f64(a: &[Self], b: &[Self]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x.to_f64() * y.to_f64()).sum()
    }
    /// x ← GELU(x) and d = GELU′(x) element-wise, exact (erf) or the tanh approximation, in
    /// f64: the forward keeps d for the backward, which then only multiplies. Writes every
    /// element of `d` (as long as `x`; the caller passes equal lengths).
    fn gelu_keep(x: &mut [Self], d: &mut [MaybeUninit<Self>], exact: bool) {
        for (v, g) in x.iter_mut().zip(d.iter_mut()) {
            let f = v.to_f64();
            g.write(Self::from_f64(gelu_grad_f64(f, exact)));
            *v = Self::from_f64(gelu_f64(f, exact));
        }
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
    fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
        // as sum_f64: eight f32 lanes over blocks of 256, blocks summed in f64
        let n = a.len().min(b.len());
        let mut total = 0f64;
        for (ab, bb) in a[..n].chunks(256).zip(b[..n].chunks(256)) {
            let mut acc = f32x8::ZERO;
            let (mut ca, mut cb) = (ab.chunks_exact(8), bb.chunks_exact(8));
            for (x, y) in (&mut ca).zip(&mut cb) {
                acc += lanes(x) * lanes(y);
            }
            total += acc.to_array().iter().map(|&x| f64::from(x)).sum::<f64>()
                + ca.remainder()
                    .iter()
                    .zip(cb.remainder())
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum::<f64>();
        }
        total
    }
    fn gelu_keep(x: &mut [f32], d: &mut [MaybeUninit<f32>], exact: bool) {
        let n8 = x.len().min(d.len()) / 8 * 8;
        let (one, half) = (f32x8::splat(1.0), f32x8::splat(0.5));
        for (xc, dc) in x[..n8].chunks_exact_mut(8).zip(d[..n8].chunks_exact_mut(8)) {
            let v = lanes(xc);
            let (onep, dv) = if exact {
                // GELU′ = 0.5(1 + erf(x/√2)) + x·φ(x); φ(x) = exp(−x²/2)/√(2π) shares its
                // exponential with erfc(|x|/√2)
                let (e, g) = one_plus_erf8(v * f32x8::splat(std::f32::consts::FRAC_1_SQRT_2));
                (e, half * e + v * g * f32x8::splat(0.398_942_3))
            } else {
                // GELU′ = 0.5(1 + t) + 0.5x(1 + t)(1 − t)·√(2/π)(1 + 3·0.044715x²)
                let (p, m) = one_pm_tanh8(gelu_tanh_arg(v));
                let du = f32x8::splat(SQRT_2_OVER_PI as f32)
                    * (one + f32x8::splat(3.0 * 0.044715) * v * v);
                (p, half * p + half * v * p * m * du)
            };
            xc.copy_from_slice(&(half * v * onep).to_array());
            for (o, g) in dc.iter_mut().zip(dv.to_array()) {
                o.write(g);
            }
        }
        for (v, g) in x[n8..].iter_mut().zip(&mut d[n8..]) {
            let f = f64::from(*v);
            g.write(gelu_grad_f64(f, exact) as f32);
            *v = gelu_f64(f, exact) as f32;
        }
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

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// GELU in f64: exact 0.5x(1 + erf(x/√2)) (candle's erf), or the tanh approximation
/// 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))) (gelu_new).
pub(crate) fn gelu_f64(v: f64, exact: bool) -> f64 {
    if exact {
        (candle_core::cpu::erf::erf_f64(v * std::f64::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
    } else {
        0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh())
    }
}

/// GELU′ in f64 (exact constants: candle's own backward rounds them to six digits).
pub(crate) fn gelu_grad_f64(v: f64, exact: bool) -> f64 {
    if exact {
        0.5 * (1.0 + candle_core::cpu::erf::erf_f64(v * std::f64::consts::FRAC_1_SQRT_2))
            + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
    } else {
        let th = (SQRT_2_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh();
        0.5 * (1.0 + th)
            + 0.5 * v * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
    }
}

/// √(2/π)(x + 0.044715x³), the tanh approximation's argument.
#[inline]
fn gelu_tanh_arg(v: f32x8) -> f32x8 {
    f32x8::splat(SQRT_2_OVER_PI as f32) * v * (f32x8::splat(1.0) + f32x8::splat(0.044715) * v * v)
}

/// (1 + tanh u, 1 − tanh u) per lane, each from e = exp(−2|u|) without cancellation:
/// 2/(1 + e) and 2e/(1 + e), swapped for u < 0.
#[inline]
fn one_pm_tanh8(u: f32x8) -> (f32x8, f32x8) {
    let one = f32x8::splat(1.0);
    let e = (f32x8::splat(-2.0) * u.abs()).exp(); // in (0, 1]
    let a = f32x8::splat(2.0) / (one + e);
    let b = a * e;
    let pos = u.cmp_ge(f32x8::ZERO);
    (pos.blend(a, b), pos.blend(b, a))
}

/// (1 + erf(x), exp(−x²)) per lane, erfc from Abramowitz & Stegun 7.1.26:
/// erfc(z) ≈ t(a₁ + t(a₂ + t(a₃ + t(a₄ + t·a₅))))·exp(−z²), t = 1/(1 + p·z), z = |x|, with an
/// error below 1.5e-7 (absolute) in erf: erfc(|x|) for x < 0 (no cancellation far out),
/// 2 − erfc(x) above. The exponential is returned too (GELU′'s Gaussian is the same one).
#[inline]
fn one_plus_erf8(x: f32x8) -> (f32x8, f32x8) {
    let one = f32x8::splat(1.0);
    let z = x.abs();
    let t = one / (one + f32x8::splat(0.327_591_1) * z);
    let c = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let mut p = f32x8::splat(c[4]);
    for &k in c[..4].iter().rev() {
        p = p * t + f32x8::splat(k);
    }
    let g = (-(z * z)).exp();
    let erfc = t * p * g;
    (
        x.cmp_ge(f32x8::ZERO).blend(f32x8::splat(2.0) - erfc, erfc),
        g,
    )
}

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

/// σ(a) from e = exp(−|a|), stable for any a.
#[inline]
pub(crate) fn sigmoid_from<T: Real>(a: T, e: T) -> T {
    if a >= T::zero() {
        T::one() / (T::one() + e)
    } else {
        e / (T::one() + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-lane f32 GELU and its derivative (both variants) against the f64 formulas,
    /// over −12 … 12 (the lanes' erf and tanh are fits of their own).
    #[test]
    fn vector_gelu_matches_f64() {
        let xs: Vec<f32> = (0..24_003).map(|i| -12.0 + i as f32 * 0.001).collect();
        for exact in [true, false] {
            let (mut y, mut g) = (xs.clone(), vec![MaybeUninit::new(f32::NAN); xs.len()]);
            f32::gelu_keep(&mut y, &mut g, exact);
            // SAFETY: initialised above (and every element rewritten by gelu_keep)
            let g: Vec<f32> = g.iter().map(|v| unsafe { v.assume_init() }).collect();
            assert!(g.iter().all(|v| !v.is_nan()), "every derivative written");
            for ((&x, &yv), &gv) in xs.iter().zip(&y).zip(&g) {
                let (want, dwant) = (
                    gelu_f64(f64::from(x), exact),
                    gelu_grad_f64(f64::from(x), exact),
                );
                assert!(
                    (f64::from(yv) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "gelu({x}, exact {exact}) = {yv}, f64 {want}"
                );
                assert!(
                    (f64::from(gv) - dwant).abs() <= 1e-6 * (1.0 + dwant.abs()),
                    "gelu'({x}, exact {exact}) = {gv}, f64 {dwant}"
                );
            }
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

    /// gpt_neox's parallel residual normalises x once for both norms and takes their backward
    /// in one pass: the same values as each norm on its own (forward: exactly; backward and
    /// the weight gradients per segment: to rounding, against f64 per-row formulas).
    #[test]
    fn two_layernorms_of_one_input_equal_each_alone() {
        let (n, h, eps) = (37usize, 24usize, 1e-5);
        let mut s = 7u64;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
        };
        let mut v = |k: usize, sc: f32, off: f32| -> Vec<f32> {
            (0..k).map(|_| off + sc * rnd()).collect()
        };
        let x = v(n * h, 4.0, 0.7);
        let (w1, b1, w2, b2) = (
            v(h, 0.4, 1.0),
            v(h, 0.2, 0.0),
            v(h, 0.4, 1.0),
            v(h, 0.2, 0.0),
        );
        let (g1, g2) = (v(n * h, 2.0, 0.0), v(n * h, 2.0, 0.0));
        let (y1, y2) = ln_fwd2(&x, (&w1, &b1), (&w2, &b2), eps);
        assert_eq!(y1, ln_fwd(&x, &w1, &b1, eps));
        assert_eq!(y2, ln_fwd(&x, &w2, &b2, eps));
        // f64 reference per row: x̂, dx = Σ_i r·(ĝ_i − mean ĝ_i − x̂·mean(ĝ_i x̂)), ĝ_i = g_i ⊙ w_i
        let mut want = vec![0f64; n * h];
        let (mut dw, mut db) = (
            [vec![0f64; 2 * h], vec![0f64; 2 * h]],
            [vec![0f64; 2 * h], vec![0f64; 2 * h]],
        );
        let segs = [0..20, 20..n];
        for r in 0..n {
            let xr: Vec<f64> = x[r * h..(r + 1) * h]
                .iter()
                .map(|&a| f64::from(a))
                .collect();
            let mean = xr.iter().sum::<f64>() / h as f64;
            let var = xr.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / h as f64;
            let rs = 1.0 / (var + eps).sqrt();
            let xh: Vec<f64> = xr.iter().map(|a| (a - mean) * rs).collect();
            let seg = usize::from(r >= 20);
            for (k, (g, w)) in [(&g1, &w1), (&g2, &w2)].into_iter().enumerate() {
                let gr: Vec<f64> = g[r * h..(r + 1) * h]
                    .iter()
                    .map(|&a| f64::from(a))
                    .collect();
                let gh: Vec<f64> = gr.iter().zip(w).map(|(a, &b)| a * f64::from(b)).collect();
                let m1 = gh.iter().sum::<f64>() / h as f64;
                let m2 = gh.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / h as f64;
                for j in 0..h {
                    want[r * h + j] += rs * (gh[j] - m1 - xh[j] * m2);
                    dw[k][seg * h + j] += gr[j] * xh[j];
                    db[k][seg * h + j] += gr[j];
                }
            }
        }
        let mut got = vec![0.5f32; n * h];
        ln_bwd_add(&x, &[(&w1, &g1), (&w2, &g2)], eps, &mut got);
        for (j, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let d = f64::from(a) - 0.5 - b;
            assert!(
                d.abs() <= 2e-5 * (1.0 + b.abs()),
                "dx[{j}]: {a} − 0.5 vs {b}"
            );
        }
        let wb = ln_wb_segments(&x, &[&g1, &g2], h, eps, &segs);
        assert_eq!(wb.len(), 2);
        for (k, (gw, gb)) in wb.iter().enumerate() {
            for (got, want, what) in [(gw, &dw[k], "dw"), (gb, &db[k], "db")] {
                assert_eq!(got.len(), 2 * h);
                for (j, (&a, &b)) in got.iter().zip(want.iter()).enumerate() {
                    let d = f64::from(a) - b;
                    assert!(
                        d.abs() <= 2e-5 * (1.0 + b.abs()),
                        "{what}[{k}][{j}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
