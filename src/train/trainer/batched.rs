//! The influence record from one batched pass, without per-example flat gradients.
//!
//! Every number of an influence record is an inner product of gradients: ⟨∇f_o, Δθ⟩,
//! ⟨∇f_o, c ⊙ ∇L_u⟩, ⟨∇f_o, ∇f_u⟩ and the norms (src/train/influence.rs says what each is). For
//! a linear map W the gradient of one sequence's scalar is Σ_t δ_t a_tᵀ (a: the layer's input
//! at position t, δ: the gradient at its output), and one backward of the sum over a batch of
//! sequences yields every sequence's own (a, δ), since sequences do not interact. So one
//! forward and one backward of [the batch's training rows; the observed responses] give each
//! sequence's gradient of each weight as a product over its own rows
//! ([`Tape::backward_per_seq`]: the same flops as the batch's single weight gradient), weight
//! after weight; the inner products are taken there and the blocks dropped before the next
//! weight. Per example u, ∇L_u is the sum of its rows' blocks with the loss's per-row factor
//! ∂L_u/∂(row's summed log-prob). Nothing the size of the whole model exists per sequence, and
//! no graph is built.
//!
//! Where the hand-written pass does not apply (other architectures, devices, dtypes) the
//! trainer takes [`Session::influence_flat`], which the tests use as the reference.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use super::{LossParams, Optimizer, Session};
use crate::model::Model;
use crate::model::kernels::Real;
use crate::model::manual::{GREEDY_TARGET, SLAB_BYTES, SeqGradSink, Tape, forward_rows};
use crate::probe::{Batch, Seq};
use crate::schema::config::{Algo, InfluenceTarget};
use crate::schema::event::Observed;

/// What one update changed, as the influence record needs it.
pub(super) struct StepChange<'a> {
    /// θ₁, the weights after the update.
    theta1: &'a [Tensor],
    /// Per weight: Δθ = θ₁ − θ₀, flattened.
    delta: Vec<Vec<f64>>,
    /// Per weight: the optimizer's per-element scale c of this step (None: 1, plain SGD).
    scale: Vec<Option<Vec<f32>>>,
    /// The clip coefficient κ (1 unless the gradient was clipped).
    kappa: f64,
    lr: f64,
}

impl<'a> StepChange<'a> {
    pub(super) fn new(
        theta0: &[Tensor],
        theta1: &'a [Tensor],
        metrics: &std::collections::BTreeMap<String, f64>,
        opt: &Optimizer,
        lr: f64,
    ) -> Result<StepChange<'a>> {
        if theta0.len() != theta1.len() {
            bail!(
                "influence: {} weights before the update, {} after",
                theta0.len(),
                theta1.len()
            );
        }
        let delta = theta0
            .iter()
            .zip(theta1)
            .map(|(a, b)| -> Result<Vec<f64>> {
                Ok((b - a)?
                    .flatten_all()?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let scale = delta
            .iter()
            .enumerate()
            .map(|(i, d)| opt.grad_scale(i, d.len()))
            .collect::<Result<Vec<_>>>()?;
        // Clip coefficient κ (PyTorch's clip_grad_norm_: max / (norm + 1e-6) when below 1).
        let kappa = match (opt.config().max_grad_norm, metrics.get("grad_norm")) {
            (Some(max), Some(&n)) => (max / (n + 1e-6)).min(1.0),
            _ => 1.0,
        };
        Ok(StepChange {
            theta1,
            delta,
            scale,
            kappa,
            lr,
        })
    }

    /// Example u's share factor: its contribution is −(lr·κ/B)⟨∇f_o, c ⊙ ∇L_u⟩.
    pub(super) fn share(&self, batch: usize) -> f64 {
        -(self.lr * self.kappa / batch as f64)
    }

    /// Δθ of every weight, concatenated.
    pub(super) fn flat_delta(&self) -> Vec<f64> {
        self.delta.concat()
    }

    /// c of every weight, concatenated (1 where a weight has none); None for plain SGD.
    pub(super) fn flat_scale(&self) -> Option<Vec<f64>> {
        if self.scale.iter().all(Option::is_none) {
            return None;
        }
        let mut out = Vec::with_capacity(self.delta.iter().map(Vec::len).sum());
        for (c, d) in self.scale.iter().zip(&self.delta) {
            match c {
                Some(c) => out.extend(c.iter().map(|&x| f64::from(x))),
                None => out.extend(std::iter::repeat_n(1.0, d.len())),
            }
        }
        Some(out)
    }

    /// Puts θ₁ back into the model.
    pub(super) fn restore_after(&self, model: &Model) -> Result<()> {
        model.restore(self.theta1)
    }
}

/// One influence record's inputs.
pub(super) struct Job<'a> {
    pub algo: Algo,
    /// The batch (positions in the training list) and the rejected responses it trained on.
    pub idx: &'a [usize],
    pub rejected: &'a [Seq],
    pub reference: Option<&'a [(f64, f64)]>,
    pub lp: LossParams,
    pub step: StepChange<'a>,
    /// (which, sequence, scored along its greedy tokens: y*)
    pub observed: Vec<(Observed, &'a Seq, bool)>,
}

/// The record's numbers, one entry per observed response.
#[derive(Debug, Default)]
pub(super) struct Parts {
    /// f_o at θ₀
    pub f0: Vec<f64>,
    pub actual: Vec<f64>,
    pub predicted: Vec<f64>,
    pub contributions: Vec<Vec<f64>>,
    pub cosine: Vec<Vec<f64>>,
}

/// One batched forward of the hand-written pass over `seqs` (greedy targets on the rows
/// flagged): per-row summed log-probs, response lengths, the mask and the tape; None where the
/// pass does not apply.
struct Pass {
    sums: Vec<f64>,
    lens: Vec<usize>,
    mask: Vec<bool>,
    t: usize,
    tape: Tape,
}

fn forward(model: &Model, seqs: &[&Seq], greedy: &[bool]) -> Result<Option<Pass>> {
    let batch = Batch::new(seqs, &candle_core::Device::Cpu)?;
    let (b, t) = (seqs.len(), batch.t);
    let ids: Vec<u32> = batch.ids.flatten_all()?.to_vec1()?;
    let mut targets: Vec<u32> = batch.targets.flatten_all()?.to_vec1()?;
    let mask: Vec<bool> = batch
        .mask
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|m| m != 0.0)
        .collect();
    for (r, &g) in greedy.iter().enumerate() {
        if g {
            for p in r * t..(r + 1) * t {
                if mask[p] {
                    targets[p] = GREEDY_TARGET;
                }
            }
        }
    }
    let rows: Vec<usize> = (0..b * t).filter(|&p| mask[p]).collect();
    let Some((lp, tape)) = forward_rows(model, ids, targets, rows, (b, t))? else {
        return Ok(None);
    };
    let sums = (0..b)
        .map(|r| {
            (r * t..(r + 1) * t)
                .filter(|&p| mask[p])
                .map(|p| lp[p])
                .sum()
        })
        .collect();
    Ok(Some(Pass {
        sums,
        lens: batch.response_lens(),
        mask,
        t,
        tape,
    }))
}

/// The rows of the batched pass: the batch's chosen responses, its rejected ones (not SFT),
/// f_u's responses again when f_u is a log-prob (their own backward weight is 1, not the
/// loss's), then the observed responses.
struct Layout {
    /// batch size B
    nb: usize,
    with_rejected: bool,
    /// first row of f_u's responses (None: f_u is −L_u)
    fu: Option<usize>,
    first_obs: usize,
    nobs: usize,
    rows: usize,
}

impl Layout {
    /// Products per observed row: Δθ, c ⊙ ∇L_u (B), ∇f_u (B), then ‖∇f_o‖².
    fn k(&self) -> usize {
        2 * self.nb + 1
    }
}

/// The inner products, accumulated weight by weight from [`Tape::backward_per_seq`].
struct Products<'a> {
    step: &'a StepChange<'a>,
    lay: Layout,
    /// [o × (k + 1)]: ⟨∇f_o, x_j⟩ for the k directions x_j, then ‖∇f_o‖²
    prod: Vec<f64>,
    /// ‖∇f_u‖² per example
    fu_sq: Vec<f64>,
}

impl SeqGradSink for Products<'_> {
    fn weight<T: Real>(&mut self, i: usize, offset: usize, blocks: &[T]) -> Result<()> {
        let lay = &self.lay;
        let (nb, k) = (lay.nb, lay.k());
        let p = blocks.len() / lay.rows.max(1);
        let part = offset..offset + p;
        let delta = self
            .step
            .delta
            .get(i)
            .and_then(|d| d.get(part.clone()))
            .with_context(|| format!("influence: no elements {part:?} in weight {i}"))?;
        if blocks.len() != lay.rows * p {
            bail!(
                "influence: weight {i} has {} gradient values for {} sequences",
                blocks.len(),
                lay.rows
            );
        }
        let scale = match self.step.scale.get(i).and_then(Option::as_deref) {
            Some(c) => Some(
                c.get(part.clone())
                    .with_context(|| format!("influence: no scale for {part:?} of weight {i}"))?,
            ),
            None => None,
        };
        let blk = |r: usize| &blocks[r * p..(r + 1) * p];
        // the k directions, one row of p each: Δθ, c ⊙ ∇L_u, ∇f_u
        let mut xs = vec![T::zero(); k * p];
        {
            let (d, rest) = xs.split_at_mut(p);
            for (x, &v) in d.iter_mut().zip(delta) {
                *x = T::from_f64(v);
            }
            let (scaled, fu) = rest.split_at_mut(nb * p);
            for u in 0..nb {
                let gu = &mut scaled[u * p..(u + 1) * p];
                gu.copy_from_slice(blk(u));
                if lay.with_rejected {
                    for (g, &r) in gu.iter_mut().zip(blk(nb + u)) {
                        *g += r;
                    }
                }
                let f = &mut fu[u * p..(u + 1) * p];
                match lay.fu {
                    None => {
                        for (f, &g) in f.iter_mut().zip(gu.iter()) {
                            *f = -g;
                        }
                    }
                    Some(first) => f.copy_from_slice(blk(first + u)),
                }
                if let Some(c) = scale {
                    for (g, &c) in gu.iter_mut().zip(c) {
                        *g *= T::from_f64(f64::from(c));
                    }
                }
            }
        }
        // every product in one parallel pass over chunks of the weight, f64 between chunks
        const CH: usize = 4096;
        let (nobs, first) = (lay.nobs, lay.first_obs);
        let width = nobs * (k + 1) + nb;
        let sums = (0..p.div_ceil(CH))
            .into_par_iter()
            .map(|c| {
                let r = c * CH..((c + 1) * CH).min(p);
                let mut out = vec![0f64; width];
                for o in 0..nobs {
                    let g = &blk(first + o)[r.clone()];
                    let row = &mut out[o * (k + 1)..(o + 1) * (k + 1)];
                    for (j, s) in row[..k].iter_mut().enumerate() {
                        *s += T::dot_f64(g, &xs[j * p..(j + 1) * p][r.clone()]);
                    }
                    row[k] += T::dot_f64(g, g);
                }
                for u in 0..nb {
                    let f = &xs[(1 + nb + u) * p..(2 + nb + u) * p][r.clone()];
                    out[nobs * (k + 1) + u] += T::dot_f64(f, f);
                }
                out
            })
            .reduce(
                || vec![0f64; width],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        self.prod.iter_mut().zip(&sums).for_each(|(a, b)| *a += b);
        self.fu_sq
            .iter_mut()
            .zip(&sums[nobs * (k + 1)..])
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
}

impl Session {
    /// The influence record's numbers from one batched pass at θ₀ (the weights the model holds
    /// on entry) and one forward at θ₁ (left in the model), or None (model untouched) where
    /// the hand-written pass does not apply.
    pub(super) fn influence_batched(&self, job: &Job<'_>) -> Result<Option<Parts>> {
        self.influence_batched_in(job, SLAB_BYTES)
    }

    /// [`Session::influence_batched`] with each weight's per-sequence gradients in slabs of at
    /// most `slab_bytes`.
    fn influence_batched_in(&self, job: &Job<'_>, slab_bytes: usize) -> Result<Option<Parts>> {
        let m = &self.model;
        let nb = job.idx.len();
        let with_rejected = job.algo != Algo::Sft;
        let mut seqs: Vec<&Seq> = job.idx.iter().map(|&i| &self.pairs[i].chosen).collect();
        if with_rejected {
            seqs.extend(job.idx.iter().map(|&i| &job.rejected[i]));
        }
        let ntrain = seqs.len();
        let fu = match self.cfg.influence_target {
            InfluenceTarget::Loss => None,
            InfluenceTarget::Chosen => {
                seqs.extend(job.idx.iter().map(|&i| &self.pairs[i].chosen));
                Some(ntrain)
            }
            InfluenceTarget::Rejected => {
                seqs.extend(job.idx.iter().map(|&i| &job.rejected[i]));
                Some(ntrain)
            }
        };
        let first_obs = seqs.len();
        seqs.extend(job.observed.iter().map(|(_, s, _)| *s));
        let greedy: Vec<bool> = (0..seqs.len())
            .map(|r| r >= first_obs && job.observed[r - first_obs].2)
            .collect();
        let Some(pass) = forward(m, &seqs, &greedy)? else {
            return Ok(None);
        };
        // ∂L_u/∂(summed log-prob of each training row): the batch loss is the mean of the L_u,
        // so B times its gradient
        let leaf = Var::from_vec(pass.sums[..ntrain].to_vec(), ntrain, &m.device)?;
        let leaf_t = leaf.as_tensor().to_dtype(m.compute)?;
        let (loss, _) = self.loss_on(
            job.algo,
            job.idx,
            job.reference,
            job.lp,
            &leaf_t,
            &pass.lens[..ntrain],
        )?;
        let ds: Vec<f64> = match loss.backward()?.get(leaf.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64)?.to_vec1()?,
            None => vec![0.0; ntrain],
        };
        let t = pass.t;
        let mut dlp = vec![0f64; seqs.len() * t];
        for (r, row) in dlp.chunks_mut(t).enumerate() {
            let w = if r < ntrain { ds[r] * nb as f64 } else { 1.0 };
            for (p, g) in row.iter_mut().enumerate() {
                if pass.mask[r * t + p] {
                    *g = w;
                }
            }
        }
        let lay = Layout {
            nb,
            with_rejected,
            fu,
            first_obs,
            nobs: job.observed.len(),
            rows: seqs.len(),
        };
        let k = lay.k();
        let mut acc = Products {
            step: &job.step,
            prod: vec![0.0; lay.nobs * (k + 1)],
            fu_sq: vec![0.0; nb],
            lay,
        };
        pass.tape.backward_per_seq(m, &dlp, &mut acc, slab_bytes)?;
        let share = job.step.share(nb);
        let mut parts = Parts {
            f0: pass.sums[first_obs..].to_vec(),
            ..Parts::default()
        };
        for row in acc.prod.chunks(k + 1) {
            parts.predicted.push(row[0]);
            parts
                .contributions
                .push(row[1..=nb].iter().map(|x| share * x).collect());
            let no = row[k].max(0.0).sqrt();
            parts.cosine.push(
                row[1 + nb..k]
                    .iter()
                    .zip(&acc.fu_sq)
                    .map(|(x, fu)| x / (no * fu.max(0.0).sqrt()).max(1e-30))
                    .collect(),
            );
        }
        // the actual change: the observed responses again at θ₁
        job.step.restore_after(m)?;
        let after = forward(m, &seqs[first_obs..], &greedy[first_obs..])?
            .context("influence: the hand-written pass stopped applying after the update")?;
        parts.actual = after
            .sums
            .iter()
            .zip(&parts.f0)
            .map(|(f1, f0)| f1 - f0)
            .collect();
        Ok(Some(parts))
    }
}

/// `ldviz bench --influence`'s figures: medians over the repetitions, in ms.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InfluenceBench {
    /// A plain update (loss, backward, optimizer step).
    pub update_ms: f64,
    /// An influence record on top of its update (the record's `wall_ms`).
    pub influence_ms: f64,
    /// influence_ms / update_ms
    pub ratio: f64,
}

impl Session {
    /// Plain updates and updates with an influence record, alternating over the first phase's
    /// batches in order, `reps` of each after 2 warm-ups of each. With `flat`, also the median
    /// time of the flat-gradient reference on the same updates (ms).
    pub fn bench_influence(
        &self,
        reps: usize,
        flat: bool,
    ) -> Result<(InfluenceBench, Option<f64>)> {
        let phase = self
            .cfg
            .phases
            .first()
            .context("a configuration without phases")?;
        let b = self.cfg.batch_size.max(1);
        let n = self.pairs.len();
        if n == 0 {
            bail!("no training records");
        }
        let lp = self.loss_params();
        let rejected: Vec<Seq> = self.pairs.iter().map(|p| p.rejected.clone()).collect();
        let reference = if phase.algo.needs_reference() {
            Some(self.reference_logps()?)
        } else {
            None
        };
        let mut opt = Optimizer::new(phase.optim.clone(), self.model.params.len());
        let lr = phase.optim.lr;
        let (mut upd, mut inf, mut fl) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = 0usize;
        let mut batch = || -> Vec<usize> {
            let idx = (0..b).map(|j| (next + j) % n).collect();
            next += b;
            idx
        };
        for rep in 0..reps + 2 {
            let step = 2 * rep + 1;
            let idx = batch();
            let t0 = std::time::Instant::now();
            self.update(
                phase.algo,
                &idx,
                &rejected,
                reference.as_deref(),
                lp,
                &mut opt,
                lr,
                step,
            )?;
            let update_ms = t0.elapsed().as_secs_f64() * 1e3;
            let idx = batch();
            let (_, rec) = self.update_influenced(
                phase,
                &idx,
                &rejected,
                reference.as_deref(),
                lp,
                &mut opt,
                lr,
                step + 1,
            )?;
            if flat {
                // the reference on the same update: θ₀ is not kept, so time it on the next
                // batch's update from θ₁
                let idx = batch();
                let theta0 = self.model.snapshot()?;
                let metrics = self.update(
                    phase.algo,
                    &idx,
                    &rejected,
                    reference.as_deref(),
                    lp,
                    &mut opt,
                    lr,
                    step + 2,
                )?;
                let theta1 = self.model.snapshot()?;
                let job = Job {
                    algo: phase.algo,
                    idx: &idx,
                    rejected: &rejected,
                    reference: reference.as_deref(),
                    lp,
                    step: StepChange::new(&theta0, &theta1, &metrics, &opt, lr)?,
                    observed: self.observed(),
                };
                self.model.restore(&theta0)?;
                let t0 = std::time::Instant::now();
                let r = self.influence_flat(&job);
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                self.model.restore(&theta1)?;
                r?;
                if rep >= 2 {
                    fl.push(ms);
                }
            }
            if rep >= 2 {
                upd.push(update_ms);
                inf.push(rec.wall_ms);
            }
        }
        let (u, i) = (median(&mut upd), median(&mut inf));
        let f = flat.then(|| median(&mut fl));
        Ok((
            InfluenceBench {
                update_ms: u,
                influence_ms: i,
                ratio: i / u,
            },
            f,
        ))
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure
    use super::*;
    use crate::schema::config::{OptimConfig, OptimKind};
    use crate::train::TrainOptions;

    fn session(model: &str, algo: Algo, target: InfluenceTarget, dtype: DType) -> Session {
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let opts = TrainOptions {
            model: fx.join(model).display().to_string(),
            data: fx.join("prefs.jsonl").display().to_string(),
            algo,
            probes: "3".into(),
            influence_target: target,
            ..TrainOptions::default()
        };
        let mut s = Session::prepare(&opts.to_config().unwrap()).unwrap();
        if dtype != s.model.dtype() {
            s.model = s.model.to_dtype(dtype).unwrap();
        }
        s
    }

    /// Both ways of computing one record, after a warm-up update (so AdamW's preconditioner is
    /// past its first step) and one update of the batch [0, 1, 2].
    fn both(s: &Session, algo: Algo, kind: OptimKind, slab_bytes: usize) -> (Parts, Parts) {
        let rejected: Vec<Seq> = s.pairs.iter().map(|p| p.rejected.clone()).collect();
        let reference: Vec<(f64, f64)> = (0..s.pairs.len())
            .map(|i| (-30.0 - i as f64, -28.0 + 0.5 * i as f64))
            .collect();
        let reference = (algo != Algo::Sft).then_some(reference.as_slice());
        let lp = LossParams {
            beta: 0.5,
            gamma: 0.0,
            label_smoothing: 0.0,
        };
        let mut cfg = OptimConfig::new(kind, 2e-2);
        cfg.max_grad_norm = Some(0.5);
        let mut opt = Optimizer::new(cfg, s.model.params.len());
        s.update(algo, &[3, 4], &rejected, reference, lp, &mut opt, 2e-2, 1)
            .unwrap();
        let idx = [0usize, 1, 2];
        let theta0 = s.model.snapshot().unwrap();
        let metrics = s
            .update(algo, &idx, &rejected, reference, lp, &mut opt, 2e-2, 2)
            .unwrap();
        let theta1 = s.model.snapshot().unwrap();
        let job = Job {
            algo,
            idx: &idx,
            rejected: &rejected,
            reference,
            lp,
            step: StepChange::new(&theta0, &theta1, &metrics, &opt, 2e-2).unwrap(),
            observed: s.observed(),
        };
        assert!(job.observed.len() >= 9, "{} observed", job.observed.len());
        s.model.restore(&theta0).unwrap();
        let flat = s.influence_flat(&job).unwrap();
        s.model.restore(&theta0).unwrap();
        let batched = s
            .influence_batched_in(&job, slab_bytes)
            .unwrap()
            .expect("the batched pass");
        (flat, batched)
    }

    /// Every entry of the batched record within `tol` relative of the flat reference's.
    fn agree(what: &str, flat: &Parts, batched: &Parts, tol: f64) {
        let rows = |p: &Parts| -> Vec<(&'static str, Vec<f64>)> {
            vec![
                ("f0", p.f0.clone()),
                ("actual", p.actual.clone()),
                ("predicted", p.predicted.clone()),
                ("contributions", p.contributions.concat()),
                ("cosine", p.cosine.concat()),
            ]
        };
        for ((name, a), (_, b)) in rows(flat).into_iter().zip(rows(batched)) {
            assert_eq!(a.len(), b.len(), "{what}: {name} lengths");
            assert!(!a.is_empty(), "{what}: no {name}");
            for (j, (x, y)) in a.iter().zip(&b).enumerate() {
                let rel = (x - y).abs() / x.abs().max(y.abs()).max(1e-300);
                assert!(
                    rel <= tol || x == y,
                    "{what}: {name}[{j}] flat {x} vs batched {y} (relative {rel:.2e})"
                );
            }
        }
        // something moved: the check compares real numbers
        assert!(flat.predicted.iter().any(|p| p.abs() > 1e-6), "{what}");
    }

    #[test]
    fn batched_influence_equals_the_flat_gradient_reference_in_f64() {
        use InfluenceTarget::*;
        // slabs: whole weights, or a few rows at a time (1 KiB over all sequences)
        for (model, algo, target, kind, slab) in [
            ("llama", Algo::Dpo, Loss, OptimKind::Adamw, SLAB_BYTES),
            ("llama", Algo::Dpo, Chosen, OptimKind::Sgd, 1024),
            ("llama", Algo::Dpo, Rejected, OptimKind::Rmsprop, SLAB_BYTES),
            ("llama", Algo::Sft, Loss, OptimKind::Adamw, 1024),
            ("llama", Algo::Ipo, Rejected, OptimKind::Adamw, SLAB_BYTES),
            ("qwen2", Algo::Dpo, Loss, OptimKind::Adamw, 1024),
            (
                "llama_tied",
                Algo::Dpo,
                Chosen,
                OptimKind::Adamw,
                SLAB_BYTES,
            ),
            ("llama_tied", Algo::Sft, Loss, OptimKind::Adamw, 1024),
            ("gpt_neox", Algo::Dpo, Loss, OptimKind::Adamw, 1024),
            ("gpt2", Algo::Dpo, Chosen, OptimKind::Adamw, SLAB_BYTES),
            ("gpt2", Algo::Sft, Loss, OptimKind::Sgd, 1024),
        ] {
            let s = session(model, algo, target, DType::F64);
            let (flat, batched) = both(&s, algo, kind, slab);
            // the flat reference scores observed responses through candle's graph, whose GELU
            // backward rounds its constants to six digits (gpt_neox, gpt2: ~1e-6 relative)
            let tol = if model.starts_with("gpt") { 1e-4 } else { 1e-9 };
            agree(
                &format!("{model} {algo:?} {target:?} {kind:?} f64 slabs of {slab} bytes"),
                &flat,
                &batched,
                tol,
            );
        }
    }

    /// Where no hand-written pass applies (here f16 compute on f32 masters, the CPU's stand-in
    /// for bf16), the batched path declines and the record comes from flat gradients.
    #[test]
    fn without_the_hand_written_pass_records_come_from_flat_gradients() {
        let mut s = session("llama", Algo::Dpo, InfluenceTarget::Loss, DType::F32);
        s.model.compute = DType::F16;
        assert!(!crate::model::manual::applies_to(&s.model));
        let rejected: Vec<Seq> = s.pairs.iter().map(|p| p.rejected.clone()).collect();
        let reference: Vec<(f64, f64)> = vec![(-30.0, -28.0); s.pairs.len()];
        let lp = LossParams {
            beta: 0.5,
            gamma: 0.0,
            label_smoothing: 0.0,
        };
        let phase = s.cfg.phases[0].clone();
        let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Sgd, 1e-2), s.model.params.len());
        let idx = [0usize, 1];
        let theta0 = s.model.snapshot().unwrap();
        let metrics = s
            .update(
                Algo::Dpo,
                &idx,
                &rejected,
                Some(&reference),
                lp,
                &mut opt,
                1e-2,
                1,
            )
            .unwrap();
        let theta1 = s.model.snapshot().unwrap();
        let job = Job {
            algo: Algo::Dpo,
            idx: &idx,
            rejected: &rejected,
            reference: Some(&reference),
            lp,
            step: StepChange::new(&theta0, &theta1, &metrics, &opt, 1e-2).unwrap(),
            observed: s.observed(),
        };
        s.model.restore(&theta0).unwrap();
        assert!(s.influence_batched(&job).unwrap().is_none());
        // the trainer's entry: the record is there, from the flat path
        s.model.restore(&theta0).unwrap();
        let (_, rec) = s
            .update_influenced(
                &phase,
                &idx,
                &rejected,
                Some(&reference),
                lp,
                &mut opt,
                1e-2,
                2,
            )
            .unwrap();
        assert_eq!(rec.observed.len(), job.observed.len());
        assert!(rec.predicted.iter().all(|p| p.is_finite()));
        assert!(
            rec.predicted.iter().any(|p| p.abs() > 1e-6),
            "{:?}",
            rec.predicted
        );
        assert!(
            rec.cosine
                .iter()
                .flatten()
                .all(|c| (-1.0..=1.0).contains(c))
        );
    }

    #[test]
    fn batched_influence_agrees_with_the_flat_reference_in_f32() {
        for (model, algo) in [
            ("llama", Algo::Dpo),
            ("qwen2", Algo::Sft),
            ("gpt_neox", Algo::Dpo),
        ] {
            let s = session(model, algo, InfluenceTarget::Loss, DType::F32);
            let (flat, batched) = both(&s, algo, OptimKind::Adamw, SLAB_BYTES);
            // relative to each quantity's scale: f32 rounding of two different summation orders
            let scale = |v: &[f64]| v.iter().fold(0f64, |a, x| a.max(x.abs()));
            for (name, a, b) in [
                (
                    "predicted",
                    flat.predicted.clone(),
                    batched.predicted.clone(),
                ),
                (
                    "contributions",
                    flat.contributions.concat(),
                    batched.contributions.concat(),
                ),
                ("cosine", flat.cosine.concat(), batched.cosine.concat()),
                ("actual", flat.actual.clone(), batched.actual.clone()),
            ] {
                let sc = scale(&a).max(1e-12);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-4 * sc,
                        "{model} {algo:?} f32 {name}: flat {x} vs batched {y} (scale {sc})"
                    );
                }
            }
        }
    }
}
