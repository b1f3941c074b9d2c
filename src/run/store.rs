//! The in-memory store the app reads: one run (loaded from a file or fed live by a trainer's
//! events) plus cached per-family statistics over probes, and the two transforms every plot
//! needs — debiased EMA smoothing and min/max (M4) bucketing, which never drops an extreme.
//! Nothing here knows about egui; the app only re-reads a store every frame.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::event::{Event, RunHeader};
use super::reader::{Run, read_run};
use crate::data::Family;

/// What is plotted per probe: the summed log-prob, or one of PAPER.md §5's diagnostics
/// (means over response positions).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Quantity {
    #[default]
    LogProb,
    /// ‖A‖_F = sqrt(V‖π‖² + V − 2).
    ANorm,
    /// ‖π − e_y‖.
    GNorm,
    /// 1 − π(y_m).
    Energy,
}

impl Quantity {
    pub const ALL: [Quantity; 4] = [
        Quantity::LogProb,
        Quantity::ANorm,
        Quantity::GNorm,
        Quantity::Energy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Quantity::LogProb => "summed log-prob",
            Quantity::ANorm => "‖A‖_F",
            Quantity::GNorm => "‖π − e_y‖",
            Quantity::Energy => "energy 1 − π(y)",
        }
    }

    /// One evaluation's values of a family, one per probe.
    pub fn values(self, e: &super::EvalRecord, f: Family) -> Option<Vec<f64>> {
        let k = match self {
            Quantity::LogProb => return e.logps.get(&f).cloned(),
            Quantity::ANorm => 0,
            Quantity::GNorm => 1,
            Quantity::Energy => 2,
        };
        e.diag.get(&f).map(|v| v.iter().map(|d| d[k]).collect())
    }
}

/// Which statistic over probes a series holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub family: Family,
    pub quantity: Quantity,
    /// Change since the first evaluation (true) or the summed log-prob itself.
    pub delta: bool,
    /// One probe (its position in the header's probe list) instead of all.
    pub probe: Option<usize>,
}

/// Per evaluation (aligned with `run.evals`): mean over probes and the band statistics.
/// NaN where the evaluation lacks the family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub q1: Vec<f64>,
    pub q3: Vec<f64>,
}

/// The x axis of a plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum XAxis {
    Step,
    Examples,
    Epoch,
}

/// A cached metric series: (steps scanned, xs, ys).
type MetricSeries = (usize, Vec<f64>, Vec<f64>);

/// A run plus what the views derive from it.
#[derive(Clone, Debug)]
pub struct RunStore {
    /// Display name (file stem, or "live").
    pub name: String,
    /// The run file, when there is one.
    pub path: Option<PathBuf>,
    pub run: Run,
    /// Live runs: the trainer reported itself paused.
    pub paused: bool,
    /// Live runs: the on-policy samples reported so far (step, count).
    pub samples: Vec<(usize, usize)>,
    cache: HashMap<SeriesKey, Stats>,
    /// Transfer matrix: per evaluation, mean diagonal and mean off-diagonal change since t = 0.
    transfer_cache: (Vec<f64>, Vec<f64>),
    /// Metric series per (name, axis): (steps scanned, xs, ys).
    metric_cache: HashMap<(String, XAxis), MetricSeries>,
}

/// Linear-interpolated quantile of sorted values (NaN when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

impl RunStore {
    /// Loads a run file.
    pub fn open(path: &Path) -> Result<RunStore> {
        let run = read_run(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        Ok(RunStore::from_run(name, Some(path.to_path_buf()), run))
    }

    pub fn from_run(name: String, path: Option<PathBuf>, run: Run) -> RunStore {
        RunStore {
            name,
            path,
            run,
            paused: false,
            samples: Vec::new(),
            cache: HashMap::new(),
            transfer_cache: (Vec::new(), Vec::new()),
            metric_cache: HashMap::new(),
        }
    }

    /// A live run that starts with its header.
    pub fn live(name: String, path: Option<PathBuf>, header: RunHeader) -> RunStore {
        RunStore::from_run(name, path, Run::new(header))
    }

    /// Applies one event of a live run.
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::State { paused, .. } => self.paused = paused,
            Event::Samples { step, rejected, .. } => self.samples.push((step, rejected.len())),
            ev => self.run.apply(ev),
        }
    }

    pub fn n_evals(&self) -> usize {
        self.run.evals.len()
    }

    pub fn n_probes(&self) -> usize {
        self.run.header.probes.len()
    }

    /// Whether the run has finished (an `end` record arrived).
    pub fn ended(&self) -> bool {
        self.run.end.is_some()
    }

    /// x of evaluation `i` on the given axis.
    pub fn eval_x(&self, i: usize, axis: XAxis) -> f64 {
        match self.run.evals.get(i) {
            None => f64::NAN,
            Some(e) => match axis {
                XAxis::Step => e.step as f64,
                XAxis::Examples => e.examples as f64,
                XAxis::Epoch => e.epoch,
            },
        }
    }

    /// Index of the last evaluation at or before x (0 when x precedes all).
    pub fn eval_at_x(&self, x: f64, axis: XAxis) -> usize {
        let n = self.n_evals();
        let mut lo = 0usize;
        let mut hi = n;
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.eval_x(mid, axis) <= x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.saturating_sub(1)
    }

    /// Statistics of one series over every evaluation recorded so far; computed once and
    /// extended incrementally as evaluations arrive.
    pub fn stats(&mut self, key: SeriesKey) -> &Stats {
        let evals = &self.run.evals;
        let entry = self.cache.entry(key).or_default();
        let done = entry.mean.len();
        if done < evals.len() {
            let first = evals
                .iter()
                .find_map(|e| key.quantity.values(e, key.family));
            let first = first.as_ref();
            let mut v: Vec<f64> = Vec::new();
            for e in &evals[done..] {
                v.clear();
                if let Some(vals) = key.quantity.values(e, key.family) {
                    for (i, &x) in vals.iter().enumerate() {
                        if key.probe.is_some_and(|p| p != i) {
                            continue;
                        }
                        let base = if key.delta {
                            first.and_then(|f| f.get(i)).copied().unwrap_or(x)
                        } else {
                            0.0
                        };
                        v.push(x - base);
                    }
                }
                if v.is_empty() {
                    for col in [
                        &mut entry.mean,
                        &mut entry.min,
                        &mut entry.max,
                        &mut entry.q1,
                        &mut entry.q3,
                    ] {
                        col.push(f64::NAN);
                    }
                    continue;
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                v.sort_by(f64::total_cmp);
                entry.mean.push(mean);
                entry.min.push(v[0]);
                entry.max.push(v[v.len() - 1]);
                entry.q1.push(quantile(&v, 0.25));
                entry.q3.push(quantile(&v, 0.75));
            }
        }
        entry
    }

    /// The first evaluation's transfer matrix (the t = 0 baseline), if the run has one.
    pub fn transfer_base(&self) -> Option<&Vec<Vec<f64>>> {
        self.run
            .evals
            .iter()
            .map(|e| &e.transfer)
            .find(|t| !t.is_empty())
    }

    /// The transfer matrix at evaluation `i` as change since t = 0 ([prompt][answer]).
    pub fn transfer_delta(&self, i: usize) -> Option<Vec<Vec<f64>>> {
        let base = self.transfer_base()?;
        let now = &self.run.evals.get(i)?.transfer;
        if now.len() != base.len() {
            return None;
        }
        Some(
            now.iter()
                .zip(base)
                .map(|(r, b)| r.iter().zip(b).map(|(x, y)| x - y).collect())
                .collect(),
        )
    }

    /// Per evaluation: the mean diagonal and mean off-diagonal of the transfer matrix's change
    /// since t = 0 (NaN where an evaluation has none); extended incrementally.
    pub fn transfer_means(&mut self) -> (&[f64], &[f64]) {
        let n = self.run.evals.len();
        let done = self.transfer_cache.0.len();
        if done < n {
            for i in done..n {
                let (d, o) = match self.transfer_delta(i) {
                    Some(m) if m.len() > 1 => {
                        let k = m.len();
                        let (mut ds, mut os) = (0.0, 0.0);
                        for (a, row) in m.iter().enumerate() {
                            for (b, v) in row.iter().enumerate() {
                                if a == b {
                                    ds += v;
                                } else {
                                    os += v;
                                }
                            }
                        }
                        (ds / k as f64, os / (k * (k - 1)) as f64)
                    }
                    _ => (f64::NAN, f64::NAN),
                };
                self.transfer_cache.0.push(d);
                self.transfer_cache.1.push(o);
            }
        }
        (&self.transfer_cache.0, &self.transfer_cache.1)
    }

    /// A TRL metric per optimizer step: (x, value), skipping steps that lack it; cached and
    /// extended as steps arrive.
    pub fn metric(&mut self, name: &str, axis: XAxis) -> (&[f64], &[f64]) {
        let steps = &self.run.steps;
        let e = self
            .metric_cache
            .entry((name.to_string(), axis))
            .or_insert_with(|| (0, Vec::new(), Vec::new()));
        for s in &steps[e.0.min(steps.len())..] {
            if let Some(&v) = s.metrics.get(name) {
                e.1.push(match axis {
                    XAxis::Step => s.step as f64,
                    XAxis::Examples => s.examples as f64,
                    XAxis::Epoch => s.epoch,
                });
                e.2.push(v);
            }
        }
        e.0 = steps.len();
        (&e.1, &e.2)
    }

    /// The metric names recorded in this run, in a stable order (loss first).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in self.run.steps.iter().take(64) {
            for k in s.metrics.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        names.sort_by_key(|n| (n != "loss", n.clone()));
        names
    }

    /// The text of a token id (from the run's vocabulary records).
    pub fn token_text(&self, id: u32) -> String {
        self.run
            .vocab
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("<{id}>"))
    }
}

/// TensorBoard's debiased exponential moving average: `weight` 0 = raw, towards 1 = smoother.
/// NaNs pass through without disturbing the average.
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 0.999);
    if w == 0.0 {
        return values.to_vec();
    }
    let mut last = 0.0;
    let mut n = 0i32;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return v;
            }
            last = last * w + (1.0 - w) * v;
            n += 1;
            last / (1.0 - w.powi(n))
        })
        .collect()
}

/// Reduces a polyline to at most 2 points per bucket — each bucket's minimum and maximum, in x
/// order — over `buckets` equal-width x buckets spanning the data (plus the very first and last
/// points); every local extreme survives, so spikes are never hidden. Non-finite y values are
/// skipped. Inputs must be sorted by x. Short series come back unchanged.
pub fn decimate(xs: &[f64], ys: &[f64], buckets: usize) -> Vec<[f64; 2]> {
    let n = xs.len().min(ys.len());
    let buckets = buckets.max(1);
    let finite = |i: usize| ys[i].is_finite() && xs[i].is_finite();
    if n <= 2 * buckets {
        return (0..n)
            .filter(|&i| finite(i))
            .map(|i| [xs[i], ys[i]])
            .collect();
    }
    let (x0, x1) = (xs[0], xs[n - 1]);
    let width = (x1 - x0) / buckets as f64;
    let bucket_of = |x: f64| {
        if width > 0.0 {
            (((x - x0) / width) as usize).min(buckets - 1)
        } else {
            0
        }
    };
    let mut out = Vec::with_capacity(2 * buckets + 2);
    let push = |out: &mut Vec<[f64; 2]>, j: usize| {
        if out
            .last()
            .is_none_or(|p: &[f64; 2]| p[0] != xs[j] || p[1] != ys[j])
        {
            out.push([xs[j], ys[j]]);
        }
    };
    if let Some(first) = (0..n).find(|&i| finite(i)) {
        push(&mut out, first);
    }
    let mut i = 0usize;
    while i < n {
        let b = bucket_of(xs[i]);
        let (mut lo, mut hi) = (usize::MAX, usize::MAX);
        while i < n && bucket_of(xs[i]) == b {
            if finite(i) {
                if lo == usize::MAX || ys[i] < ys[lo] {
                    lo = i;
                }
                if hi == usize::MAX || ys[i] > ys[hi] {
                    hi = i;
                }
            }
            i += 1;
        }
        if lo == usize::MAX {
            continue;
        }
        let (a, c) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        push(&mut out, a);
        push(&mut out, c);
    }
    if let Some(last) = (0..n).rev().find(|&i| finite(i)) {
        push(&mut out, last);
    }
    out
}

/// The band's envelope over `buckets` x buckets: per bucket the first x, the lowest low and
/// the highest high (so a decimated band still covers every probe's excursion).
pub fn envelope(
    xs: &[f64],
    lo: &[f64],
    hi: &[f64],
    buckets: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = xs.len().min(lo.len()).min(hi.len());
    let ok = |i: usize| xs[i].is_finite() && lo[i].is_finite() && hi[i].is_finite();
    if n <= 2 * buckets.max(1) {
        let idx: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
        return (
            idx.iter().map(|&i| xs[i]).collect(),
            idx.iter().map(|&i| lo[i]).collect(),
            idx.iter().map(|&i| hi[i]).collect(),
        );
    }
    let (x0, x1) = (xs[0], xs[n - 1]);
    let width = ((x1 - x0) / buckets as f64).max(f64::MIN_POSITIVE);
    let (mut ox, mut ol, mut oh) = (Vec::new(), Vec::new(), Vec::new());
    let mut cur = usize::MAX;
    for i in (0..n).filter(|&i| ok(i)) {
        let b = (((xs[i] - x0) / width) as usize).min(buckets - 1);
        if b != cur {
            cur = b;
            ox.push(xs[i]);
            ol.push(lo[i]);
            oh.push(hi[i]);
        } else if let (Some(l), Some(h)) = (ol.last_mut(), oh.last_mut()) {
            *l = l.min(lo[i]);
            *h = h.max(hi[i]);
        }
    }
    if let (Some(&lx), true) = (xs.get(n - 1), ok(n - 1))
        && ox.last() != Some(&lx)
    {
        ox.push(lx);
        ol.push(lo[n - 1]);
        oh.push(hi[n - 1]);
    }
    (ox, ol, oh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_matches_tensorboard_debiasing() {
        // Debiased EMA of a constant is the constant; of a step it approaches the new level.
        let c = ema(&[2.0; 5], 0.9);
        assert!(c.iter().all(|v| (v - 2.0).abs() < 1e-12));
        let s = ema(&[0.0, 1.0], 0.5);
        // last1 = 0, /0.5 = 0; last2 = 0.5, /(1-0.25) = 2/3
        assert!((s[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(ema(&[1.0, 5.0], 0.0), vec![1.0, 5.0]);
        let n = ema(&[1.0, f64::NAN, 1.0], 0.6);
        assert!(n[1].is_nan() && (n[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn decimation_keeps_every_spike() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut ys: Vec<f64> = (0..n).map(|i| (i as f64 * 0.01).sin()).collect();
        ys[12_345] = 50.0;
        ys[77_777] = -40.0;
        let d = decimate(&xs, &ys, 300);
        assert!(d.len() <= 2 * 300 + 2, "{} points", d.len());
        assert!(d.contains(&[12_345.0, 50.0]));
        assert!(d.contains(&[77_777.0, -40.0]));
        assert_eq!(d.first(), Some(&[0.0, 0.0]));
        assert_eq!(d.last(), Some(&[(n - 1) as f64, ys[n - 1]]));
        assert!(d.windows(2).all(|w| w[0][0] <= w[1][0]), "x order kept");
        // Few points: unchanged.
        assert_eq!(decimate(&xs[..10], &ys[..10], 300).len(), 10);
    }

    #[test]
    fn envelope_covers_every_value() {
        let n = 10_000;
        let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let lo: Vec<f64> = (0..n).map(|i| -((i % 97) as f64)).collect();
        let hi: Vec<f64> = (0..n).map(|i| (i % 89) as f64).collect();
        let (ex, el, eh) = envelope(&xs, &lo, &hi, 100);
        assert!(ex.len() <= 102);
        assert_eq!(el.iter().cloned().fold(f64::INFINITY, f64::min), -96.0);
        assert_eq!(eh.iter().cloned().fold(f64::NEG_INFINITY, f64::max), 88.0);
        assert_eq!(ex.last(), Some(&((n - 1) as f64)));
    }

    #[test]
    fn transfer_means_are_changes_since_t0() {
        let mut evs = crate::run::synth::events(
            crate::run::synth::SynthSpec {
                steps: 20,
                eval_every: 10,
                probes: 3,
                tokens: 2,
                top_k: 1,
                vocab: 8,
            },
            1,
        )
        .unwrap();
        let mut k = 0.0;
        for ev in evs.iter_mut() {
            if let Event::Eval(e) = ev {
                // diagonal +k, off-diagonal +2k relative to a base matrix
                e.transfer = (0..3)
                    .map(|i| {
                        (0..3)
                            .map(|j| (i * 3 + j) as f64 + if i == j { k } else { 2.0 * k })
                            .collect()
                    })
                    .collect();
                k += 1.0;
            }
        }
        let mut it = evs.into_iter();
        let Some(Event::Header(h)) = it.next() else {
            panic!("no header")
        };
        let mut st = RunStore::live("t".into(), None, *h);
        for ev in it {
            st.apply(ev);
        }
        let (d, o) = st.transfer_means();
        assert_eq!(d, &[0.0, 1.0, 2.0]);
        assert_eq!(o, &[0.0, 2.0, 4.0]);
        let m = st.transfer_delta(2).unwrap();
        assert_eq!(m[0][1], 4.0);
        assert_eq!(m[1][1], 2.0);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
