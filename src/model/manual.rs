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
//! the loss's gradient with respect to that leaf into the weights' gradients. Where it does not
//! apply (other architectures, devices and dtypes) it returns None and [`Model::train_logps`]
//! takes candle's graph ([`Model::forward_logps`]) behind the same [`TrainLogps`]. The weights
//! are read through the model's typed index ([`super::llama::LlamaWeights`]) and must not change
//! between the forward and the backward.
//!
//! Checked against candle's graph (itself checked against f64 finite differences and
//! transformers) in value and every weight's gradient, and against f64 finite differences on its
//! own: tests/manual_backward.rs.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor, Var, WithDType};
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::kernels::{
    Heads, Real, RopeTab, add_bias, add_into, attn_backward, attn_forward, col_sums, gather_rows,
    gemm_xwt, log_softmax_rows, mm, mm_new, mm_pair, rms_bwd, rms_fwd, rope_rows, scatter_rows,
    split_rms, swiglu_grad_in_place, swiglu_keep,
};
use super::llama::LlamaWeights;
use super::{Model, Net, Params, TrainLogps};

/// The hand-written pass's record of one forward, in the compute dtype.
pub(crate) enum Tape {
    F32(LlamaTape<f32>),
    F64(LlamaTape<f64>),
}

impl Tape {
    /// The gradient of every weight, in weight order, given the log-probs' gradient `dlp`.
    pub(crate) fn backward(self, model: &Model, dlp: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match self {
            Tape::F32(t) => t.backward(model, dlp),
            Tape::F64(t) => t.backward(model, dlp),
        }
    }
}

/// Per-position log-probs for training ([`Model::forward_logps`]'s values) from the
/// hand-written pass, where it applies: llama/qwen2 on the CPU in f32/f64 (None elsewhere:
/// candle's graph then).
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
    let Net::Llama(c, ix) = &model.net else {
        return Ok(None);
    };
    let dt = model.compute;
    let same_dtype = model.params.vars().iter().all(|v| v.dtype() == dt);
    if !model.device.is_cpu() || !same_dtype || !matches!(dt, DType::F32 | DType::F64) {
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
    let (lp, tape) = match dt {
        DType::F32 => {
            let (lp, tape) = forward::<f32>(c, ix, &model.params, ids_v, tg_v, rows, b, t)?;
            (Var::from_vec(lp, (b, t), &model.device)?, Tape::F32(tape))
        }
        _ => {
            let (lp, tape) = forward::<f64>(c, ix, &model.params, ids_v, tg_v, rows, b, t)?;
            (Var::from_vec(lp, (b, t), &model.device)?, Tape::F64(tape))
        }
    };
    Ok(Some(TrainLogps::manual(lp, tape)))
}

// ---------------------------------------------------------------- weights

/// Runs `f` with every weight's elements borrowed as contiguous `&[T]` (in weight order).
fn with_weights<T: WithDType, R>(p: &Params, f: impl FnOnce(&[&[T]]) -> Result<R>) -> Result<R> {
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
    /// The positions that reach the LM head (None: all); `targets`, `hf`, `e` and `inv_sum`
    /// hold those rows only.
    rows: Option<Vec<usize>>,
    targets: Vec<u32>,
    layers: Vec<LayerActs<T>>,
    /// residual stream before the final norm, and after it
    xl: Vec<T>,
    hf: Vec<T>,
    /// exp(z − max z) of the logits' rows [N, V], and 1 / the sum of each row
    e: Vec<T>,
    inv_sum: Vec<T>,
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
        let mut hf = rms_fwd(&x, w[ix.norm], eps)?;
        let mut targets = targets;
        if let Some(r) = &rows {
            hf = gather_rows(&hf, r, h);
            targets = r.iter().map(|&i| targets[i]).collect();
        }
        let ns = targets.len();
        let head = w[ix.head()];
        let mut z = gemm_xwt(&hf, head, ns, h, vocab)?;
        let (lp_sel, inv_sum) = log_softmax_rows(&mut z, &targets, vocab)?;
        let lp = match &rows {
            None => lp_sel,
            Some(r) => scatter_rows(&lp_sel, r, 1, n),
        };
        Ok((
            lp,
            LlamaTape {
                c: c.clone(),
                hd,
                tab,
                ids,
                rows,
                targets,
                layers,
                xl: x,
                hf,
                e: z,
                inv_sum,
            },
        ))
    })
}

impl<T: Real> LlamaTape<T> {
    fn backward(self, model: &Model, dlp: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dlp: Vec<T> = dlp
            .to_dtype(T::DTYPE)?
            .flatten_all()?
            .to_vec1()
            .context("the log-probs' gradient")?;
        let Net::Llama(_, ix) = &model.net else {
            bail!("the hand-written backward needs the llama-family model its forward ran on");
        };
        let grads = with_weights::<T, _>(&model.params, |w| self.run_backward(ix, w, &dlp))?;
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

    fn run_backward(self, ix: &LlamaWeights, w: &[&[T]], dlp: &[T]) -> Result<Vec<Option<Vec<T>>>> {
        let c = &self.c;
        let (hd, t) = (self.hd, self.hd.t);
        let n = hd.b * t;
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
        let mut out: Vec<Option<Vec<T>>> = vec![None; w.len()];

        // LM head and log-softmax: dz = g ⊙ (onehot − softmax), in place over the exponentials
        let dlp_sel: Vec<T> = match &self.rows {
            None => dlp.to_vec(),
            Some(r) => r.iter().map(|&i| dlp[i]).collect(),
        };
        let ns = dlp_sel.len();
        let mut dz = self.e;
        dz.par_chunks_mut(vocab)
            .zip(dlp_sel.par_iter().zip(&self.inv_sum))
            .zip(&self.targets)
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
        let head = w[ix.head()];
        let (dhf, dhead) = mm_pair(
            (&dz, false, head, false, (ns, h, vocab)),
            (&dz, true, &self.hf, false, (vocab, h, ns)),
        )?;
        drop(dz);
        let dhf = match &self.rows {
            None => dhf,
            Some(r) => scatter_rows(&dhf, r, h, n),
        };
        let (mut dx, dnorm) = split_rms(rms_bwd(&self.xl, w[ix.norm], &dhf, eps)?, n * h);
        out[ix.norm] = Some(dnorm);

        for (l, a) in ix.layers.iter().zip(self.layers).rev() {
            // MLP: x' = xm + down(silu(gate)·up)
            let (dm, dwd) = mm_pair(
                (&dx, false, w[l.down], false, (n, inter, h)),
                (&dx, true, &a.m, false, (h, inter, n)),
            )?;
            out[l.down] = Some(dwd);
            drop(a.m);
            let (mut dgate, mut dup) = (a.gate, a.up);
            swiglu_grad_in_place(&mut dgate, &mut dup, &a.sig, &dm);
            drop(dm);
            drop(a.sig);
            let (dgate, dup) = (&dgate[..], &dup[..]);
            let (dwg, dwu) = mm_pair(
                (dgate, true, &a.hn2, false, (inter, h, n)),
                (dup, true, &a.hn2, false, (inter, h, n)),
            )?;
            out[l.gate] = Some(dwg);
            out[l.up] = Some(dwu);
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
            let (mut dxm, dpost) = split_rms(rms_bwd(&a.xm, w[l.post_norm], &dhn2, eps)?, n * h);
            add_into(&mut dxm, &dx);
            out[l.post_norm] = Some(dpost);

            // attention: xm = x + o_proj(attn(rope(q), rope(k), v))
            let (dwo, da) = mm_pair(
                (&dxm, true, &a.a, false, (h, qd, n)),
                (&dxm, false, w[l.o], false, (n, qd, h)),
            )?;
            out[l.o] = Some(dwo);
            let (mut dq, mut dk, dv) =
                attn_backward(hd, &a.q, &a.k, &a.v, &da, a.probs.as_deref())?;
            drop(da);
            rope_rows(&mut dq, hd.nh, hd.d, t, tab, -1.0);
            rope_rows(&mut dk, hd.nkv, hd.d, t, tab, -1.0);
            for (g, p, width) in [(&dq, &l.q, qd), (&dk, &l.k, kd), (&dv, &l.v, kd)] {
                if let Some(bias) = p.bias {
                    out[bias] = Some(col_sums(g, width));
                }
            }
            let mut dhn1 = vec![T::zero(); n * h];
            for (g, wi, width, first) in [
                (&dq, l.q.weight, qd, true),
                (&dk, l.k.weight, kd, false),
                (&dv, l.v.weight, kd, false),
            ] {
                let dwi = mm_new(g, true, &a.hn1, false, (width, h, n))?;
                out[wi] = Some(dwi);
                mm(&mut dhn1, g, false, w[wi], false, (n, h, width), !first)?;
            }
            let (mut dxl, din) = split_rms(rms_bwd(&a.x, w[l.input_norm], &dhn1, eps)?, n * h);
            add_into(&mut dxl, &dxm);
            out[l.input_norm] = Some(din);
            dx = dxl;
        }

        // embedding: rows of the tokens seen (plus the head's gradient when tied)
        let mut demb = match ix.lm_head {
            None => dhead,
            Some(hi) => {
                out[hi] = Some(dhead);
                vec![T::zero(); vocab * h]
            }
        };
        for (row, &id) in dx.chunks(h).zip(&self.ids) {
            let id = id as usize;
            for (e, &g) in demb[id * h..(id + 1) * h].iter_mut().zip(row) {
                *e += g;
            }
        }
        out[ix.embed] = Some(demb);
        Ok(out)
    }
}
