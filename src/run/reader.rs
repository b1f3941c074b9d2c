//! Reading a run file back: every complete record is loaded; a last line cut mid-record (a
//! killed writer) is skipped and reported, anything else malformed is an error naming the line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::event::{
    EndReason, EvalRecord, Event, FORMAT, InfluenceRecord, RunHeader, StepRecord, VERSION,
};
use crate::data::Family;
use crate::train::config::Algo;

/// A phase as it happened: name, algorithm and the step it began at.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseMark {
    pub name: String,
    pub algo: Algo,
    pub step: usize,
}

/// A run, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub header: RunHeader,
    pub vocab: BTreeMap<u32, String>,
    pub phases: Vec<PhaseMark>,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub influence: Vec<InfluenceRecord>,
    pub end: Option<(EndReason, usize, Option<String>)>,
    /// True when the last line was incomplete and skipped.
    pub truncated: bool,
}

impl Run {
    /// Starts an empty run from its header (for live runs).
    pub fn new(header: RunHeader) -> Run {
        Run {
            header,
            vocab: BTreeMap::new(),
            phases: Vec::new(),
            steps: Vec::new(),
            evals: Vec::new(),
            influence: Vec::new(),
            end: None,
            truncated: false,
        }
    }

    /// Applies one event (the header is ignored here).
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::Header(_) | Event::State { .. } | Event::Samples { .. } => {}
            Event::Vocab { tokens } => self.vocab.extend(tokens),
            Event::Phase {
                name, algo, step, ..
            } => self.phases.push(PhaseMark { name, algo, step }),
            Event::Step(s) => self.steps.push(s),
            Event::Eval(e) => self.evals.push(*e),
            Event::Influence(r) => self.influence.push(*r),
            Event::End {
                reason,
                step,
                message,
            } => self.end = Some((reason, step, message)),
        }
    }

    /// The last step recorded.
    pub fn last_step(&self) -> usize {
        let s = self.steps.last().map(|s| s.step).unwrap_or(0);
        let e = self.evals.last().map(|e| e.step).unwrap_or(0);
        s.max(e)
    }

    /// Mean over probes of one family at each evaluation: (step, mean).
    pub fn family_means(&self, f: Family) -> Vec<(usize, f64)> {
        self.evals
            .iter()
            .filter_map(|e| {
                let v = e.logps.get(&f)?;
                if v.is_empty() {
                    return None;
                }
                Some((e.step, v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect()
    }
}

/// Loads a run file.
pub fn read_run(path: &Path) -> Result<Run> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open run file", path.display()))?;
    let mut reader = BufReader::new(f);
    let mut run: Option<Run> = None;
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}: read error", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(_) if !complete => {
                if let Some(r) = run.as_mut() {
                    r.truncated = true;
                }
                break;
            }
            Err(_) => bail!("{}:{line_no}: not UTF-8", path.display()),
        };
        if text.is_empty() {
            continue;
        }
        let ev: Event = match serde_json::from_str(text) {
            Ok(ev) => ev,
            Err(_) if !complete => {
                // A record cut by a killed writer: keep everything before it.
                if let Some(r) = run.as_mut() {
                    r.truncated = true;
                }
                break;
            }
            Err(e) => bail!("{}:{line_no}: not a valid run record: {e}", path.display()),
        };
        match (&mut run, ev) {
            (None, Event::Header(h)) => {
                if h.format != FORMAT {
                    bail!(
                        "{}:1: format \"{}\" is not \"{FORMAT}\"",
                        path.display(),
                        h.format
                    );
                }
                if h.version > VERSION {
                    bail!(
                        "{}:1: run file version {} is newer than this ldviz reads ({VERSION}); update ldviz",
                        path.display(),
                        h.version
                    );
                }
                run = Some(Run::new(*h));
            }
            (None, _) => bail!(
                "{}:{line_no}: the first record must be the header",
                path.display()
            ),
            (Some(_), Event::Header(_)) => bail!("{}:{line_no}: a second header", path.display()),
            (Some(r), ev) => r.apply(ev),
        }
    }
    run.ok_or_else(|| anyhow!("{}: empty run file (no header record)", path.display()))
}
