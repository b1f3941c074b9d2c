//! Row kernels: one parallel pass over the rows (or blocks) of a buffer each, in `T` with f64
//! accumulation where a sum is long. Shared by the candle nodes of `fused` and the hand-written
//! training pass of `manual`.

use std::ops::Range;

use candle_core::{Error, Result, WithDType};
use rayon::prelude::*;

use super::Real;

// ---------------------------------------------------------------- log-softmax of logits

/// logsumexp of a row: max and exponentials in T (in blocks of 512), their sum in f64.
pub(crate) fn row_lse<T: Real>(z: &[T]) -> f64 {
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

/// logp[n] = z[n, t_n] − logsumexp(z[n, :]) for logits [N, v] and targets [N].
pub(crate) fn target_logp_rows<T: Real>(z: &[T], t: &[u32], v: usize) -> Result<Vec<T>> {
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
pub(crate) fn target_logp_grad_rows<T: Real>(
    z: &[T],
    t: &[u32],
    gl: &[T],
    v: usize,
) -> Result<Vec<T>> {
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
/// log softmax(z)[target] of each row of logits z [N, V], leaving exp(z − max) in z for the
/// backward; returns the log-probs and 1 / Σ exp(z − max) per row (exponentials in T, their
/// sum in f64).
pub(crate) fn log_softmax_rows<T: Real>(
    z: &mut [T],
    targets: &[u32],
    vocab: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let rows: Vec<(T, T)> = z
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &ti)| {
            let zt = row.get(ti as usize).copied().ok_or_else(|| {
                Error::Msg(format!("target {ti} is outside the vocabulary of {vocab}"))
            })?;
            let m = T::max_of(row);
            // x − max ≤ 0 (NaN logits stay NaN and surface as a NaN loss)
            for x in row.iter_mut() {
                *x -= m;
            }
            T::exp_nonpos(row);
            let sum = T::sum_f64(row);
            let lp = (zt - m).to_f64() - sum.ln();
            Ok((T::from_f64(lp), T::from_f64(1.0 / sum)))
        })
        .collect::<Result<_>>()?;
    Ok(rows.into_iter().unzip())
}

// ---------------------------------------------------------------- RMSNorm

pub(crate) fn rms_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Result<Vec<T>> {
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
pub(crate) fn rms_bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Result<Vec<T>> {
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
// ---------------------------------------------------------------- LayerNorm

/// A row centred into `xc` (x − mean), and 1/sqrt(variance + eps); sums in f64 (eight f32
/// lanes at a time, [`Real::sum_f64`] / [`Real::dot_f64`]), element-wise work in `T`.
fn ln_center<T: Real>(xr: &[T], xc: &mut [T], eps: f64) -> T {
    let h = xr.len() as f64;
    let mean = T::from_f64(T::sum_f64(xr) / h);
    for (c, &x) in xc.iter_mut().zip(xr) {
        *c = x - mean;
    }
    T::from_f64(1.0 / (T::dot_f64(xc, xc) / h + eps).sqrt())
}

/// LayerNorm of rows [n × h]: (x − mean)/sqrt(var + eps)·w + b (biased variance, as PyTorch).
pub(crate) fn ln_fwd<T: Real>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .for_each(|(yr, xr)| {
            let r = ln_center(xr, yr, eps);
            for ((y, &wj), &bj) in yr.iter_mut().zip(w).zip(b) {
                *y = *y * r * wj + bj;
            }
        });
    y
}

/// Two LayerNorms of the same rows [n × h] (gpt_neox's parallel residual reads ln1(x) and
/// ln2(x)), each row's mean and variance computed once: exactly [`ln_fwd`] twice.
pub(crate) fn ln_fwd2<T: Real>(
    x: &[T],
    (w1, b1): (&[T], &[T]),
    (w2, b2): (&[T], &[T]),
    eps: f64,
) -> (Vec<T>, Vec<T>) {
    let h = w1.len();
    let mut y1 = vec![T::zero(); x.len()];
    let mut y2 = vec![T::zero(); x.len()];
    y1.par_chunks_mut(h)
        .zip(y2.par_chunks_mut(h))
        .zip(x.par_chunks(h))
        .for_each(|((r1, r2), xr)| {
            let r = ln_center(xr, r1, eps);
            for ((((a, b), (&wa, &ba)), &wb), &bb) in r1
                .iter_mut()
                .zip(r2.iter_mut())
                .zip(w1.iter().zip(b1))
                .zip(w2)
                .zip(b2)
            {
                let c = *a * r;
                *b = c * wb + bb;
                *a = c * wa + ba;
            }
        });
    (y1, y2)
}

/// dx += LayerNorm's input gradient from its output gradient `g` (rows [n × h]),
/// r·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂)) with ĝ = g ⊙ w and x̂ the normalised row, summed over every
/// norm (w, g) of the same rows x given: the backward is linear in ĝ, so several norms of one
/// input (gpt_neox's parallel ln1 and ln2) take one pass with ĝ = Σ g_i ⊙ w_i, and the result
/// lands in the residual stream's gradient without a buffer of its own.
pub(crate) fn ln_bwd_add<T: Real>(x: &[T], parts: &[(&[T], &[T])], eps: f64, dx: &mut [T]) {
    let Some(&(w0, _)) = parts.first() else {
        return;
    };
    let h = w0.len();
    dx.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .enumerate()
        .for_each_init(
            || (vec![T::zero(); h], vec![T::zero(); h]),
            |(xh, gh), (row, (dr, xr))| {
                let r = ln_center(xr, xh, eps);
                for x in xh.iter_mut() {
                    *x *= r;
                }
                for (i, &(w, g)) in parts.iter().enumerate() {
                    let gr = &g[row * h..(row + 1) * h];
                    if i == 0 {
                        for ((o, &gj), &wj) in gh.iter_mut().zip(gr).zip(w) {
                            *o = gj * wj;
                        }
                    } else {
                        for ((o, &gj), &wj) in gh.iter_mut().zip(gr).zip(w) {
                            *o += gj * wj;
                        }
                    }
                }
                let m1 = T::from_f64(T::sum_f64(gh) / h as f64);
                let m2 = T::from_f64(T::dot_f64(gh, xh) / h as f64);
                for ((d, &gj), &xj) in dr.iter_mut().zip(gh.iter()).zip(xh.iter()) {
                    *d += r * (gj - m1 - xj * m2);
                }
            },
        );
}

/// LayerNorm's weight and bias gradients per segment of rows, for each output gradient in `gs`
/// (several norms of the same rows x share the normalisation): per gradient, [segments × h]
/// each, Σ g ⊙ x̂ and Σ g over each segment (one segment of all rows: the batch's),
/// accumulated in f64.
pub(crate) fn ln_wb_segments<T: Real>(
    x: &[T],
    gs: &[&[T]],
    h: usize,
    eps: f64,
    segs: &[Range<usize>],
) -> Vec<(Vec<T>, Vec<T>)> {
    // blocks of rows in parallel (a segment may be all rows), each block within one segment
    let block = 16usize;
    let k = gs.len();
    let jobs: Vec<(usize, Range<usize>)> = segs
        .iter()
        .enumerate()
        .flat_map(|(s, r)| {
            (r.start..r.end)
                .step_by(block)
                .map(move |a| (s, a..(a + block).min(r.end)))
        })
        .collect();
    // per job: [dw_0 | db_0 | dw_1 | db_1 | …], h each
    let parts: Vec<(usize, Vec<f64>)> = jobs
        .into_par_iter()
        .map(|(s, rows)| {
            let mut acc = vec![0f64; 2 * k * h];
            let mut xh = vec![T::zero(); h];
            for row in rows {
                let r = ln_center(&x[row * h..(row + 1) * h], &mut xh, eps).to_f64();
                for (g, a) in gs.iter().zip(acc.chunks_mut(2 * h)) {
                    let gr = &g[row * h..(row + 1) * h];
                    let (dw, db) = a.split_at_mut(h);
                    for (((w, b), &gj), &xj) in dw.iter_mut().zip(db.iter_mut()).zip(gr).zip(&xh) {
                        let gj = gj.to_f64();
                        *w += gj * xj.to_f64() * r;
                        *b += gj;
                    }
                }
            }
            (s, acc)
        })
        .collect();
    let ns = segs.len();
    // per gradient: dw [segments × h], db [segments × h]
    let mut out = vec![(vec![0f64; ns * h], vec![0f64; ns * h]); k];
    for (s, acc) in parts {
        for ((dw, db), a) in out.iter_mut().zip(acc.chunks(2 * h)) {
            for (o, &v) in dw[s * h..(s + 1) * h].iter_mut().zip(&a[..h]) {
                *o += v;
            }
            for (o, &v) in db[s * h..(s + 1) * h].iter_mut().zip(&a[h..]) {
                *o += v;
            }
        }
    }
    out.into_iter()
        .map(|(dw, db)| {
            (
                dw.into_iter().map(T::from_f64).collect(),
                db.into_iter().map(T::from_f64).collect(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- GELU

/// GELU element-wise and its derivative: exact (erf, `exact`) or the tanh approximation
/// (gelu_new), as candle's gelu_erf and gelu compute them ([`Real::gelu_keep`]): (y, y′).
/// GELU is applied in place (`x` becomes y); the derivative's buffer is written, never zeroed.
pub(crate) fn gelu_keep<T: Real>(mut x: Vec<T>, exact: bool) -> (Vec<T>, Vec<T>) {
    let n = x.len();
    let mut d: Vec<T> = Vec::with_capacity(n);
    x.par_chunks_mut(4096)
        .zip(d.spare_capacity_mut()[..n].par_chunks_mut(4096))
        .for_each(|(xc, dc)| T::gelu_keep(xc, dc, exact));
    // SAFETY: both sides are cut into chunks of 4096 from the same length n, so each pair has
    // equal lengths, and `Real::gelu_keep` writes every element of its `d` chunk: all n
    // elements of the spare capacity are initialised.
    unsafe { d.set_len(n) };
    (x, d)
}

/// y ← y ⊙ x, element-wise (a gradient through an element-wise map whose derivative is x).
pub(crate) fn mul_into<T: Real>(y: &mut [T], x: &[T]) {
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(a, b)| {
            for (p, &q) in a.iter_mut().zip(b) {
                *p *= q;
            }
        });
}

/// rms_bwd's [dx ; dw] buffer split into its two parts.
pub(crate) fn split_rms<T>(mut v: Vec<T>, nx: usize) -> (Vec<T>, Vec<T>) {
    let dw = v.split_off(nx);
    (v, dw)
}

// ---------------------------------------------------------------- softmax (scaled, causal)

/// One row of softmax(scale · x) in place, over its first `n` entries (the rest become 0: keys
/// a causal query does not see). Shared by the softmax node and the fused attention.
pub(crate) fn softmax_row<T: Real>(row: &mut [T], n: usize, scale: f64) {
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
pub(crate) fn softmax_grad_row<T: Real>(p: &[T], g: &mut [T], scale: f64) {
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
pub(crate) fn softmax_n(i: usize, t: usize, s: usize, causal: bool) -> usize {
    if causal { (i + 1 + s - t).min(s) } else { s }
}

/// softmax(scale · x) over rows of length `s` (T rows per matrix; see [`softmax_n`]).
pub(crate) fn softmax_fwd<T: Real>(
    x: &[T],
    t: usize,
    s: usize,
    scale: f64,
    causal: bool,
) -> Result<Vec<T>> {
    let mut y = x.to_vec();
    y.par_chunks_mut(s)
        .enumerate()
        .for_each(|(row, yr)| softmax_row(yr, softmax_n(row % t, t, s, causal), scale));
    Ok(y)
}

/// The backward of [`softmax_fwd`] from its output `y`.
pub(crate) fn softmax_bwd<T: Real>(y: &[T], g: &[T], s: usize, scale: f64) -> Result<Vec<T>> {
    let mut dx = g.to_vec();
    dx.par_chunks_mut(s)
        .zip(y.par_chunks(s))
        .for_each(|(dr, yr)| softmax_grad_row(yr, dr, scale));
    Ok(dx)
}

// ---------------------------------------------------------------- SwiGLU

/// silu(a)·b, element-wise.
pub(crate) fn swiglu_fwd<T: Real>(a: &[T], b: &[T]) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(4096)
        .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
        .for_each(|(yc, (ac, bc))| T::swiglu(ac, bc, yc));
    Ok(y)
}
/// [da ; db] in one buffer.
pub(crate) fn swiglu_bwd<T: Real>(a: &[T], b: &[T], g: &[T]) -> Result<Vec<T>> {
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
/// silu(a)·b and σ(a) (kept for the backward), element-wise, in parallel.
pub(crate) fn swiglu_keep<T: Real>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let mut y = vec![T::zero(); a.len()];
    let mut s = vec![T::zero(); a.len()];
    y.par_chunks_mut(4096)
        .zip(s.par_chunks_mut(4096))
        .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
        .for_each(|((yc, sc), (ac, bc))| T::swiglu_sig(ac, bc, yc, sc));
    (y, s)
}

/// The backward of silu(a)·b from σ(a), in place: a becomes da = g·b·σ·(1 + a·(1 − σ)) and b
/// becomes db = g·a·σ.
pub(crate) fn swiglu_grad_in_place<T: Real>(a: &mut [T], b: &mut [T], sig: &[T], g: &[T]) {
    a.par_chunks_mut(4096)
        .zip(b.par_chunks_mut(4096))
        .zip(sig.par_chunks(4096).zip(g.par_chunks(4096)))
        .for_each(|((ac, bc), (sc, gc))| {
            for j in 0..ac.len() {
                let (x, y, s, gj) = (ac[j], bc[j], sc[j], gc[j]);
                ac[j] = gj * y * s * (T::one() + x * (T::one() - s));
                bc[j] = gj * x * s;
            }
        });
}

// ---------------------------------------------------------------- RoPE

/// Applies the rotary embedding (HF's two halves) to the first `rot` dims of every row of
/// length `d` of x [B, H, T, D], with cos/sin tables [T, rot/2]; `sign` −1 applies the inverse
/// rotation (the backward pass).
pub(crate) fn rope_apply<T: Real>(
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

/// RoPE tables for the positions 0..T: cos/sin [T, half] of p·f for each inverse frequency f.
pub(crate) struct RopeTab {
    half: usize,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl RopeTab {
    pub(crate) fn new(inv_freq: &[f64], t: usize) -> RopeTab {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for fr in inv_freq {
                let a = p as f64 * fr;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTab { half, cos, sin }
    }
}

/// RoPE (HF's two halves) in place on token-major rows [B·T, heads·d]; `sign` −1 rotates back
/// (the backward). Position of row r: r mod T.
pub(crate) fn rope_rows<T: Real>(
    x: &mut [T],
    heads: usize,
    d: usize,
    t: usize,
    tab: &RopeTab,
    sign: f64,
) {
    let half = tab.half;
    x.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(r, row)| {
            let p = r % t;
            let (cos, sin) = (
                &tab.cos[p * half..(p + 1) * half],
                &tab.sin[p * half..(p + 1) * half],
            );
            for hr in row.chunks_mut(d) {
                for i in 0..half {
                    let (c, s) = (cos[i], sign * sin[i]);
                    let (a, b) = (hr[i].to_f64(), hr[i + half].to_f64());
                    hr[i] = T::from_f64(a * c - b * s);
                    hr[i + half] = T::from_f64(b * c + a * s);
                }
            }
        });
}

// ---------------------------------------------------------------- small element-wise pieces

/// y += b on every row of y (a bias of length w on rows [n × w]).
pub(crate) fn add_bias<T: Real>(y: &mut [T], b: &[T]) {
    y.par_chunks_mut(b.len()).for_each(|r| {
        for (x, &bj) in r.iter_mut().zip(b) {
            *x += bj;
        }
    });
}

/// Column sums of rows [n × w] (a bias's gradient), accumulated in f64, blocks of rows in
/// parallel.
pub(crate) fn col_sums<T: Real>(y: &[T], w: usize) -> Vec<T> {
    if w == 0 {
        return Vec::new();
    }
    let s = y
        .par_chunks(w * 32)
        .map(|blk| {
            let mut s = vec![0f64; w];
            for r in blk.chunks(w) {
                for (a, &x) in s.iter_mut().zip(r) {
                    *a += x.to_f64();
                }
            }
            s
        })
        .reduce(
            || vec![0f64; w],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    s.into_iter().map(T::from_f64).collect()
}

/// Column sums of rows [n × w] per segment of rows: [segments × w], accumulated in f64 (a
/// bias's gradient per sequence).
pub(crate) fn col_sums_segments<T: Real>(y: &[T], w: usize, segs: &[Range<usize>]) -> Vec<T> {
    segs.iter()
        .flat_map(|r| col_sums(&y[r.start * w..r.end * w], w))
        .collect()
}

/// RMSNorm's weight gradient per segment of rows: Σ_r g_r ⊙ x_r / rms(x_r) over each segment's
/// rows ([`rms_bwd`]'s dw, one per sequence), [segments × h].
pub(crate) fn rms_dw_segments<T: Real>(
    x: &[T],
    g: &[T],
    h: usize,
    eps: f64,
    segs: &[Range<usize>],
) -> Vec<T> {
    let per_seg: Vec<Vec<T>> = segs
        .par_iter()
        .map(|r| {
            let mut dw = vec![0f64; h];
            for row in r.clone() {
                let (xr, gr) = (&x[row * h..(row + 1) * h], &g[row * h..(row + 1) * h]);
                let ms = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / h as f64;
                let rs = 1.0 / (ms + eps).sqrt();
                for j in 0..h {
                    dw[j] += gr[j].to_f64() * xr[j].to_f64() * rs;
                }
            }
            dw.into_iter().map(T::from_f64).collect()
        })
        .collect();
    per_seg.concat()
}

/// y += x, element-wise.
pub(crate) fn add_into<T: Real>(y: &mut [T], x: &[T]) {
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(a, b)| {
            for (p, &q) in a.iter_mut().zip(b) {
                *p += q;
            }
        });
}
/// The rows `r` of a row-major [_, w] buffer.
pub(crate) fn gather_rows<T: Copy>(x: &[T], r: &[usize], w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(r.len() * w);
    for &i in r {
        out.extend_from_slice(&x[i * w..(i + 1) * w]);
    }
    out
}

/// [n, w] zeros with row j of `x` at row r[j].
pub(crate) fn scatter_rows<T: WithDType>(x: &[T], r: &[usize], w: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n * w];
    for (j, &i) in r.iter().enumerate() {
        out[i * w..(i + 1) * w].copy_from_slice(&x[j * w..(j + 1) * w]);
    }
    out
}
