//! Causal attention per head, forward and backward, on direct gemm calls: head-major buffers
//! [B·H, T, D] for the fused attention node, token-major buffers [B·T, heads·D] (heads read and
//! written in place with strides, grouped-query heads sharing their key/value head without a
//! repeat) for the hand-written training pass. Each head runs on one thread, the heads in
//! parallel: one head's products are far too small to split.

use candle_core::Result;
use rayon::prelude::*;

use super::{
    MatMut, Real, cols, gemm, rows, softmax_grad_row, softmax_n, softmax_row, tail, tiles_mut,
};

// ---------------------------------------------------------------- head-major (fused node)

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
pub(crate) fn attn_fwd<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
) -> Result<Vec<T>> {
    let mut out = vec![T::zero(); bh * t * d];
    out.par_chunks_mut(t * d)
        .enumerate()
        .try_for_each(|(h, o)| -> Result<()> {
            let (qh, kh, vh) = (
                &q[h * t * d..(h + 1) * t * d],
                &k[h * s * d..(h + 1) * s * d],
                &v[h * s * d..(h + 1) * s * d],
            );
            let p = probs_hm(qh, kh, (t, s, d), scale)?;
            // p·v
            gemm(
                (t, d, s),
                &mut MatMut::new(o, d),
                false,
                (&p, rows(s)),
                (vh, rows(d)),
                false,
            )
        })?;
    Ok(out)
}

/// One head's attention probabilities [T, S]: the causal softmax of scale·q·kᵀ (head-major q
/// [T, D], k [S, D]), as the forward and the backward both need them.
fn probs_hm<T: Real>(
    qh: &[T],
    kh: &[T],
    (t, s, d): (usize, usize, usize),
    scale: f64,
) -> Result<Vec<T>> {
    let mut p = vec![T::zero(); t * s];
    // q·kᵀ
    gemm(
        (t, s, d),
        &mut MatMut::new(&mut p, s),
        false,
        (qh, rows(d)),
        (kh, cols(d)),
        false,
    )?;
    softmax_rows_causal(&mut p, t, s, scale);
    Ok(p)
}

/// The backward of [`attn_fwd`] per head (heads in parallel): (dq [BH, T, D], dk [BH, S, D],
/// dv [BH, S, D]).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn attn_bwd<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: &[T],
    bh: usize,
    t: usize,
    s: usize,
    d: usize,
    scale: f64,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let mut dq_all = vec![T::zero(); bh * t * d];
    let mut dk_all = vec![T::zero(); bh * s * d];
    let mut dv_all = vec![T::zero(); bh * s * d];
    dq_all
        .par_chunks_mut(t * d)
        .zip(dk_all.par_chunks_mut(s * d))
        .zip(dv_all.par_chunks_mut(s * d))
        .enumerate()
        .try_for_each(|(h, ((dq, dk), dv))| -> Result<()> {
            let (qh, kh, vh, gh) = (
                &q[h * t * d..(h + 1) * t * d],
                &k[h * s * d..(h + 1) * s * d],
                &v[h * s * d..(h + 1) * s * d],
                &g[h * t * d..(h + 1) * t * d],
            );
            let p = probs_hm(qh, kh, (t, s, d), scale)?;
            // dv = pᵀ·g
            gemm(
                (s, d, t),
                &mut MatMut::new(dv, d),
                false,
                (&p, cols(s)),
                (gh, rows(d)),
                false,
            )?;
            let mut dp = vec![T::zero(); t * s];
            // dp = g·vᵀ
            gemm(
                (t, s, d),
                &mut MatMut::new(&mut dp, s),
                false,
                (gh, rows(d)),
                (vh, cols(d)),
                false,
            )?;
            // ds = scale · p ⊙ (dp − rowsum(p ⊙ dp)), in dp
            for (pr, dr) in p.chunks(s).zip(dp.chunks_mut(s)) {
                softmax_grad_row(pr, dr, scale);
            }
            // dq = ds·k
            gemm(
                (t, d, s),
                &mut MatMut::new(dq, d),
                false,
                (&dp, rows(s)),
                (kh, rows(d)),
                false,
            )?;
            // dk = dsᵀ·q
            gemm(
                (s, d, t),
                &mut MatMut::new(dk, d),
                false,
                (&dp, cols(s)),
                (qh, rows(d)),
                false,
            )
        })?;
    Ok((dq_all, dk_all, dv_all))
}

// ---------------------------------------------------------------- token-major (manual pass)

/// Shapes of one attention call on token-major buffers: q, out [B·T, nh·d]; k, v [B·T, nkv·d].
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
    pub scale: f64,
}

impl Heads {
    pub(crate) fn qs(&self) -> usize {
        self.nh * self.d
    }
    pub(crate) fn ks(&self) -> usize {
        self.nkv * self.d
    }
    /// Offset of head h's first element in batch row bi of a buffer with row stride `rs`.
    fn off(&self, bi: usize, h: usize, rs: usize) -> usize {
        bi * self.t * rs + h * self.d
    }
}

/// One head's causal probabilities softmax(scale·q·kᵀ) [T×T] into `p`.
fn head_probs<T: Real>(
    hd: &Heads,
    q: &[T],
    k: &[T],
    bi: usize,
    h: usize,
    p: &mut [T],
) -> Result<()> {
    let (t, d) = (hd.t, hd.d);
    let g = h / (hd.nh / hd.nkv);
    gemm(
        (t, t, d),
        &mut MatMut::new(p, t),
        false,
        (
            tail(q, hd.off(bi, h, hd.qs()), "attention q")?,
            rows(hd.qs()),
        ),
        (
            tail(k, hd.off(bi, g, hd.ks()), "attention k")?,
            cols(hd.ks()),
        ),
        false,
    )?;
    for (i, row) in p.chunks_mut(t).enumerate() {
        softmax_row(row, i + 1, hd.scale);
    }
    Ok(())
}

/// out = causal softmax(scale·q·kᵀ)·v per head, heads in parallel (one thread each), and the
/// probabilities [B·nh, T, T] when small enough to keep (see [`KEEP_PROBS`]).
#[allow(clippy::type_complexity)]
pub(crate) fn attn_forward<T: Real>(
    hd: Heads,
    q: &[T],
    k: &[T],
    v: &[T],
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    let (t, d, qs, ks) = (hd.t, hd.d, hd.qs(), hd.ks());
    let mut out = vec![T::zero(); hd.b * t * qs];
    let keep = hd.b * hd.nh * t * t <= KEEP_PROBS;
    let mut probs = if keep {
        vec![T::zero(); hd.b * hd.nh * t * t]
    } else {
        Vec::new()
    };
    if t == 0 {
        return Ok((out, keep.then_some(probs)));
    }
    // task bh writes head h of batch row bi of `out` (its tile) from its probabilities p
    let task = |bh: usize, mut o: MatMut<'_, T>, p: &mut [T]| -> Result<()> {
        let (bi, h) = (bh / hd.nh, bh % hd.nh);
        let g = h / (hd.nh / hd.nkv);
        head_probs(&hd, q, k, bi, h, p)?;
        gemm(
            (t, d, t),
            &mut o,
            false,
            (p, rows(t)),
            (tail(v, hd.off(bi, g, ks), "attention v")?, rows(ks)),
            false,
        )
    };
    let heads = tiles_mut(&mut out, qs, (hd.b, hd.nh), (t, d))?;
    if keep {
        heads
            .zip(probs.par_chunks_mut(t * t))
            .enumerate()
            .try_for_each(|(bh, (o, p))| task(bh, o, p))?;
    } else {
        heads.enumerate().try_for_each(|(bh, o)| {
            let mut p = vec![T::zero(); t * t];
            task(bh, o, &mut p)
        })?;
    }
    Ok((out, keep.then_some(probs)))
}

/// Attention probabilities are kept from the forward for the backward when a layer's
/// B·heads·T² is at most this many (16 MiB in f32); above, the backward recomputes them.
pub(crate) const KEEP_PROBS: usize = 1 << 22;

/// The backward of [`attn_forward`] given dout: (dq, dk, dv) in the layouts of q, k, v. Tasks
/// are (batch row, key/value head): the query heads sharing a key/value head accumulate into
/// its dk and dv in turn.
#[allow(clippy::type_complexity)]
pub(crate) fn attn_backward<T: Real>(
    hd: Heads,
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    kept: Option<&[T]>,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let (t, d, qs, ks) = (hd.t, hd.d, hd.qs(), hd.ks());
    let grp = hd.nh / hd.nkv;
    let mut dq = vec![T::zero(); hd.b * t * qs];
    let mut dk = vec![T::zero(); hd.b * t * ks];
    let mut dv = vec![T::zero(); hd.b * t * ks];
    // task (bi, g) owns the query heads of group g (one tile of dq) and key/value head g
    // (one tile of dk and of dv) of batch row bi
    let grid = (hd.b, hd.nkv);
    let dq_tiles = tiles_mut(&mut dq, qs, grid, (t, grp * d))?;
    let dk_tiles = tiles_mut(&mut dk, ks, grid, (t, d))?;
    let dv_tiles = tiles_mut(&mut dv, ks, grid, (t, d))?;
    dq_tiles
        .zip(dk_tiles)
        .zip(dv_tiles)
        .enumerate()
        .try_for_each(|(bg, ((mut dqg, mut dkg), mut dvg))| -> Result<()> {
            let (bi, g) = (bg / hd.nkv, bg % hd.nkv);
            let mut p = vec![T::zero(); t * t];
            let mut dp = vec![T::zero(); t * t];
            let ko = hd.off(bi, g, ks);
            let (kg, vg) = (tail(k, ko, "attention k")?, tail(v, ko, "attention v")?);
            for j in 0..grp {
                let h = g * grp + j;
                match kept {
                    Some(all) => p.copy_from_slice(&all[(bi * hd.nh + h) * t * t..][..t * t]),
                    None => head_probs(&hd, q, k, bi, h, &mut p)?,
                }
                let gh = tail(dout, hd.off(bi, h, qs), "attention dout")?;
                let qh = tail(q, hd.off(bi, h, qs), "attention q")?;
                // dv (+)= pᵀ·g
                gemm(
                    (t, d, t),
                    &mut dvg,
                    j > 0,
                    (&p, cols(t)),
                    (gh, rows(qs)),
                    false,
                )?;
                // dp = g·vᵀ
                gemm(
                    (t, t, d),
                    &mut MatMut::new(&mut dp, t),
                    false,
                    (gh, rows(qs)),
                    (vg, cols(ks)),
                    false,
                )?;
                for (pr, dr) in p.chunks(t).zip(dp.chunks_mut(t)) {
                    softmax_grad_row(pr, dr, hd.scale);
                }
                // dq = ds·k
                gemm(
                    (t, d, t),
                    &mut dqg.cols_mut(j * d, d)?,
                    false,
                    (&dp, rows(t)),
                    (kg, rows(ks)),
                    false,
                )?;
                // dk (+)= dsᵀ·q
                gemm(
                    (t, d, t),
                    &mut dkg,
                    j > 0,
                    (&dp, cols(t)),
                    (qh, rows(qs)),
                    false,
                )?;
            }
            Ok(())
        })?;
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention backward from kept probabilities equals the one that recomputes them
    /// (both paths; the model-level tests run shapes small enough to keep them), with grouped
    /// query heads.
    #[test]
    fn kept_and_recomputed_attention_probabilities_agree() {
        let hd = Heads {
            b: 2,
            t: 5,
            nh: 4,
            nkv: 2,
            d: 3,
            scale: 0.6,
        };
        let n = hd.b * hd.t;
        let wave =
            |len: usize, f: f64| -> Vec<f64> { (0..len).map(|i| ((i as f64) * f).sin()).collect() };
        let (q, k, v) = (
            wave(n * hd.qs(), 0.37),
            wave(n * hd.ks(), 0.71),
            wave(n * hd.ks(), 1.13),
        );
        let g = wave(n * hd.qs(), 0.53);
        let (out, probs) = attn_forward(hd, &q, &k, &v).unwrap();
        let probs = probs.expect("small enough to keep");
        assert_eq!(out.len(), n * hd.qs());
        // every causal row sums to 1, and keys after the query get 0
        for (r, row) in probs.chunks(hd.t).enumerate() {
            let i = r % hd.t;
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(row[i + 1..].iter().all(|&p| p == 0.0));
        }
        let kept = attn_backward(hd, &q, &k, &v, &g, Some(&probs)).unwrap();
        let again = attn_backward(hd, &q, &k, &v, &g, None).unwrap();
        assert_eq!(kept, again);
        assert!(kept.0.iter().any(|&x| x != 0.0));
    }

    /// The token-major attention equals the head-major one on the same heads (keys/values
    /// repeated for grouped-query heads), forward and backward.
    #[test]
    fn token_major_matches_head_major() {
        let hd = Heads {
            b: 2,
            t: 4,
            nh: 4,
            nkv: 2,
            d: 3,
            scale: 0.7,
        };
        let (n, t, d, grp) = (hd.b * hd.t, hd.t, hd.d, hd.nh / hd.nkv);
        let wave =
            |len: usize, f: f64| -> Vec<f64> { (0..len).map(|i| ((i as f64) * f).cos()).collect() };
        let (q, k, v, g) = (
            wave(n * hd.qs(), 0.29),
            wave(n * hd.ks(), 0.61),
            wave(n * hd.ks(), 0.97),
            wave(n * hd.qs(), 0.43),
        );
        // [B·T, heads·d] → [B·nh, T, d], kv heads repeated
        let head_major = |x: &[f64], heads: usize, rep: usize| -> Vec<f64> {
            let mut o = Vec::new();
            for bi in 0..hd.b {
                for h in 0..heads * rep {
                    for ti in 0..t {
                        let r = (bi * t + ti) * heads * d + (h / rep) * d;
                        o.extend_from_slice(&x[r..r + d]);
                    }
                }
            }
            o
        };
        let (qh, kh, vh, gh) = (
            head_major(&q, hd.nh, 1),
            head_major(&k, hd.nkv, grp),
            head_major(&v, hd.nkv, grp),
            head_major(&g, hd.nh, 1),
        );
        let bh = hd.b * hd.nh;
        let out_h = attn_fwd(&qh, &kh, &vh, bh, t, t, d, hd.scale).unwrap();
        let (out, _) = attn_forward(hd, &q, &k, &v).unwrap();
        let close = |a: &[f64], b: &[f64]| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-12, "{x} vs {y}");
            }
        };
        close(&head_major(&out, hd.nh, 1), &out_h);
        let (dq_h, dk_h, dv_h) = attn_bwd(&qh, &kh, &vh, &gh, bh, t, t, d, hd.scale).unwrap();
        let (dq, dk, dv) = attn_backward(hd, &q, &k, &v, &g, None).unwrap();
        close(&head_major(&dq, hd.nh, 1), &dq_h);
        // the grouped heads' key/value gradients are the sums over their query heads
        let sum_groups = |x: &[f64]| -> Vec<f64> {
            let mut o = vec![0.0; hd.b * hd.nkv * t * d];
            for (i, c) in x.chunks(t * d).enumerate() {
                let (bi, h) = (i / hd.nh, i % hd.nh);
                let at = (bi * hd.nkv + h / grp) * t * d;
                for (a, b) in o[at..at + t * d].iter_mut().zip(c) {
                    *a += b;
                }
            }
            o
        };
        close(&head_major(&dk, hd.nkv, 1), &sum_groups(&dk_h));
        close(&head_major(&dv, hd.nkv, 1), &sum_groups(&dv_h));
    }
}
