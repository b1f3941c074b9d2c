//! The squeezing effect on a single softmax, as `ldviz squeeze` and the app's
//! playground compute it: one gradient step on the logits z of π = softmax(z) for a chosen
//! class c, positive (raise log π_c) or negative (lower it), with step size η':
//!
//! ```text
//! z ← z ± η'·(e_c − π)
//! ```
//!
//! A positive step on I and a negative step on J at once add both terms:
//! z ← z + η'·((e_I − π) − (e_J − π)).
//!
//! so for a negative step every other class i gains η'·π_i in logit — in proportion to how
//! likely it already is — and after renormalizing each class is scaled by α_i ∝ exp(η'·π_i):
//! the argmax always rises, unlikely classes fall with the pushed-down one.

use anyhow::{Result, bail};

/// Direction of a step on a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    /// Raise log π_c (the chosen response's gradient).
    Positive,
    /// Lower log π_c (DPO's negative gradient on the rejected response).
    Negative,
}

/// Validates a probability vector: finite, positive, summing to 1 within 1e-3 (it is then
/// renormalized exactly).
pub fn check_probs(p: &[f64]) -> Result<Vec<f64>> {
    if p.len() < 2 {
        bail!("need at least 2 probabilities, got {}", p.len());
    }
    for (i, &x) in p.iter().enumerate() {
        if !(x > 0.0 && x.is_finite()) {
            bail!("probability {i} is {x}: every probability must be positive");
        }
    }
    let s: f64 = p.iter().sum();
    if (s - 1.0).abs() > 1e-3 {
        bail!("the probabilities sum to {s}, not 1");
    }
    Ok(p.iter().map(|x| x / s).collect())
}

/// One step on class `c` with step size `eta` (η', the step in logit space); returns the new π.
pub fn step(p: &[f64], c: usize, sign: Sign, eta: f64) -> Vec<f64> {
    step_many(p, &[(c, sign)], eta)
}

/// One step of several class terms at once, each ±η'·(e_c − π) with π the distribution before
/// the step: a positive step on I with a negative step on J is z ← z + η'·((e_I − π) − (e_J − π))
/// (the π terms cancel: z_I rises by η', z_J falls by η'). Returns the new π.
pub fn step_many(p: &[f64], terms: &[(usize, Sign)], eta: f64) -> Vec<f64> {
    let mut z: Vec<f64> = p.iter().map(|pi| pi.ln()).collect();
    for &(c, sign) in terms {
        let s = match sign {
            Sign::Positive => 1.0,
            Sign::Negative => -1.0,
        };
        for (i, (zi, &pi)) in z.iter_mut().zip(p).enumerate() {
            let e = if i == c { 1.0 } else { 0.0 };
            *zi += s * eta * (e - pi);
        }
    }
    softmax(&z)
}

/// Numerically stable softmax.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// A peakiness preset: the geometric distribution π_i ∝ ratio^i over `v` classes (ratio near 0
/// is peaky, 1 is uniform).
pub fn geometric(v: usize, ratio: f64) -> Vec<f64> {
    let r = ratio.clamp(1e-6, 1.0);
    let w: Vec<f64> = (0..v).map(|i| r.powi(i as i32)).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

/// Index of the most likely class (0 when empty).
pub fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|x| x.0)
        .unwrap_or(0)
}

/// Classes whose probability rose (α > 1).
pub fn rose(alpha: &[f64]) -> Vec<usize> {
    (0..alpha.len()).filter(|&i| alpha[i] > 1.0).collect()
}

/// Per-class ratios α_i = π_new / π_old.
pub fn ratios(old: &[f64], new: &[f64]) -> Vec<f64> {
    old.iter().zip(new).map(|(a, b)| b / a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round4(v: &[f64]) -> Vec<f64> {
        v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
    }

    #[test]
    fn reproduces_the_worked_valley_and_peak_numbers() {
        let p = [0.5, 0.3, 0.15, 0.04, 0.01];
        assert_eq!(
            round4(&step(&p, 4, Sign::Negative, 1.0)),
            vec![0.5689, 0.2795, 0.1203, 0.0287, 0.0026]
        );
        assert_eq!(
            round4(&step(&p, 4, Sign::Negative, 5.0)),
            vec![0.7807, 0.1723, 0.0407, 0.0063, 0.0000]
        );
        assert_eq!(
            round4(&step(&p, 0, Sign::Negative, 1.0)),
            vec![0.3246, 0.4335, 0.1865, 0.0446, 0.0108]
        );
    }

    #[test]
    fn negative_step_raises_only_the_argmax_in_a_valley() {
        let p = [0.5, 0.3, 0.15, 0.04, 0.01];
        let q = step(&p, 4, Sign::Negative, 1.0);
        let a = ratios(&p, &q);
        assert!(a[0] > 1.0 && a[1..].iter().all(|&x| x < 1.0));
        // α_i ∝ exp(η'π_i) for i ≠ c: ratios of ratios match.
        assert!(((a[0] / a[1]) - (0.5f64 - 0.3).exp()).abs() < 1e-12);
        // A positive step on a class raises it.
        let r = step(&p, 2, Sign::Positive, 1.0);
        assert!(r[2] > p[2]);
        assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn positive_and_negative_step_together_match_a_hand_computation() {
        let p = [0.5, 0.3, 0.15, 0.05];
        let (i, j, eta) = (2, 0, 0.7);
        let q = step_many(&p, &[(i, Sign::Positive), (j, Sign::Negative)], eta);
        // z_k = ln p_k + η((e_I − π) − (e_J − π))_k = ln p_k + η([k = I] − [k = J]).
        let w: Vec<f64> = (0..4)
            .map(|k| {
                let d = f64::from(u8::from(k == i)) - f64::from(u8::from(k == j));
                p[k] * (eta * d).exp()
            })
            .collect();
        let s: f64 = w.iter().sum();
        for k in 0..4 {
            assert!(
                (q[k] - w[k] / s).abs() < 1e-12,
                "{k}: {} vs {}",
                q[k],
                w[k] / s
            );
        }
        assert!(q[i] > p[i] && q[j] < p[j]);
        // One term alone is `step`.
        assert_eq!(
            step_many(&p, &[(j, Sign::Negative)], eta),
            step(&p, j, Sign::Negative, eta)
        );
    }

    #[test]
    fn bad_probabilities_are_refused() {
        assert!(check_probs(&[0.5, 0.6]).is_err());
        assert!(check_probs(&[1.0]).is_err());
        assert!(check_probs(&[0.5, 0.5, 0.0]).is_err());
        assert!(check_probs(&[0.5, 0.5]).is_ok());
    }
}
