//! `ldviz probes`: write the probe set that `ldviz train` with the same flags evaluates, for a
//! recorder that trains elsewhere (the probe file: RUNFILE.md).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::schema::event::ModelInfo;
use crate::schema::probe_file::ProbeRecord;
use crate::train::TrainOptions;
use crate::train::trainer::{RunData, resolve_model};

#[derive(Args)]
pub struct ProbesArgs {
    /// The options of `ldviz train` (one definition, same defaults). The data flags (--data,
    /// --format, --test-data, --test-fraction, --probes, --seed) pick the probes, --model only
    /// the chat template of conversational data; the rest go into the run header's config.
    #[command(flatten)]
    options: TrainOptions,
    /// Probe file to write (JSON Lines; an existing file is refused without --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ProbesArgs) -> Result<()> {
    let cfg = a.options.to_config()?;
    if let Some(dir) = &a.options.save_model {
        bail!("--save-model {dir}: ldviz probes trains nothing and saves no model");
    }
    if !a.force && a.out.is_file() {
        bail!(
            "--out {}: the file exists; give --force to replace it",
            a.out.display()
        );
    }
    if a.out.is_dir() {
        bail!("--out {}: is a folder", a.out.display());
    }
    let model_dir = resolve_model(&cfg.model)?;
    if !model_dir.is_dir() {
        bail!("--model {}: not a folder", model_dir.display());
    }
    let rd = RunData::load(&cfg, &model_dir)?;
    let model = ModelInfo {
        path: String::new(),
        arch: String::new(),
        fingerprint: String::new(),
        n_params: 0,
        vocab_size: 0,
        eos_id: 0,
    };
    let mut header = rd.header(
        &cfg,
        model,
        rd.probe_infos(|_| Default::default()),
        Vec::new(),
    );
    header.batch_size = 0;
    write_lines(&a.out, &ProbeRecord::lines(&header))?;
    eprintln!(
        "{}: {} probes, families {}",
        a.out.display(),
        header.probes.len(),
        header
            .families
            .iter()
            .map(|f| f.key())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Writes the records as JSON Lines into a temporary file next to `out`, then moves it into
/// place: a failure leaves no half-written probe file (and an existing one untouched).
fn write_lines(out: &std::path::Path, lines: &[ProbeRecord]) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let ctx = || format!("--out {}: cannot write the probe file", out.display());
    let tmp = tempfile::NamedTempFile::new_in(&dir).with_context(ctx)?;
    let mut w = std::io::BufWriter::new(tmp);
    for line in lines {
        serde_json::to_writer(&mut w, line).with_context(ctx)?;
        w.write_all(b"\n").with_context(ctx)?;
    }
    let tmp = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(ctx)?;
    tmp.as_file().sync_all().with_context(ctx)?;
    tmp.persist(out).map_err(|e| e.error).with_context(ctx)?;
    Ok(())
}
