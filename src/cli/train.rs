//! `ldviz train`: finetune a model and record the run file, with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::run::Event;
use crate::train::TrainOptions;

#[derive(Args)]
pub struct TrainArgs {
    /// Every training option (one definition with the app's train panel).
    #[command(flatten)]
    options: TrainOptions,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run file to write (an existing file is refused without --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file, and write --save-model into a folder that is not empty
    /// (replacing its files of the same names).
    #[arg(long)]
    force: bool,
}

/// Refuses, before training, to overwrite an existing run file or to save the model into a
/// folder that is not empty, unless `--force`.
fn check_outputs(a: &TrainArgs) -> Result<()> {
    if !a.force && a.out.is_file() {
        bail!(
            "--out {}: the file exists; give --force to replace it",
            a.out.display()
        );
    }
    if let Some(dir) = a.options.save_model.as_deref().map(std::path::Path::new) {
        if dir.exists() && !dir.is_dir() {
            bail!("--save-model {}: exists and is not a folder", dir.display());
        }
        if !a.force && dir.is_dir() {
            let mut entries = std::fs::read_dir(dir).with_context(|| {
                format!("--save-model {}: cannot read the folder", dir.display())
            })?;
            if entries.next().is_some() {
                bail!(
                    "--save-model {}: the folder is not empty; give --force to write the model into it",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = a.options.to_config()?;
    check_outputs(&a)?;
    let handle = crate::train::spawn(cfg, Some(a.out.clone()));
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_loss = f64::NAN;
    let mut end = None;
    for ev in handle.events.iter() {
        match &ev {
            Event::Header(h) => {
                let total: usize = h.phases.iter().map(|p| p.steps).sum();
                if !a.quiet {
                    let pb = indicatif::ProgressBar::new(total as u64);
                    pb.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar = Some(pb);
                }
            }
            Event::Step(s) => {
                if let Some(l) = s.metrics.get("loss") {
                    last_loss = *l;
                }
                if let Some(pb) = &bar {
                    pb.set_position(s.step as u64);
                    pb.set_message(format!("{}  loss {:.4}", s.phase, last_loss));
                }
            }
            Event::End {
                reason,
                step,
                message,
            } => end = Some((*reason, *step, message.clone())),
            _ => {}
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let result = handle.join();
    if let Some((reason, step, _)) = end
        && !a.quiet
    {
        eprintln!(
            "{}: {:?} after {step} steps (last loss {last_loss:.4})",
            a.out.display(),
            reason
        );
    }
    result
}
