//! Frame-time benchmark of the app (`ldviz bench --frame`): a synthetic 10,000-step run of 13
//! families × 64 probes is loaded, then the cursor is scrubbed across it, one evaluation per
//! frame, in each tab. Each frame's CPU time covers the whole UI pass (every view re-reading the
//! store, plots bucketing their lines) and tessellation — everything but the GPU upload.

use std::time::Instant;

use anyhow::Result;

use super::{Launch, LdvizApp, Mode, Tab};
use crate::run::{Event, RunStore};
use crate::synth::{SynthSpec, events};

/// Frame CPU times in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FrameReport {
    pub evals: usize,
    pub steps: usize,
    pub probes: usize,
    pub families: usize,
    pub frames: usize,
    pub curves_median_ms: f64,
    pub curves_p95_ms: f64,
    pub tokens_median_ms: f64,
    pub metrics_median_ms: f64,
    pub first_frame_ms: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn p95(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 95 / 100).copied().unwrap_or(f64::NAN)
}

/// Runs `frames` scrubbing frames per tab at 1400×860 points.
pub fn frame_times(spec: SynthSpec, frames: usize) -> Result<FrameReport> {
    let evs = events(spec, 7)?;
    let mut it = evs.into_iter();
    let header = match it.next() {
        Some(Event::Header(h)) => *h,
        _ => anyhow::bail!("the synthetic run has no header"),
    };
    let mut store = RunStore::live("synthetic".into(), None, header);
    for ev in it {
        store.apply(ev);
    }
    let (n_evals, n_probes, n_fam) = (
        store.n_evals(),
        store.n_probes(),
        store.run.header.families.len(),
    );
    let mut app = LdvizApp::new(&Launch::default());
    app.runs.push(store);
    app.active = 0;
    app.timeline.mode = Mode::Paused;
    let ctx = egui::Context::default();
    let rect = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1400.0, 860.0));
    let mut time = 0.0;
    let mut frame = |app: &mut LdvizApp| {
        let input = egui::RawInput {
            screen_rect: Some(rect),
            time: Some(time),
            ..Default::default()
        };
        time += 1.0 / 60.0;
        let t = Instant::now();
        let out = ctx.run_ui(input, |ui| app.show(ui));
        let t_ui = t.elapsed().as_secs_f64() * 1000.0;
        let prims = ctx.tessellate(out.shapes, out.pixels_per_point);
        std::hint::black_box(prims);
        let total = t.elapsed().as_secs_f64() * 1000.0;
        if std::env::var_os("LDVIZ_FRAME_DEBUG").is_some() {
            eprintln!("ui {t_ui:.2} ms, tessellate {:.2} ms", total - t_ui);
        }
        total
    };
    // First frame: every series' statistics computed from scratch (then cached).
    app.tab = Tab::Curves;
    app.timeline.cursor = 0;
    let first = frame(&mut app);
    let mut result = Vec::new();
    for tab in [Tab::Curves, Tab::Tokens, Tab::Metrics] {
        app.tab = tab;
        for _ in 0..3 {
            frame(&mut app);
        }
        let mut v = Vec::with_capacity(frames);
        for k in 0..frames {
            // Scrub: one evaluation per frame across the whole run.
            app.timeline.cursor = (k * n_evals / frames.max(1)).min(n_evals - 1);
            v.push(frame(&mut app));
        }
        result.push(v);
    }
    let mut r = result.into_iter();
    let mut curves = r.next().unwrap_or_default();
    let mut tokens = r.next().unwrap_or_default();
    let mut metrics = r.next().unwrap_or_default();
    Ok(FrameReport {
        evals: n_evals,
        steps: spec.steps,
        probes: n_probes,
        families: n_fam,
        frames,
        curves_median_ms: median(&mut curves),
        curves_p95_ms: p95(&mut curves),
        tokens_median_ms: median(&mut tokens),
        metrics_median_ms: median(&mut metrics),
        first_frame_ms: first,
    })
}
