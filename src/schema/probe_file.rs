//! The probe file (`ldviz probes`, format `ldviz-probes`): the probe set a run evaluates, for
//! recorders that train elsewhere (RUNFILE.md, "The probe file"). JSON Lines: a
//! [`ProbesHeader`] first, then one [`ProbeLine`] per probe in the header's order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::Lengths;
use super::event::{Conventions, RunHeader};
use crate::data::Family;

/// Format name and version of the probe file's header.
pub const PROBES_FORMAT: &str = "ldviz-probes";
pub const PROBES_VERSION: u32 = 1;

/// The first line of a probe file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbesHeader {
    pub format: String,
    pub version: u32,
    pub ldviz_version: String,
    pub conventions: Conventions,
    pub lengths: Lengths,
    /// The families scored, canonical order, `argmax` (y*, no text) last.
    pub families: Vec<Family>,
    /// The transfer matrix's size: the first this many probes (already capped at their number).
    pub transfer_prompts: usize,
    /// Top next tokens recorded per position of chosen and rejected.
    pub top_k: usize,
    /// A complete run header for the recorder's run file: probes without token ids, model
    /// information with placeholder values, no phases, batch size 0.
    pub run_header: RunHeader,
}

impl ProbesHeader {
    /// The probe file's header around `run_header` (everything else is read from it).
    pub fn new(run_header: RunHeader) -> ProbesHeader {
        let cfg = &run_header.config;
        ProbesHeader {
            format: PROBES_FORMAT.to_string(),
            version: PROBES_VERSION,
            ldviz_version: run_header.ldviz_version.clone(),
            conventions: run_header.conventions.clone(),
            lengths: cfg.lengths,
            families: run_header.families.clone(),
            transfer_prompts: cfg.transfer_prompts.min(run_header.probes.len()),
            top_k: cfg.top_k,
            run_header,
        }
    }
}

/// One probe: its record index in the data file, its prompt and the text of every family that
/// has one (all but `argmax`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeLine {
    pub index: usize,
    pub prompt: String,
    pub responses: BTreeMap<Family, String>,
}

/// A line of a probe file, tagged by `"type"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProbeRecord {
    ProbesHeader(Box<ProbesHeader>),
    Probe(ProbeLine),
}

impl ProbeRecord {
    /// Every line of the probe file of `run_header`, header first.
    pub fn lines(run_header: &RunHeader) -> Vec<ProbeRecord> {
        let probes = run_header.probes.iter().map(|p| {
            ProbeRecord::Probe(ProbeLine {
                index: p.index,
                prompt: p.prompt.clone(),
                responses: p.responses.clone(),
            })
        });
        std::iter::once(ProbeRecord::ProbesHeader(Box::new(ProbesHeader::new(
            run_header.clone(),
        ))))
        .chain(probes)
        .collect()
    }
}
