//! The left panel: the train panel (model, data, algorithm, optimizer and hyperparameters,
//! Start / Pause / Resume / Step / Stop, live status) and the list of open and sample runs.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use super::{Action, DialogKind, View, ViewCtx};
use crate::train::{Algo, Command, InfluenceTarget, OptimKind, TrainOptions};

/// The train panel's state. Optional numbers are edited as text ("" = the default).
pub struct SetupView {
    pub options: TrainOptions,
    pub lr: String,
    pub sft_lr: String,
    pub epochs: String,
    pub sft_epochs: String,
    /// Folder where live runs are written.
    pub out_dir: String,
    /// Path field of "open run" in the runs list.
    pub open_path: String,
}

impl View for SetupView {
    /// The left panel: the train panel, the trainer's controls and status, the runs list.
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show(self, ctx, ui);
    }
}

fn opt_text<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn parse_opt(name: &str, s: &str) -> Result<Option<f64>> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let v: f64 = t
        .parse()
        .map_err(|_| anyhow!("{name}: \"{t}\" is not a number"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(anyhow!("{name} must be a positive number, got {t}"));
    }
    Ok(Some(v))
}

impl SetupView {
    pub fn new(options: Option<TrainOptions>, out_dir: Option<String>) -> SetupView {
        let options = options.unwrap_or_default();
        SetupView {
            lr: opt_text(options.lr),
            sft_lr: opt_text(options.sft_lr),
            epochs: opt_text(options.epochs),
            sft_epochs: opt_text(options.sft_epochs),
            options,
            out_dir: out_dir.unwrap_or_else(|| "ldviz-runs".into()),
            open_path: String::new(),
        }
    }

    /// The options with the text fields parsed in; errors name the field.
    pub fn checked(&mut self) -> Result<TrainOptions> {
        self.options.lr = parse_opt("learning rate", &self.lr)?;
        self.options.sft_lr = parse_opt("SFT learning rate", &self.sft_lr)?;
        self.options.epochs = parse_opt("epochs", &self.epochs)?;
        self.options.sft_epochs = parse_opt("SFT epochs", &self.sft_epochs)?;
        if self.options.epochs.is_some() {
            self.options.steps = None;
        }
        if self.options.sft_epochs.is_some() {
            self.options.sft_steps = None;
        }
        Ok(self.options.clone())
    }

    /// The options with the text fields as far as they parse (for saving between launches).
    pub fn options_for_saving(&self) -> TrainOptions {
        let mut o = self.options.clone();
        let num = |t: &str| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && v.is_finite())
        };
        o.lr = num(&self.lr);
        o.sft_lr = num(&self.sft_lr);
        o.epochs = num(&self.epochs);
        o.sft_epochs = num(&self.sft_epochs);
        o
    }

    /// A fresh run file path in the output folder (created if needed).
    pub fn next_out_path(&self, algo: Algo) -> Result<PathBuf> {
        let dir = PathBuf::from(self.out_dir.trim());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create the run folder", dir.display()))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for n in 0..1000 {
            let name = if n == 0 {
                format!("{}_{secs}.jsonl", algo.key())
            } else {
                format!("{}_{secs}_{n}.jsonl", algo.key())
            };
            let p = dir.join(name);
            if !p.exists() {
                return Ok(p);
            }
        }
        Err(anyhow!("{}: no free run file name", dir.display()))
    }
}

use crate::device as ldviz_device;

/// Device and precision choices (builds with the `cuda` feature only). The devices are probed
/// once per process.
fn device_rows(ui: &mut egui::Ui, o: &mut TrainOptions) {
    use ldviz_device::{DeviceSpec, Precision};
    static FOUND: std::sync::OnceLock<Vec<DeviceSpec>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(DeviceSpec::available);
    ui.label("Device");
    egui::ComboBox::from_id_salt("device")
        .selected_text(o.device.to_string())
        .show_ui(ui, |ui| {
            for d in found {
                ui.selectable_value(&mut o.device, *d, d.to_string());
            }
        });
    ui.end_row();
    ui.label("Precision");
    egui::ComboBox::from_id_salt("precision")
        .selected_text(o.precision.to_string())
        .show_ui(ui, |ui| {
            for p in [Precision::F32, Precision::Bf16] {
                ui.selectable_value(&mut o.precision, p, p.to_string());
            }
        })
        .response
        .on_hover_text("bf16: bf16 forward on f32 master weights (GPUs only)");
    ui.end_row();
}

fn has_sft_phase(a: Algo) -> bool {
    matches!(a, Algo::Extended | Algo::SftThenDpo)
}

fn path_row(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut String,
    hint: &str,
    browse: &mut bool,
    recent: &[String],
) {
    ui.label(label);
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::singleline(value)
                .hint_text(hint)
                .desired_width(180.0),
        );
        if ui.button("…").on_hover_text("browse").clicked() {
            *browse = true;
        }
        if !recent.is_empty() {
            egui::ComboBox::from_id_salt(format!("recent {label}"))
                .selected_text("")
                .width(16.0)
                .show_ui(ui, |ui| {
                    for r in recent {
                        if ui.selectable_label(false, r).clicked() {
                            *value = r.clone();
                        }
                    }
                });
        }
    });
}

fn show(v: &mut SetupView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let training = ctx.live.is_some_and(|l| !l.finished);
    ui.heading("Train");
    let (mut pick_model, mut pick_data) = (false, false);
    let recent_models = ctx.recent_models.to_vec();
    let recent_data = ctx.recent_data.to_vec();
    let s = &mut *v;
    ui.add_enabled_ui(!training, |ui| {
        path_row(
            ui,
            "Model folder",
            &mut s.options.model,
            "default = embedded model",
            &mut pick_model,
            &recent_models,
        );
        path_row(
            ui,
            "Dataset",
            &mut s.options.data,
            "default = embedded demo data",
            &mut pick_data,
            &recent_data,
        );
        egui::Grid::new("hyper")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                ui.label("Algorithm");
                egui::ComboBox::from_id_salt("algo")
                    .selected_text(s.options.algo.key())
                    .show_ui(ui, |ui| {
                        for a in Algo::CLI {
                            ui.selectable_value(&mut s.options.algo, a, a.key())
                                .on_hover_text(a.describe());
                        }
                    })
                    .response
                    .on_hover_text(s.options.algo.describe());
                ui.end_row();
                ui.label("Optimizer");
                egui::ComboBox::from_id_salt("optim")
                    .selected_text(s.options.optimizer.key())
                    .show_ui(ui, |ui| {
                        for o in [OptimKind::Adamw, OptimKind::Sgd, OptimKind::Rmsprop] {
                            ui.selectable_value(&mut s.options.optimizer, o, o.key());
                        }
                    });
                ui.end_row();
                if ldviz_device::cuda_built() {
                    device_rows(ui, &mut s.options);
                }
                let dlr = format!("{:e}", s.options.default_lr());
                ui.label("Learning rate");
                ui.add(
                    egui::TextEdit::singleline(&mut s.lr)
                        .hint_text(dlr)
                        .desired_width(90.0),
                );
                ui.end_row();
                ui.label("Epochs");
                let de = format!("{}", s.options.default_epochs());
                ui.add(
                    egui::TextEdit::singleline(&mut s.epochs)
                        .hint_text(de)
                        .desired_width(90.0),
                );
                ui.end_row();
                if has_sft_phase(s.options.algo) {
                    ui.label("SFT learning rate");
                    let d = format!("{:e}", crate::assets::DEMO.sft_lr);
                    ui.add(
                        egui::TextEdit::singleline(&mut s.sft_lr)
                            .hint_text(if s.options.model == "default" {
                                d
                            } else {
                                "as lr".into()
                            })
                            .desired_width(90.0),
                    );
                    ui.end_row();
                    ui.label("SFT epochs");
                    ui.add(
                        egui::TextEdit::singleline(&mut s.sft_epochs)
                            .hint_text(if s.options.model == "default" {
                                format!("{}", crate::assets::DEMO.sft_epochs)
                            } else {
                                "as epochs".into()
                            })
                            .desired_width(90.0),
                    );
                    ui.end_row();
                }
                ui.label("β");
                ui.add(
                    egui::DragValue::new(&mut s.options.beta)
                        .speed(0.01)
                        .range(0.001..=100.0),
                );
                ui.end_row();
                if s.options.algo.uses_label_smoothing() {
                    ui.label("Label smoothing ε");
                    ui.add(
                        egui::DragValue::new(&mut s.options.label_smoothing)
                            .speed(0.005)
                            .range(0.0..=0.49),
                    )
                    .on_hover_text(if s.options.algo == Algo::Cdpo {
                        "cDPO: the target preference probability is 1 − ε"
                    } else {
                        "robust DPO: the assumed rate of flipped labels"
                    });
                    ui.end_row();
                }
                if s.options.algo == Algo::Simpo {
                    ui.label("γ (target margin)");
                    ui.add(
                        egui::DragValue::new(&mut s.options.gamma)
                            .speed(0.01)
                            .range(0.0..=100.0),
                    );
                    ui.end_row();
                }
                if s.options.optimizer != OptimKind::Adamw {
                    ui.label("Momentum");
                    ui.add(
                        egui::DragValue::new(&mut s.options.momentum)
                            .speed(0.01)
                            .range(0.0..=0.999),
                    );
                    ui.end_row();
                }
                ui.label("Weight decay");
                ui.add(
                    egui::DragValue::new(&mut s.options.weight_decay)
                        .speed(0.001)
                        .range(0.0..=1.0),
                );
                ui.end_row();
                ui.label("Batch size");
                ui.add(egui::DragValue::new(&mut s.options.batch_size).range(1..=512));
                ui.end_row();
                ui.label("Probes");
                ui.add(
                    egui::TextEdit::singleline(&mut s.options.probes)
                        .hint_text("32 or all")
                        .desired_width(90.0),
                );
                ui.end_row();
                ui.label("Eval every (examples)");
                ui.add(egui::DragValue::new(&mut s.options.eval_every).range(1..=1_000_000));
                ui.end_row();
                ui.label("Seed");
                ui.add(egui::DragValue::new(&mut s.options.seed));
                ui.end_row();
                ui.label("Influence cosine f_u");
                egui::ComboBox::from_id_salt("influence target")
                    .selected_text(s.options.influence_target.key())
                    .show_ui(ui, |ui| {
                        for t in InfluenceTarget::ALL {
                            ui.selectable_value(&mut s.options.influence_target, t, t.key())
                                .on_hover_text(t.describe());
                        }
                    })
                    .response
                    .on_hover_text(format!(
                        "the training-example function of the influence view's gradient cosines: {}",
                        s.options.influence_target.describe()
                    ));
                ui.end_row();
                ui.label("Run folder");
                ui.add(egui::TextEdit::singleline(&mut s.out_dir).desired_width(140.0));
                ui.end_row();
            });
        ui.checkbox(&mut s.options.on_policy, "on-policy (rejected sampled from the policy)");
        if s.options.on_policy {
            let mut every_update = s.options.resample_every == Some(1);
            ui.checkbox(&mut every_update, "resample before every update (online DPO)")
                .on_hover_text(
                    "on: the batch's rejected responses are sampled before each update; \
                     off: every record's once per epoch (they go stale within the epoch)",
                );
            s.options.resample_every = every_update.then_some(1);
        } else {
            s.options.resample_every = None;
        }
    });
    if pick_model {
        ctx.act(Action::Dialog(DialogKind::Model));
    }
    if pick_data {
        ctx.act(Action::Dialog(DialogKind::Data));
    }

    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(!training, egui::Button::new("▶ Start"))
            .clicked()
        {
            ctx.act(Action::StartTraining);
        }
        let paused = ctx
            .live
            .and_then(|l| l.run)
            .and_then(|i| ctx.runs.get(i))
            .is_some_and(|r| r.paused);
        if ui
            .add_enabled(training && !paused, egui::Button::new("Pause"))
            .clicked()
        {
            ctx.act(Action::Trainer(Command::Pause));
        }
        if ui
            .add_enabled(training && paused, egui::Button::new("Resume"))
            .clicked()
        {
            ctx.act(Action::Trainer(Command::Resume));
        }
        if ui
            .add_enabled(training && paused, egui::Button::new("Step"))
            .on_hover_text("apply one update, then stay paused")
            .clicked()
        {
            ctx.act(Action::Trainer(Command::Step));
        }
        if ui
            .add_enabled(training, egui::Button::new("■ Stop"))
            .clicked()
        {
            ctx.act(Action::Trainer(Command::Stop));
        }
    });
    status(ctx, ui);

    ui.separator();
    ui.heading("Runs");
    if ctx.runs.is_empty() {
        ui.label("No run open. Start training, open a run file, or pick a sample run below.");
    }
    for (i, r) in ctx.runs.iter().enumerate() {
        ui.horizontal(|ui| {
            let mut on = ctx.overlay.contains(&i);
            if ui
                .checkbox(&mut on, "overlay")
                .on_hover_text("overlay in the curves view")
                .changed()
            {
                ctx.act(Action::Overlay(i, on));
            }
            let label = format!(
                "{} ({}, {} evals{})",
                r.name,
                r.run.header.config.algo,
                r.n_evals(),
                if r.ended() {
                    ""
                } else if ctx.is_followed(i) {
                    ", following"
                } else {
                    ", live"
                }
            );
            if ui.selectable_label(ctx.active == i, label).clicked() {
                ctx.act(Action::Activate(i));
            }
            if ui.small_button("×").on_hover_text("close").clicked() {
                ctx.act(Action::CloseRun(i));
            }
        });
    }
    ui.horizontal(|ui| {
        ui.label("Open:");
        ui.add(
            egui::TextEdit::singleline(&mut v.open_path)
                .hint_text("run file path")
                .desired_width(150.0),
        );
        if ui.button("Open").clicked() && !v.open_path.trim().is_empty() {
            ctx.act(Action::OpenRun(PathBuf::from(v.open_path.trim())));
        }
    });
    if !ctx.sample_runs.is_empty() {
        ui.label("Sample runs:");
        for p in ctx.sample_runs {
            let name = crate::run::run_name(p);
            if ui
                .link(format!("open {name}"))
                .on_hover_text(p.display().to_string())
                .clicked()
            {
                ctx.act(Action::OpenRun(p.clone()));
            }
        }
    }
}

fn status(ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let Some(live) = ctx.live else {
        return;
    };
    let store = live.run.and_then(|i| ctx.runs.get(i));
    let Some(store) = store else {
        if !live.finished {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading model and data…");
            });
        }
        return;
    };
    let step = store.run.steps.last().map(|s| s.step).unwrap_or(0);
    let total = live.total_steps.max(1);
    let examples = store.run.steps.last().map(|s| s.examples).unwrap_or(0);
    // Rate and ETA from wall time since the first step arrived (evaluations included).
    let (rate, per_step) = match live.first_step {
        Some((t, s0, e0)) if step > s0 => {
            let dt = t.elapsed().as_secs_f64().max(1e-9);
            ((examples - e0) as f64 / dt, Some(dt / (step - s0) as f64))
        }
        _ => (0.0, None),
    };
    let phase = store
        .run
        .steps
        .last()
        .map(|s| s.phase.clone())
        .unwrap_or_default();
    let loss = store
        .run
        .steps
        .last()
        .and_then(|s| s.metrics.get("loss").copied());
    ui.add(
        egui::ProgressBar::new(step as f32 / total as f32).text(format!("step {step} / {total}")),
    );
    let eta = match per_step {
        Some(p) if store.run.end.is_none() => {
            format!("ETA {:.0} s", p * total.saturating_sub(step) as f64)
        }
        _ => String::new(),
    };
    let state = match (&store.run.end, store.paused) {
        (Some((r, _, _)), _) => format!("{r:?}").to_lowercase(),
        (None, true) => "paused".into(),
        (None, false) => "training".into(),
    };
    ui.label(format!(
        "{state} · {phase} · {rate:.1} examples/s · {eta}{}",
        loss.map(|l| format!(" · loss {l:.4}")).unwrap_or_default()
    ));
    ui.label(
        egui::RichText::new(format!("writing {}", live.out.display()))
            .small()
            .weak(),
    );
}
