//! The squeezing playground: one softmax, adjustable initial distribution (typed probabilities
//! or a peakiness slider), a positive or a negative gradient step on a class, or both at once
//! (a positive step on class I with a negative one on class J, the DPO-like case), with a step
//! size; bars of the distribution before and after, and each class's ratio α = after / before.
//! Presets are the paper's valley and peak cases and the DPO-like case. The math is crate::squeeze (also
//! `ldviz squeeze`).

use egui::{Color32, RichText};

use crate::squeeze::{Sign, argmax, check_probs, geometric, ratios, rose, step_many};

/// Which gradient steps one update applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A negative step on class c.
    Negative,
    /// A positive step on class c.
    Positive,
    /// A positive step on class c and a negative step on class `negative` (DPO-like).
    Both,
}

pub struct Playground {
    /// Typed probabilities (comma-separated); used when `use_typed`.
    pub typed: String,
    pub use_typed: bool,
    pub classes: usize,
    /// Geometric ratio π_i ∝ r^i: small = peaky.
    pub ratio: f64,
    /// The class of the step (the positive one under `StepKind::Both`).
    pub class: usize,
    /// The negative class under `StepKind::Both`.
    pub negative: usize,
    pub kind: StepKind,
    pub eta: f64,
    pub steps: usize,
}

impl Default for Playground {
    fn default() -> Self {
        let mut p = Playground {
            typed: String::new(),
            use_typed: true,
            classes: 5,
            ratio: 0.5,
            class: 4,
            negative: 4,
            kind: StepKind::Negative,
            eta: 1.0,
            steps: 1,
        };
        p.preset_valley();
        p
    }
}

impl Playground {
    /// A negative step on an unlikely class of a peaky distribution (a valley).
    pub fn preset_valley(&mut self) {
        self.typed = "0.5, 0.3, 0.15, 0.04, 0.01".into();
        self.use_typed = true;
        self.class = 4;
        self.kind = StepKind::Negative;
        self.eta = 1.0;
        self.steps = 1;
    }

    /// A positive step on a likely class with a negative step on an unlikely one (DPO's
    /// chosen and rejected in one softmax).
    pub fn preset_dpo(&mut self) {
        self.preset_valley();
        self.class = 1;
        self.negative = 4;
        self.kind = StepKind::Both;
    }

    /// The (class, sign) terms of one step.
    pub fn terms(&self, classes: usize) -> Vec<(usize, Sign)> {
        let last = classes.saturating_sub(1);
        let c = self.class.min(last);
        match self.kind {
            StepKind::Negative => vec![(c, Sign::Negative)],
            StepKind::Positive => vec![(c, Sign::Positive)],
            StepKind::Both => vec![
                (c, Sign::Positive),
                (self.negative.min(last), Sign::Negative),
            ],
        }
    }

    /// A negative step on the peak.
    pub fn preset_peak(&mut self) {
        self.preset_valley();
        self.class = 0;
    }

    /// The distribution before the steps, or why it is invalid.
    pub fn before(&self) -> Result<Vec<f64>, String> {
        if self.use_typed {
            let v: Result<Vec<f64>, _> = self
                .typed
                .split(',')
                .map(|t| t.trim().parse::<f64>())
                .collect();
            let v =
                v.map_err(|_| "probabilities: not a comma-separated list of numbers".to_string())?;
            check_probs(&v).map_err(|e| format!("{e:#}"))
        } else {
            Ok(geometric(self.classes.max(2), self.ratio))
        }
    }

    /// The distribution after the steps.
    pub fn after(&self, p: &[f64]) -> Vec<f64> {
        let terms = self.terms(p.len());
        let mut q = p.to_vec();
        for _ in 0..self.steps.max(1) {
            q = step_many(&q, &terms, self.eta);
        }
        q
    }
}

impl super::View for Playground {
    /// The squeeze playground reads no run: only its own state.
    fn ui(&mut self, _ctx: &super::ViewCtx<'_>, ui: &mut egui::Ui) {
        show(self, ui);
    }
}

fn show(pg: &mut Playground, ui: &mut egui::Ui) {
    ui.label(
        "One softmax π = softmax(z). A step on class c moves the logits by ±η'(e_c − π): a negative step gives every other class η'·π_i, so the likely ones gain most (the squeezing effect).",
    );
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("valley preset")
            .on_hover_text("negative step on an unlikely class")
            .clicked()
        {
            pg.preset_valley();
        }
        if ui
            .button("peak preset")
            .on_hover_text("negative step on the argmax")
            .clicked()
        {
            pg.preset_peak();
        }
        if ui
            .button("DPO preset")
            .on_hover_text(
                "positive step on a likely class with a negative step on an unlikely one",
            )
            .clicked()
        {
            pg.preset_dpo();
        }
        ui.separator();
        ui.selectable_value(&mut pg.use_typed, true, "typed probabilities");
        ui.selectable_value(&mut pg.use_typed, false, "peakiness slider");
    });
    ui.horizontal_wrapped(|ui| {
        if pg.use_typed {
            let l = ui.label("π before:");
            ui.add(egui::TextEdit::singleline(&mut pg.typed).desired_width(280.0))
                .labelled_by(l.id);
        } else {
            ui.add(egui::Slider::new(&mut pg.classes, 2..=30).text("classes"));
            ui.add(egui::Slider::new(&mut pg.ratio, 0.05..=1.0).text("ratio (small = peaky)"));
        }
    });
    let before = match pg.before() {
        Ok(p) => p,
        Err(e) => {
            ui.colored_label(Color32::from_rgb(200, 40, 40), format!("error: {e}"));
            return;
        }
    };
    pg.class = pg.class.min(before.len() - 1);
    pg.negative = pg.negative.min(before.len() - 1);
    ui.horizontal_wrapped(|ui| {
        ui.selectable_value(
            &mut pg.kind,
            StepKind::Negative,
            "negative step (push down)",
        );
        ui.selectable_value(&mut pg.kind, StepKind::Positive, "positive step (pull up)");
        ui.selectable_value(
            &mut pg.kind,
            StepKind::Both,
            "both (positive on I, negative on J)",
        );
        let label = if pg.kind == StepKind::Both {
            "class I (positive)"
        } else {
            "class c"
        };
        ui.add(egui::Slider::new(&mut pg.class, 0..=before.len() - 1).text(label));
        if pg.kind == StepKind::Both {
            ui.add(
                egui::Slider::new(&mut pg.negative, 0..=before.len() - 1)
                    .text("class J (negative)"),
            );
        }
        ui.add(
            egui::Slider::new(&mut pg.eta, 0.0..=10.0)
                .text("η'")
                .fixed_decimals(2),
        );
        ui.add(egui::Slider::new(&mut pg.steps, 1..=20).text("steps"));
    });
    let after = pg.after(&before);
    let alpha = ratios(&before, &after);
    let argmax = argmax(&before);
    let rose = rose(&alpha);
    ui.label(
        RichText::new(format!(
            "after: [{}] · classes that rose: {rose:?} (argmax before: {argmax})",
            after
                .iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .strong(),
    );
    ui.add_space(6.0);
    let w = (ui.available_width() - 260.0).max(100.0);
    let maxp = before
        .iter()
        .chain(after.iter())
        .cloned()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    for i in 0..before.len() {
        ui.horizontal(|ui| {
            let tag = match pg.kind {
                StepKind::Both if i == pg.class && i == pg.negative => "(I,J)",
                StepKind::Both if i == pg.class => "(I)  ",
                StepKind::Both if i == pg.negative => "(J)  ",
                _ if i == pg.class => "(c)  ",
                _ => "     ",
            };
            let name = RichText::new(format!("class {i:>2} {tag}")).monospace();
            let name = if tag.trim().is_empty() {
                name
            } else {
                name.strong()
            };
            ui.label(name);
            ui.vertical(|ui| {
                for (p, c) in [
                    (before[i], Color32::from_gray(150)),
                    (
                        after[i],
                        if alpha[i] > 1.0 {
                            Color32::from_rgb(0, 150, 60)
                        } else {
                            Color32::from_rgb(200, 50, 50)
                        },
                    ),
                ] {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(w, 9.0), egui::Sense::hover());
                    let mut bar = rect;
                    bar.set_width(w * (p / maxp) as f32);
                    ui.painter().rect_filled(bar, 1.0, c);
                }
            });
            ui.label(format!(
                "{:.4} → {:.4}  α = {:.3}",
                before[i], after[i], alpha[i]
            ));
        });
    }
}
