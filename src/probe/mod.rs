//! Probes: the response families of every probe prompt, scored at t = 0 and every N examples
//! without a backprop graph. All responses of one prompt are scored together: the shared
//! prompt runs once and the responses attend to its cached keys/values as one padded batch
//! ([`EvalMode::SharedPrefix`]); y* (argmax) comes from the chosen response's logits, with no
//! extra forward.

pub mod logprob;

use anyhow::{Result, bail};
use rayon::prelude::*;

use crate::data::{Family, ProbeSet};
use crate::model::Model;
pub use crate::schema::trace::ProbeTrace;
pub use logprob::{Batch, EvalMode, Greedy, Lengths, Seq, TokenTrace};

/// One probe prompt with the token ids of each of its responses (EOS appended).
#[derive(Clone, Debug)]
pub struct TokenizedProbe {
    /// Record index in the data file.
    pub index: usize,
    /// (family, sequence) for every family but argmax, in the probe set's family order.
    pub seqs: Vec<(Family, Seq)>,
}

/// The result of one evaluation: summed log-probs [family][probe] (the set's family order,
/// argmax included) and per-token traces per probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub logps: Vec<Vec<f64>>,
    pub traces: Vec<ProbeTrace>,
    /// Diagnostics [family][probe] = [‖A‖_F, ‖π − e_y‖, energy, ‖A‖_F from the mean ‖π‖]
    /// ([`logprob::Diag`]; argmax excluded: its row is empty).
    pub diag: Vec<Vec<logprob::Diag>>,
    /// The transfer matrix [prompt i][answer j] (empty when off).
    pub transfer: Vec<Vec<f64>>,
}

/// One probe's scores, before they are arranged by family.
struct ProbeScores {
    summed: Vec<f64>,
    diag: Vec<logprob::Diag>,
    trace: ProbeTrace,
}

/// Scores a probe set; built once (tokenization) and evaluated many times.
pub struct ProbeRunner {
    pub families: Vec<Family>,
    pub probes: Vec<TokenizedProbe>,
    pub top_k: usize,
    /// Hallucination transfer: `transfer[i][j]` = prompt of probe i + chosen response of
    /// probe j, for the first M probes (empty when off).
    pub transfer: Vec<Vec<Seq>>,
    /// How the logits are computed (shared prompt KV by default).
    pub mode: EvalMode,
}

impl ProbeRunner {
    pub fn new(model: &Model, set: &ProbeSet, lim: Lengths, top_k: usize) -> Result<ProbeRunner> {
        let mut probes = Vec::with_capacity(set.probes.len());
        for p in &set.probes {
            let mut seqs = Vec::new();
            for &f in &set.families {
                if f == Family::Argmax {
                    continue;
                }
                let Some(text) = p.responses.get(&f) else {
                    bail!("probe {} has no \"{}\" response", p.index, f.key());
                };
                seqs.push((f, Seq::encode(&model.tok, &p.prompt, text, lim)?));
            }
            if !seqs.iter().any(|(f, _)| *f == Family::Chosen) {
                bail!("probe {} has no chosen response", p.index);
            }
            probes.push(TokenizedProbe {
                index: p.index,
                seqs,
            });
        }
        Ok(ProbeRunner {
            families: set.families.clone(),
            probes,
            top_k,
            transfer: Vec::new(),
            mode: EvalMode::default(),
        })
    }

    /// Also score the transfer matrix log π(y_j⁺ | x_i) over the first `m` probes (m = 0: off),
    /// at the evaluations the trainer asks for it (every `--transfer-every` examples and at
    /// phase boundaries).
    pub fn with_transfer(
        mut self,
        model: &Model,
        set: &ProbeSet,
        lim: Lengths,
        m: usize,
    ) -> Result<ProbeRunner> {
        let m = m.min(set.probes.len());
        let mut rows = Vec::with_capacity(m);
        for pi in &set.probes[..m] {
            let mut row = Vec::with_capacity(m);
            for pj in &set.probes[..m] {
                let Some(chosen) = pj.responses.get(&Family::Chosen) else {
                    bail!("probe {} has no chosen response", pj.index);
                };
                row.push(Seq::encode(&model.tok, &pi.prompt, chosen, lim)?);
            }
            rows.push(row);
        }
        self.transfer = rows;
        Ok(self)
    }

    /// The transfer matrix at the model's current weights: [prompt i][answer j] summed
    /// log-probs, one batch per prompt (prompts in parallel on the CPU), no graph.
    pub fn transfer_matrix(&self, model: &Model) -> Result<Vec<Vec<f64>>> {
        let row = |row: &Vec<Seq>| -> Result<Vec<f64>> {
            let refs: Vec<&Seq> = row.iter().collect();
            let batch = Batch::responses(&refs, &model.device)?;
            let logits = logprob::response_logits(model, &refs, self.mode)?;
            Ok(logprob::scores_and_diagnostics(&logits, &batch)?.0)
        };
        if model.device.is_cpu() {
            self.transfer.par_iter().map(row).collect()
        } else {
            self.transfer.iter().map(row).collect()
        }
    }

    /// Scores all responses of one probe: summed log-probs and diagnostics per sequence (the
    /// probe's `seqs` order) and its trace.
    fn score_probe(&self, model: &Model, p: &TokenizedProbe) -> Result<ProbeScores> {
        let refs: Vec<&Seq> = p.seqs.iter().map(|(_, s)| s).collect();
        let batch = Batch::responses(&refs, &model.device)?;
        let logits = logprob::response_logits(model, &refs, self.mode)?;
        let (summed, diag) = logprob::scores_and_diagnostics(&logits, &batch)?;
        let mut trace = ProbeTrace::default();
        for (row, (f, seq)) in p.seqs.iter().enumerate() {
            match f {
                Family::Chosen => {
                    let (tr, g) = logprob::trace_row(&logits, &batch, row, seq, self.top_k)?;
                    trace.chosen = tr;
                    trace.argmax = g;
                }
                Family::Rejected => {
                    trace.rejected = logprob::trace_row(&logits, &batch, row, seq, self.top_k)?.0;
                }
                _ => {}
            }
        }
        Ok(ProbeScores {
            summed,
            diag,
            trace,
        })
    }

    /// Scores every family of every probe at the model's current weights (no graph). On the
    /// CPU probes run in parallel: at the demo's size one probe's matmuls are too small to keep
    /// two cores busy.
    pub fn evaluate(&self, model: &Model, transfer: bool) -> Result<Evaluation> {
        let nf = self.families.len();
        let scored: Vec<ProbeScores> = if model.device.is_cpu() {
            self.probes
                .par_iter()
                .map(|p| self.score_probe(model, p))
                .collect::<Result<_>>()?
        } else {
            // one probe at a time on a GPU: its kernels fill the device, and the logits of
            // several probes at once would multiply peak memory
            self.probes
                .iter()
                .map(|p| self.score_probe(model, p))
                .collect::<Result<_>>()?
        };
        let mut logps = vec![Vec::with_capacity(self.probes.len()); nf];
        let mut traces = Vec::with_capacity(self.probes.len());
        let mut diag = vec![Vec::with_capacity(self.probes.len()); nf];
        for (p, sc) in self.probes.iter().zip(scored) {
            for (fi, f) in self.families.iter().enumerate() {
                if *f != Family::Argmax
                    && let Some(row) = p.seqs.iter().position(|(g, _)| g == f)
                {
                    diag[fi].push(sc.diag[row]);
                }
                let v = if *f == Family::Argmax {
                    sc.trace.argmax.sum()
                } else {
                    let row = p.seqs.iter().position(|(g, _)| g == f).unwrap_or(0);
                    sc.summed[row]
                };
                logps[fi].push(v);
            }
            traces.push(sc.trace);
        }
        Ok(Evaluation {
            logps,
            traces,
            diag,
            transfer: if transfer {
                self.transfer_matrix(model)?
            } else {
                Vec::new()
            },
        })
    }
}
