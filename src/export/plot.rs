//! Headless plots of a run with plotters (PNG and SVG), using the font bundled in
//! assets/fonts so it works on machines without fonts. The app's plot export calls the same
//! functions, so a PNG from the app and one from `ldviz export` are the same picture.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::data::{Family, FamilyGroup};
use crate::run::Run;
/// What the y axis shows: the change since t = 0 (absolute sums are not comparable across
/// families of different lengths), since the start of each phase, or the value itself.
pub use crate::run::store::YMode;
use crate::run::store::{phase_spans, piece_base, pieces};
use crate::run::{Band, Quantity, XAxis};
use crate::stats::quantile;

/// The bundled DejaVu Sans (also the app's fallback font for symbols).
pub static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType file compiled into the binary; a failure here would
        // show up as missing text, and the export tests check the output.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One family's curve: (x, mean, band low, band high) per evaluation, drawn as separate lines
/// from each index in `starts` (one line, `[0]`, unless re-zeroed per phase or broken by a gap:
/// evaluations whose mean or band is not finite are left out and end the line before them).
#[derive(Clone, Debug, PartialEq)]
pub struct FamilyCurve {
    pub family: Family,
    pub points: Vec<(f64, f64, f64, f64)>,
    pub starts: Vec<usize>,
}

impl FamilyCurve {
    /// The points of each separately drawn line.
    pub fn lines(&self) -> impl Iterator<Item = &[(f64, f64, f64, f64)]> {
        let ends = self
            .starts
            .iter()
            .skip(1)
            .copied()
            .chain([self.points.len()]);
        self.starts
            .iter()
            .zip(ends)
            .map(|(&a, b)| &self.points[a.min(b)..b])
    }
}

fn eval_x(e: &crate::run::EvalRecord, x: XAxis) -> f64 {
    match x {
        XAxis::Step => e.step as f64,
        XAxis::Examples => e.examples as f64,
        XAxis::Epoch => e.epoch,
    }
}

/// An RGB color per family: one hue family per group (chosen-like greens, rejected-like reds,
/// unrelated blues, non-human greys, argmax purple), so the paper's grouping reads at a glance.
pub fn family_color(f: Family) -> (u8, u8, u8) {
    match f {
        Family::Chosen => (0, 128, 0),
        Family::ChosenInitial => (102, 170, 0),
        Family::ChosenGptsemantic => (0, 170, 120),
        Family::ChosenGptformat => (120, 190, 80),
        Family::Rejected => (200, 0, 0),
        Family::RejectGptsemantic => (230, 90, 60),
        Family::RejectGptformat => (240, 150, 40),
        Family::IrrTrain => (30, 90, 220),
        Family::IrrTest => (90, 160, 240),
        Family::IrrHum => (150, 150, 255),
        Family::RandomPermute => (110, 110, 110),
        Family::RandomNonhum => (170, 170, 170),
        Family::Argmax => (140, 40, 180),
    }
}

/// The curves of `families` (all of the run's when empty): per evaluation, the mean over probes
/// and the band, as change since the first evaluation, since the start of the evaluation's
/// phase (one line per phase, each starting at 0 at the evaluation of the phase's starting
/// weights; the same definition as the app's, run::store) or absolute. With `probe = Some(i)`,
/// one probe's line (the band collapses onto it).
pub fn family_curves(
    run: &Run,
    families: &[Family],
    y: YMode,
    x: XAxis,
    band: Band,
    probe: Option<usize>,
    quantity: Quantity,
) -> Vec<FamilyCurve> {
    let fams: Vec<Family> = if families.is_empty() {
        run.header.families.clone()
    } else {
        families.to_vec()
    };
    let pieces = pieces(run, y);
    let mut out = Vec::new();
    for f in fams {
        if !run.evals.iter().any(|e| quantity.values(e, f).is_some()) {
            continue;
        }
        let mut points = Vec::new();
        let mut starts = Vec::new();
        for piece in &pieces {
            let base = piece_base(run, y, piece, quantity, f);
            let mut line = Vec::new();
            if let Some(l) = piece.lead.and_then(|l| run.evals.get(l))
                && quantity.values(l, f).is_some()
            {
                line.push((eval_x(l, x), 0.0, 0.0, 0.0));
            }
            for e in &run.evals[piece.evals.clone()] {
                let Some(vals) = quantity.values(e, f) else {
                    continue;
                };
                let mut v: Vec<f64> = vals
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| probe.is_none_or(|p| p == *i))
                    .map(|(i, &x)| match &base {
                        Some(b) => x - b.get(i).copied().unwrap_or(x),
                        None => x,
                    })
                    .collect();
                if v.is_empty() {
                    continue;
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                v.sort_by(f64::total_cmp);
                let (lo, hi) = match band {
                    Band::None => (mean, mean),
                    Band::MinMax => (v[0], v[v.len() - 1]),
                    Band::Interquartile => (quantile(&v, 0.25), quantile(&v, 0.75)),
                };
                if !(mean.is_finite() && lo.is_finite() && hi.is_finite()) {
                    // a gap: a diverged (NaN or infinite) evaluation ends the line
                    if !line.is_empty() {
                        starts.push(points.len());
                        points.append(&mut line);
                    }
                    continue;
                }
                line.push((eval_x(e, x), mean, lo, hi));
            }
            if !line.is_empty() {
                starts.push(points.len());
                points.extend(line);
            }
        }
        out.push(FamilyCurve {
            family: f,
            points,
            starts,
        });
    }
    out
}

/// Options of a family plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    pub families: Vec<Family>,
    pub y: YMode,
    pub x: XAxis,
    pub band: Band,
    pub probe: Option<usize>,
    /// Summed log-prob or one of the diagnostics (‖A‖_F, ‖π − e_y‖, energy).
    pub quantity: Quantity,
    /// A vertical cursor line at this x.
    pub cursor: Option<f64>,
    pub width: u32,
    pub height: u32,
    pub title: Option<String>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            families: Vec::new(),
            y: YMode::Delta,
            x: XAxis::Step,
            band: Band::Interquartile,
            probe: None,
            quantity: Quantity::LogProb,
            cursor: None,
            width: 1200,
            height: 700,
            title: None,
        }
    }
}

/// Colors of runs in an overlay (the app uses the same palette).
pub const RUN_COLORS: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
];

/// A curve to draw: legend label, color, line width.
struct Drawn {
    label: String,
    color: (u8, u8, u8),
    width: u32,
    curve: FamilyCurve,
}

/// One run: every family of `o.families`. Several runs: the first family of `o.families`
/// (chosen when empty) across runs, one color per run, labelled by run name.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(&str, &Run)],
    o: &PlotOptions,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the plot: {e}");
    let Some(&(_, run)) = runs.first() else {
        return Err(anyhow!("no run to plot"));
    };
    root.fill(&WHITE).map_err(err)?;
    let mut drawn: Vec<Drawn> = Vec::new();
    if runs.len() == 1 {
        for c in family_curves(run, &o.families, o.y, o.x, o.band, o.probe, o.quantity) {
            let width = if matches!(c.family, Family::Chosen | Family::Rejected | Family::Argmax) {
                3
            } else {
                2
            };
            drawn.push(Drawn {
                label: format!("{} ({})", c.family.key(), group_label(c.family.group())),
                color: family_color(c.family),
                width,
                curve: c,
            });
        }
    } else {
        let fam = o.families.first().copied().unwrap_or(Family::Chosen);
        for (k, (name, r)) in runs.iter().enumerate() {
            for c in family_curves(r, &[fam], o.y, o.x, o.band, o.probe, o.quantity) {
                drawn.push(Drawn {
                    label: format!("{name} · {}", fam.key()),
                    color: RUN_COLORS[k % RUN_COLORS.len()],
                    width: 2,
                    curve: c,
                });
            }
        }
    }
    let curves: Vec<&FamilyCurve> = drawn.iter().map(|d| &d.curve).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for c in curves.iter() {
        for &(x, _, lo, hi) in &c.points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(lo);
            y1 = y1.max(hi);
        }
    }
    if !x0.is_finite() {
        return Err(anyhow!("the run has no evaluations to plot"));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let what = match o.quantity {
        Quantity::LogProb => "summed log-prob",
        q => q.label(),
    };
    let (what_title, what_axis) = match (o.quantity, o.y) {
        (Quantity::LogProb, YMode::Delta) => (
            "mean Δ log-prob since step 0".to_string(),
            "Δ summed log-prob".to_string(),
        ),
        (Quantity::LogProb, YMode::PhaseDelta) => (
            "mean Δ log-prob since each phase's start".to_string(),
            "Δ summed log-prob since phase start".to_string(),
        ),
        (q, YMode::Delta) => (
            format!("mean Δ {} since step 0", q.label()),
            format!("Δ {}", q.label()),
        ),
        (q, YMode::PhaseDelta) => (
            format!("mean Δ {} since each phase's start", q.label()),
            format!("Δ {} since phase start", q.label()),
        ),
        (_, YMode::Absolute) => (format!("mean {what}"), what.to_string()),
    };
    let title = o.title.clone().unwrap_or_else(|| {
        if runs.len() > 1 {
            let fam = o.families.first().copied().unwrap_or(Family::Chosen);
            return format!("{} across {} runs — {what_title}", fam.key(), runs.len(),);
        }
        format!(
            "{} on {} — {what_title}",
            run.header.config.algo, run.header.model.arch,
        )
    });
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(match o.x {
            XAxis::Step => "step",
            XAxis::Examples => "examples",
            XAxis::Epoch => "epoch",
        })
        .y_desc(what_axis)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    // Phase boundaries (dashed grey) labelled with the phase, when there are several.
    let spans = phase_spans(run);
    for (k, p) in spans.iter().enumerate() {
        let at = run.evals.iter().find(|e| e.step >= p.step);
        let x = match (at, o.x) {
            (Some(e), _) => eval_x(e, o.x),
            (None, XAxis::Step) => p.step as f64,
            (None, _) => continue,
        };
        if k > 0 {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, y0 - pad), (x, y1 + pad)],
                    6,
                    4,
                    BLACK.mix(0.45).stroke_width(1),
                ))
                .map_err(err)?;
        }
        if spans.len() > 1 {
            // Just inside the top of the plotting area, right of the boundary.
            let (px, py) = chart.backend_coord(&(x, y1 + pad));
            root.draw(&Text::new(
                format!("▸ {}", p.label()),
                (px + 5, py + 5),
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.7)),
            ))
            .map_err(err)?;
        }
    }
    for d in &drawn {
        let c = &d.curve;
        let (r, g, b) = d.color;
        let color = RGBColor(r, g, b);
        let style = ShapeStyle::from(&color).stroke_width(d.width);
        for (k, line) in c.lines().enumerate() {
            if o.band != Band::None && line.len() > 1 {
                let mut poly: Vec<(f64, f64)> = line.iter().map(|p| (p.0, p.3)).collect();
                poly.extend(line.iter().rev().map(|p| (p.0, p.2)));
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.12))))
                    .map_err(err)?;
            }
            let series = chart
                .draw_series(LineSeries::new(line.iter().map(|p| (p.0, p.1)), style))
                .map_err(err)?;
            if k == 0 {
                series
                    .label(d.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    if let Some(cx) = o.cursor {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(cx, y0 - pad), (cx, y1 + pad)],
                RGBColor(255, 140, 0).stroke_width(2),
            )))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(if spans.len() > 1 {
            // Below the first phase's label.
            SeriesLabelPosition::Coordinate(8, 28)
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn group_label(g: FamilyGroup) -> &'static str {
    match g {
        FamilyGroup::ChosenLike => "chosen-like",
        FamilyGroup::RejectedLike => "rejected-like",
        FamilyGroup::Unrelated => "unrelated",
        FamilyGroup::NonHuman => "non-human",
        FamilyGroup::Argmax => "argmax",
    }
}

/// Writes the family plot as PNG.
pub fn write_png(run: &Run, path: &Path, o: &PlotOptions) -> Result<()> {
    write_png_runs(&[("", run)], path, o)
}

/// Writes the family plot as SVG.
pub fn write_svg(run: &Run, path: &Path, o: &PlotOptions) -> Result<()> {
    write_svg_runs(&[("", run)], path, o)
}

/// PNG of one run, or of one family across several (name, run) pairs.
pub fn write_png_runs(runs: &[(&str, &Run)], path: &Path, o: &PlotOptions) -> Result<()> {
    register_font();
    {
        let root = BitMapBackend::new(path, (o.width, o.height)).into_drawing_area();
        draw(&root, runs, o)?;
    }
    if !path.exists() {
        return Err(anyhow!("{}: the PNG was not written", path.display()));
    }
    Ok(())
}

/// SVG of one run, or of one family across several (name, run) pairs.
pub fn write_svg_runs(runs: &[(&str, &Run)], path: &Path, o: &PlotOptions) -> Result<()> {
    register_font();
    let root = SVGBackend::new(path, (o.width, o.height)).into_drawing_area();
    draw(&root, runs, o)
}

/// The family plot as an SVG string (for tests and the app).
pub fn svg_string(run: &Run, o: &PlotOptions) -> Result<String> {
    register_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (o.width, o.height)).into_drawing_area();
        draw(&root, &[("", run)], o)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Event;

    /// Evaluations with NaN or infinite log-probs (a diverged run) leave gaps: the curve skips
    /// them and starts a new line after them; the plot renders with finite axes.
    #[test]
    fn non_finite_evaluations_leave_gaps() {
        let spec = crate::synth::SynthSpec {
            steps: 8,
            eval_every: 2,
            probes: 2,
            tokens: 2,
            top_k: 1,
            vocab: 8,
        };
        let evs = crate::synth::events(spec, 1).unwrap();
        let Some(Event::Header(h)) = evs.first() else {
            panic!("header first")
        };
        let mut run = Run::new((**h).clone());
        for ev in evs.into_iter().skip(1) {
            run.apply(ev);
        }
        assert!(run.evals.len() >= 5);
        run.evals[2].logps.get_mut(&Family::Chosen).unwrap()[0] = f64::NAN;
        run.evals[3].logps.get_mut(&Family::Chosen).unwrap()[1] = f64::NEG_INFINITY;
        for band in [Band::None, Band::MinMax, Band::Interquartile] {
            let c = family_curves(
                &run,
                &[Family::Chosen],
                YMode::Absolute,
                XAxis::Step,
                band,
                None,
                Quantity::LogProb,
            );
            let c = &c[0];
            assert_eq!(c.points.len(), run.evals.len() - 2);
            let lines: Vec<_> = c.lines().collect();
            assert_eq!(lines.len(), 2, "{c:?}");
            assert_eq!(lines[0].len(), 2);
            assert!(
                c.points
                    .iter()
                    .all(|p| p.1.is_finite() && p.2.is_finite() && p.3.is_finite())
            );
        }
        let opts = PlotOptions {
            families: vec![Family::Chosen],
            ..PlotOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("gap.svg");
        write_svg(&run, &svg, &opts).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(!text.contains("NaN") && !text.contains("inf"));
    }
}
