//! A synthetic run of any size, for benchmarks of the run-file loader and the app's frame time
//! (never for science): random-walk log-probs per family and probe, TRL metrics every step,
//! per-token traces (chosen, rejected, y*, top-k) at every evaluation.

use std::collections::BTreeMap;

use anyhow::Result;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::data::{DataFormat, Family};
use crate::probe::{Greedy, ProbeTrace, TokenTrace};
use crate::schema::event::{
    Conventions, DataInfo, EndReason, EvalRecord, Event, FORMAT, ModelInfo, PhasePlan, ProbeInfo,
    RunHeader, StepRecord, VERSION,
};
use crate::train::{Algo, TrainOptions};

/// Size of a synthetic run.
#[derive(Clone, Copy, Debug)]
pub struct SynthSpec {
    pub steps: usize,
    /// An evaluation every this many steps (and at step 0).
    pub eval_every: usize,
    pub probes: usize,
    /// Response length in tokens (EOS included) of the per-token traces.
    pub tokens: usize,
    pub top_k: usize,
    pub vocab: u32,
}

impl SynthSpec {
    /// A tiny run for tests: `steps` updates, an evaluation every 2, 2 probes of 2 tokens,
    /// top-1 traces over a vocabulary of 8.
    pub fn tiny(steps: usize) -> SynthSpec {
        SynthSpec {
            steps,
            eval_every: 2,
            probes: 2,
            tokens: 2,
            top_k: 1,
            vocab: 8,
        }
    }
}

impl Default for SynthSpec {
    /// The benchmark size: 10,000 steps, an evaluation every 10 steps (1,001), 13 families ×
    /// 64 probes, 16-token traces with top-5.
    fn default() -> Self {
        SynthSpec {
            steps: 10_000,
            eval_every: 10,
            probes: 64,
            tokens: 16,
            top_k: 5,
            vocab: 2048,
        }
    }
}

fn token_trace(rng: &mut StdRng, n: usize, k: usize, vocab: u32, drift: f32) -> TokenTrace {
    let mut t = TokenTrace::default();
    for _ in 0..n {
        let lp: f32 = -rng.random_range(0.0f32..4.0) - drift;
        t.logp.push(lp);
        t.entropy.push(rng.random_range(0.1f32..3.0));
        let mut top: Vec<(u32, f32)> = (0..k)
            .map(|j| {
                (
                    rng.random_range(0..vocab),
                    -(j as f32) - rng.random_range(0.0f32..1.0),
                )
            })
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        t.top.push(top);
    }
    t
}

/// The events of a synthetic run, header first, `end` last.
pub fn events(spec: SynthSpec, seed: u64) -> Result<Vec<Event>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let opts = TrainOptions {
        algo: Algo::Dpo,
        ..TrainOptions::default()
    };
    let config = opts.to_config()?;
    let families: Vec<Family> = Family::ALL.to_vec();
    let probes: Vec<ProbeInfo> = (0..spec.probes)
        .map(|i| {
            let mut responses = BTreeMap::new();
            let mut tokens = BTreeMap::new();
            for f in &families {
                if *f != Family::Argmax {
                    responses.insert(*f, format!("{} response of probe {i}", f.key()));
                }
            }
            for f in [Family::Chosen, Family::Rejected] {
                tokens.insert(
                    f,
                    (0..spec.tokens)
                        .map(|_| rng.random_range(0..spec.vocab))
                        .collect(),
                );
            }
            ProbeInfo {
                index: i,
                prompt: format!("synthetic prompt {i}"),
                responses,
                tokens,
            }
        })
        .collect();
    let header = RunHeader {
        format: FORMAT.into(),
        version: VERSION,
        ldviz_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: 0,
        config,
        conventions: Conventions::default(),
        model: ModelInfo {
            path: "synthetic".into(),
            arch: "llama".into(),
            fingerprint: "synthetic".into(),
            n_params: 0,
            vocab_size: spec.vocab as usize,
            eos_id: 0,
        },
        data: DataInfo {
            path: "synthetic".into(),
            format: DataFormat::Probe,
            fingerprint: "synthetic".into(),
            n_records: spec.probes,
            n_train: spec.probes,
            n_test: 0,
            test_path: None,
        },
        families: families.clone(),
        probes,
        phases: vec![PhasePlan {
            name: "dpo".into(),
            algo: Algo::Dpo,
            steps: spec.steps,
        }],
        batch_size: 4,
        examples_per_epoch: 400,
    };
    let mut out = vec![Event::Header(Box::new(header))];
    out.push(Event::Vocab {
        tokens: (0..spec.vocab).map(|i| (i, format!("t{i}"))).collect(),
    });
    out.push(Event::Phase {
        name: "dpo".into(),
        algo: Algo::Dpo,
        step: 0,
        examples: 0,
    });
    let mut level: Vec<Vec<f64>> = families
        .iter()
        .map(|_| {
            (0..spec.probes)
                .map(|_| -rng.random_range(20.0..80.0))
                .collect()
        })
        .collect();
    let eval = |rng: &mut StdRng, level: &Vec<Vec<f64>>, step: usize| {
        let logps: BTreeMap<Family, Vec<f64>> = families
            .iter()
            .cloned()
            .zip(level.iter().cloned())
            .collect();
        let drift = step as f32 / spec.steps.max(1) as f32;
        let tokens: Vec<ProbeTrace> = (0..spec.probes)
            .map(|_| ProbeTrace {
                chosen: token_trace(rng, spec.tokens, spec.top_k, spec.vocab, drift),
                rejected: token_trace(rng, spec.tokens, spec.top_k, spec.vocab, 2.0 * drift),
                argmax: Greedy {
                    ids: (0..spec.tokens)
                        .map(|_| rng.random_range(0..spec.vocab))
                        .collect(),
                    logp: (0..spec.tokens)
                        .map(|_| -rng.random_range(0.0f32..1.0))
                        .collect(),
                },
            })
            .collect();
        Event::Eval(Box::new(EvalRecord {
            step,
            examples: step * 4,
            epoch: step as f64 * 4.0 / 400.0,
            phase: "dpo".into(),
            logps,
            tokens: tokens.into(),
            diag: BTreeMap::new(),
            transfer: Vec::new(),
        }))
    };
    out.push(eval(&mut rng, &level, 0));
    for step in 1..=spec.steps {
        let mut metrics = BTreeMap::new();
        for name in [
            "loss",
            "logps/chosen",
            "logps/rejected",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "grad_norm",
            "learning_rate",
        ] {
            metrics.insert(name.to_string(), rng.random_range(-1.0..1.0));
        }
        out.push(Event::Step(StepRecord {
            step,
            examples: step * 4,
            epoch: step as f64 * 4.0 / 400.0,
            phase: "dpo".into(),
            batch: vec![0, 1, 2, 3],
            metrics,
            wall_ms: step as f64 * 10.0,
        }));
        for (k, row) in level.iter_mut().enumerate() {
            let trend = if k == 1 { -0.01 } else { -0.002 };
            for v in row.iter_mut() {
                *v += trend + rng.random_range(-0.05..0.05);
            }
        }
        if step % spec.eval_every == 0 || step == spec.steps {
            out.push(eval(&mut rng, &level, step));
        }
    }
    out.push(Event::End {
        reason: EndReason::Completed,
        step: spec.steps,
        message: None,
    });
    Ok(out)
}

/// Writes a synthetic run file (buffered; no per-record sync, unlike a live run).
pub fn write(path: &std::path::Path, spec: SynthSpec, seed: u64) -> Result<()> {
    write_edited(path, spec, seed, |_| {})
}

/// Writes a synthetic run file after `edit` has seen (and may have changed) each record in
/// order, e.g. to make some evaluations diverge.
pub fn write_edited(
    path: &std::path::Path,
    spec: SynthSpec,
    seed: u64,
    mut edit: impl FnMut(&mut Event),
) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let ctx = || format!("{}: cannot write", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(ctx)?);
    for mut ev in events(spec, seed)? {
        edit(&mut ev);
        serde_json::to_writer(&mut f, &ev).with_context(ctx)?;
        f.write_all(b"\n").with_context(ctx)?;
    }
    f.flush().with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_run_reads_back_identically_with_lazy_traces() {
        let spec = SynthSpec {
            steps: 30,
            eval_every: 10,
            probes: 3,
            tokens: 4,
            top_k: 2,
            vocab: 16,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        write(&path, spec, 5).unwrap();
        let run = crate::run::read_run(&path).unwrap();
        let evs = events(spec, 5).unwrap();
        let evals: Vec<&EvalRecord> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Eval(r) => Some(r.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(run.evals.len(), 4);
        assert_eq!(run.steps.len(), 30);
        for (a, b) in run.evals.iter().zip(evals) {
            // Raw until first use, then equal to what was written.
            assert_eq!(format!("{:?}", a.tokens), "Traces(raw)");
            assert_eq!(a, b);
            assert_eq!(a.tokens.len(), 3);
            assert_eq!(a.tokens[1].chosen.logp.len(), 4);
        }
        // Re-serializing a raw record writes the same traces.
        let again = serde_json::to_string(&Event::Eval(Box::new(run.evals[0].clone()))).unwrap();
        let back: Event = serde_json::from_str(&again).unwrap();
        assert_eq!(back, Event::Eval(Box::new(evals_first(&evs))));
    }

    fn evals_first(evs: &[Event]) -> EvalRecord {
        evs.iter()
            .find_map(|e| match e {
                Event::Eval(r) => Some(r.as_ref().clone()),
                _ => None,
            })
            .unwrap()
    }
}
