//! `ldviz export`: a run's data as CSV and its family plot as PNG/SVG.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::export::plot::PlotOptions;
use crate::run::{Band, Quantity, XAxis, YMode};

#[derive(Args)]
pub struct ExportArgs {
    run: PathBuf,
    /// Long CSV step,examples,probe,family,logp (metrics go to FILE-stem.metrics.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Which plot to render for --png/--svg.
    #[arg(long, value_enum, default_value = "families")]
    plot: PlotKind,
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Absolute summed log-probs instead of the change since step 0 (= --y absolute).
    #[arg(long, conflicts_with = "y")]
    absolute: bool,
    /// What y shows: the change since step 0, since each phase's start (every phase re-zeroed
    /// at its starting weights), or the value [default: phase-delta for runs with several
    /// phases, else delta, as in the app].
    #[arg(long, value_enum)]
    y: Option<YMode>,
    #[arg(long, value_enum, default_value_t = PlotOptions::default().x)]
    x: XAxis,
    #[arg(long, value_enum, default_value_t = PlotOptions::default().band)]
    band: Band,
    /// Plot a diagnostic (‖A‖_F, ‖π − e_y‖, energy) instead of the summed log-prob.
    #[arg(long, value_enum, default_value_t = PlotOptions::default().quantity)]
    quantity: Quantity,
    /// Comma-separated family keys [default: all of the run's].
    #[arg(long)]
    families: Option<String>,
    /// One probe's lines (its position in the run's probe list) instead of the mean.
    #[arg(long)]
    probe: Option<usize>,
    #[arg(long, default_value_t = 1200)]
    width: u32,
    #[arg(long, default_value_t = 700)]
    height: u32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlotKind {
    Families,
}

pub fn run(a: ExportArgs) -> Result<()> {
    if a.csv.is_none() && a.png.is_none() && a.svg.is_none() {
        bail!("nothing to export: pass --csv FILE, --png FILE and/or --svg FILE");
    }
    let run = crate::run::read_run(&a.run)?;
    if let Some(csv) = &a.csv {
        let m = crate::export::csv::write_csv(&run, csv)?;
        eprintln!("wrote {} and {}", csv.display(), m.display());
    }
    let families = match &a.families {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| {
                let k = k.trim();
                let f = crate::data::Family::from_key(k)
                    .ok_or_else(|| anyhow::anyhow!("--families: unknown family \"{k}\""))?;
                if !run.header.families.contains(&f) {
                    bail!("--families: the run has no \"{k}\" family");
                }
                Ok(f)
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if let Some(p) = a.probe
        && p >= run.header.probes.len()
    {
        bail!(
            "--probe {p}: the run has {} probes (0..{})",
            run.header.probes.len(),
            run.header.probes.len()
        );
    }
    let PlotKind::Families = a.plot;
    let quantity = a.quantity;
    if (a.png.is_some() || a.svg.is_some())
        && quantity != crate::run::Quantity::LogProb
        && !run.evals.is_empty()
        && !run.evals.iter().any(|e| {
            run.header
                .families
                .iter()
                .any(|f| quantity.values(e, *f).is_some())
        })
    {
        bail!(
            "--quantity: the run has no {} values (runs recorded before ldviz computed them lack them)",
            quantity.label()
        );
    }
    let o = PlotOptions {
        families,
        y: match (a.y, a.absolute) {
            (_, true) => YMode::Absolute,
            (Some(y), false) => y,
            (None, false) => YMode::default_for(&run.header),
        },
        x: a.x,
        quantity,
        band: a.band,
        probe: a.probe,
        cursor: None,
        width: a.width,
        height: a.height,
        title: None,
    };
    if let Some(p) = &a.png {
        crate::export::plot::write_png(&run, p, &o)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.svg {
        crate::export::plot::write_svg(&run, p, &o)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
