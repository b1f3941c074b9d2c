//! `ldviz inspect`: the header summary and, per family, the mean over probes at the first and
//! last evaluation and its min and max (overall and per phase); the transfer matrix's mean
//! diagonal and off-diagonal change at the last evaluation that scored it (overall and per
//! phase).

use std::collections::BTreeMap;

use serde::Serialize;

use super::reader::Run;
use super::store::{diagonal_means, phase_spans, transfer_base_index, transfer_change};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyStats {
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSummary {
    pub name: String,
    pub algo: String,
    pub first_step: usize,
    pub last_step: usize,
    pub families: BTreeMap<String, FamilyStats>,
    /// The transfer matrix at the phase's last evaluation that scored it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<PhaseTransfer>,
}

/// The transfer matrix log π(y_j⁺ | x_i) at one evaluation: the mean over its diagonal (each
/// prompt with its own chosen answer) and over its off-diagonal (other prompts' answers) of the
/// change since t = 0 (the first evaluation that scored the matrix).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransferSummary {
    /// Step of the evaluation.
    pub step: usize,
    pub diagonal_delta: f64,
    pub off_diagonal_delta: f64,
    /// Side M of the M × M matrix.
    pub prompts: usize,
}

/// A phase's transfer: since t = 0 at its last evaluation of the matrix, and the change over the
/// phase, from the evaluation of its starting weights (step `phase_from_step`) to that one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseTransfer {
    #[serde(flatten)]
    pub at_end: TransferSummary,
    pub phase_from_step: usize,
    pub phase_diagonal_delta: f64,
    pub phase_off_diagonal_delta: f64,
}

/// Means of the transfer matrix's change from evaluation `base` to evaluation `i`.
fn transfer_at(run: &Run, base: usize, i: usize) -> Option<TransferSummary> {
    let m = transfer_change(run, base, i)?;
    let (d, o) = diagonal_means(&m)?;
    Some(TransferSummary {
        step: run.evals[i].step,
        diagonal_delta: d,
        off_diagonal_delta: o,
        prompts: m.len(),
    })
}

/// The transfer summary at the run's last evaluation of the matrix (None without one, or
/// below 2 × 2).
pub fn transfer_summary(run: &Run) -> Option<TransferSummary> {
    let base = transfer_base_index(run)?;
    let last = run.evals.iter().rposition(|e| !e.transfer.is_empty())?;
    transfer_at(run, base, last)
}

/// Per phase (as [`phase_spans`] splits the run): the transfer at the phase's last evaluation of
/// the matrix, and its change over the phase.
pub fn phase_transfers(run: &Run) -> Vec<Option<PhaseTransfer>> {
    let base = transfer_base_index(run);
    phase_spans(run)
        .into_iter()
        .map(|span| {
            let base = base?;
            let has = |i: &usize| run.evals.get(*i).is_some_and(|e| !e.transfer.is_empty());
            let last = span.evals.clone().rev().find(has)?;
            let from = span.start_eval.into_iter().chain(span.evals).find(has)?;
            let at_end = transfer_at(run, base, last)?;
            let over = transfer_at(run, from, last)?;
            Some(PhaseTransfer {
                at_end,
                phase_from_step: run.evals[from].step,
                phase_diagonal_delta: over.diagonal_delta,
                phase_off_diagonal_delta: over.off_diagonal_delta,
            })
        })
        .collect()
}

/// How well the first-order prediction matched the actual change, over all influence records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InfluenceSummary {
    /// Pearson correlation of predicted and actual Δf_o over every (record, observed) pair.
    pub pearson_r: f64,
    /// Median of |predicted − actual| / max(|actual|, 1e-8).
    pub median_rel_error: f64,
    pub records: usize,
    /// Number of (record, observed response) pairs.
    pub points: usize,
    /// Mean cost of an influence computation (ms, on top of its update).
    pub mean_wall_ms: f64,
}

/// Influence summary of a run (None when it has no influence records).
pub fn influence_summary(run: &Run) -> Option<InfluenceSummary> {
    if run.influence.is_empty() {
        return None;
    }
    let (mut p, mut a) = (Vec::new(), Vec::new());
    for r in &run.influence {
        p.extend_from_slice(&r.predicted);
        a.extend_from_slice(&r.actual);
    }
    let mut rel: Vec<f64> = p
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-8))
        .collect();
    rel.sort_by(f64::total_cmp);
    Some(InfluenceSummary {
        pearson_r: crate::stats::pearson(&p, &a),
        median_rel_error: rel.get(rel.len() / 2).copied().unwrap_or(f64::NAN),
        records: run.influence.len(),
        points: p.len(),
        mean_wall_ms: run.influence.iter().map(|r| r.wall_ms).sum::<f64>()
            / run.influence.len() as f64,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub evaluations: usize,
    pub probes: usize,
    pub families: BTreeMap<String, FamilyStats>,
    pub phases: Vec<PhaseSummary>,
    pub end: Option<String>,
    pub truncated: bool,
    /// Records of a type this ldviz does not know (from a newer writer), skipped.
    pub skipped_records: usize,
    /// The first step whose loss or a family's mean log-prob is not finite
    /// ([`Run::diverged_at_step`]); null when the run did not diverge.
    pub diverged_at_step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub influence: Option<InfluenceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSummary>,
}

fn stats(series: &[(usize, f64)], lo: usize, hi: usize) -> Option<FamilyStats> {
    let v: Vec<f64> = series
        .iter()
        .filter(|(s, _)| *s >= lo && *s <= hi)
        .map(|p| p.1)
        .collect();
    let (first, last) = (*v.first()?, *v.last()?);
    Some(FamilyStats {
        first,
        last,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

fn families(run: &Run, lo: usize, hi: usize) -> BTreeMap<String, FamilyStats> {
    let mut out = BTreeMap::new();
    for f in &run.header.families {
        if let Some(s) = stats(&run.family_means(*f), lo, hi) {
            out.insert(f.key().to_string(), s);
        }
    }
    out
}

pub fn summarize(run: &Run) -> Summary {
    let last = run.last_step();
    let mut phases = Vec::new();
    // Phase records and spans correspond one to one when the run has phase records.
    let mut transfers = phase_transfers(run).into_iter();
    for (i, p) in run.phases.iter().enumerate() {
        let end = run.phases.get(i + 1).map(|n| n.step).unwrap_or(last);
        phases.push(PhaseSummary {
            name: p.name.clone(),
            algo: p.algo.key().to_string(),
            first_step: p.step,
            last_step: end,
            families: families(run, p.step, end),
            transfer: transfers.next().flatten(),
        });
    }
    Summary {
        steps: last,
        evaluations: run.evals.len(),
        probes: run.header.probes.len(),
        families: families(run, 0, usize::MAX),
        phases,
        end: run.end.as_ref().map(|(r, s, m)| {
            let r = serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match m {
                Some(m) => format!("{r} at step {s}: {m}"),
                None => format!("{r} at step {s}"),
            }
        }),
        truncated: run.truncated,
        skipped_records: run.skipped_records,
        diverged_at_step: run.diverged_at_step(),
        influence: influence_summary(run),
        transfer: transfer_summary(run),
    }
}

/// A human-readable rendering of the summary.
pub fn render_text(run: &Run, s: &Summary) -> String {
    let h = &run.header;
    let mut out = String::new();
    out.push_str(&format!(
        "run: {} on {} ({}, {} params, fingerprint {})\n",
        h.config.algo, h.model.path, h.model.arch, h.model.n_params, h.model.fingerprint
    ));
    out.push_str(&format!(
        "data: {} ({:?}, {} train / {} test records, fingerprint {})\n",
        h.data.path, h.data.format, h.data.n_train, h.data.n_test, h.data.fingerprint
    ));
    out.push_str(&format!(
        "steps: {}  evaluations: {}  probes: {}  batch: {}{}\n",
        s.steps,
        s.evaluations,
        s.probes,
        h.batch_size,
        if s.truncated {
            "  (last record was cut and skipped)"
        } else {
            ""
        }
    ));
    if s.skipped_records > 0 {
        out.push_str(&format!(
            "skipped records: {} (of types this ldviz does not know; written by a newer version)\n",
            s.skipped_records
        ));
    }
    if let Some(e) = &s.end {
        out.push_str(&format!("end: {e}\n"));
    }
    if let Some(d) = s.diverged_at_step {
        out.push_str(&format!(
            "diverged at step {d}: first non-finite (NaN or infinite) loss or mean log-prob\n"
        ));
    }
    let table = |fams: &BTreeMap<String, FamilyStats>, out: &mut String| {
        out.push_str(&format!(
            "  {:<20} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "family", "first", "last", "delta", "min", "max"
        ));
        for f in &h.families {
            if let Some(st) = fams.get(f.key()) {
                out.push_str(&format!(
                    "  {:<20} {:>10.3} {:>10.3} {:>+10.3} {:>10.3} {:>10.3}\n",
                    f.key(),
                    st.first,
                    st.last,
                    st.last - st.first,
                    st.min,
                    st.max
                ));
            }
        }
    };
    out.push_str("mean summed log-prob over probes:\n");
    table(&s.families, &mut out);
    for p in &s.phases {
        out.push_str(&format!(
            "phase {} ({}), steps {}..{}:\n",
            p.name, p.algo, p.first_step, p.last_step
        ));
        table(&p.families, &mut out);
        if let Some(t) = &p.transfer {
            out.push_str(&format!(
                "  transfer at step {}: diagonal {:+.3}, off-diagonal {:+.3} since t = 0; over the phase (from step {}): diagonal {:+.3}, off-diagonal {:+.3}\n",
                t.at_end.step,
                t.at_end.diagonal_delta,
                t.at_end.off_diagonal_delta,
                t.phase_from_step,
                t.phase_diagonal_delta,
                t.phase_off_diagonal_delta
            ));
        }
    }
    if let Some(t) = &s.transfer {
        out.push_str(&format!(
            "transfer ({m} × {m}, log π(answer j | prompt i)) at step {}: mean Δ since t = 0 diagonal {:+.3} (own answers), off-diagonal {:+.3} (other prompts' answers)\n",
            t.step,
            t.diagonal_delta,
            t.off_diagonal_delta,
            m = t.prompts
        ));
    }
    if let Some(i) = &s.influence {
        out.push_str(&format!(
            "influence: {} records, {} points: predicted vs actual Δ log-prob Pearson r = {:.4}, median relative error {:.3}, {:.0} ms per record\n",
            i.records, i.points, i.pearson_r, i.median_rel_error, i.mean_wall_ms
        ));
    }
    out
}
