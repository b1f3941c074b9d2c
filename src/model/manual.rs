//! The training pass of the llama family (llama, qwen2) on the CPU with a hand-written backward.
//!
//! candle's autograd builds one node per op and, in the backward, zero-fills and adds every
//! gradient (`GradStore::or_insert` + `add`), copies views into contiguous tensors and runs each
//! element-wise op as its own pass: ~40% of a training step that the matmuls alone would take
//! (measured with `perf`). Here the forward keeps the activations the backward needs in plain
//! buffers, and the backward writes each weight's gradient once, with direct gemm calls on
//! row-major buffers (no transposes or copies: heads are read in place with strides, grouped-query
//! heads share their key/value head without a repeat). The numerics (gemm, attention, row
//! kernels) are [`super::kernels`]'; this file is the pass that strings them together.
//!
//! It plugs into candle's graph at the log-probs: [`train_logps`] returns them as a leaf
//! variable; the loss is built on them with candle ops, and [`TrainLogps::param_grads`] turns
//! the loss's gradient with respect to that leaf into the weights' gradients. gpt_neox and gpt2
//! take the same machinery with their own layers (`super::manual_ln`). Where it does not
//! apply (GPUs, bf16) it returns None and [`Model::train_logps`]
//! takes candle's graph ([`Model::forward_logps`]) behind the same [`TrainLogps`]. The weights
//! are read through the model's typed index ([`super::llama::LlamaWeights`]) and must not change
//! between the forward and the backward.
//!
//! Checked against candle's graph (itself checked against f64 finite differences and
//! transformers) in value and every weight's gradient, and against f64 finite differences on its
//! own: tests/manual_backward.rs.

use std::ops::Range;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor, Var, WithDType};
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::kernels::{
    Heads, Prod, Real, RopeTab, add_bias, add_into, attn_backward, attn_forward, col_sums,
    col_sums_segments, gather_rows, gemm_xwt, log_softmax_rows, mm, mm_new, mm_pair, mm_segments,
    rms_bwd, rms_dw_segments, rms_fwd, rope_rows, scatter_rows, split_rms, swiglu_grad_in_place,
    swiglu_keep,
};
use super::llama::LlamaWeights;
use super::manual_ln::LnTape;
use super::net::Proj;
use super::{Model, Net, Params, TrainLogps};

/// The hand-written pass's record of one forward, in the compute dtype.
pub(crate) enum Tape {
    F32(LlamaTape<f32>),
    F64(LlamaTape<f64>),
    /// gpt_neox and gpt2 ([`super::manual_ln`]).
    LnF32(LnTape<f32>),
    LnF64(LnTape<f64>),
}

/// A pass's record of one forward, run backward.
pub(crate) trait PassTape<T: Real>: Sized {
    /// The backward from the log-probs' gradient `dlp` [B·T]: every weight's gradient handed to
    /// `emit` once (summed at offset 0, or per sequence in slabs, by `split`).
    fn run_backward(
        self,
        model: &Model,
        w: &[&[T]],
        dlp: &[T],
        split: Split,
        emit: &mut Emit<'_, T>,
    ) -> Result<()>;
}

/// Every weight's summed gradient (as tensors, weight order) from a pass's tape.
fn backward_sum<T: Real, P: PassTape<T>>(
    tape: P,
    model: &Model,
    dlp: &Tensor,
) -> Result<Vec<Option<Tensor>>> {
    let dlp: Vec<T> = dlp
        .to_dtype(T::DTYPE)?
        .flatten_all()?
        .to_vec1()
        .context("the log-probs' gradient")?;
    let mut grads: Vec<Option<Vec<T>>> = vec![None; model.params.len()];
    with_weights::<T, _>(&model.params, |w| {
        tape.run_backward(model, w, &dlp, Split::Sum, &mut |i, _, g| {
            let slot = grads
                .get_mut(i)
                .with_context(|| format!("no weight {i} in the model"))?;
            *slot = Some(g);
            Ok(())
        })
    })?;
    let shapes: Vec<_> = model
        .params
        .vars()
        .iter()
        .map(|v| v.shape().clone())
        .collect();
    grads
        .into_iter()
        .zip(shapes)
        .map(|(g, s)| {
            g.map(|g| Tensor::from_vec(g, s, &model.device))
                .transpose()
                .map_err(Into::into)
        })
        .collect()
}

/// Each sequence's gradients from a pass's tape, to `sink`.
fn backward_seqs<T: Real, P: PassTape<T>>(
    tape: P,
    model: &Model,
    dlp: &[f64],
    sink: &mut impl SeqGradSink,
    slab_bytes: usize,
) -> Result<()> {
    let dlp: Vec<T> = dlp.iter().map(|&g| T::from_f64(g)).collect();
    with_weights::<T, _>(&model.params, |w| {
        tape.run_backward(
            model,
            w,
            &dlp,
            Split::PerSeq(slab_bytes),
            &mut |i, off, g| sink.weight(i, off, &g),
        )
    })
}

impl Tape {
    /// The gradient of every weight, in weight order, given the log-probs' gradient `dlp`.
    pub(crate) fn backward(self, model: &Model, dlp: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match self {
            Tape::F32(t) => backward_sum(t, model, dlp),
            Tape::F64(t) => backward_sum(t, model, dlp),
            Tape::LnF32(t) => backward_sum(t, model, dlp),
            Tape::LnF64(t) => backward_sum(t, model, dlp),
        }
    }

    /// Each sequence's (batch row's) own gradient of Σ_t dlp[b, t]·lp[b, t], weight by weight,
    /// from one backward of the whole batch: sequences do not interact, so every layer's
    /// per-position inputs a and output gradients δ are each sequence's own, and its weight
    /// gradient Σ_t δ_tᵀ a_t is taken over its rows alone (same flops as the batch's one
    /// product). `sink` gets each weight's blocks (in the compute dtype, in slabs of its rows
    /// of at most `slab_bytes`, [`SLAB_BYTES`] normally) and must be done with them when it returns: never a per-sequence gradient of
    /// the whole model. `dlp` is [B·T], row-major.
    pub(crate) fn backward_per_seq(
        self,
        model: &Model,
        dlp: &[f64],
        sink: &mut impl SeqGradSink,
        slab_bytes: usize,
    ) -> Result<()> {
        match self {
            Tape::F32(t) => backward_seqs(t, model, dlp, sink, slab_bytes),
            Tape::F64(t) => backward_seqs(t, model, dlp, sink, slab_bytes),
            Tape::LnF32(t) => backward_seqs(t, model, dlp, sink, slab_bytes),
            Tape::LnF64(t) => backward_seqs(t, model, dlp, sink, slab_bytes),
        }
    }
}

/// What [`Tape::backward_per_seq`] hands each weight's per-sequence gradients to.
pub(crate) trait SeqGradSink {
    /// Elements offset..offset + len of weight `index` (its position in the model's weights,
    /// elements in the weight's row-major order) for every sequence: `blocks` [B × len],
    /// sequence s's at `blocks[s·len..(s + 1)·len]`. A large weight comes in several slabs of
    /// its rows; every element of every weight comes exactly once.
    fn weight<T: Real>(&mut self, index: usize, offset: usize, blocks: &[T]) -> Result<()>;
}

/// `targets` value asking the pass to score the position's greedy token (the argmax of its
/// logits at the weights of the forward): the teacher-forced y* of a sequence.
pub(crate) const GREEDY_TARGET: u32 = u32::MAX;

/// The hand-written pass's forward on plain buffers, kept for [`Tape::backward_per_seq`]:
/// `ids`/`targets` [b·t] row-major, `rows` the positions whose log-prob is used (the others get
/// 0 and no gradient); a target of [`GREEDY_TARGET`] scores the greedy token there. Returns the
/// per-position log-probs [b·t] (in f64) and the tape, or None where the pass does not apply
/// (as [`train_logps`]).
pub(crate) fn forward_rows(
    model: &Model,
    ids: Vec<u32>,
    targets: Vec<u32>,
    rows: Vec<usize>,
    (b, t): (usize, usize),
) -> Result<Option<(Vec<f64>, Tape)>> {
    if ids.len() != b * t || targets.len() != b * t || rows.iter().any(|&r| r >= b * t) {
        bail!(
            "per-sequence pass over [{b}×{t}]: {} ids, {} targets, rows up to {:?}",
            ids.len(),
            targets.len(),
            rows.iter().max()
        );
    }
    Ok(
        forward_any(model, ids, targets, Some(rows), (b, t))?.map(|(lp, tape)| {
            let lp = match lp {
                Lp::F32(v) => v.into_iter().map(f64::from).collect(),
                Lp::F64(v) => v,
            };
            (lp, tape)
        }),
    )
}

/// Per-position log-probs in the compute dtype.
enum Lp {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The forward of whichever hand-written pass applies to `model` (None: none does).
fn forward_any(
    model: &Model,
    ids: Vec<u32>,
    targets: Vec<u32>,
    rows: Option<Vec<usize>>,
    (b, t): (usize, usize),
) -> Result<Option<(Lp, Tape)>> {
    if !applies_to(model) {
        return Ok(None);
    }
    let p = &model.params;
    Ok(Some(match (&model.net, model.compute) {
        (Net::Llama(c, ix), DType::F32) => {
            let (lp, tape) = forward::<f32>(c, ix, p, ids, targets, rows, b, t)?;
            (Lp::F32(lp), Tape::F32(tape))
        }
        (Net::Llama(c, ix), _) => {
            let (lp, tape) = forward::<f64>(c, ix, p, ids, targets, rows, b, t)?;
            (Lp::F64(lp), Tape::F64(tape))
        }
        (net, DType::F32) => {
            let (lp, tape) = super::manual_ln::forward::<f32>(net, p, ids, targets, rows, b, t)?;
            (Lp::F32(lp), Tape::LnF32(tape))
        }
        (net, _) => {
            let (lp, tape) = super::manual_ln::forward::<f64>(net, p, ids, targets, rows, b, t)?;
            (Lp::F64(lp), Tape::LnF64(tape))
        }
    }))
}

/// Whether a hand-written pass (and [`Tape::backward_per_seq`]) applies to `model`: every
/// architecture (llama/qwen2 here, gpt_neox and gpt2 in [`super::manual_ln`]) on the CPU, every
/// weight in the compute dtype, f32 or f64.
pub fn applies_to(model: &Model) -> bool {
    let dt = model.compute;
    let same_dtype = model.params.vars().iter().all(|v| v.dtype() == dt);
    model.device.is_cpu() && same_dtype && matches!(dt, DType::F32 | DType::F64)
}

/// Per-position log-probs for training ([`Model::forward_logps`]'s values) from the
/// hand-written pass, where it applies: every architecture on the CPU in f32/f64 (None
/// elsewhere: candle's graph then).
///
/// With `mask` [B, T] (non-zero: the position's log-prob is used), positions outside it get
/// log-prob 0 and no gradient, and the LM head runs only on the positions inside (a preference
/// pair's prompt and padding never reach it).
pub fn train_logps(
    model: &Model,
    ids: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Option<TrainLogps>> {
    if !applies_to(model) {
        return Ok(None);
    }
    let (b, t) = ids.dims2()?;
    if targets.dims2()? != (b, t) {
        bail!(
            "training targets {:?} do not match the ids {:?}",
            targets.dims(),
            ids.dims()
        );
    }
    let ids_v: Vec<u32> = ids.flatten_all()?.to_vec1()?;
    let tg_v: Vec<u32> = targets.flatten_all()?.to_vec1()?;
    let rows = match mask {
        None => None,
        Some(m) => {
            if m.dims2()? != (b, t) {
                bail!(
                    "the loss mask {:?} does not match the ids {:?}",
                    m.dims(),
                    ids.dims()
                );
            }
            let m: Vec<f64> = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            Some((0..b * t).filter(|&r| m[r] != 0.0).collect())
        }
    };
    let Some((lp, tape)) = forward_any(model, ids_v, tg_v, rows, (b, t))? else {
        return Ok(None);
    };
    let lp = match lp {
        Lp::F32(v) => Var::from_vec(v, (b, t), &model.device)?,
        Lp::F64(v) => Var::from_vec(v, (b, t), &model.device)?,
    };
    Ok(Some(TrainLogps::manual(lp, tape)))
}

// ---------------------------------------------------------------- weights

/// Runs `f` with every weight's elements borrowed as contiguous `&[T]` (in weight order).
pub(crate) fn with_weights<T: WithDType, R>(
    p: &Params,
    f: impl FnOnce(&[&[T]]) -> Result<R>,
) -> Result<R> {
    let tensors: Vec<Tensor> = p.vars().iter().map(|v| v.as_tensor().clone()).collect();
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for ((st, l), name) in guards.iter().zip(p.names()) {
        let candle_core::Storage::Cpu(cpu) = &**st else {
            bail!("weight \"{name}\" is not on the CPU");
        };
        let (a, b) = l
            .contiguous_offsets()
            .with_context(|| format!("weight \"{name}\" is not contiguous"))?;
        slices.push(&cpu.as_slice::<T>()?[a..b]);
    }
    f(&slices)
}

// ---------------------------------------------------------------- forward / backward

/// What one layer's backward needs.
struct LayerActs<T> {
    /// residual stream in, its RMSNorm
    x: Vec<T>,
    hn1: Vec<T>,
    /// q, k after RoPE; v
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// attention output (before o_proj), and its probabilities when kept (see [`super::kernels::KEEP_PROBS`])
    a: Vec<T>,
    probs: Option<Vec<T>>,
    /// residual stream after attention, its RMSNorm
    xm: Vec<T>,
    hn2: Vec<T>,
    gate: Vec<T>,
    up: Vec<T>,
    /// σ(gate)
    sig: Vec<T>,
    /// silu(gate)·up
    m: Vec<T>,
}

/// What the backward needs from one forward of the pass.
pub(crate) struct LlamaTape<T> {
    c: LlamaConfig,
    /// the attention shapes (B, T, heads) and RoPE tables of the forward, reused backward
    hd: Heads,
    tab: RopeTab,
    ids: Vec<u32>,
    layers: Vec<LayerActs<T>>,
    /// residual stream before the final norm
    xl: Vec<T>,
    head: HeadTape<T>,
}

/// The LM head's record: what its backward needs.
pub(crate) struct HeadTape<T> {
    /// The positions that reach the LM head (None: all); `targets`, `hf`, `e` and `inv_sum`
    /// hold those rows only.
    rows: Option<Vec<usize>>,
    targets: Vec<u32>,
    /// the final hidden states (after the final norm) of those rows
    hf: Vec<T>,
    /// exp(z − max z) of the logits' rows [N, V], and 1 / the sum of each row
    e: Vec<T>,
    inv_sum: Vec<T>,
}

/// The LM head and log-softmax on the rows `rows` (None: all n) of the final hidden states
/// `hf` [n×h]: per-position log-probs [n] (0 off `rows`), a target of [`GREEDY_TARGET`] taking
/// the row's greedy token, and the head's record.
pub(crate) fn head_forward<T: Real>(
    hf: Vec<T>,
    head: &[T],
    targets: Vec<u32>,
    rows: Option<Vec<usize>>,
    (n, h, vocab): (usize, usize, usize),
) -> Result<(Vec<T>, HeadTape<T>)> {
    let (hf, mut targets) = match &rows {
        Some(r) => (
            gather_rows(&hf, r, h),
            r.iter().map(|&i| targets[i]).collect(),
        ),
        None => (hf, targets),
    };
    let ns = targets.len();
    let mut z = gemm_xwt(&hf, head, ns, h, vocab)?;
    for (tg, row) in targets.iter_mut().zip(z.chunks(vocab)) {
        if *tg == GREEDY_TARGET {
            *tg = greedy(row);
        }
    }
    let (lp_sel, inv_sum) = log_softmax_rows(&mut z, &targets, vocab)?;
    let lp = match &rows {
        None => lp_sel,
        Some(r) => scatter_rows(&lp_sel, r, 1, n),
    };
    Ok((
        lp,
        HeadTape {
            rows,
            targets,
            hf,
            e: z,
            inv_sum,
        },
    ))
}

/// What the head's backward leaves for the rest: the final hidden states' gradient [n×h] (all
/// rows), and for a head tied to the token embedding its gradient (summed) or what makes it
/// per sequence (with the embedding's slabs).
pub(crate) struct HeadGrads<T> {
    pub dhf: Vec<T>,
    tied: Option<Vec<T>>,
    dz: Vec<T>,
    hf: Vec<T>,
    head_segs: Option<Vec<Range<usize>>>,
}

/// The LM head's backward from the log-probs' gradient `dlp` [n]: the head's gradient to
/// `emit` when untied (`untied`: its index), the final hidden states' gradient back. `segs`:
/// each sequence's rows (per-sequence gradients), `b`/`t` the batch's shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_backward<T: Real>(
    tape: HeadTape<T>,
    dlp: &[T],
    head: &[T],
    untied: Option<usize>,
    (b, t, h, vocab): (usize, usize, usize, usize),
    segs: Option<&[Range<usize>]>,
    slab_bytes: usize,
    emit: &mut Emit<'_, T>,
) -> Result<HeadGrads<T>> {
    let n = b * t;
    // each sequence's positions among the LM head's rows
    let head_segs: Option<Vec<Range<usize>>> = match (segs, &tape.rows) {
        (Some(_), Some(r)) => Some(
            (0..b)
                .map(|s| r.partition_point(|&i| i < s * t)..r.partition_point(|&i| i < (s + 1) * t))
                .collect(),
        ),
        (s, _) => s.map(<[_]>::to_vec),
    };
    // dz = g ⊙ (onehot − softmax), in place over the exponentials
    let dlp_sel: Vec<T> = match &tape.rows {
        None => dlp.to_vec(),
        Some(r) => r.iter().map(|&i| dlp[i]).collect(),
    };
    let ns = dlp_sel.len();
    let mut dz = tape.e;
    dz.par_chunks_mut(vocab)
        .zip(dlp_sel.par_iter().zip(&tape.inv_sum))
        .zip(&tape.targets)
        .for_each(|((row, (&g, &inv)), &ti)| {
            if g == T::zero() {
                row.fill(T::zero());
                return;
            }
            let c = -g * inv;
            for x in row.iter_mut() {
                *x *= c;
            }
            if let Some(x) = row.get_mut(ti as usize) {
                *x += g;
            }
        });
    let other = Some((&dz[..], false, head, false, (ns, h, vocab)));
    // Summed, a tied head's gradient is the embedding's start; per sequence, its slabs are
    // made with the embedding's (dz is kept until then).
    let mut tied: Option<Vec<T>> = None;
    let dhf = match (untied, segs) {
        (None, None) => {
            let (x, g) = mm_pair(
                (&dz, false, head, false, (ns, h, vocab)),
                (&dz, true, &tape.hf, false, (vocab, h, ns)),
            )?;
            tied = Some(g);
            x
        }
        (None, Some(_)) => mm_new(&dz, false, head, false, (ns, h, vocab))?,
        (Some(hi), _) => wgrad(
            emit,
            slab_bytes,
            hi,
            other,
            (&dz, &tape.hf),
            (vocab, h, ns),
            head_segs.as_deref(),
        )?
        .context("the LM head's input gradient")?,
    };
    let keep = segs.is_some() && untied.is_none();
    let dhf = match &tape.rows {
        None => dhf,
        Some(r) => scatter_rows(&dhf, r, h, n),
    };
    Ok(HeadGrads {
        dhf,
        tied,
        dz: if keep { dz } else { Vec::new() },
        hf: if keep { tape.hf } else { Vec::new() },
        head_segs,
    })
}

/// A token (or position) embedding's gradient from the residual stream's gradient `dx` [n×h]
/// at the rows' `ids`, to `emit` as weight `index` [vocab×h]: summed (plus the tied head's, in
/// `head`), or per sequence (`segs`, rows per sequence `t`) in slabs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_backward<T: Real>(
    emit: &mut Emit<'_, T>,
    slab_bytes: usize,
    index: usize,
    dx: &[T],
    ids: &[u32],
    (vocab, h, t): (usize, usize, usize),
    segs: Option<&[Range<usize>]>,
    head: Option<HeadGrads<T>>,
) -> Result<()> {
    match segs {
        None => {
            let mut demb = head
                .and_then(|g| g.tied)
                .unwrap_or_else(|| vec![T::zero(); vocab * h]);
            for (row, &id) in dx.chunks(h).zip(ids) {
                let id = id as usize;
                if id >= vocab {
                    bail!("embedding row {id} outside {vocab}");
                }
                for (e, &g) in demb[id * h..(id + 1) * h].iter_mut().zip(row) {
                    *e += g;
                }
            }
            emit(index, 0, demb)
        }
        Some(s) => {
            let prod = head.as_ref().and_then(|g| {
                (!g.dz.is_empty())
                    .then_some(())
                    .and(g.head_segs.as_deref())
                    .map(|hs| (&g.dz[..], &g.hf[..], hs))
            });
            per_seq_slabs(
                emit,
                slab_bytes,
                index,
                prod,
                (vocab, h),
                s.len(),
                Some((dx, ids, t)),
            )
        }
    }
}

fn heads(c: &LlamaConfig, b: usize, t: usize) -> Result<Heads> {
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    if nkv == 0 || nh % nkv != 0 {
        bail!("{nh} attention heads cannot share {nkv} key/value heads");
    }
    Ok(Heads {
        b,
        t,
        nh,
        nkv,
        d: c.head_dim,
        scale: 1.0 / (c.head_dim as f64).sqrt(),
    })
}

#[allow(clippy::too_many_arguments)]
fn forward<T: Real>(
    c: &LlamaConfig,
    ix: &LlamaWeights,
    p: &Params,
    ids: Vec<u32>,
    targets: Vec<u32>,
    rows: Option<Vec<usize>>,
    b: usize,
    t: usize,
) -> Result<(Vec<T>, LlamaTape<T>)> {
    let n = b * t;
    let (h, inter, vocab, eps) = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.rms_norm_eps,
    );
    let hd = heads(c, b, t)?;
    let (qd, kd) = (hd.qs(), hd.ks());
    let tab = RopeTab::new(&super::llama::rope_freqs(c), t);
    with_weights::<T, _>(p, |w| {
        let emb = w[ix.embed];
        let mut x = vec![T::zero(); n * h];
        for (row, &id) in x.chunks_mut(h).zip(&ids) {
            let id = id as usize;
            if id >= vocab {
                bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            row.copy_from_slice(&emb[id * h..(id + 1) * h]);
        }
        let mut layers = Vec::with_capacity(ix.layers.len());
        for l in &ix.layers {
            let hn1 = rms_fwd(&x, w[l.input_norm], eps)?;
            let mut q = gemm_xwt(&hn1, w[l.q.weight], n, h, qd)?;
            let mut k = gemm_xwt(&hn1, w[l.k.weight], n, h, kd)?;
            let mut v = gemm_xwt(&hn1, w[l.v.weight], n, h, kd)?;
            for (y, p) in [(&mut q, &l.q), (&mut k, &l.k), (&mut v, &l.v)] {
                if let Some(bias) = p.bias {
                    add_bias(y, w[bias]);
                }
            }
            rope_rows(&mut q, hd.nh, hd.d, t, &tab, 1.0);
            rope_rows(&mut k, hd.nkv, hd.d, t, &tab, 1.0);
            let (a, probs) = attn_forward(hd, &q, &k, &v)?;
            let mut xm = gemm_xwt(&a, w[l.o], n, qd, h)?;
            add_into(&mut xm, &x);
            let hn2 = rms_fwd(&xm, w[l.post_norm], eps)?;
            let (gate, up) = mm_pair(
                (&hn2, false, w[l.gate], true, (n, inter, h)),
                (&hn2, false, w[l.up], true, (n, inter, h)),
            )?;
            let (m, sig) = swiglu_keep(&gate, &up);
            let mut next = gemm_xwt(&m, w[l.down], n, inter, h)?;
            add_into(&mut next, &xm);
            let prev = std::mem::replace(&mut x, next);
            layers.push(LayerActs {
                x: prev,
                hn1,
                q,
                k,
                v,
                a,
                probs,
                xm,
                hn2,
                gate,
                up,
                sig,
                m,
            });
        }
        let hf = rms_fwd(&x, w[ix.norm], eps)?;
        let (lp, head) = head_forward(hf, w[ix.head()], targets, rows, (n, h, vocab))?;
        Ok((
            lp,
            LlamaTape {
                c: c.clone(),
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

/// The index of a row's largest value (the first of equals; NaNs never win).
fn greedy<T: Real>(row: &[T]) -> u32 {
    let mut best = 0usize;
    for (j, &x) in row.iter().enumerate() {
        if x > row[best] || row[best].to_f64().is_nan() {
            best = j;
        }
    }
    best as u32
}

/// Which gradients the backward writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// The batch's: one per weight, summed over every sequence.
    Sum,
    /// Each sequence's own: [B × size] per weight, in slabs of rows of at most this many bytes.
    PerSeq(usize),
}

impl Split {
    /// Each sequence's rows of a [b × t] batch (None: summed), and the slab size.
    pub(crate) fn layout(self, b: usize, t: usize) -> (Option<Vec<Range<usize>>>, usize) {
        match self {
            Split::Sum => (None, usize::MAX),
            Split::PerSeq(bytes) => (Some((0..b).map(|s| s * t..(s + 1) * t).collect()), bytes),
        }
    }
}

/// RMSNorm's backward: its weight's gradient (summed or per sequence) to `emit` as weight
/// `index`, the input's gradient back.
#[allow(clippy::too_many_arguments)]
fn rms_norm_bwd<T: Real>(
    emit: &mut Emit<'_, T>,
    index: usize,
    x: &[T],
    w: &[T],
    g: &[T],
    (n, h, eps): (usize, usize, f64),
    segs: Option<&[Range<usize>]>,
) -> Result<Vec<T>> {
    let (dx, mut dw) = split_rms(rms_bwd(x, w, g, eps)?, n * h);
    if let Some(s) = segs {
        dw = rms_dw_segments(x, g, h, eps, s);
    }
    emit(index, 0, dw)?;
    Ok(dx)
}

/// How the backward hands over a weight's gradient: (weight index, offset of the first element
/// given, values). Summed: the whole gradient at offset 0. Per sequence: [B × len] blocks of
/// elements offset..offset + len of each sequence's gradient.
pub(crate) type Emit<'a, T> = dyn FnMut(usize, usize, Vec<T>) -> Result<()> + 'a;

/// [`Tape::backward_per_seq`]'s default: per-sequence gradients of one weight are handed over
/// in slabs of its rows holding at most this many bytes over all sequences (the LM head of a
/// 32k vocabulary for 48 sequences would otherwise take gigabytes at once).
pub(crate) const SLAB_BYTES: usize = 64 << 20;

/// Weight `i`'s gradient δᵀa [out×inp] over the n rows of δ [n×out] and a [n×inp], to `emit`,
/// and `other` (another product of the backward) computed beside it: summed (the two on a
/// thread each, [`mm_pair`]), or per sequence (`segs`, [`per_seq_slabs`]).
pub(crate) fn wgrad<T: Real>(
    emit: &mut Emit<'_, T>,
    slab_bytes: usize,
    i: usize,
    other: Option<Prod<'_, T>>,
    (delta, a): (&[T], &[T]),
    (out, inp, n): (usize, usize, usize),
    segs: Option<&[Range<usize>]>,
) -> Result<Option<Vec<T>>> {
    match segs {
        None => {
            let (x, g) = match other {
                Some(o) => {
                    let (x, g) = mm_pair(o, (delta, true, a, false, (out, inp, n)))?;
                    (Some(x), g)
                }
                None => (None, mm_new(delta, true, a, false, (out, inp, n))?),
            };
            emit(i, 0, g)?;
            Ok(x)
        }
        Some(s) => {
            let x = match other {
                Some((oa, ta, ob, tb, dims)) => Some(mm_new(oa, ta, ob, tb, dims)?),
                None => None,
            };
            per_seq_slabs(
                emit,
                slab_bytes,
                i,
                Some((delta, a, s)),
                (out, inp),
                s.len(),
                None,
            )?;
            Ok(x)
        }
    }
}

/// A projection as a hand-written pass reads it: weight and bias positions, sizes, layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lin {
    pub w: usize,
    pub b: Option<usize>,
    pub inp: usize,
    pub out: usize,
    /// gpt2's Conv1D: the weight is [in, out] and y = x·W
    pub conv: bool,
}

impl Lin {
    /// A Linear map without bias: weight `w` [out × inp].
    pub(crate) fn plain(w: usize, inp: usize, out: usize) -> Lin {
        Lin {
            w,
            b: None,
            inp,
            out,
            conv: false,
        }
    }

    pub(crate) fn of(p: &Proj, inp: usize, out: usize, conv: bool) -> Lin {
        Lin {
            w: p.weight,
            b: p.bias,
            inp,
            out,
            conv,
        }
    }

    /// y [n×out] = x·Wᵀ + b (or x·W + b for Conv1D).
    pub(crate) fn fwd<T: Real>(&self, w: &[&[T]], x: &[T], n: usize) -> Result<Vec<T>> {
        let mut y = mm_new(x, false, w[self.w], !self.conv, (n, self.out, self.inp))?;
        if let Some(b) = self.b {
            add_bias(&mut y, w[b]);
        }
        Ok(y)
    }

    /// The backward at input x from the output gradient dy: weight and bias gradients to
    /// `emit` (summed or per sequence, `segs`), the input's gradient back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bwd<T: Real>(
        &self,
        emit: &mut Emit<'_, T>,
        slab_bytes: usize,
        w: &[&[T]],
        x: &[T],
        dy: &[T],
        n: usize,
        segs: Option<&[Range<usize>]>,
    ) -> Result<Vec<T>> {
        if let Some(b) = self.b {
            emit(
                b,
                0,
                match segs {
                    None => col_sums(dy, self.out),
                    Some(s) => col_sums_segments(dy, self.out, s),
                },
            )?;
        }
        // dx = dy·W (Linear, W [out×in]) or dy·Wᵀ (Conv1D, W [in×out])
        let other: Prod<'_, T> = (dy, false, w[self.w], self.conv, (n, self.inp, self.out));
        let dx = if self.conv {
            // dW [in×out] = xᵀ·dy
            wgrad(
                emit,
                slab_bytes,
                self.w,
                Some(other),
                (x, dy),
                (self.inp, self.out, n),
                segs,
            )?
        } else {
            // dW [out×in] = dyᵀ·x
            wgrad(
                emit,
                slab_bytes,
                self.w,
                Some(other),
                (dy, x),
                (self.out, self.inp, n),
                segs,
            )?
        };
        dx.ok_or_else(|| anyhow::anyhow!("a projection's input gradient was not computed"))
    }
}

/// Rows of embedding gradients gathered per sequence: (dx [N×inp], the token id of each row,
/// rows per sequence).
type Scatter<'a, T> = (&'a [T], &'a [u32], usize);

/// A weight gradient's product per sequence: (δ [n×out], a [n×inp], each sequence's rows).
type SeqProd<'a, T> = (&'a [T], &'a [T], &'a [Range<usize>]);

/// Weight `i`'s per-sequence gradients [out × inp] each, in slabs of rows to `emit`: the
/// product δ_sᵀ a_s over each sequence's rows `segs[s]` (`prod`: δ, a, segs), plus, for an
/// embedding, row g of `scatter`'s dx added at row ids[g] of its sequence's block.
fn per_seq_slabs<T: Real>(
    emit: &mut Emit<'_, T>,
    slab_bytes: usize,
    i: usize,
    prod: Option<SeqProd<'_, T>>,
    (out, inp): (usize, usize),
    nseq: usize,
    scatter: Option<Scatter<'_, T>>,
) -> Result<()> {
    let row_bytes = (nseq * inp * std::mem::size_of::<T>()).max(1);
    let slab = (slab_bytes / row_bytes).clamp(1, out.max(1));
    for r0 in (0..out).step_by(slab) {
        let r1 = (r0 + slab).min(out);
        let rows = r1 - r0;
        let mut blocks = match prod {
            Some((d, a, s)) => mm_segments(d, a, out, inp, r0..r1, s)?,
            None => vec![T::zero(); nseq * rows * inp],
        };
        if let Some((dx, ids, t)) = scatter {
            for (g, (row, &id)) in dx.chunks(inp).zip(ids).enumerate() {
                let id = id as usize;
                if (r0..r1).contains(&id) && g / t < nseq {
                    let at = ((g / t) * rows + id - r0) * inp;
                    for (e, &x) in blocks[at..at + inp].iter_mut().zip(row) {
                        *e += x;
                    }
                }
            }
        }
        emit(i, r0 * inp, blocks)?;
    }
    Ok(())
}

impl<T: Real> PassTape<T> for LlamaTape<T> {
    fn run_backward(
        self,
        model: &Model,
        w: &[&[T]],
        dlp: &[T],
        split: Split,
        emit: &mut Emit<'_, T>,
    ) -> Result<()> {
        let Net::Llama(_, ix) = &model.net else {
            bail!("the hand-written backward needs the llama-family model its forward ran on");
        };
        self.llama_backward(ix, w, dlp, split, emit)
    }
}

impl<T: Real> LlamaTape<T> {
    /// The backward from the log-probs' gradient `dlp`: every weight's gradient handed to
    /// `emit` (weight index, gradient: summed, or [B × size] per sequence by `split`) once.
    fn llama_backward(
        self,
        ix: &LlamaWeights,
        w: &[&[T]],
        dlp: &[T],
        split: Split,
        emit: &mut Emit<'_, T>,
    ) -> Result<()> {
        let c = &self.c;
        let (hd, t) = (self.hd, self.hd.t);
        let n = hd.b * t;
        // per sequence: each batch row's positions
        let (seqs, slab_bytes) = split.layout(hd.b, t);
        let segs = seqs.as_deref();
        if dlp.len() != n {
            bail!(
                "the log-probs' gradient has {} values for {n} positions",
                dlp.len()
            );
        }
        let (h, inter, vocab, eps) = (
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
            c.rms_norm_eps,
        );
        let (qd, kd) = (hd.qs(), hd.ks());
        let tab = &self.tab;
        let hg = head_backward(
            self.head,
            dlp,
            w[ix.head()],
            ix.lm_head,
            (hd.b, t, h, vocab),
            segs,
            slab_bytes,
            emit,
        )?;
        let dhf = &hg.dhf;
        let mut dx = rms_norm_bwd(emit, ix.norm, &self.xl, w[ix.norm], dhf, (n, h, eps), segs)?;

        for (l, a) in ix.layers.iter().zip(self.layers).rev() {
            // MLP: x' = xm + down(silu(gate)·up)
            let down = Lin::plain(l.down, inter, h);
            let dm = down.bwd(emit, slab_bytes, w, &a.m, &dx, n, segs)?;
            drop(a.m);
            let (mut dgate, mut dup) = (a.gate, a.up);
            swiglu_grad_in_place(&mut dgate, &mut dup, &a.sig, &dm);
            drop(dm);
            drop(a.sig);
            let (dgate, dup) = (&dgate[..], &dup[..]);
            if segs.is_none() {
                let (dwg, dwu) = mm_pair(
                    (dgate, true, &a.hn2, false, (inter, h, n)),
                    (dup, true, &a.hn2, false, (inter, h, n)),
                )?;
                emit(l.gate, 0, dwg)?;
                emit(l.up, 0, dwu)?;
            } else {
                wgrad(
                    emit,
                    slab_bytes,
                    l.gate,
                    None,
                    (dgate, &a.hn2),
                    (inter, h, n),
                    segs,
                )?;
                wgrad(
                    emit,
                    slab_bytes,
                    l.up,
                    None,
                    (dup, &a.hn2),
                    (inter, h, n),
                    segs,
                )?;
            }
            let mut dhn2 = vec![T::zero(); n * h];
            mm(
                &mut dhn2,
                dgate,
                false,
                w[l.gate],
                false,
                (n, h, inter),
                false,
            )?;
            mm(&mut dhn2, dup, false, w[l.up], false, (n, h, inter), true)?;
            let mut dxm = rms_norm_bwd(
                emit,
                l.post_norm,
                &a.xm,
                w[l.post_norm],
                &dhn2,
                (n, h, eps),
                segs,
            )?;
            add_into(&mut dxm, &dx);

            // attention: xm = x + o_proj(attn(rope(q), rope(k), v))
            let da = Lin::plain(l.o, qd, h).bwd(emit, slab_bytes, w, &a.a, &dxm, n, segs)?;
            let (mut dq, mut dk, dv) =
                attn_backward(hd, &a.q, &a.k, &a.v, &da, a.probs.as_deref())?;
            drop(da);
            rope_rows(&mut dq, hd.nh, hd.d, t, tab, -1.0);
            rope_rows(&mut dk, hd.nkv, hd.d, t, tab, -1.0);
            for (g, p, width) in [(&dq, &l.q, qd), (&dk, &l.k, kd), (&dv, &l.v, kd)] {
                if let Some(bias) = p.bias {
                    emit(
                        bias,
                        0,
                        match segs {
                            None => col_sums(g, width),
                            Some(s) => col_sums_segments(g, width, s),
                        },
                    )?;
                }
            }
            let mut dhn1 = vec![T::zero(); n * h];
            for (g, wi, width, first) in [
                (&dq, l.q.weight, qd, true),
                (&dk, l.k.weight, kd, false),
                (&dv, l.v.weight, kd, false),
            ] {
                wgrad(emit, slab_bytes, wi, None, (g, &a.hn1), (width, h, n), segs)?;
                mm(&mut dhn1, g, false, w[wi], false, (n, h, width), !first)?;
            }
            let mut dxl = rms_norm_bwd(
                emit,
                l.input_norm,
                &a.x,
                w[l.input_norm],
                &dhn1,
                (n, h, eps),
                segs,
            )?;
            add_into(&mut dxl, &dxm);
            dx = dxl;
        }

        // embedding: rows of the tokens seen (plus the head's gradient when tied)
        embed_backward(
            emit,
            slab_bytes,
            ix.embed,
            &dx,
            &self.ids,
            (vocab, h, t),
            segs,
            Some(hg),
        )
    }
}
