//! Export of what the curves view shows: PNG and SVG through the same plotters code as
//! `ldviz export`, and the run's data as CSV. Targets come from a native dialog or the export
//! path window (dialogs.rs).

use std::path::Path;

use anyhow::{Context, Result};

use super::curves::CurveSettings;
use super::{Action, DialogKind, LdvizApp};
use crate::export::plot::PlotOptions;
use crate::run::RunStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Png,
    Svg,
    Csv,
}

/// The plot options matching the curves view's settings.
pub fn plot_options(
    store: &RunStore,
    s: &CurveSettings,
    probe: Option<usize>,
    cursor: Option<f64>,
) -> PlotOptions {
    PlotOptions {
        families: s.visible(&store.run.header.families),
        y: s.y_mode(Some(store)),
        x: s.x,
        band: s.band,
        probe,
        cursor,
        quantity: s.quantity,
        ..PlotOptions::default()
    }
}

/// Writes one export of `runs[0]` (or, with several runs, of the overlay family across them);
/// returns a confirmation line.
pub fn write(
    t: Target,
    runs: &[&RunStore],
    s: &CurveSettings,
    probe: Option<usize>,
    cursor: Option<f64>,
    path: &Path,
) -> Result<String> {
    let Some(store) = runs.first() else {
        anyhow::bail!("nothing to export: open or record a run first");
    };
    // Said with the path: the plotting backend's own error names neither file nor folder.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        anyhow::bail!(
            "{}: cannot write there: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let mut o = plot_options(store, s, probe, cursor);
    if runs.len() > 1 {
        o.families = vec![s.overlay_family];
    }
    let pairs: Vec<(&str, &crate::run::Run)> =
        runs.iter().map(|r| (r.name.as_str(), &r.run)).collect();
    match t {
        Target::Png => {
            crate::export::plot::write_png_runs(&pairs, path, &o)
                .with_context(|| path.display().to_string())?;
            Ok(format!("wrote {}", path.display()))
        }
        Target::Svg => {
            crate::export::plot::write_svg_runs(&pairs, path, &o)
                .with_context(|| path.display().to_string())?;
            Ok(format!("wrote {}", path.display()))
        }
        Target::Csv => {
            let m = crate::export::csv::write_csv(&store.run, path)?;
            Ok(format!(
                "wrote {} and {} (data of {})",
                path.display(),
                m.display(),
                store.name
            ))
        }
    }
}

/// The "Export" menu of the top bar.
pub fn menu(app: &mut LdvizApp, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
    let ctx = ui.ctx().clone();
    let has_run = !app.runs.is_empty();
    ui.add_enabled_ui(has_run, |ui| {
        ui.menu_button("Export", |ui| {
            if ui.button("PNG…").clicked() {
                app.dialog(&ctx, DialogKind::SavePng);
                ui.close();
            }
            if ui.button("SVG…").clicked() {
                app.dialog(&ctx, DialogKind::SaveSvg);
                ui.close();
            }
            if ui.button("CSV…").clicked() {
                app.dialog(&ctx, DialogKind::SaveCsv);
                ui.close();
            }
            ui.separator();
            if ui
                .button("Save to path…")
                .on_hover_text("type the file's path (PNG, SVG or CSV) in a window")
                .clicked()
            {
                // An open export window keeps its format; a new one starts on PNG.
                let kind = app
                    .path_window(DialogKind::SavePng)
                    .map(|w| w.kind)
                    .unwrap_or(DialogKind::SavePng);
                actions.push(Action::PathWindow(kind));
                ui.close();
            }
        });
    });
}
