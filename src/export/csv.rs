//! `ldviz export RUN --csv FILE`: a long table `step,examples,probe,family,logp` (probe = the
//! record's index in the data file) and, beside it, `FILE-stem.metrics.csv` with one row per
//! optimizer step: `step,examples,epoch,phase,<metric>...` (TRL metric names). Non-finite
//! values are written `nan`, `inf`, `-inf`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::run::Run;

/// The metrics CSV path that goes with `csv` (`out.csv` → `out.metrics.csv`).
pub fn metrics_path(csv: &Path) -> PathBuf {
    let stem = csv
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    csv.with_file_name(format!("{stem}.metrics.csv"))
}

/// A number as the CSVs write it: non-finite values as `nan`, `inf`, `-inf` (which pandas and
/// most CSV readers take as floats).
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        v.to_string()
    }
}

/// Writes both CSV files; returns the metrics path.
pub fn write_csv(run: &Run, path: &Path) -> Result<PathBuf> {
    let ctx = || format!("{}: cannot write", path.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(ctx)?);
    writeln!(f, "step,examples,probe,family,logp").with_context(ctx)?;
    for e in &run.evals {
        for fam in &run.header.families {
            let Some(vals) = e.logps.get(fam) else {
                continue;
            };
            for (p, v) in run.header.probes.iter().zip(vals) {
                writeln!(
                    f,
                    "{},{},{},{},{}",
                    e.step,
                    e.examples,
                    p.index,
                    fam.key(),
                    num(*v)
                )
                .with_context(ctx)?;
            }
        }
    }
    f.flush().with_context(ctx)?;
    let mpath = metrics_path(path);
    let mctx = || format!("{}: cannot write", mpath.display());
    let names: BTreeSet<&String> = run.steps.iter().flat_map(|s| s.metrics.keys()).collect();
    let mut m = std::io::BufWriter::new(std::fs::File::create(&mpath).with_context(mctx)?);
    let mut head = String::from("step,examples,epoch,phase");
    for n in &names {
        head.push(',');
        head.push_str(n);
    }
    writeln!(m, "{head}").with_context(mctx)?;
    for s in &run.steps {
        let mut row = format!("{},{},{},{}", s.step, s.examples, s.epoch, s.phase);
        for n in &names {
            row.push(',');
            if let Some(v) = s.metrics.get(*n) {
                row.push_str(&num(*v));
            }
        }
        writeln!(m, "{row}").with_context(mctx)?;
    }
    m.flush().with_context(mctx)?;
    Ok(mpath)
}
