//! Fused kernels with their own backward pass, for the hottest composite of training: the
//! log-prob of each target token, logp[n] = z[n, t_n] − logsumexp(z[n, :]), over logits [N, V].
//! Composed from candle ops this is ~8 full passes over [N, V] forward and more backward; fused it
//! is one parallel pass forward and one backward (∂logp/∂z = onehot(t) − softmax(z)).
//! CPU, f32/f64 only; callers fall back to the composite ops elsewhere. Checked against the
//! composite ops and finite differences in tests.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct TargetLogp;
struct TargetLogpGrad;

fn contiguous<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("target-logp: {what} must be contiguous")))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// (max, log Σ exp(z − max)) of a row, accumulated in f64.
fn row_lse<T: Copy + Into<f64>>(z: &[T]) -> (f64, f64) {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.into()));
    let s: f64 = z.iter().map(|&x| (x.into() - m).exp()).sum();
    (m, s.ln())
}

fn fwd<T: Copy + Into<f64> + Send + Sync>(z: &[T], t: &[u32], v: usize) -> Result<Vec<f64>> {
    z.par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &ti)| {
            let (m, ls) = row_lse(row);
            let x: f64 = row
                .get(ti as usize)
                .copied()
                .ok_or_else(|| {
                    Error::Msg(format!("target-logp: target {ti} outside vocabulary {v}"))
                })?
                .into();
            Ok(x - m - ls)
        })
        .collect()
}

fn bwd<T: Copy + Into<f64> + Send + Sync>(z: &[T], t: &[u32], g: &[T], v: usize) -> Vec<f64> {
    let mut out = vec![0f64; z.len()];
    out.par_chunks_mut(v)
        .zip(z.par_chunks(v))
        .zip(t.par_iter().zip(g.par_iter()))
        .for_each(|((o, row), (&ti, &gi))| {
            let gi: f64 = gi.into();
            if gi == 0.0 {
                return;
            }
            let (m, ls) = row_lse(row);
            for (oj, &zj) in o.iter_mut().zip(row) {
                *oj = -gi * (zj.into() - m - ls).exp();
            }
            if let Some(x) = o.get_mut(ti as usize) {
                *x += gi;
            }
        });
    out
}

impl CustomOp2 for TargetLogp {
    fn name(&self) -> &'static str {
        "target-logp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = contiguous::<u32>(s2, l2, "targets")?;
        if t.len() != n {
            return Err(Error::Msg(format!(
                "target-logp: {n} rows but {} targets",
                t.len()
            )));
        }
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(
                fwd(contiguous::<f32>(s1, l1, "logits")?, t, v)?
                    .into_iter()
                    .map(|x| x as f32)
                    .collect(),
            ),
            CpuStorage::F64(_) => CpuStorage::F64(fwd(contiguous::<f64>(s1, l1, "logits")?, t, v)?),
            _ => return Err(Error::Msg("target-logp: logits must be f32 or f64".into())),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gz = z.apply_op3_no_bwd(t, &g.contiguous()?, &TargetLogpGrad)?;
        Ok((Some(gz), None))
    }
}

impl CustomOp3 for TargetLogpGrad {
    fn name(&self) -> &'static str {
        "target-logp-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l1.shape().dims2()?;
        let t = contiguous::<u32>(s2, l2, "targets")?;
        let out = match (s1, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let z = contiguous::<f32>(s1, l1, "logits")?;
                let g = contiguous::<f32>(s3, l3, "gradient")?;
                CpuStorage::F32(bwd(z, t, g, v).into_iter().map(|x| x as f32).collect())
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let z = contiguous::<f64>(s1, l1, "logits")?;
                let g = contiguous::<f64>(s3, l3, "gradient")?;
                CpuStorage::F64(bwd(z, t, g, v))
            }
            _ => {
                return Err(Error::Msg(
                    "target-logp-grad: dtypes must be f32 or f64 and match".into(),
                ));
            }
        };
        Ok((out, l1.shape().clone()))
    }
}

/// logp[n] = z[n, t_n] − logsumexp(z[n, :]) for logits [N, V] and u32 targets [N], differentiable
/// with respect to the logits. Fused on CPU for f32/f64; composite candle ops otherwise.
pub fn target_logp(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let fused = logits.device().is_cpu() && matches!(logits.dtype(), DType::F32 | DType::F64);
    if fused {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TargetLogp)
    } else {
        let picked = logits
            .gather(&targets.unsqueeze(1)?.contiguous()?, 1)?
            .squeeze(1)?;
        picked - logits.log_sum_exp(1)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn composite(z: &Tensor, t: &Tensor) -> Tensor {
        let picked = z
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        (picked - z.log_sum_exp(1).unwrap()).unwrap()
    }

    #[test]
    fn fused_matches_composite_values_and_gradients() {
        let d = Device::Cpu;
        let (n, v) = (7usize, 11usize);
        let data: Vec<f64> = (0..n * v)
            .map(|i| ((i * 31 % 17) as f64 - 8.0) / 3.0)
            .collect();
        let z = Var::from_vec(data, (n, v), &d).unwrap();
        let t = Tensor::new(&[0u32, 3, 10, 5, 5, 1, 9], &d).unwrap();
        let w = Tensor::new(&[1.0f64, -2.0, 0.5, 0.0, 3.0, 1.5, -1.0], &d).unwrap();
        let a = target_logp(z.as_tensor(), &t).unwrap();
        let b = composite(z.as_tensor(), &t);
        let (va, vb): (Vec<f64>, Vec<f64>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-12);
        }
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let ga: Vec<Vec<f64>> = ga.get(z.as_tensor()).unwrap().to_vec2().unwrap();
        let gb: Vec<Vec<f64>> = gb.get(z.as_tensor()).unwrap().to_vec2().unwrap();
        for (ra, rb) in ga.iter().zip(&gb) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < 1e-12, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn out_of_range_target_is_an_error() {
        let d = Device::Cpu;
        let z = Tensor::zeros((2, 4), DType::F32, &d).unwrap();
        let t = Tensor::new(&[1u32, 4], &d).unwrap();
        assert!(target_logp(&z, &t).is_err());
    }
}
