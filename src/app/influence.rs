//! The influence view (runs recorded with --influence-every): at the cursor, the latest
//! influence record as a heatmap (rows: observed probe × family; columns: the update's training
//! examples) of each example's share of the predicted change, or of the gradient cosine; the
//! predicted-vs-actual scatter of every record up to the cursor with its correlation; and the
//! accumulated predicted and actual change per family over the updates.

use egui::{Color32, RichText};
use egui_plot::{Line, Plot, PlotPoints, Points, VLine};

use super::curves::color;
use super::transfer::diverging;
use super::{View, ViewCtx};
use crate::data::Family;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CellValue {
    #[default]
    Contribution,
    Cosine,
}

#[derive(Default)]
pub struct InfluenceView {
    pub cell: CellValue,
}

fn show(v: &mut InfluenceView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let cursor = ctx.timeline.index(ctx.runs.get(ctx.active));
    let Some(store) = ctx.runs.get(ctx.active) else {
        ui.label("No run open.");
        return;
    };
    let accumulated = store.influence_accumulated();
    let run = &store.run;
    if run.influence.is_empty() {
        ui.label("This run has no influence records. Record them with --influence-every K (on by default for models up to 50M parameters: every 20 updates on the CPU in f32, every 100 on GPUs or in bf16).");
        return;
    }
    let cursor_step = cursor
        .and_then(|i| run.evals.get(i))
        .map(|e| e.step)
        .unwrap_or(usize::MAX);
    let upto = run.influence.partition_point(|r| r.step <= cursor_step);
    let Some(rec) = run.influence[..upto.max(1)].last() else {
        return;
    };
    let n_shown = upto.max(1);
    let fit = store.influence_fit(n_shown);
    let r_all = fit.r;
    let r_rec = crate::stats::pearson(&rec.predicted, &rec.actual);
    if upto == 0 {
        ui.label(
            RichText::new(format!(
                "the cursor (step {cursor_step}) is before the first influence record; showing it"
            ))
            .weak(),
        );
    }
    ui.horizontal_wrapped(|ui| {
        ui.label(
            RichText::new(format!(
                "update {} ({}, {} lr {:e}) · this update: Pearson r {:.4} · all {} records up to the cursor: r {:.4} over {} points · {:.0} ms",
                rec.step,
                rec.phase,
                rec.optimizer.key(),
                rec.lr,
                r_rec,
                n_shown,
                r_all,
                fit.points,
                rec.wall_ms
            ))
            .strong(),
        );
    });
    ui.horizontal(|ui| {
        ui.label("cells:");
        ui.selectable_value(
            &mut v.cell,
            CellValue::Contribution,
            "example's share of the predicted Δ",
        );
        ui.selectable_value(
            &mut v.cell,
            CellValue::Cosine,
            format!("gradient cosine ⟨∇f_o, ∇f_u⟩, f_u: {}", rec.target.key()),
        )
        .on_hover_text(rec.target.describe());
    });
    let cells: &Vec<Vec<f64>> = match v.cell {
        CellValue::Contribution => &rec.contributions,
        CellValue::Cosine => &rec.cosine,
    };
    let scale = cells.iter().flatten().fold(1e-12f64, |m, x| m.max(x.abs()));
    let probes = &run.header.probes;
    let text_of = |probe: usize, f: Family| -> String {
        let Some(pi) = probes.get(probe) else {
            return String::new();
        };
        if f == Family::Argmax {
            return "y* (greedy along chosen)".into();
        }
        pi.responses.get(&f).cloned().unwrap_or_default()
    };
    let record_text = |idx: usize| -> String {
        match probes.iter().find(|p| p.index == idx) {
            Some(p) => format!(
                "record #{idx}: {}",
                p.prompt.chars().take(80).collect::<String>()
            ),
            None => format!("record #{idx} of {}", run.header.data.path),
        }
    };
    let h_avail = ui.available_height();
    ui.horizontal_top(|ui| {
        // Heatmap.
        let rows = rec.observed.len().max(1);
        let cols = rec.batch.len().max(1);
        let cell_h = ((h_avail - 60.0) / rows as f32).clamp(6.0, 22.0);
        let cell_w = 46.0f32;
        ui.vertical(|ui| {
            let what = match v.cell {
                CellValue::Contribution => "share of the predicted Δ".to_string(),
                CellValue::Cosine => format!("cosine with {}", rec.target.describe()),
            };
            ui.label(format!("rows: observed probe × family · columns: the update's {cols} examples · {what} · scale ±{scale:.3}"));
            let size = egui::vec2(cell_w * cols as f32 + 150.0, cell_h * rows as f32);
            let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::hover());
            let painter = ui.painter_at(rect);
            let x0 = rect.min.x + 150.0;
            for (i, o) in rec.observed.iter().enumerate() {
                let y = rect.min.y + i as f32 * cell_h;
                painter.text(
                    egui::pos2(rect.min.x, y + cell_h * 0.5),
                    egui::Align2::LEFT_CENTER,
                    format!("#{} {}", o.probe, o.family.key()),
                    egui::FontId::proportional((cell_h - 2.0).clamp(8.0, 13.0)),
                    color(o.family),
                );
                for (j, val) in cells.get(i).into_iter().flatten().enumerate() {
                    let r = egui::Rect::from_min_size(
                        egui::pos2(x0 + j as f32 * cell_w, y),
                        egui::vec2(cell_w - 1.0, cell_h - 1.0),
                    );
                    painter.rect_filled(r, 0.0, diverging(val / scale));
                }
            }
            if let Some(pos) = resp.hover_pos()
                && pos.x >= x0
            {
                let i = (((pos.y - rect.min.y) / cell_h) as usize).min(rows - 1);
                let j = (((pos.x - x0) / cell_w) as usize).min(cols - 1);
                if let (Some(o), Some(&u)) = (rec.observed.get(i), rec.batch.get(j)) {
                    let short = |s: String| s.chars().take(90).collect::<String>();
                    let obs = short(text_of(o.probe, o.family));
                    let prompt = probes
                        .get(o.probe)
                        .map(|p| short(p.prompt.clone()))
                        .unwrap_or_default();
                    let (c, k) = (
                        rec.contributions.get(i).and_then(|r| r.get(j)).copied(),
                        rec.cosine.get(i).and_then(|r| r.get(j)).copied(),
                    );
                    let (pr, ac) = (rec.predicted.get(i), rec.actual.get(i));
                    let ex = record_text(u);
                    resp.on_hover_ui_at_pointer(|ui| {
                        ui.label(format!("observed: probe #{} {} — {prompt}", o.probe, o.family.key()));
                        ui.label(format!("response: {obs}"));
                        ui.label(format!("training example: {ex}"));
                        ui.label(format!(
                            "share of predicted Δ {:+.4} · cosine {:+.3} (f_u: {}) · predicted Δ {:+.4}, actual Δ {:+.4}",
                            c.unwrap_or(f64::NAN),
                            k.unwrap_or(f64::NAN),
                            rec.target.key(),
                            pr.copied().unwrap_or(f64::NAN),
                            ac.copied().unwrap_or(f64::NAN)
                        ));
                    });
                }
            }
        });
        ui.vertical(|ui| {
            let w = ui.available_width();
            let h = (h_avail - 60.0) / 2.0;
            // Predicted vs actual.
            ui.label(format!("actual vs predicted Δ log-prob (r = {r_all:.4}); the line is y = x"));
            Plot::new("influence scatter")
                .width(w)
                .height(h.max(100.0))
                .x_axis_label("predicted ⟨∇f, Δθ⟩")
                .y_axis_label("actual Δf")
                .show(ui, |pui| {
                    if let Some((lo, hi)) = fit.range {
                        pui.line(
                            Line::new("y = x", PlotPoints::new(vec![[lo, lo], [hi, hi]]))
                                .color(Color32::from_gray(120)),
                        );
                    }
                    for (f, pts) in fit.by_family {
                        pui.add(
                            Points::new(f.key(), PlotPoints::new(pts))
                                .color(color(f))
                                .radius(2.5),
                        );
                    }
                });
            // Accumulated over updates: mean over probes per family, predicted and actual.
            ui.label("accumulated Δ log-prob over the recorded updates (mean over observed probes): solid actual, faint predicted");
            Plot::new("influence accumulated")
                .width(w)
                .height(h.max(100.0))
                .x_axis_label("step")
                .show(ui, |pui| {
                    for (&f, acc) in accumulated {
                        let pts = |ys: &[f64]| -> Vec<[f64; 2]> {
                            acc.steps.iter().zip(ys).map(|(&x, &y)| [x, y]).collect()
                        };
                        let (pred, act) = (pts(&acc.predicted), pts(&acc.actual));
                        pui.line(
                            Line::new(format!("{} predicted", f.key()), PlotPoints::new(pred))
                                .color(color(f).gamma_multiply(0.4)),
                        );
                        pui.line(
                            Line::new(format!("{} actual", f.key()), PlotPoints::new(act))
                                .color(color(f))
                                .width(2.0),
                        );
                    }
                    if cursor_step != usize::MAX {
                        pui.add(
                            VLine::new("cursor", cursor_step as f64)
                                .color(Color32::from_rgb(255, 140, 0)),
                        );
                    }
                });
        });
    });
}

impl View for InfluenceView {
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show(self, ctx, ui);
    }
}
