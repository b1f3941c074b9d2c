//! Optimizers over the model's Vars, with PyTorch's update rules: SGD (optional momentum),
//! AdamW (decoupled weight decay, bias-corrected moments) and RMSprop (optional momentum).
//! Gradients arrive already clipped; the learning rate of each update is passed in (warm-up).

use anyhow::{Result, bail};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use crate::schema::config::{OptimConfig, OptimKind};

pub struct Optimizer {
    cfg: OptimConfig,
    /// Host-side f32 state for the fused CPU path: (first, second) moment per var.
    host: Vec<(Vec<f32>, Vec<f32>)>,
    /// First state per var: momentum buffer (SGD/RMSprop) or Adam's m.
    s1: Vec<Option<Tensor>>,
    /// Second state per var: Adam's v or RMSprop's square average.
    s2: Vec<Option<Tensor>>,
    t: usize,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig, n_vars: usize) -> Optimizer {
        Optimizer {
            cfg,
            host: vec![(Vec::new(), Vec::new()); n_vars],
            s1: vec![None; n_vars],
            s2: vec![None; n_vars],
            t: 0,
        }
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Number of updates applied so far.
    pub fn updates(&self) -> usize {
        self.t
    }

    /// After an update: how the update scaled *this step's* gradient, per element of var `i`
    /// (its length is `n`): the update's share from the current gradient g is −lr · c ⊙ g.
    /// SGD: c = 1 (the momentum buffer's carry-over is not this step's); AdamW:
    /// c = (1 − β₁)/(1 − β₁ᵗ) / (sqrt(v̂) + ε) with this step's v̂; RMSprop: c = 1/(sqrt(v) + ε).
    /// Weight decay is not attributed to the gradient. `None` means c = 1 everywhere.
    pub fn grad_scale(&self, i: usize, n: usize) -> Result<Option<Vec<f32>>> {
        let c = &self.cfg;
        let t = self.t.max(1) as i32;
        let eps = c.eps as f32;
        // (numerator, bias correction of v) per optimizer; SGD scales nothing.
        let (lead, bc2) = match c.kind {
            OptimKind::Sgd => return Ok(None),
            OptimKind::Adamw => {
                let (b1, b2) = c.adam_betas;
                (
                    ((1.0 - b1) / (1.0 - b1.powi(t))) as f32,
                    (1.0 - b2.powi(t)) as f32,
                )
            }
            OptimKind::Rmsprop => (1.0, 1.0),
        };
        let v: Vec<f32> = match (self.host.get(i), self.s2.get(i)) {
            (Some((_, h)), _) if h.len() == n => h.clone(),
            (_, Some(Some(t))) => t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            _ => bail!("optimizer: no second-moment state for var {i} yet"),
        };
        Ok(Some(
            v.iter().map(|&x| lead / ((x / bc2).sqrt() + eps)).collect(),
        ))
    }

    /// Applies one update with learning rate `lr`. `grads[i]` is the gradient of `vars[i]`
    /// (None: the var did not take part; it is left unchanged, as PyTorch skips params without
    /// a .grad).
    pub fn step(&mut self, vars: &[Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if vars.len() != grads.len() || vars.len() != self.s1.len() {
            bail!(
                "optimizer: {} vars, {} grads, state for {}",
                vars.len(),
                grads.len(),
                self.s1.len()
            );
        }
        self.t += 1;
        if vars
            .iter()
            .all(|v| v.dtype() == DType::F32 && v.device().is_cpu())
        {
            return self.step_fused_cpu(vars, grads, lr);
        }
        let c = &self.cfg;
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let theta = var.as_tensor().detach();
            let g = g.detach();
            let new = match c.kind {
                OptimKind::Sgd => {
                    let g = if c.weight_decay != 0.0 {
                        (&g + (&theta * c.weight_decay)?)?
                    } else {
                        g
                    };
                    let d = if c.momentum != 0.0 {
                        let buf = match self.s1[i].take() {
                            Some(b) => ((b * c.momentum)? + &g)?,
                            None => g,
                        };
                        self.s1[i] = Some(buf.clone());
                        buf
                    } else {
                        g
                    };
                    (&theta - (d * lr)?)?
                }
                OptimKind::Adamw => {
                    let (b1, b2) = c.adam_betas;
                    let theta = if c.weight_decay != 0.0 {
                        (&theta * (1.0 - lr * c.weight_decay))?
                    } else {
                        theta
                    };
                    let m = match self.s1[i].take() {
                        Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                        None => (&g * (1.0 - b1))?,
                    };
                    let v = match self.s2[i].take() {
                        Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let bc1 = 1.0 - b1.powi(self.t as i32);
                    let bc2 = 1.0 - b2.powi(self.t as i32);
                    let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
                    let upd = ((&m / bc1)? / denom)?;
                    self.s1[i] = Some(m);
                    self.s2[i] = Some(v);
                    (theta - (upd * lr)?)?
                }
                OptimKind::Rmsprop => {
                    let g = if c.weight_decay != 0.0 {
                        (&g + (&theta * c.weight_decay)?)?
                    } else {
                        g
                    };
                    let a = c.rms_alpha;
                    let sq = match self.s2[i].take() {
                        Some(s) => ((s * a)? + (g.sqr()? * (1.0 - a))?)?,
                        None => (g.sqr()? * (1.0 - a))?,
                    };
                    let denom = (sq.sqrt()? + c.eps)?;
                    self.s2[i] = Some(sq);
                    let d = (g / denom)?;
                    let d = if c.momentum != 0.0 {
                        let buf = match self.s1[i].take() {
                            Some(b) => ((b * c.momentum)? + &d)?,
                            None => d,
                        };
                        self.s1[i] = Some(buf.clone());
                        buf
                    } else {
                        d
                    };
                    (theta - (d * lr)?)?
                }
            };
            var.set(&new)?;
        }
        Ok(())
    }
}

impl Optimizer {
    /// The same update rules, fused into one parallel pass over each tensor's f32 values,
    /// written in place into the var's storage (the tensor-op path makes ~12 full-size
    /// temporaries per tensor per step; copying θ and g out and back costs 3 more passes). The
    /// arithmetic follows PyTorch's single-tensor implementations in f32 (Adam's first moment
    /// by lerp).
    fn step_fused_cpu(&mut self, vars: &[Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let c = &self.cfg;
        let t = self.t as i32;
        let (b1, b2) = c.adam_betas;
        let rule = Rule {
            kind: c.kind,
            step_size: (lr / (1.0 - b1.powi(t))) as f32,
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
            b1: b1 as f32,
            b2: b2 as f32,
            lr: lr as f32,
            wd: c.weight_decay as f32,
            mom: c.momentum as f32,
            eps: c.eps as f32,
            alpha: c.rms_alpha as f32,
        };
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let n = var.elem_count();
            if g.elem_count() != n {
                bail!(
                    "optimizer: var {i} has {n} values but its gradient {}",
                    g.elem_count()
                );
            }
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let (s1, s2) = &mut self.host[i];
            let fresh1 = s1.len() != n;
            let need1 = matches!(rule.kind, OptimKind::Adamw) || rule.mom != 0.0;
            let need2 = matches!(rule.kind, OptimKind::Adamw | OptimKind::Rmsprop);
            if need1 && fresh1 {
                *s1 = vec![0.0; n];
            }
            if need2 && s2.len() != n {
                *s2 = vec![0.0; n];
            }
            let op = InPlace {
                rule: &rule,
                fresh1,
                state: std::sync::Mutex::new((s1, s2)),
            };
            var.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }
}

/// One step's constants.
struct Rule {
    kind: OptimKind,
    step_size: f32,
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    lr: f32,
    wd: f32,
    mom: f32,
    eps: f32,
    alpha: f32,
}

/// The update of one var, in place on its storage, with its (first, second) moment buffers.
struct InPlace<'a> {
    rule: &'a Rule,
    fresh1: bool,
    state: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "optimizer-step"
    }
    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::{CpuStorage, Error};
        let (CpuStorage::F32(theta), CpuStorage::F32(g)) = (s1, s2) else {
            return Err(Error::Msg(
                "optimizer-step: f32 weights and gradients only".into(),
            ));
        };
        let ((a1, b1), (a2, b2)) = match (l1.contiguous_offsets(), l2.contiguous_offsets()) {
            (Some(x), Some(y)) if x.1 - x.0 == y.1 - y.0 => (x, y),
            _ => {
                return Err(Error::Msg(
                    "optimizer-step: non-contiguous or mismatched".into(),
                ));
            }
        };
        let (th, g) = (&mut theta[a1..b1], &g[a2..b2]);
        let n = th.len();
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Msg("optimizer-step: state lock poisoned".into()))?;
        let (m_all, v_all) = &mut *st;
        // Zero-length stand-ins keep one zipped loop for every optimizer.
        let mut none1 = Vec::new();
        let mut none2 = Vec::new();
        let m_all: &mut [f32] = if m_all.len() == n {
            m_all
        } else {
            none1.resize(n, 0.0);
            &mut none1
        };
        let v_all: &mut [f32] = if v_all.len() == n {
            v_all
        } else {
            none2.resize(n, 0.0);
            &mut none2
        };
        let r = self.rule;
        let fresh1 = self.fresh1;
        const CH: usize = 1 << 14;
        th.par_chunks_mut(CH)
            .zip(m_all.par_chunks_mut(CH))
            .zip(v_all.par_chunks_mut(CH))
            .zip(g.par_chunks(CH))
            .for_each(|(((th, m), v), gg)| match r.kind {
                OptimKind::Sgd => {
                    for j in 0..th.len() {
                        let d = gg[j] + r.wd * th[j];
                        let d = if r.mom != 0.0 {
                            m[j] = if fresh1 { d } else { r.mom * m[j] + d };
                            m[j]
                        } else {
                            d
                        };
                        th[j] -= r.lr * d;
                    }
                }
                OptimKind::Adamw => {
                    for j in 0..th.len() {
                        th[j] *= 1.0 - r.lr * r.wd;
                        m[j] += (gg[j] - m[j]) * (1.0 - r.b1);
                        v[j] = v[j] * r.b2 + (1.0 - r.b2) * gg[j] * gg[j];
                        let denom = v[j].sqrt() / r.bc2_sqrt + r.eps;
                        th[j] -= r.step_size * m[j] / denom;
                    }
                }
                OptimKind::Rmsprop => {
                    for j in 0..th.len() {
                        let d = gg[j] + r.wd * th[j];
                        v[j] = v[j] * r.alpha + (1.0 - r.alpha) * d * d;
                        let step = d / (v[j].sqrt() + r.eps);
                        let step = if r.mom != 0.0 {
                            m[j] = r.mom * m[j] + step;
                            m[j]
                        } else {
                            step
                        };
                        th[j] -= r.lr * step;
                    }
                }
            });
        Ok(())
    }
}

/// Global L2 norm of the gradients.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads.iter().flatten() {
        s += match cpu_sum_sq(g) {
            Some(x) => x,
            None => f64::from(
                g.sqr()?
                    .sum_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?,
            ),
        };
    }
    Ok(s.sqrt())
}

/// Σ x² of a contiguous f32 CPU tensor straight from its storage (f64 sums, in parallel);
/// None for other tensors.
fn cpu_sum_sq(g: &Tensor) -> Option<f64> {
    let (st, l) = g.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*st else {
        return None;
    };
    let (a, b) = l.contiguous_offsets()?;
    Some(
        v[a..b]
            .par_chunks(1 << 14)
            .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .sum(),
    )
}

/// Scales gradients so their global norm is at most `max` (PyTorch's clip_grad_norm_).
pub fn clip(grads: &mut [Option<Tensor>], norm: f64, max: f64) -> Result<()> {
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two AdamW steps on one scalar, computed by hand with PyTorch's formulas.
    #[test]
    fn adamw_matches_hand_computation() {
        let d = Device::Cpu;
        let var = Var::new(&[1.0f32], &d).unwrap();
        let mut cfg = OptimConfig::new(OptimKind::Adamw, 0.1);
        cfg.weight_decay = 0.01;
        let mut opt = Optimizer::new(cfg, 1);
        let mut theta = 1.0f64;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for (t, g) in [(1, 0.5f64), (2, -0.25)] {
            opt.step(
                std::slice::from_ref(&var),
                &[Some(Tensor::new(&[g as f32], &d).unwrap())],
                0.1,
            )
            .unwrap();
            theta *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = v / (1.0 - 0.999f64.powi(t));
            theta -= 0.1 * mh / (vh.sqrt() + 1e-8);
            let got = f64::from(var.as_tensor().to_vec1::<f32>().unwrap()[0]);
            assert!((got - theta).abs() < 1e-6, "step {t}: {got} vs {theta}");
        }
    }

    #[test]
    fn sgd_momentum_and_rmsprop_match_hand_computation() {
        let d = Device::Cpu;
        let var = Var::new(&[2.0f32], &d).unwrap();
        let mut cfg = OptimConfig::new(OptimKind::Sgd, 0.1);
        cfg.momentum = 0.9;
        let mut opt = Optimizer::new(cfg, 1);
        let g = |x: f32| vec![Some(Tensor::new(&[x], &d).unwrap())];
        opt.step(std::slice::from_ref(&var), &g(1.0), 0.1).unwrap(); // buf = 1, θ = 1.9
        opt.step(std::slice::from_ref(&var), &g(1.0), 0.1).unwrap(); // buf = 1.9, θ = 1.71
        let got = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 1.71).abs() < 1e-6);

        let var = Var::new(&[1.0f32], &d).unwrap();
        let mut opt = Optimizer::new(OptimConfig::new(OptimKind::Rmsprop, 0.01), 1);
        opt.step(std::slice::from_ref(&var), &g(0.5), 0.01).unwrap();
        let sq = 0.01 * 0.25f64;
        let want = 1.0 - 0.01 * 0.5 / (sq.sqrt() + 1e-8);
        let got = f64::from(var.as_tensor().to_vec1::<f32>().unwrap()[0]);
        assert!((got - want).abs() < 1e-6);
    }

    /// The fused CPU path and the tensor-op path (used on other devices/dtypes) agree over
    /// several steps for every optimizer.
    #[test]
    fn fused_and_tensor_paths_agree() {
        let d = Device::Cpu;
        for kind in [OptimKind::Sgd, OptimKind::Adamw, OptimKind::Rmsprop] {
            let mut cfg = OptimConfig::new(kind, 0.05);
            cfg.momentum = if kind == OptimKind::Adamw { 0.0 } else { 0.9 };
            cfg.weight_decay = 0.01;
            let init: Vec<f64> = (0..40000)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0)
                .collect();
            let a = Var::new(init.iter().map(|&x| x as f32).collect::<Vec<f32>>(), &d).unwrap();
            let b = Var::new(init.clone(), &d).unwrap(); // f64 → tensor-op path
            let mut oa = Optimizer::new(cfg.clone(), 1);
            let mut ob = Optimizer::new(cfg, 1);
            for step in 0..4 {
                let g: Vec<f64> = (0..40000)
                    .map(|i| (((i + step) * 53 % 97) as f64 - 48.0) / 30.0)
                    .collect();
                let ga =
                    Tensor::new(g.iter().map(|&x| x as f32).collect::<Vec<f32>>(), &d).unwrap();
                let gb = Tensor::new(g, &d).unwrap();
                oa.step(std::slice::from_ref(&a), &[Some(ga)], 0.05)
                    .unwrap();
                ob.step(std::slice::from_ref(&b), &[Some(gb)], 0.05)
                    .unwrap();
            }
            let va: Vec<f32> = a.as_tensor().to_vec1().unwrap();
            let vb: Vec<f64> = b.as_tensor().to_vec1().unwrap();
            for (x, y) in va.iter().zip(&vb) {
                assert!(
                    (f64::from(*x) - y).abs() < 1e-5 * y.abs().max(1.0),
                    "{kind:?}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let d = Device::Cpu;
        let mut gs = vec![Some(Tensor::new(&[3.0f32, 4.0], &d).unwrap())];
        let n = grad_norm(&gs).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        clip(&mut gs, n, 1.0).unwrap();
        assert!((grad_norm(&gs).unwrap() - 1.0).abs() < 1e-5);
    }
}
