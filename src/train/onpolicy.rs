//! On-policy responses: sampling from the current model (no graph), seeded, so DPO's rejected
//! responses can be drawn from the policy each epoch (the paper's on-policy variant).

use anyhow::{Result, anyhow};
use candle_core::{DType, Tensor};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;

use crate::model::Model;

/// Samples one continuation per prompt at `temperature`, stopping at EOS or after `max_new[i]`
/// tokens; every returned response ends with EOS (appended when the budget ran out, as ldviz
/// appends EOS to every response). Prompts are processed `chunk` at a time, right-padded; each
/// row reads the logits at its own last position.
pub fn sample_responses(
    model: &Model,
    prompts: &[Vec<u32>],
    max_new: &[usize],
    temperature: f64,
    rng: &mut StdRng,
    chunk: usize,
) -> Result<Vec<Vec<u32>>> {
    let eos = model.eos_id();
    let mut out = Vec::with_capacity(prompts.len());
    for (ci, part) in prompts.chunks(chunk.max(1)).enumerate() {
        let base = ci * chunk.max(1);
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); part.len()];
        let mut done = vec![false; part.len()];
        loop {
            let live: Vec<usize> = (0..part.len()).filter(|&i| !done[i]).collect();
            if live.is_empty() {
                break;
            }
            let lens: Vec<usize> = live
                .iter()
                .map(|&i| part[i].len() + generated[i].len())
                .collect();
            let t = lens.iter().copied().max().unwrap_or(1);
            let mut ids = vec![0u32; live.len() * t];
            for (r, &i) in live.iter().enumerate() {
                let row = &mut ids[r * t..r * t + lens[r]];
                row[..part[i].len()].copy_from_slice(&part[i]);
                row[part[i].len()..].copy_from_slice(&generated[i]);
            }
            let ids = Tensor::from_vec(ids, (live.len(), t), &model.device)?;
            let logits = model.forward_eval(&ids)?;
            for (r, &i) in live.iter().enumerate() {
                let z: Vec<f64> = logits
                    .get(r)?
                    .get(lens[r] - 1)?
                    .to_dtype(DType::F64)?
                    .to_vec1()?;
                let tok = sample(&z, temperature, rng)?;
                generated[i].push(tok);
                if tok == eos || generated[i].len() >= max_new[base + i] {
                    if tok != eos {
                        generated[i].push(eos);
                    }
                    done[i] = true;
                }
            }
        }
        out.extend(generated);
    }
    Ok(out)
}

/// Draws a token from softmax(z / temperature); temperature 0 = greedy.
pub fn sample(z: &[f64], temperature: f64, rng: &mut StdRng) -> Result<u32> {
    if temperature <= 0.0 {
        let best = z
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        return Ok(best as u32);
    }
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = z.iter().map(|&x| ((x - max) / temperature).exp()).collect();
    let dist = WeightedIndex::new(&w)
        .map_err(|e| anyhow!("cannot sample from the model's distribution: {e}"))?;
    Ok(dist.sample(rng) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_follows_the_distribution_and_is_seeded() {
        let z = [0.0f64, (3.0f64).ln(), f64::NEG_INFINITY];
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[sample(&z, 1.0, &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let p1 = counts[1] as f64 / n as f64;
        assert!((p1 - 0.75).abs() < 0.015, "{p1}");
        let mut a = StdRng::seed_from_u64(1);
        let mut b = StdRng::seed_from_u64(1);
        let sa: Vec<u32> = (0..50).map(|_| sample(&z, 1.0, &mut a).unwrap()).collect();
        let sb: Vec<u32> = (0..50).map(|_| sample(&z, 1.0, &mut b).unwrap()).collect();
        assert_eq!(sa, sb);
        assert_eq!(sample(&z, 0.0, &mut a).unwrap(), 1);
    }
}
