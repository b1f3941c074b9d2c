//! Losses of the SFT and DPO families (TRL's definitions), on summed response
//! log-probs, plus the per-step metrics under TRL's names.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;

use crate::schema::config::Algo;

/// Hyperparameters of the preference losses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossParams {
    pub beta: f64,
    pub gamma: f64,
    pub label_smoothing: f64,
}

/// log σ(x), stable and differentiable with the exact derivative σ(−x) everywhere, x = 0
/// included. (The textbook −(relu(−x) + log(1 + e^(−|x|))) is wrong at 0 under candle's
/// subgradients relu′(0) = abs′(0) = 1: it gives 1.5 instead of 0.5, and DPO's first step sits
/// exactly at Δ = 0.) Each branch only ever sees inputs of its own sign, so nothing overflows.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let zero = x.zeros_like()?;
    let pos = x.ge(&zero)?;
    let xp = pos.where_cond(x, &zero)?;
    let xn = pos.where_cond(&zero, x)?;
    // x ≥ 0: −log(1 + e^(−x));  x < 0: x − log(1 + e^x)
    let bp = (xp.neg()?.exp()? + 1.0)?.log()?.neg()?;
    let bn = (&xn - (xn.exp()? + 1.0)?.log()?)?;
    Ok(pos.where_cond(&bp, &bn)?)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Values of a (detached) 1-D tensor as f64, whatever its dtype.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach()
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}

/// Inputs of one batch: policy and reference summed log-probs [B] and response lengths [B]
/// (tokens incl. EOS), for chosen and (except for SFT) rejected.
pub struct LossInputs<'a> {
    pub policy_chosen: &'a Tensor,
    pub policy_rejected: Option<&'a Tensor>,
    pub ref_chosen: Option<&'a Tensor>,
    pub ref_rejected: Option<&'a Tensor>,
    pub len_chosen: &'a Tensor,
    pub len_rejected: Option<&'a Tensor>,
}

/// The loss (a scalar with graph) and the step's metrics (TRL names; learning_rate and
/// grad_norm are added by the trainer).
pub fn compute(
    algo: Algo,
    p: LossParams,
    x: &LossInputs,
) -> Result<(Tensor, BTreeMap<String, f64>)> {
    let mut m = BTreeMap::new();
    let pc = x.policy_chosen;
    m.insert("logps/chosen".to_string(), mean(&values(pc)?));
    if let Some(pr) = x.policy_rejected {
        m.insert("logps/rejected".to_string(), mean(&values(pr)?));
    }
    let need = |t: Option<&Tensor>, what: &str| -> Result<Tensor> {
        t.cloned()
            .ok_or_else(|| anyhow::anyhow!("{algo} needs {what}"))
    };
    let loss = match algo {
        Algo::Sft => pc.neg()?.mean_all()?,
        Algo::SftBoth => {
            let pr = need(x.policy_rejected, "rejected log-probs")?;
            Tensor::cat(&[pc, &pr], 0)?.neg()?.mean_all()?
        }
        Algo::Dpo | Algo::Hinge | Algo::Robust | Algo::Cdpo | Algo::Ipo => {
            let pr = need(x.policy_rejected, "rejected log-probs")?;
            let rc = need(x.ref_chosen, "reference log-probs")?;
            let rr = need(x.ref_rejected, "reference log-probs")?;
            let (pc, pr, rc, rr) = if algo == Algo::Ipo {
                let lc = x.len_chosen;
                let lr = need(x.len_rejected, "rejected lengths")?;
                (pc.div(lc)?, pr.div(&lr)?, rc.div(lc)?, rr.div(&lr)?)
            } else {
                (pc.clone(), pr, rc, rr)
            };
            let r_c = (&pc - &rc)?;
            let r_r = (&pr - &rr)?;
            let delta = (&r_c - &r_r)?;
            let b = p.beta;
            let loss = match algo {
                Algo::Dpo => log_sigmoid(&(&delta * b)?)?.neg()?.mean_all()?,
                Algo::Hinge => ((&delta * -b)? + 1.0)?.relu()?.mean_all()?,
                // TRL's `robust`: (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)
                Algo::Robust => {
                    let e = p.label_smoothing;
                    let a = (log_sigmoid(&(&delta * b)?)? * -(1.0 - e))?;
                    let c = (log_sigmoid(&(&delta * -b)?)? * e)?;
                    ((a + c)? / (1.0 - 2.0 * e))?.mean_all()?
                }
                // TRL's `sigmoid` with label smoothing (cDPO): −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)
                Algo::Cdpo => {
                    let e = p.label_smoothing;
                    let a = (log_sigmoid(&(&delta * b)?)? * -(1.0 - e))?;
                    let c = (log_sigmoid(&(&delta * -b)?)? * -e)?;
                    (a + c)?.mean_all()?
                }
                _ => (delta - 1.0 / (2.0 * b))?.sqr()?.mean_all()?,
            };
            rewards(&mut m, &(r_c * b)?, &(r_r * b)?)?;
            loss
        }
        Algo::Simpo => {
            let pr = need(x.policy_rejected, "rejected log-probs")?;
            let lr = need(x.len_rejected, "rejected lengths")?;
            let mc = pc.div(x.len_chosen)?;
            let mr = pr.div(&lr)?;
            let z = (((&mc - &mr)? * p.beta)? - p.gamma)?;
            let loss = log_sigmoid(&z)?.neg()?.mean_all()?;
            rewards(&mut m, &(mc * p.beta)?, &(mr * p.beta)?)?;
            loss
        }
        Algo::Extended | Algo::SftThenDpo => {
            anyhow::bail!("{algo} is a sequence of phases, not a loss")
        }
    };
    m.insert(
        "loss".to_string(),
        loss.detach()
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?,
    );
    Ok((loss, m))
}

fn rewards(m: &mut BTreeMap<String, f64>, rc: &Tensor, rr: &Tensor) -> Result<()> {
    let c = values(rc)?;
    let r = values(rr)?;
    let margins: Vec<f64> = c.iter().zip(&r).map(|(a, b)| a - b).collect();
    let acc: Vec<f64> = margins
        .iter()
        .map(|&x| if x > 0.0 { 1.0 } else { 0.0 })
        .collect();
    m.insert("rewards/chosen".to_string(), mean(&c));
    m.insert("rewards/rejected".to_string(), mean(&r));
    m.insert("rewards/margins".to_string(), mean(&margins));
    m.insert("rewards/accuracies".to_string(), mean(&acc));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_sigmoid_matches_formula_and_is_stable() {
        let x = Tensor::new(&[-50f32, -2.0, 0.0, 3.0, 80.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = log_sigmoid(&x).unwrap().to_vec1().unwrap();
        for (xi, yi) in [-50f64, -2.0, 0.0, 3.0, 80.0].iter().zip(y) {
            let want = -(1.0 + (-xi).exp()).ln();
            assert!((f64::from(yi) - want).abs() < 1e-5, "{xi}: {yi} vs {want}");
        }
    }

    #[test]
    fn log_sigmoid_gradient_is_sigmoid_of_minus_x_even_at_zero() {
        let xs = [-100f64, -3.0, -1e-3, 0.0, 1e-3, 2.5, 100.0];
        let x = candle_core::Var::new(&xs, &Device::Cpu).unwrap();
        let y = log_sigmoid(x.as_tensor()).unwrap().sum_all().unwrap();
        let g: Vec<f64> = y
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        for (xi, gi) in xs.iter().zip(g) {
            let want = 1.0 / (1.0 + xi.exp());
            assert!((gi - want).abs() < 1e-12, "x = {xi}: {gi} vs {want}");
        }
    }

    #[test]
    fn dpo_loss_and_metrics_by_hand() {
        let d = Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &d).unwrap();
        let (pc, pr, rc, rr, l) = (
            t(&[-10.0, -8.0]),
            t(&[-12.0, -7.0]),
            t(&[-11.0, -8.5]),
            t(&[-11.0, -6.0]),
            t(&[3.0, 4.0]),
        );
        let x = LossInputs {
            policy_chosen: &pc,
            policy_rejected: Some(&pr),
            ref_chosen: Some(&rc),
            ref_rejected: Some(&rr),
            len_chosen: &l,
            len_rejected: Some(&l),
        };
        let p = LossParams {
            beta: 0.5,
            gamma: 0.5,
            label_smoothing: 0.2,
        };
        // Δ = (1 − (−1)) = 2 and (0.5 − (−1)) = 1.5
        let deltas = [2.0f64, 1.5];
        let ls = |z: f64| -(1.0 + (-z).exp()).ln();
        let (loss, m) = compute(Algo::Dpo, p, &x).unwrap();
        let want = deltas.iter().map(|d| -ls(0.5 * d)).sum::<f64>() / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        assert!((m["rewards/chosen"] - 0.5 * (1.0 + 0.5) / 2.0).abs() < 1e-6);
        assert!((m["rewards/rejected"] - 0.5 * (-1.0 - 1.0) / 2.0).abs() < 1e-6);
        assert_eq!(m["rewards/accuracies"], 1.0);
        let (loss, _) = compute(Algo::Hinge, p, &x).unwrap();
        let want = deltas.iter().map(|d| (1.0 - 0.5 * d).max(0.0)).sum::<f64>() / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        let (loss, _) = compute(Algo::Robust, p, &x).unwrap();
        let want = deltas
            .iter()
            .map(|d| (-(0.8) * ls(0.5 * d) + 0.2 * ls(-0.5 * d)) / 0.6)
            .sum::<f64>()
            / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        let (loss, m) = compute(Algo::Cdpo, p, &x).unwrap();
        let want = deltas
            .iter()
            .map(|d| -(0.8) * ls(0.5 * d) - 0.2 * ls(-0.5 * d))
            .sum::<f64>()
            / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        // cDPO reports the DPO family's TRL metrics
        assert!((m["rewards/margins"] - 0.5 * (2.0 + 1.5) / 2.0).abs() < 1e-6);
        assert_eq!(m["rewards/accuracies"], 1.0);
        assert!((m["logps/rejected"] + 9.5).abs() < 1e-6);
        let (loss, _) = compute(Algo::Ipo, p, &x).unwrap();
        let h = [2.0f64 / 3.0, 1.5 / 4.0];
        let want = h.iter().map(|h| (h - 1.0).powi(2)).sum::<f64>() / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        let (loss, _) = compute(Algo::Simpo, p, &x).unwrap();
        let z = [
            0.5 * (-10.0 / 3.0 + 12.0 / 3.0) - 0.5,
            0.5 * (-8.0 / 4.0 + 7.0 / 4.0) - 0.5,
        ];
        let want = z.iter().map(|z| -ls(*z)).sum::<f64>() / 2.0;
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - want).abs() < 1e-6);
        let (loss, m) = compute(Algo::Sft, p, &x).unwrap();
        assert!((f64::from(loss.to_scalar::<f32>().unwrap()) - 9.0).abs() < 1e-6);
        assert!((m["logps/chosen"] + 9.0).abs() < 1e-6);
    }

    /// dL/dΔ of one pair under `algo` (f64, through candle's backward), Δ = policy chosen − 0.
    fn dloss_ddelta(algo: Algo, p: LossParams, deltas: &[f64]) -> Vec<f64> {
        let d = Device::Cpu;
        let n = deltas.len();
        let pc = candle_core::Var::new(deltas, &d).unwrap();
        let zero = Tensor::zeros(n, candle_core::DType::F64, &d).unwrap();
        let len = Tensor::ones(n, candle_core::DType::F64, &d).unwrap();
        let x = LossInputs {
            policy_chosen: pc.as_tensor(),
            policy_rejected: Some(&zero),
            ref_chosen: Some(&zero),
            ref_rejected: Some(&zero),
            len_chosen: &len,
            len_rejected: Some(&len),
        };
        let (loss, _) = compute(algo, p, &x).unwrap();
        let g: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(pc.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        // the batch mean divides every pair's gradient by n
        g.iter().map(|v| v * n as f64).collect()
    }

    #[test]
    fn cdpo_gradient_changes_sign_at_large_margins_robust_does_not() {
        let p = LossParams {
            beta: 0.5,
            gamma: 0.0,
            label_smoothing: 0.1,
        };
        let (b, e) = (p.beta, p.label_smoothing);
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        // cDPO's gradient vanishes at σ(βΔ) = 1 − ε: βΔ = ln((1 − ε)/ε) = ln 9, Δ ≈ 4.394
        let turn = ((1.0 - e) / e).ln() / b;
        let deltas = [
            -20.0,
            -2.0,
            0.0,
            2.0,
            turn - 0.5,
            turn + 0.5,
            10.0,
            40.0,
            200.0,
        ];
        let cdpo = dloss_ddelta(Algo::Cdpo, p, &deltas);
        let robust = dloss_ddelta(Algo::Robust, p, &deltas);
        for ((d, gc), gr) in deltas.iter().zip(&cdpo).zip(&robust) {
            let s = sig(b * d);
            let want_c = -b * ((1.0 - e) - s);
            let want_r = -b * ((1.0 - e) * (1.0 - s) + e * s) / (1.0 - 2.0 * e);
            assert!(
                (gc - want_c).abs() < 1e-12,
                "cdpo Δ = {d}: {gc} vs {want_c}"
            );
            assert!(
                (gr - want_r).abs() < 1e-12,
                "robust Δ = {d}: {gr} vs {want_r}"
            );
            // robust always descends by widening the margin (dL/dΔ < 0)…
            assert!(*gr < 0.0, "robust Δ = {d}: {gr}");
            // …cDPO only below the turning point, and narrows it above
            if *d < turn {
                assert!(*gc < 0.0, "cdpo Δ = {d}: {gc}");
            } else {
                assert!(*gc > 0.0, "cdpo Δ = {d}: {gc}");
            }
        }
        // far out, cDPO's pull back tends to βε, robust's push to −βε/(1 − 2ε)
        assert!((cdpo[8] - b * e).abs() < 1e-12);
        assert!((robust[8] + b * e / (1.0 - 2.0 * e)).abs() < 1e-12);
        // with ε = 0 both are DPO
        let p0 = LossParams {
            label_smoothing: 0.0,
            ..p
        };
        let dpo = dloss_ddelta(Algo::Dpo, p0, &deltas);
        for g in [
            dloss_ddelta(Algo::Cdpo, p0, &deltas),
            dloss_ddelta(Algo::Robust, p0, &deltas),
        ] {
            for (a, b) in g.iter().zip(&dpo) {
                assert!((a - b).abs() < 1e-15);
            }
        }
    }
}
