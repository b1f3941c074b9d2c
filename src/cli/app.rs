//! The desktop app's command line (no subcommand): runs to open, preselected model and data, and the hidden screenshot options used to look at the app without a display.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// With no subcommand: the desktop app.
#[derive(Args, Default)]
pub struct AppArgs {
    /// Run files to open in the app.
    runs: Vec<PathBuf>,
    /// Model folder preselected in the train panel.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Dataset preselected in the train panel.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Start training at launch (with the preselected or default model and data).
    #[arg(long)]
    train: bool,
    /// Save a screenshot of the window to this PNG after --after-frames frames, then quit.
    #[arg(long, hide = true)]
    screenshot: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 60)]
    after_frames: u64,
    /// With --screenshot: wait until the live run has this many evaluations.
    #[arg(long, hide = true, default_value_t = 0)]
    after_evals: usize,
    /// Open with this tab selected (curves, tokens, metrics).
    #[arg(long, hide = true)]
    tab: Option<String>,
    /// Overlay all opened runs on this family (e.g. chosen).
    #[arg(long)]
    overlay: Option<String>,
}

#[cfg(feature = "gui")]
pub fn run(a: AppArgs) -> Result<()> {
    crate::app::run(crate::app::Launch {
        runs: a.runs,
        model: a.model,
        data: a.data,
        train: a.train,
        screenshot: a.screenshot,
        after_frames: a.after_frames,
        after_evals: a.after_evals,
        tab: a.tab,
        overlay: a.overlay,
    })
}

#[cfg(not(feature = "gui"))]
pub fn run(_a: AppArgs) -> Result<()> {
    anyhow::bail!(
        "this ldviz was built without the app (feature \"gui\"); use the subcommands (ldviz --help) or rebuild with default features"
    )
}
