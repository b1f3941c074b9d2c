//! The curves view: per family the mean over probes with a band (min–max or interquartile), as
//! change since t = 0 (default) or absolute; families grouped as in the paper with toggles; one
//! probe's lines on request; debiased-EMA smoothing with the raw line kept faint; x as step,
//! examples or epoch; hover values of every series; runs overlaid; the TRL metrics below.
//! Lines are bucketed to min/max per pixel column, never silently thinned.

use egui::Color32;
use egui_plot::{FilledArea, Line, Plot, PlotPoints, VLine};

use super::LdvizApp;
use crate::data::{Family, FamilyGroup};
use crate::export::plot::family_color;
use crate::run::store::{decimate, ema, envelope};
use crate::run::{Quantity, RunStore, SeriesKey, XAxis};

/// The band drawn around each mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BandKind {
    None,
    MinMax,
    Interquartile,
}

/// What the curves show (persisted between launches).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurveSettings {
    /// Change since t = 0 (true, the default) or absolute summed log-probs.
    pub delta: bool,
    pub band: BandKind,
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
}

impl Default for CurveSettings {
    fn default() -> Self {
        CurveSettings {
            delta: true,
            band: BandKind::Interquartile,
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
    /// Runs (indices into the app's runs) overlaid for one family.
    pub overlay: Vec<usize>,
    /// Values under the pointer, for the hover list: (series name, color, value).
    pub hover: Vec<(String, Color32, f64)>,
    /// What the last frame plotted: (series name, number of evaluations with a value).
    pub drawn: Vec<(String, usize)>,
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

/// One series ready to draw.
pub struct Drawn {
    pub name: String,
    pub color: Color32,
    pub line: Vec<[f64; 2]>,
    pub raw: Option<Vec<[f64; 2]>>,
    pub band: Option<(Vec<f64>, Vec<f64>, Vec<f64>)>,
    pub width: f32,
    /// Smoothed value per evaluation (for hover and cursor read-outs).
    pub values: Vec<f64>,
}

/// Builds one family's series of a run: statistics from the store's cache, smoothing,
/// bucketing to `buckets` columns.
pub fn family_series(
    store: &mut RunStore,
    family: Family,
    s: &CurveSettings,
    probe: Option<usize>,
    buckets: usize,
    xs: &[f64],
) -> Drawn {
    let key = SeriesKey {
        family,
        quantity: s.quantity,
        delta: s.delta,
        probe,
    };
    let st = store.stats(key);
    let values = ema(&st.mean, s.smoothing);
    let line = decimate(xs, &values, buckets);
    let raw = (s.smoothing > 0.0).then(|| decimate(xs, &st.mean, buckets));
    // Bands are envelopes (lowest low, highest high per bucket), so coarser buckets stay
    // faithful: every probe's excursion is still covered.
    let band_buckets = (buckets / 3).max(16);
    let band = match (probe, s.band) {
        (Some(_), _) | (None, BandKind::None) => None,
        (None, BandKind::MinMax) => Some(envelope(xs, &st.min, &st.max, band_buckets)),
        (None, BandKind::Interquartile) => Some(envelope(xs, &st.q1, &st.q3, band_buckets)),
    };
    let width = if matches!(family, Family::Chosen | Family::Rejected | Family::Argmax) {
        2.5
    } else {
        1.5
    };
    Drawn {
        name: family.key().to_string(),
        color: color(family),
        line,
        raw,
        band,
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

fn controls(app: &mut LdvizApp, ui: &mut egui::Ui) {
    let s = &mut app.curves.settings;
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_id_salt("quantity")
            .selected_text(s.quantity.label())
            .show_ui(ui, |ui| {
                for q in Quantity::ALL {
                    ui.selectable_value(&mut s.quantity, q, q.label());
                }
            })
            .response
            .on_hover_text("what is plotted per probe: the summed log-prob, or a diagnostic of PAPER.md §5 (mean over response positions)");
        ui.label("y:");
        ui.selectable_value(&mut s.delta, true, "Δ since t = 0");
        ui.selectable_value(&mut s.delta, false, "absolute");
        ui.separator();
        ui.label("band:");
        egui::ComboBox::from_id_salt("band")
            .selected_text(match s.band {
                BandKind::None => "none",
                BandKind::MinMax => "min–max",
                BandKind::Interquartile => "interquartile",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut s.band, BandKind::Interquartile, "interquartile");
                ui.selectable_value(&mut s.band, BandKind::MinMax, "min–max");
                ui.selectable_value(&mut s.band, BandKind::None, "none");
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
    let store = app.runs.get(app.active);
    let n_probes = store.map(|r| r.n_probes()).unwrap_or(0);
    ui.horizontal_wrapped(|ui| {
        ui.label("probe:");
        let sel = match app.curves.probe {
            None => "all (mean and band)".to_string(),
            Some(p) => probe_label(store, p),
        };
        egui::ComboBox::from_id_salt("probe")
            .selected_text(sel)
            .width(260.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut app.curves.probe, None, "all (mean and band)");
                for p in 0..n_probes {
                    ui.selectable_value(&mut app.curves.probe, Some(p), probe_label(store, p));
                }
            });
        if !app.curves.overlay.is_empty() {
            ui.separator();
            ui.label("overlay family:");
            let s = &mut app.curves.settings;
            egui::ComboBox::from_id_salt("overlay family")
                .selected_text(s.overlay_family.key())
                .show_ui(ui, |ui| {
                    for f in Family::ALL {
                        ui.selectable_value(&mut s.overlay_family, f, f.key());
                    }
                });
        }
    });
    if let Some(store) = app.runs.get(app.active) {
        let fams = store.run.header.families.clone();
        let s = &mut app.curves.settings;
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
pub fn show(app: &mut LdvizApp, ui: &mut egui::Ui) {
    if app.runs.is_empty() {
        app.curves.drawn.clear();
        ui.centered_and_justified(|ui| {
            ui.label("Press ▶ Start to train the embedded demo, or open a run (sample runs are listed on the left).");
        });
        return;
    }
    controls(app, ui);
    let s = app.curves.settings.clone();
    let probe = app.curves.probe;
    // One bucket per 2 pixels: each keeps its min and max (1 point per pixel column).
    let buckets = (ui.available_width().max(100.0) / 2.0) as usize;
    let active = app.active.min(app.runs.len() - 1);
    let cursor_idx = app.timeline.index(app.runs.get(active));
    let cursor_x = app
        .runs
        .get(active)
        .and_then(|r| app.timeline.cursor_x(r, s.x));

    // Series: either every visible family of the active run, or one family across runs.
    let mut drawn: Vec<(Drawn, Vec<f64>)> = Vec::new();
    let overlaying = !app.curves.overlay.is_empty();
    if overlaying {
        // The active run first, then the others in the order they were ticked.
        let mut runs = vec![active];
        runs.extend(app.curves.overlay.iter().copied().filter(|&i| i != active));
        for (k, &i) in runs.iter().enumerate() {
            let Some(store) = app.runs.get_mut(i) else {
                continue;
            };
            if !store.run.header.families.contains(&s.overlay_family) {
                continue;
            }
            let xs = eval_xs(store, s.x);
            let mut d = family_series(store, s.overlay_family, &s, probe, buckets, &xs);
            d.name = format!("{} · {}", store.name, s.overlay_family.key());
            d.color = run_color(k);
            d.width = 2.0;
            drawn.push((d, xs));
        }
    } else if let Some(store) = app.runs.get_mut(active) {
        let xs = eval_xs(store, s.x);
        let fams = s.visible(&store.run.header.families);
        for f in fams {
            let d = family_series(store, f, &s, probe, buckets, &xs);
            drawn.push((d, xs.clone()));
        }
    }
    app.curves.drawn = drawn
        .iter()
        .map(|(d, _)| {
            let n = d.values.iter().filter(|v| v.is_finite()).count();
            (d.name.clone(), n)
        })
        .collect();
    let phases: Vec<f64> = app
        .runs
        .get(active)
        .map(|r| {
            r.run
                .phases
                .iter()
                .filter(|p| p.step > 0)
                .filter_map(|p| {
                    let i = r.run.evals.iter().position(|e| e.step >= p.step)?;
                    Some(r.eval_x(i, s.x))
                })
                .collect()
        })
        .unwrap_or_default();

    let loss = if s.show_loss {
        app.runs.get_mut(active).map(|r| {
            let (xs, ys) = r.metric("loss", s.x);
            (xs.to_vec(), ys.to_vec())
        })
    } else {
        None
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
    let main_h = if loss.is_some() {
        total_h * 0.74
    } else {
        total_h - 8.0
    };
    let group = egui::Id::unique("curves x");
    let ylabel = if s.delta {
        format!("Δ {} since t = 0", s.quantity.label())
    } else {
        s.quantity.label().to_string()
    };
    let hover_x = std::cell::Cell::new(None::<f64>);
    let resp = Plot::new("family curves")
        .height(main_h.max(120.0))
        .x_axis_label(x_label(s.x))
        .y_axis_label(ylabel)
        .y_axis_min_width(56.0)
        .link_axis(group, [true, false])
        .link_cursor(group, [true, false])
        .show(ui, |pui| {
            for (d, _) in drawn.iter_mut() {
                if let Some((bx, lo, hi)) = &d.band
                    && !bx.is_empty()
                {
                    pui.add(
                        FilledArea::new(d.name.clone(), bx, lo, hi)
                            .fill_color(d.color.gamma_multiply(0.10))
                            .allow_hover(false),
                    );
                }
                if let Some(raw) = d.raw.take() {
                    pui.line(
                        Line::new(d.name.clone(), PlotPoints::new(raw))
                            .color(d.color.gamma_multiply(0.3))
                            .width(1.0)
                            .allow_hover(false),
                    );
                }
                pui.line(
                    Line::new(d.name.clone(), PlotPoints::new(std::mem::take(&mut d.line)))
                        .color(d.color)
                        .width(d.width),
                );
            }
            for &x in &phases {
                pui.add(
                    VLine::new("phase boundary", x)
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
            hover_x.set(pui.pointer_coordinate().map(|p| p.x));
        });
    // Clicking a plot moves the cursor there.
    let hx = hover_x.get();
    if resp.response.clicked()
        && let (Some(x), Some(store)) = (hx, app.runs.get(active))
    {
        app.timeline.cursor = store.eval_at_x(x, s.x);
        app.timeline.mode = super::Mode::Paused;
    }
    // Hover: the value of every series at the evaluation under the pointer.
    app.curves.hover.clear();
    if let Some(x) = hx.filter(|_| resp.response.hovered()) {
        for (d, xs) in &drawn {
            let i = xs.partition_point(|&v| v <= x).saturating_sub(1);
            if let Some(&v) = d.values.get(i) {
                app.curves.hover.push((d.name.clone(), d.color, v));
            }
        }
        let hover = app.curves.hover.clone();
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
    let _ = cursor_idx;
    if let Some((xs, ys)) = loss {
        let ys_s = ema(&ys, s.smoothing);
        let pts = decimate(&xs, &ys_s, buckets);
        Plot::new("loss under curves")
            .height((total_h - main_h - 12.0).max(60.0))
            .y_axis_label("loss")
            .y_axis_min_width(56.0)
            .link_axis(group, [true, false])
            .link_cursor(group, [true, false])
            .show(ui, |pui| {
                pui.line(Line::new("loss", PlotPoints::new(pts)).color(Color32::from_gray(90)));
                if let Some(x) = cursor_x {
                    pui.add(VLine::new("cursor", x).color(Color32::from_rgb(255, 140, 0)));
                }
            });
    }
}

/// The TRL metrics tab: one small plot per metric, x axes linked, the cursor on each.
pub fn show_metrics(app: &mut LdvizApp, ui: &mut egui::Ui) {
    let active = app.active;
    let s = app.curves.settings.clone();
    let (cursor_step, cursor_x) = match app.runs.get(active) {
        Some(store) => (
            app.timeline
                .index(Some(store))
                .and_then(|i| store.run.evals.get(i))
                .map(|e| e.step),
            app.timeline.cursor_x(store, s.x),
        ),
        None => (None, None),
    };
    let Some(store) = app.runs.get_mut(active) else {
        ui.label("No run open.");
        return;
    };
    let names = store.metric_names();
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
    type Series = (String, Vec<[f64; 2]>, Option<Vec<[f64; 2]>>, Option<f64>);
    let series: Vec<Series> = names
        .iter()
        .map(|name| {
            let at = at_idx.and_then(|i| store.run.steps[i].metrics.get(name).copied());
            let (xs, ys) = store.metric(name, s.x);
            let ys_s = ema(ys, s.smoothing);
            let pts = decimate(xs, &ys_s, buckets);
            let raw = (s.smoothing > 0.0).then(|| decimate(xs, ys, buckets));
            (name.clone(), pts, raw, at)
        })
        .collect();
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
                        Plot::new(format!("metric {name}"))
                            .width(w)
                            .height(h - 20.0)
                            .x_axis_label(x_label(s.x))
                            .y_axis_min_width(56.0)
                            .link_axis(group, [true, false])
                            .link_cursor(group, [true, false])
                            .show(ui, |pui| {
                                if let Some(raw) = raw {
                                    pui.line(Line::new(name.clone(), PlotPoints::new(raw)).color(
                                        Color32::from_rgb(31, 119, 180).gamma_multiply(0.3),
                                    ));
                                }
                                pui.line(
                                    Line::new(name.clone(), PlotPoints::new(pts))
                                        .color(Color32::from_rgb(31, 119, 180)),
                                );
                                if let Some(x) = cursor_x {
                                    pui.add(
                                        VLine::new("cursor", x)
                                            .color(Color32::from_rgb(255, 140, 0)),
                                    );
                                }
                            });
                    });
                    if k % cols == cols - 1 {
                        ui.end_row();
                    }
                }
            });
    });
}
