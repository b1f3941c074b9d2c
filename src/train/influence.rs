//! First-order influence of one update (Δf ≈ −η⟨∇θ f, ∇θ L⟩ for plain SGD): for observed responses o (a few probes ×
//! families), the actual change Δf_o of the summed log-prob over the step, the first-order
//! prediction ⟨∇θ f_o, Δθ⟩ with Δθ the step's actual update, its split over the batch's training
//! examples u, and the gradient cosine ⟨∇f_o, ∇f_u⟩ / (‖∇f_o‖‖∇f_u‖) (a kernel view) with f_u
//! chosen by `--influence-target` ([`crate::train::InfluenceTarget`]): −L_u, the example's own
//! loss (∇f_u = −∇L_u, the direction its update takes; under DPO both the chosen and the
//! rejected term, so the rejected response's negative gradient shows), or the log-prob of its
//! chosen or of its rejected response.
//!
//! The split: the batch loss is the mean of per-example losses L_u, so this step's gradient is
//! (1/B) Σ_u ∇L_u (times the clip coefficient when clipped). The update's share from it is
//! −lr · c ⊙ g with the optimizer's per-element scale c at this step
//! ([`super::optim::Optimizer::grad_scale`]: 1 for SGD; AdamW (1−β₁)/(1−β₁ᵗ)/(sqrt(v̂)+ε) with
//! this step's v̂; RMSprop 1/(sqrt(v)+ε)). So example u contributes
//! −(lr·κ/B) ⟨∇f_o, c ⊙ ∇L_u⟩. For plain SGD without momentum or weight decay the
//! contributions sum to the prediction exactly; otherwise the rest is momentum carried from
//! earlier steps and weight decay.

use anyhow::Result;
use candle_core::{D, Tensor, Var, backprop::GradStore};

use crate::model::Model;
use crate::probe::{Batch, Seq, logprob};

/// Every var's gradient, flattened and concatenated in var order (zeros where a var has none),
/// in f64 (the reference's precision; f32 and f64 models alike).
pub fn flat_grad(vars: &[Var], grads: &GradStore) -> Result<Vec<f64>> {
    let per_var: Vec<Option<Tensor>> = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).cloned())
        .collect();
    flatten_grads(vars, &per_var)
}

/// Per-var gradients (None: zeros) flattened and concatenated in var order.
pub fn flatten_grads(vars: &[Var], grads: &[Option<Tensor>]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (v, g) in vars.iter().zip(grads) {
        match g {
            Some(g) => out.extend(
                g.flatten_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1::<f64>()?,
            ),
            None => out.extend(std::iter::repeat_n(0f64, v.elem_count())),
        }
    }
    Ok(out)
}

/// Tensors (one per var), flattened and concatenated in order, in f64.
pub fn flatten(ts: &[Tensor]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for t in ts {
        out.extend(
            t.flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?,
        );
    }
    Ok(out)
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    multi_dot(a, &[b])[0]
}

/// ⟨a, b_k⟩ for every b_k in one parallel pass over `a`.
pub fn multi_dot(a: &[f64], bs: &[&[f64]]) -> Vec<f64> {
    use rayon::prelude::*;
    const CH: usize = 1 << 14;
    let n = bs.iter().map(|b| b.len()).fold(a.len(), usize::min);
    (0..n.div_ceil(CH))
        .into_par_iter()
        .map(|c| {
            let (lo, hi) = (c * CH, ((c + 1) * CH).min(n));
            let x = &a[lo..hi];
            bs.iter()
                .map(|b| x.iter().zip(&b[lo..hi]).map(|(p, q)| p * q).sum::<f64>())
                .collect::<Vec<f64>>()
        })
        .reduce(
            || vec![0.0; bs.len()],
            |mut acc, v| {
                for (a, b) in acc.iter_mut().zip(v) {
                    *a += b;
                }
                acc
            },
        )
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// The summed log-prob of one observed response as a scalar tensor: with a graph (`graph`) to
/// differentiate, or without to read its value. `argmax`: the teacher-forced greedy response y*
/// along `seq` (targets = argmax of the detached logits at each response position).
pub fn observed_logp(model: &Model, seq: &Seq, argmax: bool, graph: bool) -> Result<Tensor> {
    let batch = Batch::new(&[seq], &model.device)?;
    let logits = if graph {
        model.forward(&batch.ids)?
    } else {
        model.forward_eval(&batch.ids)?
    };
    let batch = if argmax {
        let am = logits
            .detach()
            .argmax(D::Minus1)?
            .to_dtype(candle_core::DType::U32)?;
        Batch {
            ids: batch.ids,
            targets: am,
            mask: batch.mask,
            spans: batch.spans,
            t: batch.t,
        }
    } else {
        batch
    };
    let (_, summed) = logprob::token_logps(&logits, &batch)?;
    Ok(summed.sum_all()?)
}

/// Gradient of a scalar with respect to every var, flattened.
pub fn grad_of(model: &Model, scalar: &Tensor) -> Result<Vec<f64>> {
    let grads = scalar.backward()?;
    flat_grad(model.params.vars(), &grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn linear_softmax_kernel_is_x_dot_x_plus_one_times_identity() {
        // z = Wᵀx + b with W [d, V], b [V]: K_ij = Σ_θ ∂z_o,i/∂θ · ∂z_u,j/∂θ = (x_o·x_u + 1) δ_ij.
        let (d, v) = (3usize, 4usize);
        let dev = Device::Cpu;
        let w = Var::from_vec(
            (0..d * v)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<f32>>(),
            (d, v),
            &dev,
        )
        .unwrap();
        let b = Var::from_vec(vec![0.1f32, -0.2, 0.3, 0.05], v, &dev).unwrap();
        let vars = [w.clone(), b.clone()];
        let xo = [0.5f32, -1.0, 2.0];
        let xu = [1.5f32, 0.25, -0.5];
        let z = |x: &[f32]| {
            let xt = Tensor::from_vec(x.to_vec(), (1, d), &dev).unwrap();
            xt.matmul(w.as_tensor())
                .unwrap()
                .broadcast_add(&b.as_tensor().unsqueeze(0).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
        };
        let jac = |x: &[f32]| -> Vec<Vec<f64>> {
            (0..v)
                .map(|i| {
                    let zi = z(x).get(i).unwrap();
                    flat_grad(&vars, &zi.backward().unwrap()).unwrap()
                })
                .collect()
        };
        let (jo, ju) = (jac(&xo), jac(&xu));
        let xx: f64 = xo
            .iter()
            .zip(&xu)
            .map(|(a, b)| (*a * *b) as f64)
            .sum::<f64>()
            + 1.0;
        for (i, gi) in jo.iter().enumerate() {
            for (j, gj) in ju.iter().enumerate() {
                let k = dot(gi, gj);
                let want = if i == j { xx } else { 0.0 };
                assert!((k - want).abs() < 1e-6, "K[{i}][{j}] = {k}, want {want}");
            }
        }
        let _ = DType::F32;
    }
}
