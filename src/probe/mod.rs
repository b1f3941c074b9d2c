//! Probes: the response families of every probe prompt, scored at t = 0 and every N examples
//! without a backprop graph. All responses of one prompt are scored together in one padded
//! batch; y* (argmax) comes from the chosen response's logits, with no extra forward.

pub mod logprob;

use anyhow::{Result, bail};

use crate::data::{Family, ProbeSet};
use crate::model::Model;
pub use logprob::{Batch, Greedy, Lengths, Seq, TokenTrace};

/// One probe prompt with the token ids of each of its responses (EOS appended).
#[derive(Clone, Debug)]
pub struct TokenizedProbe {
    /// Record index in the data file.
    pub index: usize,
    /// (family, sequence) for every family but argmax, in the probe set's family order.
    pub seqs: Vec<(Family, Seq)>,
}

/// Per-token details of one probe at one evaluation.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeTrace {
    pub chosen: TokenTrace,
    pub rejected: TokenTrace,
    pub argmax: Greedy,
}

/// The result of one evaluation: summed log-probs [family][probe] (the set's family order,
/// argmax included) and per-token traces per probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub logps: Vec<Vec<f64>>,
    pub traces: Vec<ProbeTrace>,
}

/// Scores a probe set; built once (tokenization) and evaluated many times.
pub struct ProbeRunner {
    pub families: Vec<Family>,
    pub probes: Vec<TokenizedProbe>,
    pub top_k: usize,
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
        })
    }

    /// Scores every family of every probe at the model's current weights (no graph).
    pub fn evaluate(&self, model: &Model) -> Result<Evaluation> {
        let nf = self.families.len();
        let mut logps = vec![Vec::with_capacity(self.probes.len()); nf];
        let mut traces = Vec::with_capacity(self.probes.len());
        for p in &self.probes {
            let refs: Vec<&Seq> = p.seqs.iter().map(|(_, s)| s).collect();
            let batch = Batch::new(&refs, &model.device)?;
            let logits = model.forward_eval(&batch.ids)?;
            let (_, summed) = logprob::token_logps(&logits, &batch)?;
            let summed: Vec<f64> = summed.to_dtype(candle_core::DType::F64)?.to_vec1()?;
            let mut trace = ProbeTrace::default();
            for (row, (f, seq)) in p.seqs.iter().enumerate() {
                match f {
                    Family::Chosen => {
                        let (tr, g) = logprob::trace_row(&logits, &batch, row, seq, self.top_k)?;
                        trace.chosen = tr;
                        trace.argmax = g;
                    }
                    Family::Rejected => {
                        trace.rejected =
                            logprob::trace_row(&logits, &batch, row, seq, self.top_k)?.0;
                    }
                    _ => {}
                }
            }
            for (fi, f) in self.families.iter().enumerate() {
                let v = if *f == Family::Argmax {
                    trace.argmax.sum()
                } else {
                    let row = p.seqs.iter().position(|(g, _)| g == f).unwrap_or(0);
                    summed[row]
                };
                logps[fi].push(v);
            }
            traces.push(trace);
        }
        Ok(Evaluation { logps, traces })
    }
}
