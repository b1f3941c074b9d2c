//! The curves view: per family the mean over probes with a band (min–max or interquartile), as
//! change since t = 0 (default of one-phase runs), change since the start of each phase
//! (default of runs with several phases: every phase re-zeroed at its starting weights, phase
//! boundaries marked and labelled) or absolute; families grouped as in the paper with toggles;
//! one probe's lines on request; debiased-EMA smoothing with the raw line kept faint; x as step,
//! examples or epoch; hover values of every series; runs overlaid; the TRL loss below, one plot
//! per phase with its own y scale. Lines are bucketed to min/max per pixel column, never
//! silently thinned.

use egui::Color32;
use egui_plot::{FilledArea, Line, Plot, PlotPoints, VLine};

use super::{Action, View, ViewCtx};
use crate::data::{Family, FamilyGroup};
use crate::export::plot::family_color;
use crate::run::store::{PhaseMetric, decimate_segments, ema, envelope, piece_points};
use crate::run::{Band, Quantity, RunStore, SeriesKey, XAxis, YMode};

/// What the curves show (persisted between launches).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurveSettings {
    /// What y shows; None: the active run's default ([`YMode::default_for`]: change since phase
    /// start for runs with several phases, since t = 0 otherwise).
    #[serde(default)]
    pub y: Option<YMode>,
    pub band: Band,
    pub x: XAxis,
    /// EMA weight, 0 = raw.
    pub smoothing: f64,
    /// Families switched off.
    pub hidden: Vec<Family>,
    /// The family compared across runs when runs are overlaid.
    pub overlay_family: Family,
    /// Show the TRL loss under the curves.
    pub show_loss: bool,
    /// Log-prob or one of the paper's diagnostics.
    #[serde(default)]
    pub quantity: Quantity,
}

impl CurveSettings {
    /// The run's families that are not switched off, in header order.
    pub fn visible(&self, families: &[Family]) -> Vec<Family> {
        families
            .iter()
            .copied()
            .filter(|f| !self.hidden.contains(f))
            .collect()
    }

    /// The y mode in effect for a run.
    pub fn y_mode(&self, store: Option<&RunStore>) -> YMode {
        self.y.unwrap_or_else(|| {
            store
                .map(|r| YMode::default_for(&r.run.header))
                .unwrap_or(YMode::Delta)
        })
    }

    /// Chooses a y mode for a run: the run's default is kept as "automatic", so a choice only
    /// sticks (to other runs, between launches) where it departs from the default.
    pub fn choose_y(&mut self, y: YMode, store: Option<&RunStore>) {
        let auto = store
            .map(|r| YMode::default_for(&r.run.header))
            .unwrap_or(YMode::Delta);
        self.y = (y != auto).then_some(y);
    }
}

impl Default for CurveSettings {
    fn default() -> Self {
        CurveSettings {
            y: None,
            band: Band::Interquartile,
            x: XAxis::Step,
            smoothing: 0.0,
            hidden: Vec::new(),
            overlay_family: Family::Chosen,
            show_loss: true,
            quantity: Quantity::LogProb,
        }
    }
}

#[derive(Default)]
pub struct CurvesView {
    pub settings: CurveSettings,
    /// Drill-down: one probe (position in the header) instead of the mean over all.
    pub probe: Option<usize>,
    /// Values under the pointer, for the hover list: (series name, color, value).
    pub hover: Vec<(String, Color32, f64)>,
    /// What the last frame plotted: (series name, number of evaluations with a value).
    pub drawn: Vec<(String, usize)>,
    /// The y mode the last frame plotted.
    pub shown_y: Option<YMode>,
    /// The phase labels the last frame marked (runs with several phases).
    pub shown_phases: Vec<String>,
    /// The loss plots the last frame drew, by y-axis label (one per phase with its own scale).
    pub shown_loss: Vec<String>,
}

pub const GROUPS: [(FamilyGroup, &str); 5] = [
    (FamilyGroup::ChosenLike, "chosen-like"),
    (FamilyGroup::RejectedLike, "rejected-like"),
    (FamilyGroup::Unrelated, "unrelated"),
    (FamilyGroup::NonHuman, "non-human"),
    (FamilyGroup::Argmax, "argmax"),
];

pub fn color(f: Family) -> Color32 {
    let (r, g, b) = family_color(f);
    Color32::from_rgb(r, g, b)
}

/// Colors of overlaid runs.
pub fn run_color(i: usize) -> Color32 {
    let p = crate::export::plot::RUN_COLORS;
    let (r, g, b) = p[i % p.len()];
    Color32::from_rgb(r, g, b)
}

/// One line of a series (a series is one piece, or one per phase when re-zeroed per phase),
/// as segments: a non-finite evaluation (a diverged run) ends one, leaving a gap.
pub struct DrawnPiece {
    pub line: Vec<Vec<[f64; 2]>>,
    pub raw: Option<Vec<Vec<[f64; 2]>>>,
    pub band: Option<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

/// One series ready to draw.
pub struct Drawn {
    pub name: String,
    pub color: Color32,
    pub pieces: Vec<DrawnPiece>,
    pub width: f32,
    /// Smoothed value per evaluation (for hover and cursor read-outs).
    pub values: Vec<f64>,
}

/// Builds one family's series of a run: statistics from the store's cache, cut into the store's
/// pieces (one per phase under "Δ since phase start"), each smoothed on its own and bucketed to
/// its share of `buckets` columns.
pub fn family_series(
    store: &RunStore,
    family: Family,
    s: &CurveSettings,
    y: YMode,
    probe: Option<usize>,
    buckets: usize,
    xs: &[f64],
) -> Drawn {
    let key = SeriesKey {
        family,
        quantity: s.quantity,
        y,
        probe,
    };
    let pieces = store.pieces(y);
    let st = store.stats(key);
    let span = |v: &[f64]| match (v.first(), v.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let total = span(xs).max(f64::MIN_POSITIVE);
    let mut values = vec![f64::NAN; st.mean.len()];
    let mut out = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        let (px, mean) = piece_points(piece, xs, &st.mean);
        if px.is_empty() {
            continue;
        }
        let share = if pieces.len() > 1 {
            span(&px) / total
        } else {
            1.0
        };
        let b = ((buckets as f64 * share) as usize).max(16);
        let smooth = ema(&mean, s.smoothing);
        // The piece's own evaluations are its last points (after the lead, if any).
        let own = piece.evals.len().min(smooth.len());
        for (v, i) in smooth[smooth.len() - own..].iter().zip(piece.evals.clone()) {
            if let Some(slot) = values.get_mut(i) {
                *slot = *v;
            }
        }
        let line = decimate_segments(&px, &smooth, b);
        let raw = (s.smoothing > 0.0).then(|| decimate_segments(&px, &mean, b));
        // Bands are envelopes (lowest low, highest high per bucket), so coarser buckets stay
        // faithful: every probe's excursion is still covered.
        let band_buckets = (b / 3).max(16);
        let band = match (probe, s.band) {
            (Some(_), _) | (None, Band::None) => None,
            (None, Band::MinMax) => {
                let (_, lo) = piece_points(piece, xs, &st.min);
                let (_, hi) = piece_points(piece, xs, &st.max);
                Some(envelope(&px, &lo, &hi, band_buckets))
            }
            (None, Band::Interquartile) => {
                let (_, lo) = piece_points(piece, xs, &st.q1);
                let (_, hi) = piece_points(piece, xs, &st.q3);
                Some(envelope(&px, &lo, &hi, band_buckets))
            }
        };
        out.push(DrawnPiece { line, raw, band });
    }
    let width = if matches!(family, Family::Chosen | Family::Rejected | Family::Argmax) {
        2.5
    } else {
        1.5
    };
    Drawn {
        name: family.key().to_string(),
        color: color(family),
        pieces: out,
        width,
        values,
    }
}

fn x_label(x: XAxis) -> &'static str {
    match x {
        XAxis::Step => "step",
        XAxis::Examples => "examples",
        XAxis::Epoch => "epoch",
    }
}

fn controls(cv: &mut CurvesView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let s = &mut cv.settings;
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_id_salt("quantity")
            .selected_text(s.quantity.label())
            .show_ui(ui, |ui| {
                for q in Quantity::ALL {
                    ui.selectable_value(&mut s.quantity, q, q.label());
                }
            })
            .response
            .on_hover_text("what is plotted per probe: the summed log-prob, or a diagnostic of the update's decomposition (‖A‖_F, ‖π − e_y‖, energy; mean over response positions)");
        ui.label("y:");
        let store = ctx.runs.get(ctx.active);
        let current = s.y_mode(store);
        for y in YMode::ALL {
            let hint = match y {
                YMode::Delta => "change since the run's first evaluation (default of one-phase runs)",
                YMode::PhaseDelta => "change since each phase's start: every phase re-zeroed at the evaluation of its starting weights (default of runs with several phases)",
                YMode::Absolute => "the value itself",
            };
            if ui
                .selectable_label(current == y, y.label())
                .on_hover_text(hint)
                .clicked()
            {
                s.choose_y(y, store);
            }
        }
        ui.separator();
        ui.label("band:");
        egui::ComboBox::from_id_salt("band")
            .selected_text(match s.band {
                Band::None => "none",
                Band::MinMax => "min–max",
                Band::Interquartile => "interquartile",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.band, Band::Interquartile, "interquartile");
                ui.selectable_value(&mut s.band, Band::MinMax, "min–max");
                ui.selectable_value(&mut s.band, Band::None, "none");
            });
        ui.label("x:");
        egui::ComboBox::from_id_salt("xaxis")
            .selected_text(x_label(s.x))
            .show_ui(ui, |ui| {
                for x in [XAxis::Step, XAxis::Examples, XAxis::Epoch] {
                    ui.selectable_value(&mut s.x, x, x_label(x));
                }
            });
        ui.separator();
        ui.add(
            egui::Slider::new(&mut s.smoothing, 0.0..=0.99)
                .text("smoothing")
                .fixed_decimals(2),
        );
        ui.checkbox(&mut s.show_loss, "loss");
    });
    let store = ctx.runs.get(ctx.active);
    let n_probes = store.map(|r| r.n_probes()).unwrap_or(0);
    ui.horizontal_wrapped(|ui| {
        ui.label("probe:");
        let sel = match cv.probe {
            None => "all (mean and band)".to_string(),
            Some(p) => probe_label(store, p),
        };
        egui::ComboBox::from_id_salt("probe")
            .selected_text(sel)
            .width(260.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut cv.probe, None, "all (mean and band)");
                for p in 0..n_probes {
                    ui.selectable_value(&mut cv.probe, Some(p), probe_label(store, p));
                }
            });
        if !ctx.overlay.is_empty() {
            ui.separator();
            ui.label("overlay family:");
            let s = &mut cv.settings;
            egui::ComboBox::from_id_salt("overlay family")
                .selected_text(s.overlay_family.key())
                .show_ui(ui, |ui| {
                    for f in Family::ALL {
                        ui.selectable_value(&mut s.overlay_family, f, f.key());
                    }
                });
        }
    });
    if let Some(store) = ctx.runs.get(ctx.active) {
        let fams = store.run.header.families.clone();
        let s = &mut cv.settings;
        ui.horizontal_wrapped(|ui| {
            for (g, label) in GROUPS {
                let members: Vec<Family> =
                    fams.iter().copied().filter(|f| f.group() == g).collect();
                if members.is_empty() {
                    continue;
                }
                ui.label(egui::RichText::new(format!("{label}:")).strong());
                for f in members {
                    let mut on = !s.hidden.contains(&f);
                    let text = egui::RichText::new(f.key()).color(color(f));
                    if ui.checkbox(&mut on, text).changed() {
                        if on {
                            s.hidden.retain(|&h| h != f);
                        } else {
                            s.hidden.push(f);
                        }
                    }
                }
                ui.add_space(6.0);
            }
        });
    }
}

fn probe_label(store: Option<&RunStore>, p: usize) -> String {
    let prompt = store
        .and_then(|s| s.run.header.probes.get(p))
        .map(|pi| pi.prompt.clone())
        .unwrap_or_default();
    let short: String = prompt.chars().take(40).collect();
    format!("#{p}: {short}")
}

fn eval_xs(store: &RunStore, axis: XAxis) -> Vec<f64> {
    (0..store.n_evals())
        .map(|i| store.eval_x(i, axis))
        .collect()
}

/// The curves tab.
fn show(cv: &mut CurvesView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    if ctx.runs.is_empty() {
        cv.drawn.clear();
        ui.centered_and_justified(|ui| {
            ui.label("Press ▶ Start to train the embedded demo, or open a run (sample runs are listed on the left).");
        });
        return;
    }
    controls(cv, ctx, ui);
    let active = ctx.active.min(ctx.runs.len() - 1);
    if ctx.overlay.is_empty()
        && let Some(store) = ctx.runs.get(active)
        && store.n_evals() == 0
    {
        cv.drawn.clear();
        ui.centered_and_justified(|ui| {
            ui.label(if store.run.steps.is_empty() {
                "No evaluations yet."
            } else if store.run.header.probes.is_empty() {
                "This run has no evaluations (no probes were scored: TRL metrics only); its metrics are in the TRL metrics tab."
            } else {
                "No evaluations yet; the optimizer steps so far are in the TRL metrics tab."
            });
        });
        return;
    }
    let s = cv.settings.clone();
    let probe = cv.probe;
    // One bucket per 2 pixels: each keeps its min and max (1 point per pixel column).
    let buckets = (ui.available_width().max(100.0) / 2.0) as usize;
    let y = s.y_mode(ctx.runs.get(active));
    let cursor_x = ctx
        .runs
        .get(active)
        .and_then(|r| ctx.timeline.cursor_x(r, s.x));

    // Series: either every visible family of the active run, or one family across runs.
    let mut drawn: Vec<(Drawn, Vec<f64>)> = Vec::new();
    let overlaying = !ctx.overlay.is_empty();
    if overlaying {
        // The active run first, then the others in the order they were ticked.
        let mut runs = vec![active];
        runs.extend(ctx.overlay.iter().copied().filter(|&i| i != active));
        for (k, &i) in runs.iter().enumerate() {
            let Some(store) = ctx.runs.get(i) else {
                continue;
            };
            if !store.run.header.families.contains(&s.overlay_family) {
                continue;
            }
            let xs = eval_xs(store, s.x);
            let mut d = family_series(store, s.overlay_family, &s, y, probe, buckets, &xs);
            d.name = format!("{} · {}", store.name, s.overlay_family.key());
            d.color = run_color(k);
            d.width = 2.0;
            drawn.push((d, xs));
        }
    } else if let Some(store) = ctx.runs.get(active) {
        let xs = eval_xs(store, s.x);
        let fams = s.visible(&store.run.header.families);
        for f in fams {
            let d = family_series(store, f, &s, y, probe, buckets, &xs);
            drawn.push((d, xs.clone()));
        }
    }
    cv.drawn = drawn
        .iter()
        .map(|(d, _)| {
            let n = d.values.iter().filter(|v| v.is_finite()).count();
            (d.name.clone(), n)
        })
        .collect();
    // Phase starts (x, label); the first is the run's start.
    // Every plot of the tab spans the run's whole x range (a phase's loss included), so their
    // auto-fitted x axes agree with the link.
    let x_range = ctx.runs.get(active).and_then(|r| r.x_range(s.x));
    let marks: Vec<(f64, String)> = ctx
        .runs
        .get(active)
        .map(|r| r.phase_marks(s.x))
        .unwrap_or_default();

    // The loss, one part per phase (each gets its own plot and y scale).
    let loss: Vec<PhaseMetric> = if s.show_loss {
        ctx.runs
            .get(active)
            .map(|r| r.metric_by_phase("loss", s.x))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if overlaying {
        // The run legend (the family toggles are the legend otherwise).
        ui.horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new("runs:").strong());
            for (d, _) in &drawn {
                ui.colored_label(d.color, format!("━ {}", d.name));
            }
        });
    }
    let total_h = ui.available_height();
    let n_loss = loss.len();
    let main_h = match n_loss {
        0 => total_h - 8.0,
        1 => total_h * 0.74,
        n => total_h * (0.74 - 0.12 * (n - 1) as f32).max(0.5),
    };
    let group = egui::Id::unique("curves x");
    cv.shown_y = Some(y);
    cv.shown_phases = if marks.len() > 1 {
        marks.iter().map(|m| m.1.clone()).collect()
    } else {
        Vec::new()
    };
    cv.shown_loss.clear();
    let ylabel = match (y, s.quantity) {
        (YMode::Delta, q) => format!("Δ {} since t = 0", q.label()),
        (YMode::PhaseDelta, q) => format!("Δ {} since phase start", q.label()),
        (YMode::Absolute, q) => q.label().to_string(),
    };
    let hover_x = std::cell::Cell::new(None::<f64>);
    let resp = span_x(Plot::new("family curves"), x_range)
        .height(main_h.max(120.0))
        .x_axis_label(x_label(s.x))
        .y_axis_label(ylabel)
        .y_axis_min_width(56.0)
        .link_axis(group, [true, false])
        .link_cursor(group, [true, false])
        .show(ui, |pui| {
            for (d, _) in drawn.iter_mut() {
                for piece in d.pieces.iter_mut() {
                    if let Some((bx, lo, hi)) = &piece.band
                        && !bx.is_empty()
                    {
                        pui.add(
                            FilledArea::new(d.name.clone(), bx, lo, hi)
                                .fill_color(d.color.gamma_multiply(0.10))
                                .allow_hover(false),
                        );
                    }
                    for raw in piece.raw.take().unwrap_or_default() {
                        pui.line(
                            Line::new(d.name.clone(), PlotPoints::new(raw))
                                .color(d.color.gamma_multiply(0.3))
                                .width(1.0)
                                .allow_hover(false),
                        );
                    }
                    for seg in std::mem::take(&mut piece.line) {
                        pui.line(
                            Line::new(d.name.clone(), PlotPoints::new(seg))
                                .color(d.color)
                                .width(d.width),
                        );
                    }
                }
            }
            boundaries(pui, &marks, cursor_x);
            hover_x.set(pui.pointer_coordinate().map(|p| p.x));
        });
    label_phases(ui, &resp.transform, &marks);
    // Clicking a plot moves the cursor there.
    let hx = hover_x.get();
    if resp.response.clicked()
        && let (Some(x), Some(store)) = (hx, ctx.runs.get(active))
    {
        ctx.act(Action::Seek(store.eval_at_x(x, s.x)));
    }
    // Hover: the value of every series at the evaluation under the pointer.
    cv.hover.clear();
    if let Some(x) = hx.filter(|_| resp.response.hovered()) {
        for (d, xs) in &drawn {
            let i = xs.partition_point(|&v| v <= x).saturating_sub(1);
            if let Some(&v) = d.values.get(i) {
                cv.hover.push((d.name.clone(), d.color, v));
            }
        }
        let hover = cv.hover.clone();
        let xl = x_label(s.x);
        resp.response.on_hover_ui_at_pointer(|ui| {
            ui.label(format!("{xl} ≈ {x:.1}"));
            egui::Grid::new("hover values").show(ui, |ui| {
                for (n, c, v) in &hover {
                    ui.colored_label(*c, n);
                    ui.label(format!("{v:+.3}"));
                    ui.end_row();
                }
            });
        });
    }
    if n_loss > 0 {
        let h = ((total_h - main_h) / n_loss as f32 - 12.0).max(60.0);
        let x_span = |p: &PhaseMetric| match (p.xs.first(), p.xs.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        let all: f64 = loss.iter().map(x_span).sum::<f64>().max(f64::MIN_POSITIVE);
        for part in &loss {
            let ys = ema(&part.ys, s.smoothing);
            // Each phase gets the bucket columns of its share of the x range.
            let b = ((buckets as f64 * x_span(part) / all) as usize).max(16);
            let segs = decimate_segments(&part.xs, &ys, b);
            let name = if n_loss > 1 {
                format!("loss · {}", part.label)
            } else {
                "loss".to_string()
            };
            cv.shown_loss.push(name.clone());
            span_x(
                Plot::new(format!("loss under curves · {}", part.label)),
                x_range,
            )
            .height(h)
            .y_grid_spacer(egui_plot::uniform_grid_spacer(short_axis_steps))
            .y_axis_formatter(|m, _| {
                // As many decimals as the step needs (0.5 → "0.5", not egui_plot's "0").
                let d = (-m.step_size.log10().floor()).max(0.0) as usize;
                format!("{:.*}", d, m.value)
            })
            .y_axis_label(name.clone())
            .y_axis_min_width(56.0)
            .link_axis(group, [true, false])
            .link_cursor(group, [true, false])
            .show(ui, |pui| {
                for seg in segs {
                    pui.line(
                        Line::new(name.clone(), PlotPoints::new(seg)).color(Color32::from_gray(90)),
                    );
                }
                boundaries(pui, &marks, cursor_x);
            });
        }
    }
}

/// Grid steps of 1, 2 or 5 × 10ᵏ, at least 21 points apart (egui_plot labels steps wider than
/// 20), so a short plot (a phase's loss strip) still labels its y axis (egui_plot's default
/// steps are powers of 10 only).
fn short_axis_steps(input: egui_plot::GridInput) -> [f64; 3] {
    // base_step_size is the value of egui_plot's 8-point minimum grid spacing.
    let want = (input.base_step_size * 21.0 / 8.0).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(want.log10().floor());
    let m = want / p;
    let step = p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    [step, step * 5.0, step * 10.0]
}

/// A plot whose auto-fitted x axis covers at least `range`.
fn span_x(p: Plot<'_>, range: Option<(f64, f64)>) -> Plot<'_> {
    match range {
        Some((lo, hi)) => p.include_x(lo).include_x(hi),
        None => p,
    }
}

/// The phase boundaries (dashed grey, every phase start after the first) and the cursor.
fn boundaries(pui: &mut egui_plot::PlotUi, marks: &[(f64, String)], cursor_x: Option<f64>) {
    for (x, _) in marks.iter().skip(1) {
        pui.add(
            VLine::new("phase boundary", *x)
                .color(Color32::from_gray(140))
                .style(egui_plot::LineStyle::dashed_loose()),
        );
    }
    if let Some(x) = cursor_x {
        pui.add(
            VLine::new("cursor", x)
                .color(Color32::from_rgb(255, 140, 0))
                .width(2.0),
        );
    }
}

/// Each phase's name at the top of the plot, right of where it starts (runs with several
/// phases only).
fn label_phases(ui: &egui::Ui, t: &egui_plot::PlotTransform, marks: &[(f64, String)]) {
    if marks.len() < 2 {
        return;
    }
    let frame = *t.frame();
    let painter = ui.painter_at(frame);
    for (x, label) in marks {
        let px = t.position_from_point_x(*x);
        if px < frame.left() - 1.0 || px > frame.right() {
            continue;
        }
        painter.text(
            egui::pos2(px.max(frame.left()) + 4.0, frame.top() + 3.0),
            egui::Align2::LEFT_TOP,
            format!("▸ {label}"),
            egui::FontId::proportional(12.0),
            ui.visuals().weak_text_color(),
        );
    }
}

/// The TRL metrics tab: one small plot per metric, x axes linked, the cursor on each.
fn show_metrics(cv: &mut CurvesView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let active = ctx.active;
    let s = cv.settings.clone();
    let (cursor_step, cursor_x) = match ctx.runs.get(active) {
        Some(store) => (
            ctx.timeline
                .index(Some(store))
                .and_then(|i| store.run.evals.get(i))
                .map(|e| e.step),
            ctx.timeline.cursor_x(store, s.x),
        ),
        None => (None, None),
    };
    let Some(store) = ctx.runs.get(active) else {
        ui.label("No run open.");
        return;
    };
    let names = store.metric_names();
    let x_range = store.x_range(s.x);
    let marks = store.phase_marks(s.x);
    if names.is_empty() {
        ui.label("No optimizer steps recorded yet.");
        return;
    }
    let buckets = (ui.available_width() / 4.0).max(50.0) as usize;
    // The step record at or before the cursor (steps are in order).
    let at_idx = cursor_step.and_then(|cs| {
        store
            .run
            .steps
            .partition_point(|st| st.step <= cs)
            .checked_sub(1)
    });
    /// (name, line segments, raw segments under smoothing, value at the cursor)
    type Series = (
        String,
        Vec<Vec<[f64; 2]>>,
        Option<Vec<Vec<[f64; 2]>>>,
        Option<f64>,
    );
    let at_x = at_idx
        .and_then(|i| store.run.steps.get(i))
        .map(|st| match s.x {
            XAxis::Step => st.step as f64,
            XAxis::Examples => st.examples as f64,
            XAxis::Epoch => st.epoch,
        });
    let mut series: Vec<Series> = Vec::new();
    for name in &names {
        let at = at_idx.and_then(|i| store.run.steps[i].metrics.get(name).copied());
        // The loss of a run with several phases: one plot per phase, each on its own scale
        // (an SFT NLL of 60 would flatten a DPO loss of 0.69).
        let by_phase = if name == "loss" {
            store.metric_by_phase(name, s.x)
        } else {
            Vec::new()
        };
        if by_phase.len() > 1 {
            for part in by_phase {
                let ys_s = ema(&part.ys, s.smoothing);
                let pts = decimate_segments(&part.xs, &ys_s, buckets);
                let raw =
                    (s.smoothing > 0.0).then(|| decimate_segments(&part.xs, &part.ys, buckets));
                let inside = at_x.is_some_and(|x| {
                    part.xs.first().is_some_and(|&a| x >= a)
                        && part.xs.last().is_some_and(|&b| x <= b)
                });
                let label = format!("{name} · {}", part.label);
                series.push((label, pts, raw, at.filter(|_| inside)));
            }
            continue;
        }
        let m = store.metric(name, s.x);
        let (xs, ys) = (&m.xs, &m.ys);
        let ys_s = ema(ys, s.smoothing);
        let pts = decimate_segments(xs, &ys_s, buckets);
        let raw = (s.smoothing > 0.0).then(|| decimate_segments(xs, ys, buckets));
        series.push((name.clone(), pts, raw, at));
    }
    let cols = 2usize;
    let rows = series.len().div_ceil(cols);
    let h = ((ui.available_height() - 8.0 * rows as f32) / rows as f32).max(90.0);
    let w = ui.available_width() / cols as f32 - 8.0;
    let group = egui::Id::unique("metrics x");
    egui::ScrollArea::vertical().show(ui, |ui| {
        egui::Grid::new("metrics grid")
            .num_columns(cols)
            .show(ui, |ui| {
                for (k, (name, pts, raw, at)) in series.into_iter().enumerate() {
                    ui.vertical(|ui| {
                        ui.label(format!(
                            "{name}{}",
                            at.map(|v| format!("  = {v:.4} at the cursor"))
                                .unwrap_or_default()
                        ));
                        span_x(Plot::new(format!("metric {name}")), x_range)
                            .width(w)
                            .height(h - 20.0)
                            .x_axis_label(x_label(s.x))
                            .y_axis_min_width(56.0)
                            .link_axis(group, [true, false])
                            .link_cursor(group, [true, false])
                            .show(ui, |pui| {
                                for seg in raw.unwrap_or_default() {
                                    pui.line(Line::new(name.clone(), PlotPoints::new(seg)).color(
                                        Color32::from_rgb(31, 119, 180).gamma_multiply(0.3),
                                    ));
                                }
                                for seg in pts {
                                    pui.line(
                                        Line::new(name.clone(), PlotPoints::new(seg))
                                            .color(Color32::from_rgb(31, 119, 180)),
                                    );
                                }
                                boundaries(pui, &marks, cursor_x);
                            });
                    });
                    if k % cols == cols - 1 {
                        ui.end_row();
                    }
                }
            });
    });
}

impl View for CurvesView {
    /// The curves tab.
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show(self, ctx, ui);
    }
}

impl CurvesView {
    /// The TRL metrics tab (it shares the curves' x axis and smoothing).
    pub fn metrics_ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show_metrics(self, ctx, ui);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Event;

    /// One diverged evaluation in the middle of a run: the family's line stops before it and
    /// starts again after it (two segments), in the live store as in a reloaded file.
    #[test]
    fn a_non_finite_evaluation_leaves_a_gap_in_the_curve() {
        let spec = crate::synth::SynthSpec::tiny(12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gap.jsonl");
        let mut k = 0;
        crate::synth::write_edited(&path, spec, 3, |ev| {
            if let Event::Eval(e) = ev {
                k += 1;
                if k == 4 {
                    for v in e.logps.values_mut() {
                        v[0] = f64::NAN;
                    }
                }
            }
        })
        .unwrap();
        let store = RunStore::open(&path).unwrap();
        let s = CurveSettings::default();
        for y in [YMode::Absolute, YMode::Delta] {
            let xs = eval_xs(&store, s.x);
            let d = family_series(&store, Family::Chosen, &s, y, None, 200, &xs);
            assert_eq!(d.pieces.len(), 1);
            let segs = &d.pieces[0].line;
            assert_eq!(segs.len(), 2, "{y:?}: {segs:?}");
            assert_eq!(segs[0].len(), 3, "{y:?}");
            assert_eq!(segs[0].len() + segs[1].len(), k - 1, "{y:?}");
            assert!(segs.iter().flatten().all(|p| p[1].is_finite()));
        }
    }
}
