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
//! the loss's gradient with respect to that leaf into the weights' gradients. Other
//! architectures, devices and dtypes take candle's graph ([`Model::forward_logps`]), with the
//! same interface. The weights must not change between the forward and the backward.
//!
//! Checked against candle's graph (itself checked against f64 finite differences and
//! transformers) in value and every weight's gradient, and against f64 finite differences on its
//! own: tests/manual_backward.rs.

use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var, WithDType};
use rayon::prelude::*;

use super::config::{LlamaConfig, ModelConfig};
use super::kernels::{
    Heads, Real, RopeTab, add_bias, add_into, attn_backward, attn_forward, col_sums, gather_rows,
    gemm_xwt, log_softmax_rows, mm, mm_new, mm_pair, rms_bwd, rms_fwd, rope_rows, scatter_rows,
    split_rms, swiglu_grad_in_place, swiglu_keep,
};
use super::{Model, Params};

/// Log-probs for a training step, and how to turn the loss's gradient into the weights'.
pub struct TrainLogps {
    logps: Tensor,
    tape: Option<(Var, AnyTape)>,
}

impl TrainLogps {
    /// Per-position log π(target | prefix) [B, T], part of the graph the loss is built on.
    pub fn logps(&self) -> &Tensor {
        &self.logps
    }

    /// Whether the hand-written backward runs (false: candle's graph all the way).
    pub fn is_manual(&self) -> bool {
        self.tape.is_some()
    }

    /// The gradient of every weight, in weight order, from the loss's gradients `store`
    /// (`loss.backward()`); None where a weight got none.
    pub fn param_grads(self, model: &Model, store: &GradStore) -> Result<Vec<Option<Tensor>>> {
        let Some((leaf, tape)) = self.tape else {
            return Ok(model.params.grads(store));
        };
        let Some(g) = store.get(leaf.as_tensor()) else {
            // the loss does not depend on the log-probs
            return Ok(vec![None; model.params.len()]);
        };
        match tape {
            AnyTape::F32(t) => t.backward(model, g),
            AnyTape::F64(t) => t.backward(model, g),
        }
    }
}

enum AnyTape {
    F32(Tape<f32>),
    F64(Tape<f64>),
}

/// Per-position log-probs for training ([`Model::forward_logps`]'s values). llama/qwen2 on the
/// CPU in f32/f64 take the hand-written pass; everything else candle's graph.
///
/// With `mask` [B, T] (non-zero: the position's log-prob is used), positions outside it get
/// log-prob 0 and no gradient, and the hand-written pass runs the LM head only on the positions
/// inside (a preference pair's prompt and padding never reach it).
pub fn train_logps(
    model: &Model,
    ids: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
) -> Result<TrainLogps> {
    let c = match &model.config {
        ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => c,
        _ => return graph(model, ids, targets, mask),
    };
    let dt = model.compute;
    let same_dtype = model.params.vars().iter().all(|v| v.dtype() == dt);
    if !model.device.is_cpu() || !same_dtype || !matches!(dt, DType::F32 | DType::F64) {
        return graph(model, ids, targets, mask);
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
    let ix = Index::new(c, &model.params)?;
    let (lp, tape) = match dt {
        DType::F32 => {
            let (lp, tape) = forward::<f32>(c, &ix, &model.params, ids_v, tg_v, rows, b, t)?;
            (
                Var::from_vec(lp, (b, t), &model.device)?,
                AnyTape::F32(tape),
            )
        }
        _ => {
            let (lp, tape) = forward::<f64>(c, &ix, &model.params, ids_v, tg_v, rows, b, t)?;
            (
                Var::from_vec(lp, (b, t), &model.device)?,
                AnyTape::F64(tape),
            )
        }
    };
    Ok(TrainLogps {
        logps: lp.as_tensor().clone(),
        tape: Some((lp, tape)),
    })
}

fn graph(
    model: &Model,
    ids: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
) -> Result<TrainLogps> {
    let lp = model.forward_logps(ids, targets)?;
    let logps = match mask {
        Some(m) => (&lp * m.to_dtype(lp.dtype())?)?,
        None => lp,
    };
    Ok(TrainLogps { logps, tape: None })
}

// ---------------------------------------------------------------- weights

/// Positions of one layer's weights in the model's parameter list.
struct LayerIx {
    in_norm: usize,
    q: usize,
    k: usize,
    v: usize,
    bias: Option<[usize; 3]>,
    o: usize,
    post_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
}

struct Index {
    embed: usize,
    layers: Vec<LayerIx>,
    norm: usize,
    /// None: tied to the embedding.
    head: Option<usize>,
}

impl Index {
    fn new(c: &LlamaConfig, p: &Params) -> Result<Index> {
        let at = |name: String| -> Result<usize> {
            p.position(&name)
                .with_context(|| format!("weight \"{name}\" is missing"))
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let bias = if c.attention_bias {
                Some([
                    at(format!("{l}.self_attn.q_proj.bias"))?,
                    at(format!("{l}.self_attn.k_proj.bias"))?,
                    at(format!("{l}.self_attn.v_proj.bias"))?,
                ])
            } else {
                None
            };
            layers.push(LayerIx {
                in_norm: at(format!("{l}.input_layernorm.weight"))?,
                q: at(format!("{l}.self_attn.q_proj.weight"))?,
                k: at(format!("{l}.self_attn.k_proj.weight"))?,
                v: at(format!("{l}.self_attn.v_proj.weight"))?,
                bias,
                o: at(format!("{l}.self_attn.o_proj.weight"))?,
                post_norm: at(format!("{l}.post_attention_layernorm.weight"))?,
                gate: at(format!("{l}.mlp.gate_proj.weight"))?,
                up: at(format!("{l}.mlp.up_proj.weight"))?,
                down: at(format!("{l}.mlp.down_proj.weight"))?,
            });
        }
        Ok(Index {
            embed: at("model.embed_tokens.weight".into())?,
            layers,
            norm: at("model.norm.weight".into())?,
            head: if c.tie_word_embeddings {
                None
            } else {
                Some(at("lm_head.weight".into())?)
            },
        })
    }
}

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
    /// attention output (before o_proj), and its probabilities when kept (see [`KEEP_PROBS`])
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

struct Tape<T> {
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
fn forward<T: Real + 'static>(
    c: &LlamaConfig,
    ix: &Index,
    p: &Params,
    ids: Vec<u32>,
    targets: Vec<u32>,
    rows: Option<Vec<usize>>,
    b: usize,
    t: usize,
) -> Result<(Vec<T>, Tape<T>)> {
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
            let hn1 = rms_fwd(&x, w[l.in_norm], eps)?;
            let mut q = gemm_xwt(&hn1, w[l.q], n, h, qd)?;
            let mut k = gemm_xwt(&hn1, w[l.k], n, h, kd)?;
            let mut v = gemm_xwt(&hn1, w[l.v], n, h, kd)?;
            if let Some([bq, bk, bv]) = l.bias {
                add_bias(&mut q, w[bq]);
                add_bias(&mut k, w[bk]);
                add_bias(&mut v, w[bv]);
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
        let head = w[ix.head.unwrap_or(ix.embed)];
        let mut z = gemm_xwt(&hf, head, ns, h, vocab)?;
        let (lp_sel, inv_sum) = log_softmax_rows(&mut z, &targets, vocab)?;
        let lp = match &rows {
            None => lp_sel,
            Some(r) => scatter_rows(&lp_sel, r, 1, n),
        };
        Ok((
            lp,
            Tape {
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

impl<T: Real + 'static> Tape<T> {
    fn backward(self, model: &Model, dlp: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dlp: Vec<T> = dlp
            .to_dtype(T::DTYPE)?
            .flatten_all()?
            .to_vec1()
            .context("the log-probs' gradient")?;
        let ix = Index::new(&self.c, &model.params)?;
        let grads = with_weights::<T, _>(&model.params, |w| self.run_backward(&ix, w, &dlp))?;
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

    fn run_backward(self, ix: &Index, w: &[&[T]], dlp: &[T]) -> Result<Vec<Option<Vec<T>>>> {
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
        let head = w[ix.head.unwrap_or(ix.embed)];
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
            if let Some([bq, bk, bv]) = l.bias {
                out[bq] = Some(col_sums(&dq, qd));
                out[bk] = Some(col_sums(&dk, kd));
                out[bv] = Some(col_sums(&dv, kd));
            }
            let mut dhn1 = vec![T::zero(); n * h];
            for (g, wi, width, first) in [
                (&dq, l.q, qd, true),
                (&dk, l.k, kd, false),
                (&dv, l.v, kd, false),
            ] {
                let dwi = mm_new(g, true, &a.hn1, false, (width, h, n))?;
                out[wi] = Some(dwi);
                mm(&mut dhn1, g, false, w[wi], false, (n, h, width), !first)?;
            }
            let (mut dxl, din) = split_rms(rms_bwd(&a.x, w[l.in_norm], &dhn1, eps)?, n * h);
            add_into(&mut dxl, &dxm);
            out[l.in_norm] = Some(din);
            dx = dxl;
        }

        // embedding: rows of the tokens seen (plus the head's gradient when tied)
        let mut demb = match ix.head {
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
