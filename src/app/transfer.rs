//! The hallucination-transfer view: log π(y_j⁺ | x_i) for M probe prompts i and M probes'
//! chosen answers j, as change since t = 0 at the cursor (rows: prompts, columns: whose
//! answer), and the mean diagonal vs mean off-diagonal as curves. Off-diagonal rising during SFT
//! is one prompt's answer transferring to others — a path to hallucination.

use egui::{Color32, RichText};
use egui_plot::{Line, Plot, PlotPoints, VLine};

use super::{View, ViewCtx};
use crate::data::Family;
use crate::run::store::decimate_segments;

/// Blue for a rise, red for a fall, white for none; `t` in [-1, 1].
pub fn diverging(t: f64) -> Color32 {
    let t = t.clamp(-1.0, 1.0);
    if t >= 0.0 {
        let k = (255.0 * (1.0 - t)) as u8;
        Color32::from_rgb(k, k.saturating_add(((255 - k) as f64 * 0.3) as u8), 255)
    } else {
        let k = (255.0 * (1.0 + t)) as u8;
        Color32::from_rgb(255, k, k)
    }
}

/// The transfer tab: the transfer matrix's change at the cursor and its diagonal against its
/// off-diagonal over the run.
#[derive(Default)]
pub struct TransferView;

impl View for TransferView {
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show(ctx, ui);
    }
}

fn show(ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let active = ctx.active;
    let Some(store) = ctx.runs.get(active) else {
        ui.label("No run open.");
        return;
    };
    let Some(at) = ctx.timeline.index(Some(store)) else {
        ui.label("No evaluations yet.");
        return;
    };
    // The latest evaluation at or before the cursor that scored the matrix (it is scored every
    // --transfer-every examples and at phase boundaries).
    let at = (0..=at)
        .rev()
        .find(|&i| !store.run.evals[i].transfer.is_empty())
        .unwrap_or(at);
    let Some(delta) = store.transfer_delta(at) else {
        ui.label("This run has no transfer matrix. Record one with --transfer-prompts M (the default, 16; the train panel records it too).");
        return;
    };
    let m = delta.len();
    let now = store.run.evals[at].transfer.clone();
    let x_axis = ctx.x;
    let cursor_x = store.eval_x(at, x_axis);
    let step = store.run.evals[at].step;
    let prompts: Vec<String> = store.run.header.probes[..m.min(store.n_probes())]
        .iter()
        .map(|p| p.prompt.clone())
        .collect();
    let answers: Vec<String> = store.run.header.probes[..m.min(store.n_probes())]
        .iter()
        .map(|p| {
            p.responses
                .get(&Family::Chosen)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let xs: Vec<f64> = (0..store.n_evals())
        .map(|i| store.eval_x(i, x_axis))
        .collect();
    let (diag, off) = store.transfer_means();
    let (dv, ov) = (
        diag.get(at).copied().unwrap_or(f64::NAN),
        off.get(at).copied().unwrap_or(f64::NAN),
    );
    let buckets = (ui.available_width().max(100.0) / 2.0) as usize;
    let dline = decimate_segments(&xs, diag, buckets);
    let oline = decimate_segments(&xs, off, buckets);
    ui.label(
        RichText::new(format!(
            "step {step}: mean diagonal Δ {dv:+.3} (a prompt's own answer), mean off-diagonal Δ {ov:+.3} (other prompts' answers) · {m} prompts"
        ))
        .strong(),
    );
    let scale = delta.iter().flatten().fold(0.5f64, |a, v| a.max(v.abs()));
    let side = (ui.available_height() - 80.0)
        .min(ui.available_width() * 0.45)
        .max(160.0);
    ui.horizontal_top(|ui| {
        // Heatmap.
        let cell = side / m as f32;
        ui.vertical(|ui| {
            ui.label(format!(
                "Δ log π(answer j | prompt i) since t = 0, color scale ±{scale:.2}"
            ));
            let (rect, resp) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
            let painter = ui.painter_at(rect);
            for (i, row) in delta.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let r = egui::Rect::from_min_size(
                        rect.min + egui::vec2(j as f32 * cell, i as f32 * cell),
                        egui::vec2(cell - 1.0, cell - 1.0),
                    );
                    painter.rect_filled(r, 0.0, diverging(v / scale));
                }
            }
            if let Some(pos) = resp.hover_pos() {
                let j = (((pos.x - rect.min.x) / cell) as usize).min(m - 1);
                let i = (((pos.y - rect.min.y) / cell) as usize).min(m - 1);
                let short = |s: &str| s.chars().take(80).collect::<String>();
                resp.on_hover_ui_at_pointer(|ui| {
                    ui.label(format!("prompt #{i}: {}", short(&prompts[i])));
                    ui.label(format!("answer of probe #{j}: {}", short(&answers[j])));
                    ui.label(format!(
                        "log π now {:.3}, Δ since t = 0 {:+.3}{}",
                        now[i][j],
                        delta[i][j],
                        if i == j { " (its own answer)" } else { "" }
                    ));
                });
            }
            ui.label(RichText::new("rows: prompts · columns: whose answer").weak());
        });
        // Diagonal vs off-diagonal over time.
        Plot::new("transfer means")
            .height(side)
            .x_axis_label(match x_axis {
                crate::run::XAxis::Step => "step",
                crate::run::XAxis::Examples => "examples",
                crate::run::XAxis::Epoch => "epoch",
            })
            .y_axis_label("mean Δ log-prob since t = 0")
            .show(ui, |pui| {
                for seg in dline {
                    pui.line(
                        Line::new("diagonal (own answer)", PlotPoints::new(seg))
                            .color(Color32::from_rgb(0, 128, 0))
                            .width(2.0),
                    );
                }
                for seg in oline {
                    pui.line(
                        Line::new(
                            "off-diagonal (other prompts' answers)",
                            PlotPoints::new(seg),
                        )
                        .color(Color32::from_rgb(30, 90, 220))
                        .width(2.0),
                    );
                }
                pui.add(VLine::new("cursor", cursor_x).color(Color32::from_rgb(255, 140, 0)));
            });
    });
    ui.horizontal(|ui| {
        ui.colored_label(Color32::from_rgb(0, 128, 0), "━ diagonal (own answer)");
        ui.colored_label(
            Color32::from_rgb(30, 90, 220),
            "━ off-diagonal (other prompts' answers)",
        );
    });
}
