//! Batched sequence scoring: the summed log-prob of a response given its prompt (EOS appended,
//! tokenized separately), per-token log-probs, and, on the evaluation path, per-position
//! entropy, top-k next tokens and the teacher-forced greedy response y*.
//!
//! Layout: sequences are right-padded to the longest; logits at position t predict token t+1,
//! so targets are the ids shifted left and a 0/1 mask selects the response positions. With a
//! causal mask, padded rows score exactly as unpadded ones.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};

use crate::model::{Model, Tok};
pub use crate::schema::config::Lengths;
pub use crate::schema::trace::{A_AUTHORS, A_MEAN, Diag, Greedy, TokenTrace};

/// A tokenized (prompt, response) pair; `response` ends with the EOS id.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl Seq {
    /// Tokenizes prompt and response separately (no special tokens) and appends EOS.
    pub fn encode(tok: &Tok, prompt: &str, response: &str, lim: Lengths) -> Result<Seq> {
        let mut p = tok.encode(prompt)?;
        let mut r = tok.encode(response)?;
        r.push(tok.eos_id);
        if p.len() > lim.max_prompt {
            p.drain(..p.len() - lim.max_prompt);
        }
        let room = lim.max_total.saturating_sub(p.len()).max(1);
        r.truncate(room);
        Ok(Seq {
            prompt: p,
            response: r,
        })
    }

    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Padded ids, shifted targets and the response mask for a list of sequences.
pub struct Batch {
    pub ids: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// (first response position in the *logit* index, number of response tokens) per row.
    pub spans: Vec<(usize, usize)>,
    pub t: usize,
}

impl Batch {
    pub fn new(seqs: &[&Seq], device: &Device) -> Result<Batch> {
        if seqs.is_empty() {
            bail!("empty batch");
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let b = seqs.len();
        let mut ids = vec![0u32; b * t];
        let mut targets = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        let mut spans = Vec::with_capacity(b);
        for (i, s) in seqs.iter().enumerate() {
            if s.prompt.is_empty() {
                bail!(
                    "a prompt tokenized to zero tokens: there is nothing to condition the first response token on"
                );
            }
            let row = &mut ids[i * t..(i + 1) * t];
            row[..s.prompt.len()].copy_from_slice(&s.prompt);
            row[s.prompt.len()..s.len()].copy_from_slice(&s.response);
            // logits at position p predict token p+1
            for p in 0..s.len() - 1 {
                targets[i * t + p] = row[p + 1];
            }
            let start = s.prompt.len() - 1;
            for p in start..start + s.response.len() {
                mask[i * t + p] = 1.0;
            }
            spans.push((start, s.response.len()));
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            targets: Tensor::from_vec(targets, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            spans,
            t,
        })
    }

    /// Targets and mask for response-position logits [R, L, V] as [`response_logits`] returns
    /// them: row r's response tokens at positions 0..n_r, L the longest response. `ids` holds
    /// the targets too (there is no input to run).
    pub fn responses(seqs: &[&Seq], device: &Device) -> Result<Batch> {
        if seqs.is_empty() {
            bail!("empty batch");
        }
        let t = seqs.iter().map(|s| s.response.len()).max().unwrap_or(0);
        if t == 0 {
            bail!("a response tokenized to zero tokens (EOS is always appended)");
        }
        let b = seqs.len();
        let mut targets = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        let mut spans = Vec::with_capacity(b);
        for (i, s) in seqs.iter().enumerate() {
            targets[i * t..i * t + s.response.len()].copy_from_slice(&s.response);
            mask[i * t..i * t + s.response.len()].fill(1.0);
            spans.push((0, s.response.len()));
        }
        let targets = Tensor::from_vec(targets, (b, t), device)?;
        Ok(Batch {
            ids: targets.clone(),
            targets,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            spans,
            t,
        })
    }

    pub fn rows(&self) -> usize {
        self.spans.len()
    }

    /// Number of response tokens per row (for per-token means).
    pub fn response_lens(&self) -> Vec<usize> {
        self.spans.iter().map(|s| s.1).collect()
    }
}

/// Per-position log-prob of each target [B, T] (masked to response positions) and the summed
/// log-prob per row [B]. Differentiable when `logits` carries a graph.
pub fn token_logps(logits: &Tensor, batch: &Batch) -> Result<(Tensor, Tensor)> {
    // Reductions in at least f32 (bf16/f16 logits are upcast); f64 stays f64.
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let (b, t, v) = logits.dims3()?;
    let lp = crate::model::fused::target_logp(
        &logits.reshape((b * t, v))?,
        &batch.targets.flatten_all()?,
    )?
    .reshape((b, t))?;
    let per_tok = (lp * batch.mask.to_dtype(logits.dtype())?)?;
    let summed = per_tok.sum(1)?;
    Ok((per_tok, summed))
}

/// Per-row sums [B] of per-position log-probs [B, T] over the batch's response positions (the
/// policy's, from `Model::train_logps_masked`, in training).
pub fn masked_sums(lp: &Tensor, batch: &Batch) -> Result<Tensor> {
    Ok((lp * batch.mask.to_dtype(lp.dtype())?)?.sum(1)?)
}

/// ‖A‖_F = sqrt(V·‖π‖² + V − 2) of A = I − 1πᵀ, from ‖π‖² (clamped at 0 against rounding).
pub fn a_norm(v: usize, pi_sq_norm: f64) -> f64 {
    let vf = v as f64;
    (vf * pi_sq_norm + vf - 2.0).max(0.0).sqrt()
}

/// The diagnostics per row, see [`Diag`]. No graph.
pub fn diagnostics(logits: &Tensor, batch: &Batch) -> Result<Vec<Diag>> {
    Ok(scores_and_diagnostics(logits, batch)?.1)
}

/// The summed response log-prob of every row and its [`diagnostics`], from one pass over each
/// response position's logits on the CPU (f32 exponentials, f64 accumulation, rows in
/// parallel): log π_y = z_y − max − ln Σ exp(z − max) comes with the same sums. Elsewhere
/// (GPUs) tensor ops on the device, so only per-row values reach the host. No graph.
pub fn scores_and_diagnostics(logits: &Tensor, batch: &Batch) -> Result<(Vec<f64>, Vec<Diag>)> {
    use rayon::prelude::*;
    if !logits.device().is_cpu() {
        let (_, summed) = token_logps(logits, batch)?;
        let summed = summed.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        return Ok((summed, diagnostics_on_device(logits, batch)?));
    }
    let logits = logits.to_dtype(DType::F32)?.contiguous()?;
    let (b, t, v) = logits.dims3()?;
    let (st, l) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*st else {
        bail!("scores_and_diagnostics: logits are not on the CPU");
    };
    let all = cpu.as_slice::<f32>()?;
    let flat = &all[l.start_offset()..l.start_offset() + b * t * v];
    let targets: Vec<u32> = batch.targets.flatten_all()?.to_vec1()?;
    let rows: Vec<(f64, Diag)> = (0..b)
        .into_par_iter()
        .map(|r| {
            let (start, n) = batch.spans[r];
            // Σ ‖A‖_F, Σ ‖π − e_y‖, Σ energy, Σ ‖π‖
            let mut acc = [0f64; 4];
            let mut sum_lp = 0f64;
            for p in start..start + n {
                let z = &flat[(r * t + p) * v..(r * t + p + 1) * v];
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // f32 exponentials (the hot loop), summed in f32 lanes per chunk, f64 overall.
                let (mut s1, mut s2) = (0f64, 0f64);
                let mut buf = [0f32; 256];
                for ch in z.chunks(256) {
                    let e = &mut buf[..ch.len()];
                    for (o, &x) in e.iter_mut().zip(ch) {
                        *o = (x - max).min(0.0);
                    }
                    crate::model::kernels::exp_nonpos_f32(e);
                    let (mut a, mut b) = (0f32, 0f32);
                    for &x in e.iter() {
                        a += x;
                        b += x * x;
                    }
                    s1 += f64::from(a);
                    s2 += f64::from(b);
                }
                let y = targets[r * t + p] as usize;
                let zy = f64::from(z.get(y).copied().unwrap_or(f32::NEG_INFINITY) - max);
                sum_lp += zy - s1.ln();
                let py = zy.exp() / s1;
                let sq = s2 / (s1 * s1);
                acc[0] += a_norm(v, sq);
                acc[1] += (sq - 2.0 * py + 1.0).max(0.0).sqrt();
                acc[2] += 1.0 - py;
                acc[3] += sq.sqrt();
            }
            (sum_lp, diag_of_sums(acc, n, v))
        })
        .collect();
    Ok(rows.into_iter().unzip())
}

/// A row's [`Diag`] from its sums over `n` positions of ‖A‖_F, ‖π − e_y‖, energy and ‖π‖.
fn diag_of_sums(acc: [f64; 4], n: usize, v: usize) -> Diag {
    let n = n.max(1) as f64;
    let mean_pi = acc[3] / n;
    [
        acc[0] / n,
        acc[1] / n,
        acc[2] / n,
        a_norm(v, mean_pi * mean_pi),
    ]
}

/// How an evaluation computes the logits of (prompt, response) pairs; all three give the same
/// numbers up to float rounding (tests/probe_kv.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvalMode {
    /// Pairs that share a prompt run it once and attend to its cached keys/values; only
    /// response positions reach the LM head.
    #[default]
    SharedPrefix,
    /// One right-padded batch of the full sequences (prompt repeated per row).
    Padded,
    /// One forward per pair (the naive way).
    PerPair,
}

/// Logits at the response positions of every sequence, [R, L, V] with L the longest response:
/// row r, position m predicts `seqs[r].response[m]` (pair with [`Batch::responses`]). No graph.
pub fn response_logits(model: &Model, seqs: &[&Seq], mode: EvalMode) -> Result<Tensor> {
    if seqs.is_empty() {
        bail!("empty batch");
    }
    if let Some(s) = seqs.iter().find(|s| s.prompt.is_empty()) {
        bail!(
            "a prompt tokenized to zero tokens (response {:?}…): there is nothing to condition the first response token on",
            &s.response[..s.response.len().min(4)]
        );
    }
    let l = seqs.iter().map(|s| s.response.len()).max().unwrap_or(0);
    let rows: Vec<Tensor> = match mode {
        EvalMode::SharedPrefix => {
            // Group rows by prompt (first occurrence order), one shared pass per group.
            let mut groups: Vec<(&[u32], Vec<usize>)> = Vec::new();
            for (i, s) in seqs.iter().enumerate() {
                match groups.iter_mut().find(|(p, _)| *p == s.prompt.as_slice()) {
                    Some((_, ix)) => ix.push(i),
                    None => groups.push((&s.prompt, vec![i])),
                }
            }
            if let [(prompt, _)] = groups.as_slice() {
                // one prompt (a probe, a transfer row): rows are already in order
                let conts: Vec<&[u32]> = seqs.iter().map(|s| s.response.as_slice()).collect();
                return model.forward_eval_shared(prompt, &conts);
            }
            let mut rows: Vec<Option<Tensor>> = vec![None; seqs.len()];
            for (prompt, ix) in &groups {
                let conts: Vec<&[u32]> = ix.iter().map(|&i| seqs[i].response.as_slice()).collect();
                let z = pad_positions(&model.forward_eval_shared(prompt, &conts)?, l)?;
                for (k, &i) in ix.iter().enumerate() {
                    rows[i] = Some(z.get(k)?);
                }
            }
            rows.into_iter()
                .map(|r| r.ok_or_else(|| anyhow::anyhow!("a row was not scored")))
                .collect::<Result<_>>()?
        }
        EvalMode::Padded => {
            let batch = Batch::new(seqs, &model.device)?;
            let z = model.forward_eval(&batch.ids)?;
            batch
                .spans
                .iter()
                .enumerate()
                .map(|(r, &(start, n))| {
                    pad_positions(&z.get(r)?.narrow(0, start, n)?.unsqueeze(0)?, l)?
                        .get(0)
                        .map_err(Into::into)
                })
                .collect::<Result<_>>()?
        }
        EvalMode::PerPair => seqs
            .iter()
            .map(|s| {
                let batch = Batch::new(&[s], &model.device)?;
                let z = model.forward_eval(&batch.ids)?;
                let (start, n) = batch.spans[0];
                pad_positions(&z.narrow(1, start, n)?, l)?
                    .get(0)
                    .map_err(Into::into)
            })
            .collect::<Result<_>>()?,
    };
    Ok(Tensor::stack(&rows, 0)?)
}

/// Pads (with zeros) or keeps the position axis of [R, n, V] to length `l`.
fn pad_positions(z: &Tensor, l: usize) -> Result<Tensor> {
    let (r, n, v) = z.dims3()?;
    if n >= l {
        return Ok(z.clone());
    }
    let pad = Tensor::zeros((r, l - n, v), z.dtype(), z.device())?;
    Ok(Tensor::cat(&[z, &pad], 1)?)
}

/// [`diagnostics`] with tensor ops on the logits' device (GPUs), in f32: only [B, T] values
/// come back to the host instead of the [B, T, V] logits.
fn diagnostics_on_device(logits: &Tensor, batch: &Batch) -> Result<Vec<Diag>> {
    use candle_core::D;
    let z = logits.to_dtype(DType::F32)?;
    let (_, _, v) = z.dims3()?;
    let max = z.max_keepdim(D::Minus1)?;
    let e = z.broadcast_sub(&max)?.exp()?;
    let s1 = e.sum_keepdim(D::Minus1)?; // [B, T, 1]
    let s2 = e.sqr()?.sum_keepdim(D::Minus1)?;
    let ey = e.gather(&batch.targets.unsqueeze(2)?.contiguous()?, D::Minus1)?;
    let py = (ey / &s1)?.squeeze(2)?;
    let sq = (s2 / s1.sqr()?)?.squeeze(2)?;
    let vf = v as f64;
    let a = ((&sq * vf)? + (vf - 2.0))?.relu()?.sqrt()?;
    let g = ((&sq - (&py * 2.0)?)? + 1.0)?.relu()?.sqrt()?;
    let en = (py.neg()? + 1.0)?;
    let pn = sq.sqrt()?;
    let mask = batch.mask.to_dtype(DType::F32)?;
    let sums = Tensor::stack(
        &[
            (a * &mask)?.sum(1)?,
            (g * &mask)?.sum(1)?,
            (en * &mask)?.sum(1)?,
            (pn * &mask)?.sum(1)?,
        ],
        1,
    )?
    .to_dtype(DType::F64)?
    .to_vec2::<f64>()?;
    Ok(sums
        .iter()
        .zip(&batch.spans)
        .map(|(r, &(_, n))| diag_of_sums([r[0], r[1], r[2], r[3]], n, v))
        .collect())
}

/// Summed response log-probs of `seqs` under `model`, without a graph, in chunks of `chunk` rows.
pub fn score(model: &Model, seqs: &[Seq], chunk: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for part in seqs.chunks(chunk.max(1)) {
        let refs: Vec<&Seq> = part.iter().collect();
        let batch = Batch::new(&refs, &model.device)?;
        let logits = model.forward_eval(&batch.ids)?;
        let (_, summed) = token_logps(&logits, &batch)?;
        out.extend(summed.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// Reads the response positions of row `row` out of detached logits [B, T, V] and computes the
/// token trace (with top-`k`) and the greedy response.
pub fn trace_row(
    logits: &Tensor,
    batch: &Batch,
    row: usize,
    seq: &Seq,
    k: usize,
) -> Result<(TokenTrace, Greedy)> {
    let (start, n) = batch.spans[row];
    let rows = logits
        .get(row)?
        .narrow(0, start, n)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let mut tr = TokenTrace::default();
    let mut g = Greedy::default();
    for (m, z) in rows.iter().enumerate() {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = z.iter().map(|&x| f64::from(x - max).exp()).sum();
        let lse = f64::from(max) + sum.ln();
        let mut ent = 0f64;
        for &x in z {
            let lp = f64::from(x) - lse;
            ent -= lp.exp() * lp;
        }
        let target = seq.response[m] as usize;
        tr.logp.push((f64::from(z[target]) - lse) as f32);
        tr.entropy.push(ent as f32);
        let mut idx: Vec<usize> = (0..z.len()).collect();
        let kk = k.min(z.len());
        if kk > 0 {
            idx.select_nth_unstable_by(kk - 1, |&a, &b| z[b].total_cmp(&z[a]));
            idx.truncate(kk);
            idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        }
        tr.top.push(
            idx.iter()
                .map(|&i| (i as u32, (f64::from(z[i]) - lse) as f32))
                .collect(),
        );
        let am = z
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        g.ids.push(am as u32);
        g.logp.push((f64::from(max) - lse) as f32);
    }
    Ok((tr, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_match_a_direct_computation() {
        // Two rows of different lengths over V = 7, random logits; reference in f64 loops.
        let v = 7usize;
        let seqs = [
            Seq {
                prompt: vec![1, 2],
                response: vec![3, 4, 5, 0],
            },
            Seq {
                prompt: vec![6],
                response: vec![2, 0],
            },
        ];
        let refs: Vec<&Seq> = seqs.iter().collect();
        let batch = Batch::new(&refs, &Device::Cpu).unwrap();
        let (b, t) = (2, batch.t);
        let vals: Vec<f32> = (0..b * t * v)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let logits = Tensor::from_vec(vals.clone(), (b, t, v), &Device::Cpu).unwrap();
        let got = diagnostics(&logits, &batch).unwrap();
        // the summed log-probs of the same pass equal the fused target log-prob's
        let (summed, _) = scores_and_diagnostics(&logits, &batch).unwrap();
        let (_, want) = token_logps(&logits, &batch).unwrap();
        let want: Vec<f32> = want.to_vec1().unwrap();
        for (a, b) in summed.iter().zip(&want) {
            assert!((a - f64::from(*b)).abs() < 1e-5, "{a} vs {b}");
        }
        // the tensor-op path GPUs take gives the same numbers
        let dev = diagnostics_on_device(&logits, &batch).unwrap();
        for (a, b) in got.iter().zip(&dev) {
            for k in 0..4 {
                assert!((a[k] - b[k]).abs() < 1e-5, "{a:?} vs {b:?}");
            }
        }
        for (r, s) in seqs.iter().enumerate() {
            let (start, n) = batch.spans[r];
            let mut acc = [0f64; 3];
            for m in 0..n {
                let z: Vec<f64> = (0..v)
                    .map(|k| vals[(r * t + start + m) * v + k] as f64)
                    .collect();
                let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let den: f64 = z.iter().map(|x| (x - mx).exp()).sum();
                let p: Vec<f64> = z.iter().map(|x| (x - mx).exp() / den).collect();
                let y = s.response[m] as usize;
                let s2: f64 = p.iter().map(|x| x * x).sum();
                // ‖A‖_F of A = I − 1πᵀ directly: Σ_ij (δ_ij − π_j)².
                let mut a2 = 0.0;
                for i in 0..v {
                    for (j, pj) in p.iter().enumerate() {
                        let d = if i == j { 1.0 } else { 0.0 } - pj;
                        a2 += d * d;
                    }
                }
                let g2: f64 = (0..v)
                    .map(|k| (p[k] - if k == y { 1.0 } else { 0.0 }).powi(2))
                    .sum();
                assert!((a2 - (v as f64 * s2 + v as f64 - 2.0)).abs() < 1e-9);
                acc[0] += a2.sqrt();
                acc[1] += g2.sqrt();
                acc[2] += 1.0 - p[y];
            }
            for k in 0..3 {
                let want = acc[k] / n as f64;
                assert!(
                    (got[r][k] - want).abs() < 1e-5,
                    "row {r} diag {k}: {} vs {want}",
                    got[r][k]
                );
            }
        }
    }

    #[test]
    fn a_norm_over_positions_and_the_authors_differ_as_computed_by_hand() {
        // V = 3, one response of two tokens whose next-token distributions are set through
        // log-probability logits: π_1 = (0.98, 0.01, 0.01) (peaked), π_2 uniform.
        let seq = Seq {
            prompt: vec![1],
            response: vec![0, 2],
        };
        let batch = Batch::new(&[&seq], &Device::Cpu).unwrap();
        assert_eq!(batch.spans[0], (0, 2));
        let pis = [[0.98f64, 0.01, 0.01], [1.0 / 3.0; 3]];
        let mut vals = vec![0f32; batch.t * 3];
        for (m, pi) in pis.iter().enumerate() {
            for (k, p) in pi.iter().enumerate() {
                vals[m * 3 + k] = p.ln() as f32;
            }
        }
        let logits = Tensor::from_vec(vals, (1, batch.t, 3), &Device::Cpu).unwrap();
        let cpu = diagnostics(&logits, &batch).unwrap()[0];
        let dev = diagnostics_on_device(&logits, &batch).unwrap()[0];
        // By hand: ‖π_1‖² = 0.98² + 2·0.01² = 0.9606, ‖π_2‖² = 1/3.
        // Per position ‖A‖_F = sqrt(3‖π‖² + 1): sqrt(3.8818) = 1.970228…, sqrt(2) = 1.414214…
        let per_position = ((3.0f64 * 0.9606 + 1.0).sqrt() + 2f64.sqrt()) / 2.0;
        // Authors: mean ‖π‖ = (sqrt(0.9606) + sqrt(1/3)) / 2 = 0.778726…, then the formula once.
        let mean_norm = (0.9606f64.sqrt() + (1.0f64 / 3.0).sqrt()) / 2.0;
        let authors = (3.0 * mean_norm * mean_norm + 1.0).sqrt();
        assert!((per_position - 1.692221).abs() < 1e-6, "{per_position}");
        assert!((authors - 1.679060).abs() < 1e-6, "{authors}");
        for (what, d) in [("cpu", cpu), ("device", dev)] {
            assert!(
                (d[A_MEAN] - per_position).abs() < 1e-5,
                "{what}: {} vs {per_position}",
                d[A_MEAN]
            );
            assert!(
                (d[A_AUTHORS] - authors).abs() < 1e-5,
                "{what}: {} vs {authors}",
                d[A_AUTHORS]
            );
            // they differ by far more than the tolerance
            assert!(d[A_MEAN] - d[A_AUTHORS] > 0.01, "{what}: {d:?}");
            // energy 1 − π_y: y_1 = 0 (π = 0.98), y_2 = 2 (π = 1/3)
            assert!((d[2] - ((1.0 - 0.98) + (1.0 - 1.0 / 3.0)) / 2.0).abs() < 1e-5);
        }
        // a single position (or a constant ‖π‖) makes the two definitions agree
        let one = Seq {
            prompt: vec![1],
            response: vec![0],
        };
        let b1 = Batch::new(&[&one], &Device::Cpu).unwrap();
        let l1 = logits.narrow(1, 0, b1.t).unwrap();
        let d1 = diagnostics(&l1, &b1).unwrap()[0];
        assert!((d1[A_MEAN] - d1[A_AUTHORS]).abs() < 1e-6, "{d1:?}");
    }
}
