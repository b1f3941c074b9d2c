//! The training loop on its own thread. It loads the model and data, records the header, then
//! trains phase by phase, evaluating probes at t = 0, every `eval_every` examples, at every phase
//! boundary and at the end. Each [`Event`] is appended to the run file (when one is given) and
//! sent over a crossbeam channel; [`Command`]s (pause, resume, step once, stop) are obeyed
//! between updates. The CLI and the app both drive training through [`spawn`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Tensor;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use super::loss::{self, LossInputs, LossParams};
use super::onpolicy;
use super::optim::{self, Optimizer};
use crate::data::{self, ChatTemplate, Family, PreferenceRecord, ProbeSet};
use crate::model::Model;
use crate::model::TrainLogps;
use crate::probe::{Batch, Evaluation, ProbeRunner, Seq, logprob};
use crate::run::Writer;
use crate::schema::config::{Algo, InfluenceTarget, TrainConfig};
use crate::schema::event::{
    Conventions, DataInfo, EndReason, EvalRecord, Event, FORMAT, InfluenceRecord, ModelInfo,
    Observed, PhasePlan, ProbeInfo, RunHeader, StepRecord, VERSION,
};

mod batched;
pub use batched::InfluenceBench;

/// Instructions to a running trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    /// While paused: apply exactly one update, then stay paused.
    Step,
    Stop,
}

/// A trainer running on its own thread.
pub struct TrainerHandle {
    pub events: Receiver<Event>,
    pub commands: Sender<Command>,
    join: std::thread::JoinHandle<Result<()>>,
}

impl TrainerHandle {
    /// Waits for the thread; its error (bad input, NaN loss, …) comes back here.
    pub fn join(self) -> Result<()> {
        self.join
            .join()
            .map_err(|_| anyhow!("the trainer thread panicked"))?
    }
}

/// Starts training `cfg` on a new thread; events are also appended to `out` when given.
pub fn spawn(cfg: TrainConfig, out: Option<PathBuf>) -> TrainerHandle {
    let (etx, erx) = crossbeam_channel::unbounded();
    let (ctx, crx) = crossbeam_channel::unbounded();
    let join = std::thread::Builder::new()
        .name("ldviz-trainer".into())
        .spawn(move || {
            crate::perf::init_thread();
            let session = Session::prepare(&cfg)?;
            session.run(out.as_deref(), &etx, &crx)
        });
    let join = match join {
        Ok(j) => j,
        Err(e) => {
            let msg = format!("cannot start the trainer thread: {e}");
            std::thread::spawn(move || Err(anyhow!(msg)))
        }
    };
    TrainerHandle {
        events: erx,
        commands: ctx,
        join,
    }
}

/// A training pair, tokenized.
struct Pair {
    index: usize,
    chosen: Seq,
    rejected: Seq,
}

/// Everything loaded and tokenized, ready to train.
pub struct Session {
    pub cfg: TrainConfig,
    pub model: Model,
    pub probe_set: ProbeSet,
    pub header: RunHeader,
    pairs: Vec<Pair>,
    /// Scores the probe set (and the transfer matrix) at each evaluation.
    pub runner: ProbeRunner,
}

/// Resolves the model argument ("default" = the embedded default model).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    if arg == "default" {
        return crate::assets::default_model_dir();
    }
    Ok(PathBuf::from(arg))
}

/// Resolves the data argument ("default" = the embedded demo dataset).
pub fn resolve_data(arg: &str) -> Result<PathBuf> {
    if arg == "default" {
        return crate::assets::default_data_file();
    }
    Ok(PathBuf::from(arg))
}

/// Loads the records of the training file (and test file, or the held-out fraction).
pub fn load_records(
    cfg: &TrainConfig,
    model_dir: &Path,
) -> Result<(data::Dataset, Vec<PreferenceRecord>, Vec<PreferenceRecord>)> {
    let chat = ChatTemplate::from_tokenizer_config(&model_dir.join("tokenizer_config.json"))?;
    let ds = data::load_dataset(&resolve_data(&cfg.data)?, cfg.format, chat.as_ref())?;
    let (train, test) = match &cfg.test_data {
        Some(t) => {
            let tds = data::load_dataset(Path::new(t), cfg.format, chat.as_ref())?;
            (ds.records.clone(), tds.records)
        }
        None => data::split_test(ds.records.clone(), cfg.test_fraction)?,
    };
    Ok((ds, train, test))
}

/// The data side of a run, before any weights are loaded: the dataset, its training and test
/// records and the probe set. `ldviz train` (through [`Session::prepare`]) and `ldviz probes`
/// both make it here, so the probe file holds exactly the probes a run evaluates.
pub struct RunData {
    pub dataset: data::Dataset,
    pub train: Vec<PreferenceRecord>,
    pub test: Vec<PreferenceRecord>,
    pub probe_set: ProbeSet,
}

impl RunData {
    /// Loads the data of `cfg`; `model_dir` is read only for its chat template (conversational
    /// data is rendered through it).
    pub fn load(cfg: &TrainConfig, model_dir: &Path) -> Result<RunData> {
        let (dataset, train, test) = load_records(cfg, model_dir)?;
        // the probe records are the data file's training records: name the file
        let probe_set = data::build_probe_set(&train, &test, cfg.probes, cfg.seed)
            .with_context(|| dataset.path.display().to_string())?;
        Ok(RunData {
            dataset,
            train,
            test,
            probe_set,
        })
    }

    /// The header's `data` entry.
    pub fn info(&self, cfg: &TrainConfig) -> DataInfo {
        DataInfo {
            path: self.dataset.path.display().to_string(),
            format: self.dataset.format,
            fingerprint: self.dataset.fingerprint.clone(),
            n_records: self.dataset.records.len(),
            n_train: self.train.len(),
            n_test: self.test.len(),
            test_path: cfg.test_data.clone(),
        }
    }

    /// The probes as a header lists them, with the token ids `tokens(position)` gives (an empty
    /// map where the token ids are not known).
    pub fn probe_infos(
        &self,
        mut tokens: impl FnMut(usize) -> BTreeMap<Family, Vec<u32>>,
    ) -> Vec<ProbeInfo> {
        self.probe_set
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| ProbeInfo {
                index: p.index,
                prompt: p.prompt.clone(),
                responses: p.responses.clone(),
                tokens: tokens(i),
            })
            .collect()
    }

    /// The run header of `cfg` on this data: every training record is an example of an epoch.
    pub fn header(
        &self,
        cfg: &TrainConfig,
        model: ModelInfo,
        probes: Vec<ProbeInfo>,
        phases: Vec<PhasePlan>,
    ) -> RunHeader {
        RunHeader {
            format: FORMAT.to_string(),
            version: VERSION,
            ldviz_version: env!("CARGO_PKG_VERSION").to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config: cfg.clone(),
            conventions: Conventions::default(),
            model,
            data: self.info(cfg),
            families: self.probe_set.families.clone(),
            probes,
            phases,
            batch_size: cfg.batch_size,
            examples_per_epoch: self.train.len(),
        }
    }
}

impl Session {
    pub fn prepare(cfg: &TrainConfig) -> Result<Session> {
        cfg.validate()?;
        let model_dir = resolve_model(&cfg.model)?;
        let device = crate::device::open(cfg.device, cfg.precision)?;
        let mut model = Model::load(&model_dir, &device)?;
        model.set_precision(cfg.precision);
        let rd = RunData::load(cfg, &model_dir)?;
        let ds = &rd.dataset;
        let lim = cfg.lengths;
        let pairs = rd
            .train
            .iter()
            .map(|r| {
                Ok(Pair {
                    index: r.index,
                    chosen: Seq::encode(&model.tok, &r.prompt, &r.chosen, lim)
                        .with_context(|| format!("{}:{}: chosen", ds.path.display(), r.line))?,
                    rejected: Seq::encode(&model.tok, &r.prompt, &r.rejected, lim)
                        .with_context(|| format!("{}:{}: rejected", ds.path.display(), r.line))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for p in &pairs {
            if p.chosen.prompt.is_empty() {
                bail!(
                    "{}: record {} has a prompt that tokenizes to nothing",
                    ds.path.display(),
                    p.index
                );
            }
        }
        let runner = ProbeRunner::new(&model, &rd.probe_set, lim, cfg.top_k)?.with_transfer(
            &model,
            &rd.probe_set,
            lim,
            cfg.transfer_prompts,
        )?;
        let phases = cfg
            .phases
            .iter()
            .map(|p| PhasePlan {
                name: p.name.clone(),
                algo: p.algo,
                steps: p.duration.steps(pairs.len(), cfg.batch_size),
            })
            .collect();
        let probes = rd.probe_infos(|i| {
            runner.probes.get(i).map_or_else(BTreeMap::new, |tp| {
                tp.seqs
                    .iter()
                    .filter(|(f, _)| matches!(f, Family::Chosen | Family::Rejected))
                    .map(|(f, s)| (*f, s.response.clone()))
                    .collect()
            })
        });
        let model_info = ModelInfo {
            path: model_dir.display().to_string(),
            arch: model.arch().model_type().to_string(),
            fingerprint: model.fingerprint.clone(),
            n_params: model.n_params(),
            vocab_size: model.vocab_size(),
            eos_id: model.eos_id(),
        };
        let header = rd.header(cfg, model_info, probes, phases);
        Ok(Session {
            cfg: cfg.clone(),
            model,
            probe_set: rd.probe_set,
            header,
            pairs,
            runner,
        })
    }

    /// Runs all phases, sending events (and appending them to `out`).
    pub fn run(self, out: Option<&Path>, tx: &Sender<Event>, rx: &Receiver<Command>) -> Result<()> {
        let mut sink = Sink {
            writer: match out {
                Some(p) => Some(Writer::create(p)?),
                None => None,
            },
            tx,
            seen: BTreeSet::new(),
        };
        sink.emit(Event::Header(Box::new(self.header.clone())))?;
        let mut vocab = BTreeMap::new();
        for p in &self.header.probes {
            for ids in p.tokens.values() {
                for &id in ids {
                    if sink.seen.insert(id) {
                        vocab.insert(id, self.model.tok.token_text(id));
                    }
                }
            }
        }
        sink.emit(Event::Vocab {
            tokens: vocab.into_iter().collect(),
        })?;
        let mut state = LoopState {
            step: 0,
            examples: 0,
            last_eval: None,
            last_transfer: None,
            paused: false,
        };
        let mut result = self.train_phases(&mut sink, rx, &mut state);
        if let (Ok(true), Some(dir)) = (&result, &self.cfg.save_model)
            && let Err(e) = self.model.save(Path::new(dir))
        {
            result = Err(e);
        }
        let end = match &result {
            Ok(true) => Event::End {
                reason: EndReason::Completed,
                step: state.step,
                message: None,
            },
            Ok(false) => Event::End {
                reason: EndReason::Stopped,
                step: state.step,
                message: None,
            },
            Err(e) => Event::End {
                reason: EndReason::Error,
                step: state.step,
                message: Some(format!("{e:#}")),
            },
        };
        let written = sink.emit(end);
        finish(result, written)
    }

    fn epoch(&self, examples: usize) -> f64 {
        examples as f64 / self.pairs.len().max(1) as f64
    }

    /// Scores the probes; the transfer matrix too when its interval has passed or at a phase
    /// boundary (`boundary`).
    fn evaluate(
        &self,
        sink: &mut Sink,
        st: &mut LoopState,
        phase: &str,
        boundary: bool,
    ) -> Result<()> {
        if st.last_eval == Some(st.step) {
            return Ok(());
        }
        let every = match self.cfg.transfer_every {
            0 => 4 * self.cfg.eval_every,
            n => n,
        };
        let transfer = boundary || st.last_transfer.is_none_or(|l| st.examples >= l + every);
        let mut ev: Evaluation = self.runner.evaluate(&self.model, transfer)?;
        if transfer && !ev.transfer.is_empty() {
            st.last_transfer = Some(st.examples);
        }
        let ev_transfer = std::mem::take(&mut ev.transfer);
        let mut vocab = BTreeMap::new();
        for t in &ev.traces {
            for id in t.argmax.ids.iter().chain(
                t.chosen
                    .top
                    .iter()
                    .chain(&t.rejected.top)
                    .flatten()
                    .map(|(i, _)| i),
            ) {
                if sink.seen.insert(*id) {
                    vocab.insert(*id, self.model.tok.token_text(*id));
                }
            }
        }
        if !vocab.is_empty() {
            sink.emit(Event::Vocab {
                tokens: vocab.into_iter().collect(),
            })?;
        }
        let logps = self.runner.families.iter().copied().zip(ev.logps).collect();
        let diag = self
            .runner
            .families
            .iter()
            .copied()
            .zip(ev.diag)
            .filter(|(_, d)| !d.is_empty())
            .collect();
        sink.emit(Event::Eval(Box::new(EvalRecord {
            step: st.step,
            examples: st.examples,
            epoch: self.epoch(st.examples),
            phase: phase.to_string(),
            logps,
            tokens: ev.traces.into(),
            diag,
            transfer: ev_transfer,
        })))?;
        st.last_eval = Some(st.step);
        Ok(())
    }

    /// Returns Ok(true) when every phase completed, Ok(false) when stopped.
    fn train_phases(
        &self,
        sink: &mut Sink,
        rx: &Receiver<Command>,
        st: &mut LoopState,
    ) -> Result<bool> {
        let b = self.cfg.batch_size;
        let n = self.pairs.len();
        if n == 0 {
            bail!("no training records");
        }
        let lp = self.loss_params();
        let mut order = Order::new(n, self.cfg.shuffle, self.cfg.seed);
        let influence_every = self.influence_every();
        let mut pending_influence: Option<InfluenceRecord> = None;
        for (pi, phase) in self.cfg.phases.iter().enumerate() {
            let steps = self.header.phases[pi].steps;
            sink.emit(Event::Phase {
                name: phase.name.clone(),
                algo: phase.algo,
                step: st.step,
                examples: st.examples,
            })?;
            self.evaluate(sink, st, &phase.name, true)?;
            let mut reference = if phase.algo.needs_reference() {
                Some(self.reference_logps()?)
            } else {
                None
            };
            let mut rejected: Vec<Seq> = self.pairs.iter().map(|p| p.rejected.clone()).collect();
            // On-policy: the frozen reference weights score the policy's samples, in the
            // policy's compute precision (as the chosen references were scored).
            let on_policy = phase.on_policy && !phase.algo.is_sft();
            let ref_model = if on_policy {
                Some(self.model.frozen_copy()?)
            } else {
                None
            };
            let steps_per_epoch = n.div_ceil(b);
            let mut opt = Optimizer::new(phase.optim.clone(), self.model.params.len());
            for s in 0..steps {
                if !self.obey(rx, sink, st)? {
                    self.evaluate(sink, st, &phase.name, true)?;
                    return Ok(false);
                }
                let t0 = Instant::now();
                let idx: Vec<usize> = (0..b).map(|_| order.next_index()).collect();
                if let Some(rm) = &ref_model {
                    // every record's at each epoch's start, or the batch's every K updates
                    let which: Option<(Vec<usize>, u64)> = match phase.resample_every {
                        None => (s % steps_per_epoch == 0)
                            .then(|| ((0..n).collect(), (s / steps_per_epoch) as u64)),
                        Some(k) => s
                            .is_multiple_of(k.max(1))
                            .then(|| (idx.clone(), (1u64 << 31) | s as u64)),
                    };
                    if let Some((which, round)) = which {
                        self.resample(
                            rm,
                            &mut rejected,
                            reference.as_mut(),
                            &which,
                            pi,
                            round,
                            sink,
                            st,
                            &phase.name,
                        )?;
                    }
                }
                let lr = phase.optim.lr_at(s);
                let due = influence_every > 0 && (st.step + 1).is_multiple_of(influence_every);
                let mut metrics = if due {
                    let (m, rec) = self.update_influenced(
                        phase,
                        &idx,
                        &rejected,
                        reference.as_deref(),
                        lp,
                        &mut opt,
                        lr,
                        st.step + 1,
                    )?;
                    pending_influence = Some(rec);
                    m
                } else {
                    self.update(
                        phase.algo,
                        &idx,
                        &rejected,
                        reference.as_deref(),
                        lp,
                        &mut opt,
                        lr,
                        st.step + 1,
                    )?
                };
                metrics.insert("learning_rate".to_string(), lr);
                let before = st.examples;
                st.step += 1;
                st.examples += b;
                sink.emit(Event::Step(StepRecord {
                    step: st.step,
                    examples: st.examples,
                    epoch: self.epoch(st.examples),
                    phase: phase.name.clone(),
                    batch: idx.iter().map(|&i| self.pairs[i].index).collect(),
                    metrics,
                    wall_ms: t0.elapsed().as_secs_f64() * 1e3,
                }))?;
                if let Some(rec) = pending_influence.take() {
                    sink.emit(Event::Influence(Box::new(rec)))?;
                }
                if st.examples / self.cfg.eval_every > before / self.cfg.eval_every {
                    self.evaluate(sink, st, &phase.name, false)?;
                }
            }
            self.evaluate(sink, st, &phase.name, true)?;
        }
        Ok(true)
    }

    /// Replaces the rejected responses of the records `which` (pair indices) by samples from
    /// the current policy, scores the samples under the frozen reference `rm`, and records the
    /// probes' samples. `round` (the epoch, or a step) seeds the sampling.
    #[allow(clippy::too_many_arguments)]
    fn resample(
        &self,
        rm: &Model,
        rejected: &mut [Seq],
        reference: Option<&mut Vec<(f64, f64)>>,
        which: &[usize],
        phase_index: usize,
        round: u64,
        sink: &mut Sink,
        st: &LoopState,
        phase: &str,
    ) -> Result<()> {
        let lim = self.cfg.lengths;
        let pairs: Vec<&Pair> = which.iter().filter_map(|&i| self.pairs.get(i)).collect();
        let prompts: Vec<Vec<u32>> = pairs.iter().map(|p| p.chosen.prompt.clone()).collect();
        let max_new: Vec<usize> = pairs
            .iter()
            .map(|p| {
                (p.chosen.response.len().max(p.rejected.response.len()) + 8)
                    .min(lim.max_total.saturating_sub(p.chosen.prompt.len()).max(1))
            })
            .collect();
        let seed = self.cfg.seed ^ 0x0A11_CE00 ^ ((phase_index as u64) << 32) ^ round;
        let mut rng = StdRng::seed_from_u64(seed);
        let samples = onpolicy::sample_responses(
            &self.model,
            &prompts,
            &max_new,
            self.cfg.sample_temperature,
            &mut rng,
            32,
        )?;
        let fresh: Vec<Seq> = prompts
            .into_iter()
            .zip(samples)
            .map(|(prompt, response)| Seq { prompt, response })
            .collect();
        if let Some(reference) = reference {
            let refs = logprob::score(rm, &fresh, 16)?;
            for (&i, v) in which.iter().zip(refs) {
                if let Some(r) = reference.get_mut(i) {
                    r.1 = v;
                }
            }
        }
        let probe_idx: BTreeSet<usize> = self.header.probes.iter().map(|p| p.index).collect();
        let mut shown = Vec::new();
        for ((&i, p), seq) in which.iter().zip(&pairs).zip(fresh) {
            if probe_idx.contains(&p.index) {
                shown.push((p.index, self.model.tok.decode(&seq.response)?));
            }
            if let Some(r) = rejected.get_mut(i) {
                *r = seq;
            }
        }
        if !shown.is_empty() {
            sink.emit(Event::Samples {
                step: st.step,
                phase: phase.to_string(),
                rejected: shown,
            })?;
        }
        Ok(())
    }

    /// Handles pending commands; blocks while paused. Returns false to stop.
    fn obey(&self, rx: &Receiver<Command>, sink: &mut Sink, st: &mut LoopState) -> Result<bool> {
        loop {
            let cmd = if st.paused {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(false),
                }
            } else {
                match rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(true),
                }
            };
            match cmd {
                Command::Stop => return Ok(false),
                Command::Pause => {
                    if !st.paused {
                        st.paused = true;
                        sink.emit(Event::State {
                            paused: true,
                            step: st.step,
                        })?;
                    }
                }
                Command::Resume => {
                    if st.paused {
                        st.paused = false;
                        sink.emit(Event::State {
                            paused: false,
                            step: st.step,
                        })?;
                    }
                }
                Command::Step => {
                    if st.paused {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// One optimizer update on the records `idx` (positions in the training list).
    #[allow(clippy::too_many_arguments)]
    /// The loss's parameters from the configuration.
    fn loss_params(&self) -> LossParams {
        LossParams {
            beta: self.cfg.beta,
            gamma: self.cfg.gamma,
            label_smoothing: self.cfg.label_smoothing,
        }
    }

    /// Every training record's (chosen, rejected) summed log-probs under the current weights:
    /// the frozen reference of a preference phase.
    fn reference_logps(&self) -> Result<Vec<(f64, f64)>> {
        let seqs: Vec<Seq> = self
            .pairs
            .iter()
            .flat_map(|p| [p.chosen.clone(), p.rejected.clone()])
            .collect();
        let s = logprob::score(&self.model, &seqs, 16)?;
        Ok(s.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    /// Updates between influence records (0 = off). The default, for models up to 50M
    /// parameters: every 20 updates where the batched pass computes the records (a record
    /// costs ~8 updates on the demo), every 100 where they come from flat gradients (~30).
    fn influence_every(&self) -> usize {
        match self.cfg.influence_every {
            Some(k) => k,
            None if self.model.n_params() <= 50_000_000 => {
                if crate::model::manual::applies_to(&self.model) {
                    20
                } else {
                    100
                }
            }
            None => 0,
        }
    }

    /// The observed responses of influence records: (probe position, family, sequence, y*).
    fn observed(&self) -> Vec<(Observed, &Seq, bool)> {
        let mut out = Vec::new();
        let n = self.cfg.influence_probes.min(self.runner.probes.len());
        for (p, tp) in self.runner.probes[..n].iter().enumerate() {
            for &f in &self.cfg.influence_families {
                let (want, argmax) = if f == Family::Argmax {
                    (Family::Chosen, true)
                } else {
                    (f, false)
                };
                if let Some((_, seq)) = tp.seqs.iter().find(|(g, _)| *g == want) {
                    out.push((
                        Observed {
                            probe: p,
                            family: f,
                        },
                        seq,
                        argmax,
                    ));
                }
            }
        }
        out
    }

    /// One update, plus its first-order influence record (src/train/influence.rs). The record
    /// is computed after the update from θ₀ (the weights before it), θ₁ (after) and the
    /// optimizer's state: by one batched pass where the hand-written pass applies
    /// ([`batched`]), else from flat per-example gradients ([`Session::influence_flat`], also
    /// the batched path's reference in the tests).
    #[allow(clippy::too_many_arguments)]
    fn update_influenced(
        &self,
        phase: &crate::schema::config::PhaseConfig,
        idx: &[usize],
        rejected: &[Seq],
        reference: Option<&[(f64, f64)]>,
        lp: LossParams,
        opt: &mut Optimizer,
        lr: f64,
        step: usize,
    ) -> Result<(BTreeMap<String, f64>, InfluenceRecord)> {
        let m = &self.model;
        let theta0 = m.snapshot()?;
        let metrics = self.update(phase.algo, idx, rejected, reference, lp, opt, lr, step)?;
        let t0 = Instant::now();
        let theta1 = m.snapshot()?;
        let job = batched::Job {
            algo: phase.algo,
            idx,
            rejected,
            reference,
            lp,
            step: batched::StepChange::new(&theta0, &theta1, &metrics, opt, lr)?,
            observed: self.observed(),
        };
        m.restore(&theta0)?;
        let parts = match self.influence_batched(&job) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => {
                m.restore(&theta0)?;
                self.influence_flat(&job)
            }
            Err(e) => Err(e),
        };
        // Always put the updated weights back, even when the influence computation failed.
        m.restore(&theta1)?;
        let parts = parts?;
        let rec = InfluenceRecord {
            step,
            phase: phase.name.clone(),
            lr,
            optimizer: phase.optim.kind,
            batch: idx.iter().map(|&i| self.pairs[i].index).collect(),
            observed: job.observed.iter().map(|(o, _, _)| *o).collect(),
            actual: parts.actual,
            predicted: parts.predicted,
            contributions: parts.contributions,
            cosine: parts.cosine,
            target: self.cfg.influence_target,
            wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        Ok((metrics, rec))
    }

    /// The influence record's numbers from flat per-example gradients (every weight's gradient
    /// concatenated, one graph backward per training example and per observed response), at
    /// the weights θ₀ the model holds on entry; leaves θ₁ in the model.
    fn influence_flat(&self, job: &batched::Job<'_>) -> Result<batched::Parts> {
        use super::influence::{flatten_grads, grad_of, multi_dot, norm, observed_logp};
        let m = &self.model;
        let vars = m.params.vars();
        let st = &job.step;
        // Per-example loss gradients ∇L_u and the cosines' ∇f_u at θ₀.
        let target = self.cfg.influence_target;
        let mut scaled = Vec::with_capacity(job.idx.len());
        let mut g_fu = Vec::with_capacity(job.idx.len());
        for &i in job.idx {
            let (l, _, tl) =
                self.batch_loss(job.algo, &[i], job.rejected, job.reference, job.lp)?;
            let g = flatten_grads(vars, &tl.param_grads(m, &l.backward()?)?)?;
            g_fu.push(match target {
                InfluenceTarget::Loss => g.iter().map(|x| -x).collect(),
                InfluenceTarget::Chosen => {
                    grad_of(m, &observed_logp(m, &self.pairs[i].chosen, false, true)?)?
                }
                InfluenceTarget::Rejected => {
                    grad_of(m, &observed_logp(m, &job.rejected[i], false, true)?)?
                }
            });
            // c ⊙ ∇L_u once
            scaled.push(match st.flat_scale() {
                Some(c) => g.iter().zip(c).map(|(g, c)| g * c).collect::<Vec<f64>>(),
                None => g,
            });
        }
        let delta = st.flat_delta();
        let fu_norms: Vec<f64> = g_fu.iter().map(|g| norm(g)).collect();
        let nb = job.idx.len();
        let mut parts = batched::Parts::default();
        for (_, seq, argmax) in &job.observed {
            let f = observed_logp(m, seq, *argmax, true)?;
            parts
                .f0
                .push(f.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?);
            let g = grad_of(m, &f)?;
            let mut targets: Vec<&[f64]> = vec![&delta, &g];
            targets.extend(scaled.iter().map(|v| v.as_slice()));
            targets.extend(g_fu.iter().map(|v| v.as_slice()));
            let d = multi_dot(&g, &targets);
            parts.predicted.push(d[0]);
            let ng = d[1].max(0.0).sqrt();
            parts
                .contributions
                .push(d[2..2 + nb].iter().map(|x| st.share(nb) * x).collect());
            parts.cosine.push(
                d[2 + nb..]
                    .iter()
                    .zip(&fu_norms)
                    .map(|(x, nu)| x / (ng * nu).max(1e-30))
                    .collect(),
            );
        }
        st.restore_after(m)?;
        for ((_, seq, argmax), f0) in job.observed.iter().zip(&parts.f0) {
            let f1 = observed_logp(m, seq, *argmax, false)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            parts.actual.push(f1 - f0);
        }
        Ok(parts)
    }

    /// The batch loss (with a graph) and its TRL metrics, for the records `idx`, with the
    /// policy log-probs it was built on (their `param_grads` gives the weights' gradients).
    fn batch_loss(
        &self,
        algo: Algo,
        idx: &[usize],
        rejected: &[Seq],
        reference: Option<&[(f64, f64)]>,
        lp: LossParams,
    ) -> Result<(Tensor, BTreeMap<String, f64>, TrainLogps)> {
        let dev = &self.model.device;
        let with_rejected = algo != Algo::Sft;
        let mut seqs: Vec<&Seq> = idx.iter().map(|&i| &self.pairs[i].chosen).collect();
        if with_rejected {
            seqs.extend(idx.iter().map(|&i| &rejected[i]));
        }
        let batch = Batch::new(&seqs, dev)?;
        let tl = self
            .model
            .train_logps_masked(&batch.ids, &batch.targets, &batch.mask)?;
        let summed = logprob::masked_sums(tl.logps(), &batch)?;
        let (loss, metrics) =
            self.loss_on(algo, idx, reference, lp, &summed, &batch.response_lens())?;
        Ok((loss, metrics, tl))
    }

    /// The loss of the records `idx` from their summed response log-probs `summed` ([B] chosen,
    /// then [B] rejected unless SFT) and response lengths (same order), with its TRL metrics.
    fn loss_on(
        &self,
        algo: Algo,
        idx: &[usize],
        reference: Option<&[(f64, f64)]>,
        lp: LossParams,
        summed: &Tensor,
        lens: &[usize],
    ) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let b = idx.len();
        let dev = summed.device();
        let dt = summed.dtype();
        let with_rejected = algo != Algo::Sft;
        let vec =
            |v: Vec<f32>| -> Result<Tensor> { Ok(Tensor::from_vec(v, b, dev)?.to_dtype(dt)?) };
        let lens: Vec<f32> = lens.iter().map(|&l| l as f32).collect();
        if lens.len() < if with_rejected { 2 * b } else { b } {
            bail!("loss of {b} records: {} response lengths", lens.len());
        }
        let pc = summed.narrow(0, 0, b)?;
        let lc = vec(lens[..b].to_vec())?;
        let (pr, lrj) = if with_rejected {
            (
                Some(summed.narrow(0, b, b)?),
                Some(vec(lens[b..2 * b].to_vec())?),
            )
        } else {
            (None, None)
        };
        let (rc, rr) = match reference {
            Some(r) => {
                let c: Vec<f32> = idx.iter().map(|&i| r[i].0 as f32).collect();
                let j: Vec<f32> = idx.iter().map(|&i| r[i].1 as f32).collect();
                (Some(vec(c)?), Some(vec(j)?))
            }
            None => (None, None),
        };
        loss::compute(
            algo,
            lp,
            &LossInputs {
                policy_chosen: &pc,
                policy_rejected: pr.as_ref(),
                ref_chosen: rc.as_ref(),
                ref_rejected: rr.as_ref(),
                len_chosen: &lc,
                len_rejected: lrj.as_ref(),
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        algo: Algo,
        idx: &[usize],
        rejected: &[Seq],
        reference: Option<&[(f64, f64)]>,
        lp: LossParams,
        opt: &mut Optimizer,
        lr: f64,
        step: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let (loss, mut metrics, tl) = self.batch_loss(algo, idx, rejected, reference, lp)?;
        let lv = metrics.get("loss").copied().unwrap_or(f64::NAN);
        if !lv.is_finite() {
            bail!(
                "the loss became {lv} at step {step} (learning rate too high?); training stopped, every earlier record is kept"
            );
        }
        let grads = loss.backward()?;
        let vars = self.model.params.vars();
        let mut g = tl.param_grads(&self.model, &grads)?;
        drop(grads);
        let norm = optim::grad_norm(&g)?;
        if !norm.is_finite() {
            bail!(
                "the gradient norm became {norm} at step {step}; training stopped, every earlier record is kept"
            );
        }
        metrics.insert("grad_norm".to_string(), norm);
        if let Some(max) = opt.config().max_grad_norm {
            optim::clip(&mut g, norm, max)?;
        }
        opt.step(vars, &g, lr)?;
        Ok(metrics)
    }
}

struct LoopState {
    step: usize,
    examples: usize,
    last_eval: Option<usize>,
    /// Examples seen at the last transfer-matrix evaluation.
    last_transfer: Option<usize>,
    paused: bool,
}

/// The outcome of a run once its end record was emitted (`written`): a training error is never
/// replaced by a failure to write the end record; the write failure is added to its message.
fn finish(result: Result<bool>, written: Result<()>) -> Result<()> {
    match (result, written) {
        (Ok(_), w) => w,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(w)) => Err(anyhow!(
            "{e:#} (the end record could not be written either: {w:#})"
        )),
    }
}

/// Where events go: the run file (if any) and the channel.
struct Sink<'a> {
    writer: Option<Writer>,
    tx: &'a Sender<Event>,
    seen: BTreeSet<u32>,
}

impl Sink<'_> {
    fn emit(&mut self, ev: Event) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.write(&ev)?;
        }
        // A receiver that went away (closed window) must not stop the recording.
        let _ = self.tx.send(ev);
        Ok(())
    }
}

/// The order training records are visited in: file order wrapping (no shuffle), or a fresh
/// seeded permutation each epoch.
pub struct Order {
    n: usize,
    shuffle: bool,
    rng: StdRng,
    perm: Vec<usize>,
    pos: usize,
}

impl Order {
    pub fn new(n: usize, shuffle: bool, seed: u64) -> Order {
        Order {
            n,
            shuffle,
            rng: StdRng::seed_from_u64(seed),
            perm: Vec::new(),
            pos: 0,
        }
    }

    pub fn next_index(&mut self) -> usize {
        let k = self.pos % self.n;
        if k == 0 {
            self.perm = (0..self.n).collect();
            if self.shuffle {
                self.perm.shuffle(&mut self.rng);
            }
        }
        self.pos += 1;
        self.perm[k]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe family some probe records give and others lack is an error naming the data file
    /// and the line (the fuzzer's probe-set errors named only the line).
    #[test]
    fn probe_set_errors_name_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("half_families.jsonl");
        std::fs::write(
            &data,
            concat!(
                r#"{"prompt":"Q1","chosen":" a","rejected":" b","chosen_initial":" c"}"#,
                "\n",
                r#"{"prompt":"Q2","chosen":" d","rejected":" e"}"#,
                "\n"
            ),
        )
        .unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let opts = crate::train::TrainOptions {
            model: fixtures.join("llama").display().to_string(),
            data: data.display().to_string(),
            test_fraction: Some(0.0),
            probes: "all".to_string(),
            steps: Some(1),
            ..crate::train::TrainOptions::default()
        };
        let cfg = opts.to_config().unwrap();
        let err = format!("{:#}", Session::prepare(&cfg).err().unwrap());
        assert!(
            err.starts_with(&format!("{}: line 2: ", data.display()))
                && err.contains("lacks \"chosen_initial\""),
            "{err}"
        );
    }

    #[test]
    fn no_shuffle_order_wraps_in_file_order() {
        let mut o = Order::new(10, false, 0);
        let got: Vec<usize> = (0..12).map(|_| o.next_index()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn shuffled_order_is_a_permutation_per_epoch_and_seeded() {
        let mut a = Order::new(7, true, 3);
        let mut b = Order::new(7, true, 3);
        let ea: Vec<usize> = (0..14).map(|_| a.next_index()).collect();
        let eb: Vec<usize> = (0..14).map(|_| b.next_index()).collect();
        assert_eq!(ea, eb);
        let mut first = ea[..7].to_vec();
        first.sort();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
        assert_ne!(ea[..7], ea[7..]);
    }
}
