//! The in-memory store the app reads: one run (loaded from a file or fed live by a trainer's
//! events) plus cached per-family statistics over probes, and the two transforms every plot
//! needs — debiased EMA smoothing and min/max (M4) bucketing, which never drops an extreme.
//! Nothing here knows about egui; the app only re-reads a store every frame.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;

use super::reader::{Run, read_run};
use crate::data::Family;
use crate::schema::Algo;
use crate::schema::event::{Event, RunHeader};
use crate::stats::quantile;

/// What is plotted per probe: the summed log-prob, or one of the diagnostics
/// (means over response positions).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum Quantity {
    /// Summed log-prob.
    #[default]
    #[value(name = "logprob")]
    LogProb,
    /// ‖A‖_F = sqrt(V‖π_m‖² + V − 2), mean over positions m.
    ANorm,
    /// ‖π − e_y‖.
    GNorm,
    /// 1 − π(y_m).
    Energy,
    /// ‖A‖_F as the authors' code computes it: sqrt(V·(mean_m ‖π_m‖)² + V − 2). Runs recorded
    /// before it have none.
    ANormAuthors,
}

impl Quantity {
    pub const ALL: [Quantity; 5] = [
        Quantity::LogProb,
        Quantity::ANorm,
        Quantity::ANormAuthors,
        Quantity::GNorm,
        Quantity::Energy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Quantity::LogProb => "summed log-prob",
            Quantity::ANorm => "‖A‖_F (mean over positions)",
            Quantity::ANormAuthors => "‖A‖_F (authors: from mean ‖π‖)",
            Quantity::GNorm => "‖π − e_y‖",
            Quantity::Energy => "energy 1 − π(y)",
        }
    }

    /// One evaluation's values of a family, one per probe (None where the evaluation lacks
    /// them).
    pub fn values(self, e: &super::EvalRecord, f: Family) -> Option<Vec<f64>> {
        use crate::schema::trace::{A_AUTHORS, A_MEAN};
        let k = match self {
            Quantity::LogProb => return e.logps.get(&f).cloned(),
            Quantity::ANorm => A_MEAN,
            Quantity::GNorm => 1,
            Quantity::Energy => 2,
            Quantity::ANormAuthors => A_AUTHORS,
        };
        let v: Vec<f64> = e.diag.get(&f)?.iter().map(|d| d[k]).collect();
        // runs recorded before the authors' ‖A‖_F read it as NaN
        v.iter().any(|x| !x.is_nan()).then_some(v)
    }
}

/// What a family curve's y holds: the value itself or its change since a baseline evaluation.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum YMode {
    /// Change since the run's first evaluation (t = 0).
    Delta,
    /// Change since the start of the evaluation's phase: each phase re-zeroed at the evaluation
    /// of its starting weights (the one that closed the previous phase), see [`phase_spans`].
    PhaseDelta,
    /// The value itself.
    Absolute,
}

impl YMode {
    pub const ALL: [YMode; 3] = [YMode::Delta, YMode::PhaseDelta, YMode::Absolute];

    pub fn label(self) -> &'static str {
        match self {
            YMode::Delta => "Δ since t = 0",
            YMode::PhaseDelta => "Δ since phase start",
            YMode::Absolute => "absolute",
        }
    }

    /// The default for a run: change since phase start when its header plans several phases
    /// (known when the run starts, so a live run keeps its mode when it enters phase 2),
    /// change since t = 0 otherwise.
    pub fn default_for(header: &RunHeader) -> YMode {
        if header.phases.len() > 1 {
            YMode::PhaseDelta
        } else {
            YMode::Delta
        }
    }
}

/// A phase's stretch of a run's evaluations.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSpan {
    pub name: String,
    pub algo: Algo,
    /// Optimizer updates applied before the phase began.
    pub step: usize,
    /// The evaluations recorded during the phase (indices into `run.evals`). The evaluation at a
    /// boundary step closes the phase that ends there.
    pub evals: Range<usize>,
    /// The evaluation of the phase's starting weights when it belongs to the previous phase
    /// (made at this phase's start step); None for the first phase, whose own first evaluation
    /// is its start.
    pub start_eval: Option<usize>,
}

impl PhaseSpan {
    /// "name", or "name (algo)" when they differ.
    pub fn label(&self) -> String {
        if self.name == self.algo.key() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.algo.key())
        }
    }
}

/// The run's phases with the evaluations of each, in order; together they cover every
/// evaluation. An evaluation belongs to the last phase that started before its step; one made
/// exactly at a phase's start step belongs to the phase that ends there (it scores the weights
/// that phase produced) unless it is tagged with the new phase's name. A run without phase
/// records is one span named after its header.
pub fn phase_spans(run: &Run) -> Vec<PhaseSpan> {
    let n = run.evals.len();
    if run.phases.is_empty() {
        let (name, algo) = match run.header.phases.first() {
            Some(p) => (p.name.clone(), p.algo),
            None => (
                run.header.config.algo.key().to_string(),
                run.header.config.algo,
            ),
        };
        return vec![PhaseSpan {
            name,
            algo,
            step: 0,
            evals: 0..n,
            start_eval: None,
        }];
    }
    let mut spans = Vec::with_capacity(run.phases.len());
    let mut start = 0usize;
    for (k, p) in run.phases.iter().enumerate() {
        let end = match run.phases.get(k + 1) {
            None => n,
            Some(next) => {
                let opens_next = |e: &super::EvalRecord| {
                    e.step > next.step
                        || (e.step == next.step && e.phase == next.name && next.name != p.name)
                };
                start
                    + run.evals[start..]
                        .iter()
                        .position(opens_next)
                        .unwrap_or(n - start)
            }
        };
        let start_eval = start
            .checked_sub(1)
            .filter(|&i| run.evals[i].step == p.step);
        spans.push(PhaseSpan {
            name: p.name.clone(),
            algo: p.algo,
            step: p.step,
            evals: start..end,
            start_eval,
        });
        start = end;
    }
    spans
}

/// A stretch of a series drawn as one line. `Delta` and `Absolute` series are one piece;
/// `PhaseDelta` series one per phase, each led by the evaluation of the phase's starting
/// weights, where its change is 0 by definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    /// Evaluations (indices into `run.evals`) whose values the piece holds.
    pub evals: Range<usize>,
    /// The evaluation the piece's values are measured from when it lies before `evals`
    /// (drawn as the piece's first point, at 0).
    pub lead: Option<usize>,
    /// The phase (index into [`phase_spans`]) of a `PhaseDelta` piece.
    pub phase: Option<usize>,
}

/// How a series of `run` under `y` is cut into pieces (see [`Piece`]).
pub fn pieces(run: &Run, y: YMode) -> Vec<Piece> {
    match y {
        YMode::Delta | YMode::Absolute => vec![Piece {
            evals: 0..run.evals.len(),
            lead: None,
            phase: None,
        }],
        YMode::PhaseDelta => phase_spans(run)
            .into_iter()
            .enumerate()
            .map(|(k, s)| Piece {
                evals: s.evals,
                lead: s.start_eval,
                phase: Some(k),
            })
            .collect(),
    }
}

/// The per-probe values a piece's changes are measured from (None: absolute values, or no
/// evaluation of the piece has the family): the lead evaluation's, else the first of the
/// piece's own evaluations that has the family.
pub fn piece_base(
    run: &Run,
    y: YMode,
    piece: &Piece,
    quantity: Quantity,
    family: Family,
) -> Option<Vec<f64>> {
    if y == YMode::Absolute {
        return None;
    }
    piece
        .lead
        .into_iter()
        .chain(piece.evals.clone())
        .find_map(|i| quantity.values(run.evals.get(i)?, family))
}

/// A piece's points of one per-evaluation column (`xs` and `col` aligned with `run.evals`):
/// its lead at 0 when the column has a value there, then its own evaluations.
pub fn piece_points(piece: &Piece, xs: &[f64], col: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut px = Vec::with_capacity(piece.evals.len() + 1);
    let mut py = Vec::with_capacity(piece.evals.len() + 1);
    if let Some(l) = piece.lead
        && col.get(l).is_some_and(|v| v.is_finite())
        && let Some(&x) = xs.get(l)
    {
        px.push(x);
        py.push(0.0);
    }
    for i in piece.evals.clone() {
        if let (Some(&x), Some(&v)) = (xs.get(i), col.get(i)) {
            px.push(x);
            py.push(v);
        }
    }
    (px, py)
}

/// The first evaluation that scored the transfer matrix (the t = 0 baseline).
pub fn transfer_base_index(run: &Run) -> Option<usize> {
    run.evals.iter().position(|e| !e.transfer.is_empty())
}

/// The transfer matrix at evaluation `i` as change since evaluation `base` ([prompt][answer]);
/// None when either lacks it or their sizes differ.
pub fn transfer_change(run: &Run, base: usize, i: usize) -> Option<Vec<Vec<f64>>> {
    let b = &run.evals.get(base)?.transfer;
    let now = &run.evals.get(i)?.transfer;
    if now.is_empty() || now.len() != b.len() {
        return None;
    }
    Some(
        now.iter()
            .zip(b)
            .map(|(r, b)| r.iter().zip(b).map(|(x, y)| x - y).collect())
            .collect(),
    )
}

/// Mean diagonal and mean off-diagonal entry of a square matrix (None below 2 × 2).
pub fn diagonal_means(m: &[Vec<f64>]) -> Option<(f64, f64)> {
    let k = m.len();
    if k < 2 {
        return None;
    }
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
    Some((ds / k as f64, os / (k * (k - 1)) as f64))
}

/// Which statistic over probes a series holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub family: Family,
    pub quantity: Quantity,
    /// The value, or its change since t = 0 or since the start of its phase.
    pub y: YMode,
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

/// The x axis of a plot (the app's curves, `ldviz export --x`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum XAxis {
    Step,
    Examples,
    Epoch,
}

/// The band drawn around each family's mean over probes (the app's curves, `ldviz export
/// --band`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Band {
    None,
    /// Lowest to highest probe.
    #[value(name = "minmax")]
    MinMax,
    /// First to third quartile.
    #[value(name = "iqr")]
    Interquartile,
}

/// A metric's points (x, value) over the optimizer steps recorded so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricSeries {
    /// Steps scanned so far (the series is extended from here).
    scanned: usize,
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
}

/// What is derived from a run on demand for a view setting (a series' statistics under a y
/// mode, a metric on an x axis): computed once, extended as records arrive, shared by every
/// reader. Behind a lock so that readers need only `&RunStore`.
#[derive(Debug, Default)]
struct Memo {
    stats: HashMap<SeriesKey, Arc<Stats>>,
    metrics: HashMap<(String, XAxis, Option<usize>), Arc<MetricSeries>>,
    /// Phase records seen when the phase-dependent entries were filled.
    phases: usize,
}

/// [`Memo`] behind a mutex, cloned by value.
#[derive(Debug, Default)]
struct SharedMemo(Mutex<Memo>);

impl SharedMemo {
    /// The memo; a panic in another reader while it held the lock leaves entries that are
    /// still whole (each is replaced or extended in place), so the lock is taken back.
    fn lock(&self) -> MutexGuard<'_, Memo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for SharedMemo {
    fn clone(&self) -> Self {
        let m = self.lock();
        SharedMemo(Mutex::new(Memo {
            stats: m.stats.clone(),
            metrics: m.metrics.clone(),
            phases: m.phases,
        }))
    }
}

/// One phase's part of a metric: the phase's label and its (x, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseMetric {
    pub label: String,
    pub algo: Algo,
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
}

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
    memo: SharedMemo,
    /// Transfer matrix: per evaluation, mean diagonal and mean off-diagonal change since t = 0
    /// (extended as evaluations arrive).
    transfer_means: (Vec<f64>, Vec<f64>),
    /// Divergence scan so far: (steps scanned, evaluations scanned, first non-finite loss's
    /// step, first non-finite evaluation's step).
    divergence: std::cell::Cell<(usize, usize, Option<usize>, Option<usize>)>,
    /// Influence records folded into `influence_acc` so far.
    influence_seen: usize,
    /// Per family, the influence records' accumulated predicted and actual change (extended
    /// as records arrive).
    influence_acc: BTreeMap<Family, InfluenceAccum>,
}

/// One family's influence over the recorded updates: per record (in order), its step and the
/// running sums of the predicted and of the actual change of the family's mean over the
/// observed probes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfluenceAccum {
    pub steps: Vec<f64>,
    pub predicted: Vec<f64>,
    pub actual: Vec<f64>,
}

/// Predicted against actual changes of the influence records up to a point: the points per
/// family, their Pearson correlation (all families) and their range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfluenceFit {
    pub by_family: BTreeMap<Family, Vec<[f64; 2]>>,
    pub r: f64,
    pub points: usize,
    /// The smallest and largest value among predicted and actual (for the y = x line).
    pub range: Option<(f64, f64)>,
}

impl RunStore {
    /// Loads a run file.
    pub fn open(path: &Path) -> Result<RunStore> {
        let run = read_run(path)?;
        let name = super::reader::run_name(path);
        Ok(RunStore::from_run(name, Some(path.to_path_buf()), run))
    }

    /// Loads a run file that may still be growing: the store of what is recorded so far, and
    /// the [`super::Follower`] that reads the rest as it lands (plain files without an `end`
    /// record; see [`super::open_following`]). Feed its records through [`RunStore::apply`].
    pub fn open_following(path: &Path) -> Result<(RunStore, Option<super::Follower>)> {
        let (run, follower) = super::open_following(path)?;
        let name = super::reader::run_name(path);
        Ok((
            RunStore::from_run(name, Some(path.to_path_buf()), run),
            follower,
        ))
    }

    pub fn from_run(name: String, path: Option<PathBuf>, run: Run) -> RunStore {
        let mut store = RunStore {
            name,
            path,
            run,
            paused: false,
            samples: Vec::new(),
            memo: SharedMemo::default(),
            transfer_means: (Vec::new(), Vec::new()),
            divergence: std::cell::Cell::new((0, 0, None, None)),
            influence_seen: 0,
            influence_acc: BTreeMap::new(),
        };
        store.derive();
        store
    }

    /// Extends the series derived from every record (transfer means, accumulated influence)
    /// over the records added since the last call.
    fn derive(&mut self) {
        self.derive_transfer_means();
        self.derive_influence();
    }

    /// Per family, the predicted and actual change accumulated over the influence records.
    pub fn influence_accumulated(&self) -> &BTreeMap<Family, InfluenceAccum> {
        &self.influence_acc
    }

    fn derive_influence(&mut self) {
        for r in &self.run.influence[self.influence_seen.min(self.run.influence.len())..] {
            let mut sums: BTreeMap<Family, (f64, f64, usize)> = BTreeMap::new();
            for ((o, pr), ac) in r.observed.iter().zip(&r.predicted).zip(&r.actual) {
                let e = sums.entry(o.family).or_default();
                e.0 += pr;
                e.1 += ac;
                e.2 += 1;
            }
            for (f, (sp, sa, n)) in sums {
                let e = self.influence_acc.entry(f).or_default();
                let (p0, a0) = (
                    e.predicted.last().copied().unwrap_or(0.0),
                    e.actual.last().copied().unwrap_or(0.0),
                );
                e.steps.push(r.step as f64);
                e.predicted.push(p0 + sp / n as f64);
                e.actual.push(a0 + sa / n as f64);
            }
        }
        self.influence_seen = self.run.influence.len();
    }

    /// Predicted against actual change over the first `upto` influence records.
    pub fn influence_fit(&self, upto: usize) -> InfluenceFit {
        let shown = &self.run.influence[..upto.min(self.run.influence.len())];
        let mut fit = InfluenceFit::default();
        let (mut p, mut a) = (Vec::new(), Vec::new());
        for r in shown {
            for ((o, pr), ac) in r.observed.iter().zip(&r.predicted).zip(&r.actual) {
                fit.by_family.entry(o.family).or_default().push([*pr, *ac]);
            }
            p.extend_from_slice(&r.predicted);
            a.extend_from_slice(&r.actual);
        }
        fit.r = crate::stats::pearson(&p, &a);
        fit.points = p.len();
        let finite = p.iter().chain(&a).copied().filter(|x| x.is_finite());
        fit.range = finite.fold(None, |r, x| match r {
            None => Some((x, x)),
            Some((lo, hi)) => Some((f64::min(lo, x), f64::max(hi, x))),
        });
        fit
    }

    /// [`Run::diverged_at_step`], scanning only the records added since the last call.
    pub fn diverged_at_step(&self) -> Option<usize> {
        let (ns, ne, mut loss, mut eval) = self.divergence.get();
        let (l, e) = self.run.first_non_finite(
            if loss.is_some() {
                self.run.steps.len()
            } else {
                ns
            },
            if eval.is_some() {
                self.run.evals.len()
            } else {
                ne
            },
        );
        loss = loss.or(l);
        eval = eval.or(e);
        self.divergence
            .set((self.run.steps.len(), self.run.evals.len(), loss, eval));
        super::reader::min_step(loss, eval)
    }

    /// A live run that starts with its header.
    pub fn live(name: String, path: Option<PathBuf>, header: RunHeader) -> RunStore {
        RunStore::from_run(name, path, Run::new(header))
    }

    /// Applies one event of a live run (from the trainer, or from a followed run file).
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::State { paused, .. } => self.paused = paused,
            Event::Samples { step, rejected, .. } => self.samples.push((step, rejected.len())),
            ev => {
                self.run.apply(ev);
                self.derive();
            }
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

    /// The x range of everything recorded (evaluations and optimizer steps) on `axis`, so plots
    /// of parts of a run (one phase's loss) share the whole run's x axis.
    pub fn x_range(&self, axis: XAxis) -> Option<(f64, f64)> {
        let at = |step: usize, examples: usize, epoch: f64| match axis {
            XAxis::Step => step as f64,
            XAxis::Examples => examples as f64,
            XAxis::Epoch => epoch,
        };
        let xs = self
            .run
            .evals
            .iter()
            .map(|e| at(e.step, e.examples, e.epoch))
            .chain(
                self.run
                    .steps
                    .iter()
                    .map(|s| at(s.step, s.examples, s.epoch)),
            )
            .filter(|x| x.is_finite());
        xs.fold(None, |r, x| match r {
            None => Some((x, x)),
            Some((lo, hi)) => Some((f64::min(lo, x), f64::max(hi, x))),
        })
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

    /// Drops what depends on the phase records when one arrived since (phase records come
    /// before their phase's evaluations and steps, so this is a safeguard, not a routine).
    fn memo(&self) -> MutexGuard<'_, Memo> {
        let mut m = self.memo.lock();
        let n = self.run.phases.len();
        if n != m.phases {
            m.stats.retain(|k, _| k.y != YMode::PhaseDelta);
            m.metrics.retain(|k, _| k.2.is_none());
            m.phases = n;
        }
        m
    }

    /// Statistics of one series over every evaluation recorded so far; computed once and
    /// extended incrementally as evaluations arrive.
    pub fn stats(&self, key: SeriesKey) -> Arc<Stats> {
        let mut memo = self.memo();
        let run = &self.run;
        let n = run.evals.len();
        let slot = memo.stats.entry(key).or_default();
        if slot.mean.len() >= n {
            return slot.clone();
        }
        let entry = Arc::make_mut(slot);
        let done = entry.mean.len();
        if done < n {
            let mut v: Vec<f64> = Vec::new();
            for piece in pieces(run, key.y) {
                if piece.evals.end <= done {
                    continue;
                }
                let base = piece_base(run, key.y, &piece, key.quantity, key.family);
                for e in &run.evals[piece.evals.start.max(done)..piece.evals.end] {
                    v.clear();
                    if let Some(vals) = key.quantity.values(e, key.family) {
                        for (i, &x) in vals.iter().enumerate() {
                            if key.probe.is_some_and(|p| p != i) {
                                continue;
                            }
                            let b = match &base {
                                Some(b) => b.get(i).copied().unwrap_or(x),
                                None => 0.0,
                            };
                            v.push(x - b);
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
        }
        slot.clone()
    }

    /// The pieces a series is drawn in under `y` (see [`Piece`]).
    pub fn pieces(&self, y: YMode) -> Vec<Piece> {
        pieces(&self.run, y)
    }

    /// The run's phases and their evaluations (see [`phase_spans`]).
    pub fn phase_spans(&self) -> Vec<PhaseSpan> {
        phase_spans(&self.run)
    }

    /// Where each phase starts on `axis`, with its label: the evaluation at or after its start
    /// step (the one scoring its starting weights), or the start step itself on the step axis
    /// before any.
    pub fn phase_marks(&self, axis: XAxis) -> Vec<(f64, String)> {
        phase_spans(&self.run)
            .into_iter()
            .filter_map(|s| {
                let x = match self.run.evals.iter().position(|e| e.step >= s.step) {
                    Some(i) => self.eval_x(i, axis),
                    None if axis == XAxis::Step => s.step as f64,
                    None => return None,
                };
                Some((x, s.label()))
            })
            .collect()
    }

    /// The first evaluation's transfer matrix (the t = 0 baseline), if the run has one.
    pub fn transfer_base(&self) -> Option<&Vec<Vec<f64>>> {
        transfer_base_index(&self.run).map(|i| &self.run.evals[i].transfer)
    }

    /// The transfer matrix at evaluation `i` as change since t = 0 ([prompt][answer]).
    pub fn transfer_delta(&self, i: usize) -> Option<Vec<Vec<f64>>> {
        transfer_change(&self.run, transfer_base_index(&self.run)?, i)
    }

    /// Per evaluation: the mean diagonal and mean off-diagonal of the transfer matrix's change
    /// since t = 0 (NaN where an evaluation has none); extended incrementally.
    pub fn transfer_means(&self) -> (&[f64], &[f64]) {
        (&self.transfer_means.0, &self.transfer_means.1)
    }

    fn derive_transfer_means(&mut self) {
        let n = self.run.evals.len();
        for i in self.transfer_means.0.len()..n {
            let (d, o) = self
                .transfer_delta(i)
                .and_then(|m| diagonal_means(&m))
                .unwrap_or((f64::NAN, f64::NAN));
            self.transfer_means.0.push(d);
            self.transfer_means.1.push(o);
        }
    }

    /// A TRL metric per optimizer step: (x, value), skipping steps that lack it; cached and
    /// extended as steps arrive.
    pub fn metric(&self, name: &str, axis: XAxis) -> Arc<MetricSeries> {
        self.metric_series(name, axis, None)
    }

    /// A TRL metric split by phase, one part per phase that recorded it (each phase's updates:
    /// those after its start step up to the next phase's start), so every phase can get its
    /// own scale.
    pub fn metric_by_phase(&self, name: &str, axis: XAxis) -> Vec<PhaseMetric> {
        let spans = phase_spans(&self.run);
        let mut out = Vec::new();
        for (k, s) in spans.iter().enumerate() {
            let e = self.metric_series(name, axis, Some(k));
            if !e.xs.is_empty() {
                out.push(PhaseMetric {
                    label: s.label(),
                    algo: s.algo,
                    xs: e.xs.clone(),
                    ys: e.ys.clone(),
                });
            }
        }
        out
    }

    fn metric_series(&self, name: &str, axis: XAxis, phase: Option<usize>) -> Arc<MetricSeries> {
        let mut memo = self.memo();
        let steps = &self.run.steps;
        // Updates of phase k: step in (start_k, start_{k+1}]; the first phase also takes any
        // before its start.
        let range = phase.map(|k| {
            let lo = match k {
                0 => None,
                _ => self.run.phases.get(k).map(|p| p.step),
            };
            let hi = self.run.phases.get(k + 1).map(|p| p.step);
            (lo, hi)
        });
        let slot = memo
            .metrics
            .entry((name.to_string(), axis, phase))
            .or_default();
        if slot.scanned == steps.len() {
            return slot.clone();
        }
        let e = Arc::make_mut(slot);
        for s in &steps[e.scanned.min(steps.len())..] {
            if let Some((lo, hi)) = range
                && (lo.is_some_and(|lo| s.step <= lo) || hi.is_some_and(|hi| s.step > hi))
            {
                continue;
            }
            if let Some(&v) = s.metrics.get(name) {
                e.xs.push(match axis {
                    XAxis::Step => s.step as f64,
                    XAxis::Examples => s.examples as f64,
                    XAxis::Epoch => s.epoch,
                });
                e.ys.push(v);
            }
        }
        e.scanned = steps.len();
        slot.clone()
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

/// [`decimate`] of each stretch of finite points: a non-finite y (a diverged evaluation, a NaN
/// loss) ends a stretch, so one line per stretch leaves a gap there instead of bridging it. The
/// buckets are shared among the stretches by their number of points (at least 16 each).
pub fn decimate_segments(xs: &[f64], ys: &[f64], buckets: usize) -> Vec<Vec<[f64; 2]>> {
    let n = xs.len().min(ys.len());
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !(xs[i].is_finite() && ys[i].is_finite()) {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && xs[i].is_finite() && ys[i].is_finite() {
            i += 1;
        }
        let b = (buckets * (i - start)).div_ceil(n.max(1)).max(16);
        out.push(decimate(&xs[start..i], &ys[start..i], b));
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

    /// The accumulated influence is the running sum, per family, of each record's mean
    /// predicted and actual change over the observed probes; folding records in as they arrive
    /// gives what a fresh store computes; the fit up to a record pairs every observed value.
    #[test]
    fn influence_accumulates_incrementally_and_fits_up_to_a_record() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_runs/dpo_offpolicy.jsonl.gz");
        let run = read_run(&path).unwrap();
        let n = run.influence.len();
        assert!(n >= 3, "{n} influence records");
        let fresh = RunStore::from_run("a".into(), None, run.clone())
            .influence_accumulated()
            .clone();
        // by hand
        for (f, acc) in &fresh {
            let (mut sp, mut sa) = (0.0, 0.0);
            for (k, r) in run.influence.iter().enumerate() {
                let idx: Vec<usize> = (0..r.observed.len())
                    .filter(|&i| r.observed[i].family == *f)
                    .collect();
                let mean = |v: &[f64]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
                sp += mean(&r.predicted);
                sa += mean(&r.actual);
                assert_eq!(acc.steps[k], r.step as f64);
                assert!((acc.predicted[k] - sp).abs() < 1e-9 && (acc.actual[k] - sa).abs() < 1e-9);
            }
        }
        // live: the first record, then the rest
        let mut head = run.clone();
        head.influence.truncate(1);
        let mut live = RunStore::from_run("b".into(), None, head);
        assert_eq!(
            live.influence_accumulated()
                .values()
                .next()
                .unwrap()
                .steps
                .len(),
            1
        );
        for r in &run.influence[1..] {
            live.apply(Event::Influence(Box::new(r.clone())));
        }
        assert_eq!(live.influence_accumulated(), &fresh);
        // the fit over the first two records
        let fit = live.influence_fit(2);
        let (p, a): (Vec<f64>, Vec<f64>) = run.influence[..2]
            .iter()
            .flat_map(|r| r.predicted.iter().copied().zip(r.actual.iter().copied()))
            .unzip();
        assert_eq!(fit.points, p.len());
        assert_eq!(fit.r, crate::stats::pearson(&p, &a));
        assert_eq!(fit.by_family.values().map(Vec::len).sum::<usize>(), p.len());
        let (lo, hi) = fit.range.unwrap();
        assert!(p.iter().chain(&a).all(|&x| lo <= x && x <= hi));
    }

    #[test]
    fn non_finite_points_split_a_line_into_segments() {
        let xs: Vec<f64> = (0..10).map(f64::from).collect();
        let mut ys: Vec<f64> = xs.iter().map(|x| x * 2.0).collect();
        ys[3] = f64::NAN;
        ys[4] = f64::NEG_INFINITY;
        ys[9] = f64::INFINITY;
        let seg = decimate_segments(&xs, &ys, 100);
        assert_eq!(
            seg,
            vec![
                vec![[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]],
                vec![[5.0, 10.0], [6.0, 12.0], [7.0, 14.0], [8.0, 16.0]],
            ]
        );
        assert!(decimate_segments(&xs, &[f64::NAN; 10], 100).is_empty());
        // all finite: one segment, the same as decimate
        let ys: Vec<f64> = xs.iter().map(|x| x.sin()).collect();
        assert_eq!(decimate_segments(&xs, &ys, 2), vec![decimate(&xs, &ys, 16)]);
    }

    use super::*;

    /// A live run's divergence is found as its records arrive, by a non-finite loss or a
    /// non-finite evaluation mean, whichever step is earlier.
    #[test]
    fn live_divergence_follows_the_records() {
        let spec = crate::synth::SynthSpec {
            steps: 6,
            eval_every: 2,
            probes: 2,
            tokens: 2,
            top_k: 1,
            vocab: 8,
        };
        let mut evs = crate::synth::events(spec, 4).unwrap().into_iter();
        let Some(Event::Header(h)) = evs.next() else {
            panic!("header first")
        };
        let mut store = RunStore::live("live".into(), None, *h);
        let mut want = None;
        for mut ev in evs {
            match &mut ev {
                Event::Eval(e) if e.step >= 4 => {
                    e.logps.values_mut().for_each(|v| v[0] = f64::INFINITY);
                }
                Event::Step(s) if s.step == 5 => {
                    s.metrics.insert("loss".into(), f64::NAN);
                }
                _ => {}
            }
            let step = match &ev {
                Event::Eval(e) if e.step >= 4 => Some(e.step),
                Event::Step(s) if s.step == 5 => Some(5),
                _ => None,
            };
            store.apply(ev);
            want = crate::run::reader::min_step(want, step);
            assert_eq!(store.diverged_at_step(), want);
            assert_eq!(store.run.diverged_at_step(), want);
        }
        assert_eq!(want, Some(4));
    }

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
        let mut evs = crate::synth::events(
            crate::synth::SynthSpec {
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

    /// A synthetic two-phase run (sft for steps 1–10, then dpo), evaluated every 5 steps, with
    /// chosen log-prob of probe i at step s = 10·i + (i + 1)·s. Events in recording order: the
    /// boundary evaluation (step 10) closes sft, then the dpo phase record.
    fn two_phase_events() -> (RunHeader, Vec<Event>) {
        let evs = crate::synth::events(
            crate::synth::SynthSpec {
                steps: 20,
                eval_every: 5,
                probes: 3,
                tokens: 2,
                top_k: 1,
                vocab: 8,
            },
            3,
        )
        .unwrap();
        let mut it = evs.into_iter();
        let Some(Event::Header(mut h)) = it.next() else {
            panic!("no header")
        };
        h.phases = vec![
            crate::schema::event::PhasePlan {
                name: "sft".into(),
                algo: Algo::Sft,
                steps: 10,
            },
            crate::schema::event::PhasePlan {
                name: "dpo".into(),
                algo: Algo::Dpo,
                steps: 10,
            },
        ];
        let mut out = Vec::new();
        for mut ev in it {
            let step = match &mut ev {
                Event::Phase { name, algo, .. } => {
                    *name = "sft".into();
                    *algo = Algo::Sft;
                    None
                }
                Event::Step(s) => {
                    s.phase = if s.step <= 10 { "sft" } else { "dpo" }.into();
                    s.metrics.insert("loss".into(), s.step as f64);
                    None
                }
                Event::Eval(e) => {
                    e.phase = if e.step <= 10 { "sft" } else { "dpo" }.into();
                    let s = e.step as f64;
                    e.logps.insert(
                        Family::Chosen,
                        (0..3)
                            .map(|i| 10.0 * i as f64 + (i as f64 + 1.0) * s)
                            .collect(),
                    );
                    Some(e.step)
                }
                _ => None,
            };
            out.push(ev);
            if step == Some(10) {
                out.push(Event::Phase {
                    name: "dpo".into(),
                    algo: Algo::Dpo,
                    step: 10,
                    examples: 40,
                });
            }
        }
        (*h, out)
    }

    fn key(y: YMode) -> SeriesKey {
        SeriesKey {
            family: Family::Chosen,
            quantity: Quantity::LogProb,
            y,
            probe: None,
        }
    }

    #[test]
    fn phase_delta_rezeroes_each_phase_at_its_start() {
        let (h, evs) = two_phase_events();
        let mut st = RunStore::live("t".into(), None, h.clone());
        for ev in evs.clone() {
            st.apply(ev);
        }
        assert_eq!(YMode::default_for(&st.run.header), YMode::PhaseDelta);
        let spans = st.phase_spans();
        assert_eq!(spans.len(), 2);
        // Evaluations at steps 0, 5, 10 | 15, 20: the step-10 one closes sft and is dpo's start.
        assert_eq!((spans[0].evals.clone(), spans[0].start_eval), (0..3, None));
        assert_eq!(
            (spans[1].evals.clone(), spans[1].start_eval),
            (3..5, Some(2))
        );
        assert_eq!(spans[1].label(), "dpo");
        // Δ since t = 0: mean over probes of (i + 1)·s = 2s.
        assert_eq!(
            st.stats(key(YMode::Delta)).mean,
            vec![0.0, 10.0, 20.0, 30.0, 40.0]
        );
        // Δ since phase start: sft as above; dpo measured from step 10: 2(s − 10).
        let p = st.stats(key(YMode::PhaseDelta)).clone();
        assert_eq!(p.mean, vec![0.0, 10.0, 20.0, 10.0, 20.0]);
        // The band: per probe (i + 1)(s − 10) at s = 15 → 5, 10, 15.
        assert_eq!(
            (p.min[3], p.max[3], p.q1[3], p.q3[3]),
            (5.0, 15.0, 7.5, 12.5)
        );
        let a = st.stats(key(YMode::Absolute)).clone();
        assert_eq!(a.mean[4], 10.0 + 2.0 * 20.0);
        // Drawn in two pieces; dpo's starts at the boundary at exactly 0.
        let pieces = st.pieces(YMode::PhaseDelta);
        assert_eq!(pieces.len(), 2);
        let xs: Vec<f64> = (0..st.n_evals())
            .map(|i| st.eval_x(i, XAxis::Step))
            .collect();
        assert_eq!(
            piece_points(&pieces[0], &xs, &p.mean),
            (vec![0.0, 5.0, 10.0], vec![0.0, 10.0, 20.0])
        );
        assert_eq!(
            piece_points(&pieces[1], &xs, &p.mean),
            (vec![10.0, 15.0, 20.0], vec![0.0, 10.0, 20.0])
        );
        assert_eq!(st.pieces(YMode::Delta).len(), 1);
        // One probe's line follows the same baselines.
        let mut k1 = key(YMode::PhaseDelta);
        k1.probe = Some(1);
        assert_eq!(st.stats(k1).mean, vec![0.0, 10.0, 20.0, 10.0, 20.0]);
        // Phase boundaries with labels, on the step and examples axes.
        assert_eq!(
            st.phase_marks(XAxis::Step),
            vec![(0.0, "sft".to_string()), (10.0, "dpo".to_string())]
        );
        assert_eq!(st.phase_marks(XAxis::Examples)[1].0, 40.0);
        assert_eq!(st.x_range(XAxis::Step), Some((0.0, 20.0)));
        // The loss per phase: updates 1–10 and 11–20.
        let by = st.metric_by_phase("loss", XAxis::Step);
        assert_eq!(by.len(), 2);
        assert_eq!(by[0].xs, (1..=10).map(f64::from).collect::<Vec<_>>());
        assert_eq!(by[1].ys, (11..=20).map(f64::from).collect::<Vec<_>>());
        assert_eq!((by[0].algo, by[1].label.as_str()), (Algo::Sft, "dpo"));

        // Live: the default comes from the header, before any record; the run is one span
        // named after its first planned phase until phase records arrive.
        let mut live = RunStore::live("live".into(), None, h);
        assert_eq!(YMode::default_for(&live.run.header), YMode::PhaseDelta);
        assert_eq!(live.phase_spans()[0].label(), "sft");
        // The same numbers when statistics are read after every event (phase 1's cached
        // values stay valid when phase 2 begins).
        for ev in evs {
            live.apply(ev);
            live.stats(key(YMode::PhaseDelta));
            live.metric_by_phase("loss", XAxis::Step);
        }
        assert_eq!(live.stats(key(YMode::PhaseDelta)).mean, p.mean);
        assert_eq!(live.stats(key(YMode::PhaseDelta)).max, p.max);
        assert_eq!(live.metric_by_phase("loss", XAxis::Step), by);
    }

    #[test]
    fn phase_delta_of_a_single_phase_run_is_delta_since_t0() {
        let (h, evs) = two_phase_events();
        let mut st = RunStore::live("t".into(), None, h);
        // Without the dpo phase record: one phase.
        for ev in evs {
            if !matches!(&ev, Event::Phase { name, .. } if name == "dpo") {
                st.apply(ev);
            }
        }
        assert_eq!(st.phase_spans().len(), 1);
        let d = st.stats(key(YMode::Delta)).clone();
        assert_eq!(st.stats(key(YMode::PhaseDelta)), d);
        assert_eq!(st.phase_marks(XAxis::Step).len(), 1);
        // An evaluation at the boundary step tagged with the new phase opens it instead, and
        // that phase is measured from its own first evaluation.
        let (h, mut evs) = two_phase_events();
        for ev in evs.iter_mut() {
            if let Event::Eval(e) = ev
                && e.step == 10
            {
                e.phase = "dpo".into();
            }
        }
        let mut st = RunStore::live("t".into(), None, h);
        for ev in evs {
            st.apply(ev);
        }
        let spans = st.phase_spans();
        assert_eq!((spans[1].evals.clone(), spans[1].start_eval), (2..5, None));
        assert_eq!(
            st.stats(key(YMode::PhaseDelta)).mean,
            vec![0.0, 10.0, 0.0, 10.0, 20.0]
        );
    }

    #[test]
    fn diagonal_means_of_a_matrix() {
        let m = vec![
            vec![1.0, 2.0, 3.0],
            vec![4.0, 5.0, 6.0],
            vec![7.0, 8.0, 9.0],
        ];
        assert_eq!(diagonal_means(&m), Some((5.0, 30.0 / 6.0)));
        assert_eq!(diagonal_means(&[vec![1.0]]), None);
    }
}
