//! The token inspector: for the selected probe and family (chosen, rejected, or y*) at the
//! cursor, the response's tokens colored by log-prob or by change since t = 0; for a selected
//! position, the top-k next tokens at t = 0 beside the cursor, with entropies. The squeezing
//! effect shows as probability mass piling onto each position's argmax token.

use egui::{Color32, RichText};

use super::{View, ViewCtx};
use crate::data::Family;
use crate::probe::{ProbeTrace, TokenTrace};
use crate::run::RunStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorBy {
    LogProb,
    Change,
}

pub struct TokensView {
    pub probe: usize,
    /// Chosen, Rejected or Argmax (the families with per-token data).
    pub family: Family,
    pub color_by: ColorBy,
    /// Selected position in the response.
    pub position: Option<usize>,
}

impl Default for TokensView {
    fn default() -> Self {
        TokensView {
            probe: 0,
            family: Family::Rejected,
            color_by: ColorBy::Change,
            position: None,
        }
    }
}

/// What the inspector shows for one probe and family at one evaluation.
pub struct TokenRow {
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    pub logp0: Vec<f32>,
    pub entropy: Vec<f32>,
    pub entropy0: Vec<f32>,
    pub top: Vec<Vec<(u32, f32)>>,
    pub top0: Vec<Vec<(u32, f32)>>,
}

fn trace(t: &ProbeTrace, f: Family) -> Option<&TokenTrace> {
    match f {
        Family::Chosen => Some(&t.chosen),
        Family::Rejected => Some(&t.rejected),
        _ => None,
    }
}

/// Gathers the row at evaluation `at` (with t = 0 beside it).
pub fn token_row(store: &RunStore, probe: usize, f: Family, at: usize) -> Option<TokenRow> {
    let e = store.run.evals.get(at)?;
    let e0 = store.run.evals.first()?;
    let (t, t0) = (e.tokens.get(probe)?, e0.tokens.get(probe)?);
    if f == Family::Argmax {
        // y* changes over time: the greedy token ids at the cursor, their log-probs at t = 0
        // are those of the t = 0 greedy tokens (position by position). Top-k is the chosen
        // response's, which is where y* is read from.
        return Some(TokenRow {
            ids: t.argmax.ids.clone(),
            logp: t.argmax.logp.clone(),
            logp0: t0.argmax.logp.clone(),
            entropy: t.chosen.entropy.clone(),
            entropy0: t0.chosen.entropy.clone(),
            top: t.chosen.top.clone(),
            top0: t0.chosen.top.clone(),
        });
    }
    let (tr, tr0) = (trace(t, f)?, trace(t0, f)?);
    let ids = store.run.header.probes.get(probe)?.tokens.get(&f)?.clone();
    Some(TokenRow {
        ids,
        logp: tr.logp.clone(),
        logp0: tr0.logp.clone(),
        entropy: tr.entropy.clone(),
        entropy0: tr0.entropy.clone(),
        top: tr.top.clone(),
        top0: tr0.top.clone(),
    })
}

/// Mean over positions of the top-1 probability (how peaked the model is on this response).
/// A token whose log-prob at t = 0 is below this sat in a valley of the model's distribution.
pub const VALLEY_LOGP: f32 = -3.0;

pub fn mean_top1(top: &[Vec<(u32, f32)>]) -> f64 {
    let v: Vec<f64> = top
        .iter()
        .filter_map(|t| t.first().map(|&(_, lp)| (lp as f64).exp()))
        .collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn logp_color(lp: f32) -> Color32 {
    // 0 → green, −8 and below → red.
    let t = (-lp / 8.0).clamp(0.0, 1.0);
    let r = (60.0 + 190.0 * t) as u8;
    let g = (200.0 - 150.0 * t) as u8;
    Color32::from_rgb(r, g, 70)
}

/// Token text made visible (spaces as ·, newlines as ⏎).
pub fn visible(s: &str) -> String {
    s.replace('\n', "⏎").replace(' ', "·")
}

fn show(v: &mut TokensView, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
    let Some(store) = ctx.runs.get(ctx.active) else {
        ui.label("No run open.");
        return;
    };
    let Some(at) = ctx.timeline.index(Some(store)) else {
        ui.label("No evaluations yet.");
        return;
    };
    let n_probes = store.n_probes();
    if n_probes == 0 {
        ui.label("This run has no probes.");
        return;
    }
    v.probe = v.probe.min(n_probes - 1);
    ui.horizontal_wrapped(|ui| {
        ui.label("probe:");
        let label = |p: usize| {
            let pr = &store.run.header.probes[p].prompt;
            format!("#{p}: {}", pr.chars().take(50).collect::<String>())
        };
        egui::ComboBox::from_id_salt("token probe")
            .selected_text(label(v.probe))
            .width(300.0)
            .show_ui(ui, |ui| {
                for p in 0..n_probes {
                    if ui.selectable_value(&mut v.probe, p, label(p)).changed() {
                        v.position = None;
                    }
                }
            });
        ui.separator();
        for (f, name) in [
            (Family::Chosen, "chosen"),
            (Family::Rejected, "rejected"),
            (Family::Argmax, "y* (argmax)"),
        ] {
            if ui.selectable_value(&mut v.family, f, name).changed() {
                v.position = None;
            }
        }
        ui.separator();
        ui.label("color:");
        ui.selectable_value(&mut v.color_by, ColorBy::Change, "change since t = 0");
        ui.selectable_value(&mut v.color_by, ColorBy::LogProb, "log-prob");
    });
    let e = &store.run.evals[at];
    let info = &store.run.header.probes[v.probe];
    ui.label(RichText::new(format!("prompt: {}", info.prompt)).weak());
    if let Some(err) = store.run.evals[at].tokens.parse_error() {
        ui.colored_label(
            Color32::from_rgb(200, 40, 40),
            format!(
                "error: evaluation at step {}: {err}",
                store.run.evals[at].step
            ),
        );
        return;
    }
    let Some(row) = token_row(store, v.probe, v.family, at) else {
        ui.label(
            "No per-token data for this probe (the run records it for chosen, rejected and y*).",
        );
        return;
    };
    let sum: f64 = row.logp.iter().map(|&x| x as f64).sum();
    let sum0: f64 = row.logp0.iter().map(|&x| x as f64).sum();
    ui.label(format!(
        "step {} · summed log-prob {:.3} (t = 0: {:.3}, Δ {:+.3}) · {} tokens",
        e.step,
        sum,
        sum0,
        sum - sum0,
        row.ids.len()
    ));
    let (p1, p10) = (mean_top1(&row.top), mean_top1(&row.top0));
    ui.label(format!(
        "mean top-1 probability over positions: {p10:.3} at t = 0 → {p1:.3} now{}",
        if p1 > p10 + 0.02 {
            "  (mass is moving onto the argmax tokens: squeezing)"
        } else {
            ""
        }
    ));
    // Squeezing acts where the response sat in a valley: there a push down moves mass onto
    // the argmax, even when the distribution flattens elsewhere.
    let valley: Vec<usize> = (0..row.logp0.len())
        .filter(|&i| row.logp0[i] < VALLEY_LOGP)
        .collect();
    if !valley.is_empty() {
        let pick = |t: &[Vec<(u32, f32)>]| -> Vec<Vec<(u32, f32)>> {
            valley.iter().filter_map(|&i| t.get(i).cloned()).collect()
        };
        let (v1, v10) = (mean_top1(&pick(&row.top)), mean_top1(&pick(&row.top0)));
        ui.label(format!(
            "at the {} valley positions (log-prob < {VALLEY_LOGP} at t = 0): {v10:.3} → {v1:.3}{}",
            valley.len(),
            if v1 > v10 + 0.02 {
                "  (mass is moving onto the argmax tokens there: squeezing)"
            } else {
                ""
            }
        ));
    }
    ui.add_space(4.0);

    let scale = row
        .logp
        .iter()
        .zip(&row.logp0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.5f32, f32::max);
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = egui::vec2(2.0, 4.0);
        for (i, &id) in row.ids.iter().enumerate() {
            let lp = row.logp.get(i).copied().unwrap_or(f32::NAN);
            let lp0 = row.logp0.get(i).copied().unwrap_or(f32::NAN);
            let bg = match v.color_by {
                ColorBy::LogProb => logp_color(lp),
                ColorBy::Change => super::transfer::diverging(f64::from((lp - lp0) / scale)),
            };
            let text = visible(&store.token_text(id));
            let selected = v.position == Some(i);
            let b = egui::Button::new(RichText::new(text).color(Color32::BLACK).monospace())
                .fill(bg)
                .stroke(if selected {
                    egui::Stroke::new(2.0, Color32::from_rgb(255, 140, 0))
                } else {
                    egui::Stroke::NONE
                });
            let r = ui.add(b).on_hover_text(format!(
                "position {i}: log-prob {lp:.3} (t = 0: {lp0:.3}, Δ {:+.3}), entropy {:.3}",
                lp - lp0,
                row.entropy.get(i).copied().unwrap_or(f32::NAN)
            ));
            if r.clicked() {
                v.position = Some(i);
            }
        }
    });
    ui.add_space(8.0);
    let top1 = |t: &[Vec<(u32, f32)>], i: usize| {
        t.get(i)
            .and_then(|x| x.first())
            .map(|&(_, lp)| lp.exp())
            .unwrap_or(0.0)
    };
    let pos = v.position.unwrap_or_else(|| {
        // Default: where the top-1 probability rose most (where squeezing shows).
        (0..row.ids.len())
            .max_by(|&a, &b| {
                let da = top1(&row.top, a) - top1(&row.top0, a);
                let db = top1(&row.top, b) - top1(&row.top0, b);
                da.total_cmp(&db)
            })
            .unwrap_or(0)
    });
    if v.position.is_none() {
        ui.label(
            RichText::new(
                "click a token to pick a position (showing the one whose top-1 probability rose most)",
            )
            .weak(),
        );
    }
    let target = row.ids.get(pos).copied();
    ui.label(
        RichText::new(format!(
            "position {pos}: next-token distribution (target token {})",
            target
                .map(|t| format!("\"{}\"", visible(&store.token_text(t))))
                .unwrap_or_default()
        ))
        .strong(),
    );
    ui.columns(2, |cols| {
        bars(
            &mut cols[0],
            store,
            "t = 0",
            row.top0.get(pos),
            row.entropy0.get(pos).copied(),
            target,
        );
        bars(
            &mut cols[1],
            store,
            &format!("step {} (cursor)", e.step),
            row.top.get(pos),
            row.entropy.get(pos).copied(),
            target,
        );
    });
}

fn bars(
    ui: &mut egui::Ui,
    store: &RunStore,
    title: &str,
    top: Option<&Vec<(u32, f32)>>,
    entropy: Option<f32>,
    target: Option<u32>,
) {
    ui.label(format!(
        "{title} · entropy {}",
        entropy
            .map(|h| format!("{h:.3} nats"))
            .unwrap_or_else(|| "–".into())
    ));
    let Some(top) = top else {
        ui.label("no top-k recorded");
        return;
    };
    let w = (ui.available_width() - 150.0).max(60.0);
    let mut rest = 1.0f32;
    for &(id, lp) in top {
        let p = lp.exp();
        rest -= p;
        ui.horizontal(|ui| {
            let text = visible(&store.token_text(id));
            let name = if Some(id) == target {
                RichText::new(format!("{text:>10}")).monospace().strong()
            } else {
                RichText::new(format!("{text:>10}")).monospace()
            };
            ui.label(name);
            let (rect, _) = ui.allocate_exact_size(egui::vec2(w, 14.0), egui::Sense::hover());
            let mut bar = rect;
            bar.set_width(w * p.clamp(0.0, 1.0));
            ui.painter().rect_filled(rect, 2.0, Color32::from_gray(230));
            let c = if Some(id) == target {
                Color32::from_rgb(0, 128, 0)
            } else {
                Color32::from_rgb(140, 40, 180)
            };
            ui.painter().rect_filled(bar, 2.0, c);
            ui.label(format!("{p:.3}"));
        });
    }
    ui.label(RichText::new(format!("rest of the vocabulary: {:.3}", rest.max(0.0))).weak());
}

impl View for TokensView {
    fn ui(&mut self, ctx: &ViewCtx<'_>, ui: &mut egui::Ui) {
        show(self, ctx, ui);
    }
}
