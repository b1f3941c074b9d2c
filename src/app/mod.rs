//! The desktop app (feature `gui`): a thin eframe shell around [`LdvizApp`], whose state is one
//! struct per view (setup/train panel, curves and TRL metrics, token inspector, influence,
//! transfer, squeeze playground) plus the timeline. The app does no math: it feeds the engine's
//! [`Event`]s into [`RunStore`]s, and every view implements [`View`]: each frame it draws from a
//! read-only [`ViewCtx`] (the runs, the active run, the cursor) and its own state, and asks for
//! every other change (cursor, active run, overlay, opening, closing, training, dialogs) by
//! queueing an [`Action`], applied by the shell at the end of the frame. A run file opened
//! without an `end` record is followed: the shell reads its new records every
//! [`FOLLOW_EVERY`] (a [`Follower`]) into its store, as it feeds a live trainer's. File dialogs
//! run on their own threads and report back over a channel; every dialog action is also reachable through a path window (dialogs.rs: opened
//! from the top bar, and by itself when no native dialog can open), a path field or a CLI
//! argument.

pub mod bench;
mod curves;
mod dialogs;
mod export;
pub mod influence;
pub mod playground;
mod setup;
mod timeline;
mod tokens;
pub mod transfer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow};
use crossbeam_channel::{Receiver, Sender};

use crate::run::{Event, Follower, RunStore, XAxis};
use crate::train::{Command, TrainerHandle};

pub use curves::CurvesView;
pub use dialogs::{NO_DIALOG_WITHIN, PathWindow, dialog_outcome, unavailable_message};
pub use export::Target as ExportTarget;
pub use setup::SetupView;
pub use timeline::{Mode, Timeline};
pub use tokens::{TokenRow, TokensView, VALLEY_LOGP, mean_top1, token_row};
pub use transfer::TransferView;

/// What the command line asks the app to do at launch.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub runs: Vec<PathBuf>,
    pub model: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub train: bool,
    pub screenshot: Option<PathBuf>,
    pub after_frames: u64,
    pub after_evals: usize,
    pub tab: Option<String>,
    /// Overlay every opened run on this family.
    pub overlay: Option<String>,
}

/// The central view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tab {
    Curves,
    Tokens,
    Metrics,
    Influence,
    Transfer,
    Playground,
}

/// A file chosen in a native dialog (or typed in a path window), and what it is for.
#[derive(Clone, Debug, PartialEq)]
pub enum Picked {
    Run(Vec<PathBuf>),
    Data(PathBuf),
    Model(PathBuf),
    ExportPng(PathBuf),
    ExportSvg(PathBuf),
    ExportCsv(PathBuf),
    /// No native dialog of this kind could open (see [`NO_DIALOG_WITHIN`]).
    Unavailable(DialogKind),
}

/// Changes to shared state requested during a frame, applied after it.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    OpenRun(PathBuf),
    CloseRun(usize),
    StartTraining,
    Trainer(Command),
    Picked(Picked),
    Export(export::Target, PathBuf),
    /// Open (or raise) the path window of this kind.
    PathWindow(DialogKind),
    /// Open the native file dialog of this kind (or its path window where there is none).
    Dialog(DialogKind),
    /// Show this run (an index into the runs) and follow its end.
    Activate(usize),
    /// Overlay this run in the curves (true) or take it out (false).
    Overlay(usize, bool),
    /// Move the cursor to this evaluation of the active run and pause there.
    Seek(usize),
}

/// What a view reads during a frame. Views never change anything but their own state; every
/// other change goes through [`ViewCtx::act`].
pub struct ViewCtx<'a> {
    pub runs: &'a [RunStore],
    /// The run the views show (an index into `runs`; 0 when none is open).
    pub active: usize,
    pub timeline: &'a Timeline,
    /// The x axis of the curves (the transfer view's line uses it too).
    pub x: XAxis,
    /// Runs overlaid in the curves.
    pub overlay: &'a [usize],
    pub live: Option<&'a Live>,
    /// Run files being followed as another process writes them.
    pub followed: &'a [Follower],
    pub sample_runs: &'a [PathBuf],
    pub recent_models: &'a [String],
    pub recent_data: &'a [String],
    actions: RefCell<Vec<Action>>,
}

impl ViewCtx<'_> {
    /// The active run, if any.
    pub fn store(&self) -> Option<&RunStore> {
        self.runs.get(self.active)
    }

    /// Queues a change, applied at the end of the frame.
    pub fn act(&self, a: Action) {
        self.actions.borrow_mut().push(a);
    }

    /// Whether run `i` is a file being followed as it grows.
    pub fn is_followed(&self, i: usize) -> bool {
        self.runs
            .get(i)
            .and_then(|r| r.path.as_deref())
            .is_some_and(|p| self.followed.iter().any(|f| f.path() == p))
    }

    /// The queued changes.
    fn into_actions(self) -> Vec<Action> {
        self.actions.into_inner()
    }
}

/// One view of the app: draws itself from the frame's [`ViewCtx`] and its own state.
pub trait View {
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui);
}

/// The frame's [`ViewCtx`] over the app's fields (a macro, so that the views' own fields stay
/// free to borrow mutably beside it).
macro_rules! view_ctx {
    ($app:expr) => {
        ViewCtx {
            runs: &$app.runs,
            active: $app.active,
            timeline: &$app.timeline,
            x: $app.curves.settings.x,
            overlay: &$app.overlay,
            live: $app.live.as_ref(),
            followed: &$app.followed,
            sample_runs: &$app.sample_runs,
            recent_models: &$app.persisted.recent_models,
            recent_data: &$app.persisted.recent_data,
            actions: RefCell::new(Vec::new()),
        }
    };
}

/// Settings kept between launches.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    pub recent_runs: Vec<PathBuf>,
    pub recent_models: Vec<String>,
    pub recent_data: Vec<String>,
    pub setup: Option<crate::train::TrainOptions>,
    pub out_dir: Option<String>,
    pub curves: Option<curves::CurveSettings>,
    pub tab: Option<Tab>,
}

pub const STORAGE_KEY: &str = "ldviz";

/// How often a followed run file is read for new records.
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A trainer the app started.
pub struct Live {
    pub handle: Option<TrainerHandle>,
    /// Index of its store in `runs` (once the header arrived).
    pub run: Option<usize>,
    pub out: PathBuf,
    pub started: Instant,
    pub total_steps: usize,
    pub finished: bool,
    /// When the first optimizer step arrived, and the examples seen then (for rate and ETA).
    pub first_step: Option<(Instant, usize, usize)>,
}

/// The whole app state.
pub struct LdvizApp {
    pub runs: Vec<RunStore>,
    /// The run the views show.
    pub active: usize,
    pub live: Option<Live>,
    /// Run files another process is still writing (opened without an `end` record), read every
    /// [`FOLLOW_EVERY`]; each stops at its `end` record or at an error.
    pub followed: Vec<Follower>,
    last_follow: Instant,
    pub setup: SetupView,
    pub curves: CurvesView,
    /// Runs (indices into `runs`) overlaid in the curves for one family.
    pub overlay: Vec<usize>,
    pub timeline: Timeline,
    pub tokens: TokensView,
    pub playground: playground::Playground,
    pub influence: influence::InfluenceView,
    pub transfer: TransferView,
    pub tab: Tab,
    /// Visible error messages (newest last); each can be dismissed.
    pub errors: Vec<String>,
    /// One-line confirmations (exports written, runs opened) and notes (no native dialog).
    pub notice: Option<String>,
    /// Open path windows, at most one of each sort (dialogs.rs).
    pub path_windows: Vec<PathWindow>,
    pub persisted: Persisted,
    pub sample_runs: Vec<PathBuf>,
    actions: Vec<Action>,
    picked_tx: Sender<Picked>,
    picked_rx: Receiver<Picked>,
    /// Screenshot-and-quit (hidden CLI option used to look at the app under Xvfb).
    screenshot: Option<(PathBuf, u64, usize)>,
    frames: u64,
    screenshot_requested: bool,
    shot: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<egui::ColorImage>>>>,
}

/// The sample runs embedded in the binary (listed in the app, opened on click); an error when
/// they cannot be written out (see `assets::embedded_dir`).
pub fn sample_runs() -> Result<Vec<PathBuf>> {
    crate::assets::sample_runs()
}

fn push_recent<T: PartialEq + Clone>(list: &mut Vec<T>, item: T) {
    list.retain(|x| *x != item);
    list.insert(0, item);
    list.truncate(10);
}

impl LdvizApp {
    /// A fresh app (no persisted state), as the tests use it.
    pub fn new(launch: &Launch) -> LdvizApp {
        LdvizApp::with_persisted(launch, Persisted::default())
    }

    pub fn with_persisted(launch: &Launch, persisted: Persisted) -> LdvizApp {
        let (picked_tx, picked_rx) = crossbeam_channel::unbounded();
        let mut setup = SetupView::new(persisted.setup.clone(), persisted.out_dir.clone());
        if let Some(m) = &launch.model {
            setup.options.model = m.display().to_string();
        }
        if let Some(d) = &launch.data {
            setup.options.data = d.display().to_string();
        }
        let mut curves = CurvesView::default();
        if let Some(c) = &persisted.curves {
            curves.settings = c.clone();
        }
        let tab = match launch.tab.as_deref() {
            Some("tokens") => Tab::Tokens,
            Some("metrics") => Tab::Metrics,
            Some("playground") => Tab::Playground,
            Some("transfer") => Tab::Transfer,
            Some("influence") => Tab::Influence,
            Some("curves") => Tab::Curves,
            _ => persisted.tab.unwrap_or(Tab::Curves),
        };
        let mut app = LdvizApp {
            runs: Vec::new(),
            active: 0,
            live: None,
            followed: Vec::new(),
            last_follow: Instant::now(),
            setup,
            curves,
            timeline: Timeline::default(),
            overlay: Vec::new(),
            tokens: TokensView::default(),
            playground: playground::Playground::default(),
            influence: influence::InfluenceView::default(),
            transfer: TransferView,
            tab,
            errors: Vec::new(),
            notice: None,
            path_windows: Vec::new(),
            persisted,
            sample_runs: Vec::new(),
            actions: Vec::new(),
            picked_tx,
            picked_rx,
            screenshot: launch
                .screenshot
                .clone()
                .map(|p| (p, launch.after_frames, launch.after_evals)),
            frames: 0,
            screenshot_requested: false,
            shot: Default::default(),
        };
        match sample_runs() {
            Ok(v) => app.sample_runs = v,
            Err(e) => app
                .errors
                .push(format!("the sample runs are not available: {e:#}")),
        }
        for r in &launch.runs {
            app.open_run(r);
        }
        if let Some(k) = &launch.overlay {
            match crate::data::Family::from_key(k) {
                Some(f) => {
                    app.curves.settings.overlay_family = f;
                    app.overlay = (0..app.runs.len()).collect();
                }
                None => app
                    .errors
                    .push(format!("--overlay: unknown family \"{k}\"")),
            }
        }
        if launch.train {
            app.start_training();
        }
        app
    }

    /// The run the views show, if any.
    pub fn active_run(&self) -> Option<&RunStore> {
        self.runs.get(self.active)
    }

    pub fn queue(&mut self, a: Action) {
        self.actions.push(a);
    }

    /// Opens a run file; a bad file becomes a visible error and nothing else changes.
    pub fn open_run(&mut self, path: &Path) {
        if let Err(e) = self.try_open_run(path) {
            self.errors.push(format!("{e:#}"));
        }
    }

    /// Opens a run file (or shows it, when it is open already); a bad file changes nothing.
    fn try_open_run(&mut self, path: &Path) -> Result<()> {
        if let Some(i) = self
            .runs
            .iter()
            .position(|r| r.path.as_deref() == Some(path))
        {
            self.active = i;
            return Ok(());
        }
        let (store, follower) = RunStore::open_following(path)?;
        if let Some(f) = follower {
            self.notice = Some(format!(
                "{}: no end record yet: following the file as it grows",
                path.display()
            ));
            self.followed.push(f);
        } else if store.run.truncated {
            self.notice = Some(format!(
                "{}: the last record was cut off (the writer was killed); everything before it is loaded",
                path.display()
            ));
        }
        self.runs.push(store);
        self.active = self.runs.len() - 1;
        self.timeline.jump_end(self.runs.last());
        push_recent(&mut self.persisted.recent_runs, path.to_path_buf());
        Ok(())
    }

    /// Starts the trainer with the train panel's options. Invalid options are reported and
    /// nothing starts; a running trainer is left alone.
    pub fn start_training(&mut self) {
        if self.live.as_ref().is_some_and(|l| !l.finished) {
            self.errors
                .push("a run is already training: stop it before starting another".into());
            return;
        }
        let cfg = match self.setup.checked().and_then(|o| o.to_config()) {
            Ok(c) => c,
            Err(e) => {
                self.errors.push(format!("cannot start: {e:#}"));
                return;
            }
        };
        let out = match self.setup.next_out_path(cfg.algo) {
            Ok(p) => p,
            Err(e) => {
                self.errors.push(format!("cannot start: {e:#}"));
                return;
            }
        };
        push_recent(
            &mut self.persisted.recent_models,
            self.setup.options.model.clone(),
        );
        push_recent(
            &mut self.persisted.recent_data,
            self.setup.options.data.clone(),
        );
        let handle = crate::train::spawn(cfg, Some(out.clone()));
        self.live = Some(Live {
            handle: Some(handle),
            run: None,
            out,
            started: Instant::now(),
            total_steps: 0,
            finished: false,
            first_step: None,
        });
        self.timeline.mode = Mode::Following;
    }

    /// Sends a command to the live trainer.
    pub fn command(&mut self, c: Command) {
        if let Some(h) = self.live.as_ref().and_then(|l| l.handle.as_ref()) {
            // A closed channel means the trainer already ended; its end record says why.
            let _ = h.commands.send(c);
        }
    }

    /// Drains the live trainer's events into its store; reports a failed trainer.
    pub fn poll_trainer(&mut self) -> bool {
        let Some(live) = self.live.as_mut() else {
            return false;
        };
        let Some(handle) = live.handle.as_ref() else {
            return false;
        };
        let mut got = false;
        let mut disconnected = false;
        let deadline = Instant::now() + std::time::Duration::from_millis(8);
        loop {
            match handle.events.try_recv() {
                Ok(ev) => {
                    got = true;
                    match ev {
                        Event::Header(h) => {
                            live.total_steps = h.phases.iter().map(|p| p.steps).sum();
                            let name = live
                                .out
                                .file_stem()
                                .map(|s| s.to_string_lossy().to_string())
                                .unwrap_or_else(|| "live".into());
                            self.runs
                                .push(RunStore::live(name, Some(live.out.clone()), *h));
                            live.run = Some(self.runs.len() - 1);
                            self.active = self.runs.len() - 1;
                        }
                        ev => {
                            if let Event::Step(st) = &ev
                                && live.first_step.is_none()
                            {
                                live.first_step = Some((Instant::now(), st.step, st.examples));
                            }
                            if let Some(store) = live.run.and_then(|i| self.runs.get_mut(i)) {
                                store.apply(ev);
                            }
                        }
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if disconnected {
            live.finished = true;
            if let Some(h) = live.handle.take()
                && let Err(e) = h.join()
            {
                let kept = match live.run {
                    Some(_) => format!(
                        " (everything recorded so far is kept in {})",
                        live.out.display()
                    ),
                    None => String::new(),
                };
                self.errors.push(format!("training failed: {e:#}{kept}"));
            }
        }
        got
    }

    /// Reads the followed run files' new records into their stores (every [`FOLLOW_EVERY`]);
    /// a file that ended, or failed, is no longer followed (a failure is shown, and everything
    /// read before it kept). Returns whether records arrived.
    pub fn poll_followed(&mut self) -> bool {
        if self.followed.is_empty() || self.last_follow.elapsed() < FOLLOW_EVERY {
            return false;
        }
        self.last_follow = Instant::now();
        let mut got = false;
        let runs = &mut self.runs;
        let errors = &mut self.errors;
        self.followed.retain_mut(|f| {
            let Some(store) = runs
                .iter_mut()
                .find(|r| r.path.as_deref() == Some(f.path()))
            else {
                return false;
            };
            let mut events = Vec::new();
            let r = f.poll(&mut events);
            got |= !events.is_empty();
            for ev in events {
                store.apply(ev);
            }
            store.run.skipped_records = f.skipped_records();
            if let Err(e) = r {
                errors.push(format!(
                    "{e:#} (stopped following; every record read before it is kept)"
                ));
            }
            !f.ended()
        });
        got
    }

    fn apply_actions(&mut self, ctx: &egui::Context) {
        let actions = std::mem::take(&mut self.actions);
        for a in actions {
            match a {
                Action::OpenRun(p) => self.open_run(&p),
                Action::CloseRun(i) => self.close_run(i),
                Action::StartTraining => self.start_training(),
                Action::Trainer(c) => self.command(c),
                Action::Picked(p) => self.on_picked(p),
                Action::Export(t, p) => {
                    let r = self.try_export(t, &p).map(Some);
                    self.settle(DialogKind::export(t), r);
                }
                Action::PathWindow(k) => self.open_path_window(k),
                Action::Dialog(k) => self.dialog(ctx, k),
                Action::Activate(i) => {
                    if i < self.runs.len() {
                        self.active = i;
                        self.timeline.jump_end(self.runs.get(i));
                    }
                }
                Action::Overlay(i, on) => {
                    self.overlay.retain(|&j| j != i);
                    if on && i < self.runs.len() {
                        self.overlay.push(i);
                    }
                }
                Action::Seek(i) => self.timeline.seek(i),
            }
        }
    }

    fn close_run(&mut self, i: usize) {
        if i >= self.runs.len() {
            return;
        }
        if let Some(live) = self.live.as_mut()
            && let Some(r) = live.run
        {
            if r == i && !live.finished {
                self.errors
                    .push("stop the live run before closing it".into());
                return;
            }
            if r == i {
                live.run = None;
            } else if r > i {
                live.run = Some(r - 1);
            }
        }
        let closed = self.runs.remove(i);
        self.followed
            .retain(|f| Some(f.path()) != closed.path.as_deref());
        self.overlay.retain(|&j| j != i);
        for j in self.overlay.iter_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        if self.active >= self.runs.len() {
            self.active = self.runs.len().saturating_sub(1);
        }
    }

    /// A path from a native dialog or a path window: opened, set or written; the outcome
    /// closes the path window of its kind or shows the error there (`settle`).
    fn on_picked(&mut self, p: Picked) {
        let kind = p.kind();
        let r = match p {
            Picked::Unavailable(kind) => {
                self.dialog_unavailable(kind);
                return;
            }
            Picked::Run(paths) => {
                for p in paths {
                    let r = self.try_open_run(&p).map(|()| None);
                    self.settle(kind, r);
                }
                return;
            }
            Picked::Data(p) => {
                if p.is_file() {
                    self.setup.options.data = p.display().to_string();
                    Ok(None)
                } else {
                    Err(anyhow!("{}: no such dataset file", p.display()))
                }
            }
            Picked::Model(p) => {
                if p.is_dir() {
                    self.setup.options.model = p.display().to_string();
                    Ok(None)
                } else {
                    Err(anyhow!(
                        "{}: no such folder (a model folder holds config.json, the safetensors weights and tokenizer.json)",
                        p.display()
                    ))
                }
            }
            Picked::ExportPng(p) => self.try_export(export::Target::Png, &p).map(Some),
            Picked::ExportSvg(p) => self.try_export(export::Target::Svg, &p).map(Some),
            Picked::ExportCsv(p) => self.try_export(export::Target::Csv, &p).map(Some),
        };
        self.settle(kind, r);
    }

    /// Writes the visible curves (PNG/SVG) or their data (CSV); errors are shown.
    pub fn export_to(&mut self, t: export::Target, path: &Path) {
        match self.try_export(t, path) {
            Ok(msg) => self.notice = Some(msg),
            Err(e) => self.errors.push(format!("{e:#}")),
        }
    }

    /// Writes the visible curves (PNG/SVG) or their data (CSV); returns a confirmation line.
    fn try_export(&self, t: export::Target, path: &Path) -> Result<String> {
        let Some(store) = self.runs.get(self.active) else {
            return Err(anyhow!("nothing to export: open or record a run first"));
        };
        let cursor = self.timeline.cursor_x(store, self.curves.settings.x);
        // What the curves view shows: the active run, or the overlay (active run first).
        let mut runs: Vec<&RunStore> = vec![store];
        for &i in &self.overlay {
            if i != self.active
                && let Some(r) = self.runs.get(i)
            {
                runs.push(r);
            }
        }
        if self.overlay.is_empty() {
            runs.truncate(1);
        }
        export::write(
            t,
            &runs,
            &self.curves.settings,
            self.curves.probe,
            cursor,
            path,
        )
    }

    /// Files dropped on the window: run files open as runs, folders become the model, other
    /// JSON/JSONL files the dataset.
    fn handle_drops(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        for p in dropped {
            if p.is_dir() {
                self.setup.options.model = p.display().to_string();
            } else if is_run_file(&p) {
                self.open_run(&p);
            } else {
                self.setup.options.data = p.display().to_string();
            }
        }
    }

    /// One frame of the whole app inside `ui`.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        while let Ok(p) = self.picked_rx.try_recv() {
            self.on_picked(p);
        }
        self.handle_drops(&ctx);
        let got = self.poll_trainer() | self.poll_followed();
        let dt = ctx.input(|i| i.stable_dt).min(0.1) as f64;
        self.timeline.handle_keys(&ctx, self.runs.get(self.active));
        self.timeline.advance(self.runs.get(self.active), dt);

        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        if !self.errors.is_empty() || self.notice.is_some() {
            egui::Panel::top("messages").show(ui, |ui| self.messages(ui));
        }
        egui::Panel::left("setup")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let vctx = view_ctx!(self);
                    self.setup.ui(&vctx, ui);
                    self.actions.extend(vctx.into_actions());
                });
            });
        egui::Panel::bottom("timeline").show(ui, |ui| {
            let store = self.runs.get(self.active);
            self.timeline.ui(ui, store);
        });
        egui::CentralPanel::default().show(ui, |ui| {
            let vctx = view_ctx!(self);
            match self.tab {
                Tab::Curves => self.curves.ui(&vctx, ui),
                Tab::Tokens => self.tokens.ui(&vctx, ui),
                Tab::Metrics => self.curves.metrics_ui(&vctx, ui),
                Tab::Playground => self.playground.ui(&vctx, ui),
                Tab::Transfer => self.transfer.ui(&vctx, ui),
                Tab::Influence => self.influence.ui(&vctx, ui),
            }
            self.actions.extend(vctx.into_actions());
        });
        let mut actions = Vec::new();
        dialogs::show_windows(self, &ctx, &mut actions);
        self.actions.extend(actions);
        self.apply_actions(&ctx);

        let training = self.live.as_ref().is_some_and(|l| !l.finished);
        if training || got || self.timeline.mode == Mode::Playing {
            ctx.request_repaint_after(std::time::Duration::from_millis(33));
        } else if !self.followed.is_empty() {
            ctx.request_repaint_after(FOLLOW_EVERY);
        }
        self.screenshot_step(&ctx);
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        ui.horizontal(|ui| {
            ui.strong("ldviz");
            ui.separator();
            if ui.button("Open run…").clicked() {
                self.dialog(&ctx, DialogKind::Runs);
            }
            if ui
                .button("Open path…")
                .on_hover_text("type the path of a run file")
                .clicked()
            {
                self.actions.push(Action::PathWindow(DialogKind::Runs));
            }
            ui.menu_button("Recent", |ui| {
                if self.persisted.recent_runs.is_empty() {
                    ui.label("no recent runs");
                }
                for p in self.persisted.recent_runs.clone() {
                    if ui.button(p.display().to_string()).clicked() {
                        self.actions.push(Action::OpenRun(p));
                        ui.close();
                    }
                }
            });
            ui.separator();
            ui.selectable_value(&mut self.tab, Tab::Curves, "Curves");
            ui.selectable_value(&mut self.tab, Tab::Tokens, "Tokens");
            ui.selectable_value(&mut self.tab, Tab::Metrics, "TRL metrics");
            ui.selectable_value(&mut self.tab, Tab::Influence, "Influence");
            ui.selectable_value(&mut self.tab, Tab::Transfer, "Transfer");
            ui.selectable_value(&mut self.tab, Tab::Playground, "Squeeze playground");
            ui.separator();
            let mut actions = Vec::new();
            export::menu(self, ui, &mut actions);
            self.actions.extend(actions);
        });
    }

    fn messages(&mut self, ui: &mut egui::Ui) {
        let mut dismiss = None;
        for (i, e) in self.errors.iter().enumerate() {
            ui.horizontal(|ui| {
                if ui.small_button("×").on_hover_text("dismiss").clicked() {
                    dismiss = Some(i);
                }
                ui.colored_label(egui::Color32::from_rgb(200, 40, 40), format!("error: {e}"));
            });
        }
        if let Some(i) = dismiss {
            self.errors.remove(i);
        }
        let mut clear = false;
        if let Some(n) = &self.notice {
            ui.horizontal(|ui| {
                if ui.small_button("×").clicked() {
                    clear = true;
                }
                ui.label(n);
            });
        }
        if clear {
            self.notice = None;
        }
    }

    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some((path, after, evals)) = self.screenshot.clone() else {
            return;
        };
        let enough_evals = evals == 0
            || self
                .runs
                .get(self.active)
                .is_some_and(|r| r.n_evals() >= evals);
        if !self.screenshot_requested && self.frames >= after && enough_evals {
            let slot = self.shot.clone();
            let c = ctx.clone();
            ctx.request_screenshot(move |img| {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(img);
                }
                c.request_repaint();
            });
            self.screenshot_requested = true;
        }
        let shot = self.shot.lock().ok().and_then(|mut s| s.take());
        if let Some(img) = shot {
            if let Err(e) = save_png(&img, &path) {
                eprintln!("error: {e:#}");
            }
            if let Some(h) = self.live.as_ref().and_then(|l| l.handle.as_ref()) {
                let _ = h.commands.send(Command::Stop);
            }
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        } else if self.screenshot_requested || !enough_evals {
            ctx.request_repaint_after(std::time::Duration::from_millis(30));
        } else {
            ctx.request_repaint_after(std::time::Duration::from_millis(16));
        }
    }

    /// The settings to persist.
    pub fn to_persisted(&self) -> Persisted {
        let mut p = self.persisted.clone();
        p.setup = Some(self.setup.options_for_saving());
        p.out_dir = Some(self.setup.out_dir.clone());
        p.curves = Some(self.curves.settings.clone());
        p.tab = Some(self.tab);
        p
    }
}

/// Adds the bundled DejaVu Sans behind egui's default fonts (for ▶ ◀ ■ ⏎ Δ β ≈ and the
/// like, which the defaults lack).
pub fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "dejavu".into(),
        std::sync::Arc::new(egui::FontData::from_static(crate::export::plot::FONT)),
    );
    for fam in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts.families.entry(fam).or_default().push("dejavu".into());
    }
    ctx.set_fonts(fonts);
}

/// Which native dialog (or path window) to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogKind {
    Runs,
    Data,
    Model,
    SavePng,
    SaveSvg,
    SaveCsv,
}

/// Whether a file looks like an ldviz run file, plain or gzipped (its first line is a run
/// header), or a Hugging Face trainer state.
pub fn is_run_file(p: &Path) -> bool {
    crate::run::looks_like_run_file(p)
}

fn save_png(img: &egui::ColorImage, path: &Path) -> Result<()> {
    let [w, h] = img.size;
    let mut buf = Vec::with_capacity(w * h * 4);
    for c in &img.pixels {
        buf.extend_from_slice(&c.to_array());
    }
    image::save_buffer(
        path,
        &buf,
        w as u32,
        h as u32,
        image::ExtendedColorType::Rgba8,
    )
    .map_err(|e| anyhow!("{}: cannot save the screenshot: {e}", path.display()))
}

struct Shell {
    app: LdvizApp,
}

impl eframe::App for Shell {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.app.to_persisted());
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Stop a live trainer so its run file gets its end record.
        if let Some(live) = self.app.live.as_mut()
            && let Some(h) = live.handle.take()
        {
            let _ = h.commands.send(Command::Stop);
            let _ = h.join();
        }
    }
}

/// Runs the app until its window closes.
pub fn run(launch: Launch) -> Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 860.0])
            .with_title("ldviz — learning dynamics")
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Glow,
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "ldviz",
        options,
        Box::new(move |cc| {
            install_fonts(&cc.egui_ctx);
            let persisted: Persisted = cc
                .storage
                .and_then(|s| eframe::get_value(s, STORAGE_KEY))
                .unwrap_or_default();
            Ok(Box::new(Shell {
                app: LdvizApp::with_persisted(&launch, persisted),
            }))
        }),
    )
    .map_err(|e| anyhow!("cannot open the app window: {e} (is a display available? the CLI subcommands work without one)"))
}
