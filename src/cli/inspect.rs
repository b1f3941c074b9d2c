//! `ldviz inspect`: a run file's summary as a table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    run: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let InspectArgs { run: path, json } = a;
    let run = crate::run::read_run(&path)?;
    let s = crate::run::summary::summarize(&run);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", crate::run::summary::render_text(&run, &s));
    }
    Ok(())
}
