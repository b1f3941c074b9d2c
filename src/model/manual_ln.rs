//! The hand-written training pass of the LayerNorm family: gpt_neox (Pythia) and gpt2, on the
//! CPU, as [`super::manual`] does llama's. Compare with transformers' `modeling_gpt_neox.py` and
//! `modeling_gpt2.py` (and this crate's candle forwards, gpt_neox.rs and gpt2.rs):
//!
//! - LayerNorm with bias before attention and MLP, and at the end;
//! - one fused q/k/v projection with bias: laid out per head ([H, 3, Dh] along the output) in
//!   gpt_neox, as [q | k | v] in gpt2;
//! - gpt_neox: RoPE on the first `rotary_pct` of each head; gpt2: learned position embeddings;
//! - a GELU MLP with biases (exact erf GELU for "gelu", the tanh approximation otherwise);
//! - gpt_neox's parallel residual x + attn(ln1(x)) + mlp(ln2(x)) (or the sequential one), gpt2's
//!   sequential residual;
//! - gpt2's projections are Conv1D ([in, out], y = x·W); gpt_neox's are Linear ([out, in]);
//! - the LM head: gpt_neox's `embed_out` or, tied, the token embedding (gpt2 always).
//!
//! The LM head and log-softmax, the embedding's gradient, attention, RoPE and the per-sequence
//! gradients of the influence records are the llama pass's ([`super::manual`],
//! [`super::kernels`]). Checked against candle's graph in f64 and f32, every weight:
//! tests/manual_backward.rs.

use std::ops::Range;

use anyhow::{Result, bail};

use super::config::{Gpt2Config, GptNeoxConfig};
use super::kernels::{
    Heads, Real, RopeTab, add_into, attn_backward, attn_forward, gelu_keep, ln_bwd_add, ln_fwd,
    ln_fwd2, ln_wb_segments, mul_into, rope_rows,
};
use super::manual::{
    Emit, HeadTape, Lin, PassTape, Split, embed_backward, head_backward, head_forward, with_weights,
};
use super::net::Norm;
use super::{Model, Net, Params};

/// One layer as the pass reads it.
#[derive(Clone, Debug)]
struct LnLayer {
    ln1: Norm,
    ln2: Norm,
    qkv: Lin,
    o: Lin,
    up: Lin,
    down: Lin,
}

/// The architecture-specific parts.
#[derive(Clone, Debug)]
struct LnNet {
    h: usize,
    nh: usize,
    dh: usize,
    vocab: usize,
    eps: f64,
    exact_gelu: bool,
    /// gpt_neox: [H, 3, Dh] per head; gpt2: [q | k | v]
    per_head_qkv: bool,
    /// RoPE's inverse frequencies (gpt_neox; empty: no rotation)
    inv_freq: Vec<f64>,
    parallel: bool,
    embed: usize,
    /// gpt2's learned positions [n_positions × h]
    pos: Option<(usize, usize)>,
    layers: Vec<LnLayer>,
    final_norm: Norm,
    /// the LM head when untied
    head: Option<usize>,
}

impl LnNet {
    fn of(net: &Net) -> Result<LnNet> {
        match net {
            Net::GptNeox(c, ix) => Ok(neox(c, ix)),
            Net::Gpt2(c, ix) => Ok(gpt2(c, ix)),
            Net::Llama(..) => bail!("the LayerNorm pass runs gpt_neox and gpt2, not llama"),
        }
    }

    fn head_index(&self) -> usize {
        self.head.unwrap_or(self.embed)
    }
}

fn neox(c: &GptNeoxConfig, ix: &super::gpt_neox::GptNeoxWeights) -> LnNet {
    let (h, inter) = (c.hidden_size, c.intermediate_size);
    let rot = super::gpt_neox::rotary_ndims(c);
    LnNet {
        h,
        nh: c.num_attention_heads,
        dh: h / c.num_attention_heads.max(1),
        vocab: c.vocab_size,
        eps: c.layer_norm_eps,
        exact_gelu: c.hidden_act == "gelu",
        per_head_qkv: true,
        inv_freq: super::layers::inv_freq(rot, c.rotary_emb_base),
        parallel: c.use_parallel_residual,
        embed: ix.embed_in,
        pos: None,
        layers: ix
            .layers
            .iter()
            .map(|l| LnLayer {
                ln1: l.input_norm.clone(),
                ln2: l.post_norm.clone(),
                qkv: Lin::of(&l.qkv, h, 3 * h, false),
                o: Lin::of(&l.dense, h, h, false),
                up: Lin::of(&l.up, h, inter, false),
                down: Lin::of(&l.down, inter, h, false),
            })
            .collect(),
        final_norm: ix.final_norm.clone(),
        head: ix.embed_out,
    }
}

fn gpt2(c: &Gpt2Config, ix: &super::gpt2::Gpt2Weights) -> LnNet {
    let h = c.n_embd;
    let inner = c.n_inner.unwrap_or(4 * h);
    LnNet {
        h,
        nh: c.n_head,
        dh: h / c.n_head.max(1),
        vocab: c.vocab_size,
        eps: c.layer_norm_epsilon,
        exact_gelu: c.activation_function == "gelu",
        per_head_qkv: false,
        inv_freq: Vec::new(),
        parallel: false,
        embed: ix.wte,
        pos: Some((ix.wpe, c.n_positions)),
        layers: ix
            .layers
            .iter()
            .map(|l| LnLayer {
                ln1: l.ln_1.clone(),
                ln2: l.ln_2.clone(),
                qkv: Lin::of(&l.c_attn, h, 3 * h, true),
                o: Lin::of(&l.attn_proj, h, h, true),
                up: Lin::of(&l.c_fc, h, inner, true),
                down: Lin::of(&l.mlp_proj, inner, h, true),
            })
            .collect(),
        final_norm: ix.ln_f.clone(),
        head: None,
    }
}

/// Column of q (j = 0), k (1) or v (2) for head `hh` in the fused projection's output.
fn qkv_col(per_head: bool, j: usize, hh: usize, dh: usize, h: usize) -> usize {
    if per_head {
        hh * 3 * dh + j * dh
    } else {
        j * h + hh * dh
    }
}

/// q, k, v [n×h] each out of the fused projection's output [n×3h] (filled by copies, never
/// zeroed first).
fn split_qkv<T: Real>(net: &LnNet, qkv: &[T], n: usize) -> [Vec<T>; 3] {
    let (h, dh) = (net.h, net.dh);
    std::array::from_fn(|j| {
        let mut o = Vec::with_capacity(n * h);
        for src in qkv.chunks(3 * h) {
            for hh in 0..net.nh {
                let c = qkv_col(net.per_head_qkv, j, hh, dh, h);
                o.extend_from_slice(&src[c..c + dh]);
            }
        }
        o
    })
}

/// The fused projection's output gradient [n×3h] from dq, dk, dv [n×h].
fn merge_qkv<T: Real>(net: &LnNet, parts: [&[T]; 3], n: usize) -> Vec<T> {
    let (h, dh) = (net.h, net.dh);
    let mut out = Vec::with_capacity(n * 3 * h);
    for r in 0..n {
        // a row's 3h columns in order: per head [q k v] (gpt_neox) or [q… | k… | v…] (gpt2)
        if net.per_head_qkv {
            for hh in 0..net.nh {
                for p in parts {
                    out.extend_from_slice(&p[r * h + hh * dh..r * h + (hh + 1) * dh]);
                }
            }
        } else {
            for p in parts {
                out.extend_from_slice(&p[r * h..(r + 1) * h]);
            }
        }
    }
    out
}

/// What one layer's backward needs.
struct Acts<T> {
    /// residual stream in, its LayerNorm
    x: Vec<T>,
    ln1: Vec<T>,
    /// q, k after RoPE; v; the attention output before its projection and its probabilities
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    a: Vec<T>,
    probs: Option<Vec<T>>,
    /// the MLP's input stream when sequential (x + attn; parallel: x itself), its LayerNorm,
    /// the GELU and the GELU's derivative at its input
    xm: Option<Vec<T>>,
    ln2: Vec<T>,
    g: Vec<T>,
    gd: Vec<T>,
}

/// The LayerNorm pass's record of one forward.
pub(crate) struct LnTape<T> {
    hd: Heads,
    tab: RopeTab,
    ids: Vec<u32>,
    layers: Vec<Acts<T>>,
    /// residual stream before the final norm
    xl: Vec<T>,
    head: HeadTape<T>,
}

fn heads(net: &LnNet, b: usize, t: usize) -> Heads {
    Heads {
        b,
        t,
        nh: net.nh,
        nkv: net.nh,
        d: net.dh,
        scale: 1.0 / (net.dh as f64).sqrt(),
    }
}

/// The forward of gpt_neox or gpt2 (`net`), as [`super::manual`]'s for llama.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Real>(
    net: &Net,
    p: &Params,
    ids: Vec<u32>,
    targets: Vec<u32>,
    rows: Option<Vec<usize>>,
    b: usize,
    t: usize,
) -> Result<(Vec<T>, LnTape<T>)> {
    let net = LnNet::of(net)?;
    let n = b * t;
    let (h, vocab, eps) = (net.h, net.vocab, net.eps);
    if net.nh == 0 || net.dh * net.nh != h {
        bail!(
            "{} attention heads do not divide a hidden size of {h}",
            net.nh
        );
    }
    if let Some((_, np)) = net.pos
        && t > np
    {
        bail!("{t} positions exceed the model's {np} learned positions");
    }
    let hd = heads(&net, b, t);
    let tab = RopeTab::new(&net.inv_freq, t);
    with_weights::<T, _>(p, |w| {
        let emb = w[net.embed];
        let mut x = vec![T::zero(); n * h];
        for (r, (row, &id)) in x.chunks_mut(h).zip(&ids).enumerate() {
            let id = id as usize;
            if id >= vocab {
                bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            row.copy_from_slice(&emb[id * h..(id + 1) * h]);
            if let Some((wpe, _)) = net.pos {
                let pp = r % t;
                for (e, &v) in row.iter_mut().zip(&w[wpe][pp * h..(pp + 1) * h]) {
                    *e += v;
                }
            }
        }
        let mut layers = Vec::with_capacity(net.layers.len());
        for l in &net.layers {
            let (n1, n2) = (&l.ln1, &l.ln2);
            // parallel: both norms read x, normalised once
            let (ln1, ln2_of_x) = if net.parallel {
                let (a, b) = ln_fwd2(
                    &x,
                    (w[n1.weight], w[n1.bias]),
                    (w[n2.weight], w[n2.bias]),
                    eps,
                );
                (a, Some(b))
            } else {
                (ln_fwd(&x, w[n1.weight], w[n1.bias], eps), None)
            };
            let qkv = l.qkv.fwd(w, &ln1, n)?;
            let [mut q, mut k, v] = split_qkv(&net, &qkv, n);
            drop(qkv);
            if !net.inv_freq.is_empty() {
                rope_rows(&mut q, net.nh, net.dh, t, &tab, 1.0);
                rope_rows(&mut k, net.nh, net.dh, t, &tab, 1.0);
            }
            let (a, probs) = attn_forward(hd, &q, &k, &v)?;
            let mut o = l.o.fwd(w, &a, n)?;
            // sequential: the MLP reads x + attn (made in o's buffer, kept as xm); parallel: x
            let (xm, attn) = if net.parallel {
                (None, Some(o))
            } else {
                add_into(&mut o, &x);
                (Some(o), None)
            };
            let ln2 = match (ln2_of_x, &xm) {
                (Some(v), _) => v,
                (None, Some(xm)) => ln_fwd(xm, w[n2.weight], w[n2.bias], eps),
                (None, None) => bail!("a sequential layer without its MLP stream"),
            };
            let (g, gd) = gelu_keep(l.up.fwd(w, &ln2, n)?, net.exact_gelu);
            // next = x + attn + mlp
            let mut next = l.down.fwd(w, &g, n)?;
            match (&xm, &attn) {
                (Some(xm), _) => add_into(&mut next, xm),
                (None, Some(o)) => {
                    add_into(&mut next, o);
                    add_into(&mut next, &x);
                }
                (None, None) => bail!("a layer without its attention output"),
            }
            let prev = std::mem::replace(&mut x, next);
            layers.push(Acts {
                x: prev,
                ln1,
                q,
                k,
                v,
                a,
                probs,
                xm,
                ln2,
                g,
                gd,
            });
        }
        let fnorm = &net.final_norm;
        let hf = ln_fwd(&x, w[fnorm.weight], w[fnorm.bias], eps);
        let (lp, head) = head_forward(hf, w[net.head_index()], targets, rows, (n, h, vocab))?;
        Ok((
            lp,
            LnTape {
                hd,
                tab,
                ids,
                layers,
                xl: x,
                head,
            },
        ))
    })
}

/// The backward of LayerNorms of the same rows x (one, or gpt_neox's parallel ln1 and ln2),
/// each with its output gradient: their weight and bias gradients to `emit`, the sum of their
/// input gradients added to `dx`.
fn norms_bwd<T: Real>(
    emit: &mut Emit<'_, T>,
    norms: &[(&Norm, &[T])],
    w: &[&[T]],
    x: &[T],
    (n, h, eps): (usize, usize, f64),
    segs: Option<&[Range<usize>]>,
    dx: &mut [T],
) -> Result<()> {
    let whole = 0..n;
    let gs: Vec<&[T]> = norms.iter().map(|&(_, g)| g).collect();
    let wb = ln_wb_segments(x, &gs, h, eps, segs.unwrap_or(std::slice::from_ref(&whole)));
    for (&(norm, _), (dw, db)) in norms.iter().zip(wb) {
        emit(norm.weight, 0, dw)?;
        emit(norm.bias, 0, db)?;
    }
    let parts: Vec<(&[T], &[T])> = norms.iter().map(|&(nm, g)| (w[nm.weight], g)).collect();
    ln_bwd_add(x, &parts, eps, dx);
    Ok(())
}

impl<T: Real> PassTape<T> for LnTape<T> {
    fn run_backward(
        self,
        model: &Model,
        w: &[&[T]],
        dlp: &[T],
        split: Split,
        emit: &mut Emit<'_, T>,
    ) -> Result<()> {
        let net = LnNet::of(&model.net)?;
        let (hd, t) = (self.hd, self.hd.t);
        let n = hd.b * t;
        if dlp.len() != n {
            bail!(
                "the log-probs' gradient has {} values for {n} positions",
                dlp.len()
            );
        }
        let (seqs, slab_bytes) = split.layout(hd.b, t);
        let segs = seqs.as_deref();
        let (h, vocab, eps) = (net.h, net.vocab, net.eps);
        let hg = head_backward(
            self.head,
            dlp,
            w[net.head_index()],
            net.head,
            (hd.b, t, h, vocab),
            segs,
            slab_bytes,
            emit,
        )?;
        let mut dx = vec![T::zero(); n * h];
        norms_bwd(
            emit,
            &[(&net.final_norm, &hg.dhf)],
            w,
            &self.xl,
            (n, h, eps),
            segs,
            &mut dx,
        )?;
        for (l, a) in net.layers.iter().zip(self.layers).rev() {
            // MLP: out += down(gelu(up(ln2(xm))))
            let mut du = l.down.bwd(emit, slab_bytes, w, &a.g, &dx, n, segs)?;
            drop(a.g);
            mul_into(&mut du, &a.gd);
            let dln2 = l.up.bwd(emit, slab_bytes, w, &a.ln2, &du, n, segs)?;
            drop(du);
            // the attention output's gradient: the layer output's (parallel) or the MLP
            // stream's (sequential, xm = x + attn: ln2's input gradient added to it here;
            // parallel: ln2 reads x, its backward is taken with ln1's below)
            let mut dstream = dx;
            if let Some(xm) = &a.xm {
                norms_bwd(
                    emit,
                    &[(&l.ln2, &dln2)],
                    w,
                    xm,
                    (n, h, eps),
                    segs,
                    &mut dstream,
                )?;
            }
            let da = l.o.bwd(emit, slab_bytes, w, &a.a, &dstream, n, segs)?;
            let (mut dq, mut dk, dv) =
                attn_backward(hd, &a.q, &a.k, &a.v, &da, a.probs.as_deref())?;
            drop(da);
            if !net.inv_freq.is_empty() {
                rope_rows(&mut dq, net.nh, net.dh, t, &self.tab, -1.0);
                rope_rows(&mut dk, net.nh, net.dh, t, &self.tab, -1.0);
            }
            let dqkv = merge_qkv(&net, [&dq, &dk, &dv], n);
            let dln1 = l.qkv.bwd(emit, slab_bytes, w, &a.ln1, &dqkv, n, segs)?;
            drop(dqkv);
            // x's gradient: the stream's, plus the branches' through their norms of x
            let of_x: &[(&Norm, &[T])] = if a.xm.is_some() {
                &[(&l.ln1, &dln1)]
            } else {
                &[(&l.ln2, &dln2), (&l.ln1, &dln1)]
            };
            norms_bwd(emit, of_x, w, &a.x, (n, h, eps), segs, &mut dstream)?;
            dx = dstream;
        }
        if let Some((wpe, np)) = net.pos {
            let positions: Vec<u32> = (0..n).map(|r| (r % t) as u32).collect();
            embed_backward(
                emit,
                slab_bytes,
                wpe,
                &dx,
                &positions,
                (np, h, t),
                segs,
                None,
            )?;
        }
        embed_backward(
            emit,
            slab_bytes,
            net.embed,
            &dx,
            &self.ids,
            (vocab, h, t),
            segs,
            Some(hg),
        )
    }
}
