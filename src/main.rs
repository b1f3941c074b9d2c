//! The `ldviz` command line: parses the arguments and dispatches to the subcommands of
//! `ldviz::cli` (no subcommand = the desktop app). Every failure is one line on stderr and a
//! non-zero exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ldviz::cli;

#[derive(Parser)]
#[command(
    name = "ldviz",
    version,
    about = "Watch an LLM learn: record how SFT/DPO move the log-probs of many kinds of responses"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    app: cli::app::AppArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Finetune a model and record the learning dynamics into a run file.
    Train(Box<cli::train::TrainArgs>),
    /// Write the probes `ldviz train` would evaluate with the same flags (for runs trained elsewhere).
    Probes(Box<cli::probes::ProbesArgs>),
    /// Print the summed log-prob of chosen and rejected for every record, one JSON object per line.
    Logprob(cli::logprob::LogprobArgs),
    /// Summarize a run file: per family, the mean over probes at the first and last evaluation.
    Inspect(cli::inspect::InspectArgs),
    /// Export a run's data (CSV) and plots (PNG, SVG).
    Export(cli::export::ExportArgs),
    /// Time training steps on a fixed llama config (median of 10 after 3 warm-ups).
    Bench(cli::bench::BenchArgs),
    /// Make the embedded default model: train a BPE tokenizer and a small llama on a corpus.
    Pretrain(Box<cli::pretrain::PretrainArgs>),
    /// The squeezing effect on one softmax: gradient steps on a class's log-prob.
    Squeeze(cli::squeeze::SqueezeArgs),
}

fn main() -> ExitCode {
    if std::env::var_os(ldviz::perf::SPIN_ENV).is_none() {
        // SAFETY: nothing else runs yet (no thread has been started), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var(ldviz::perf::SPIN_ENV, ldviz::perf::SPIN_DEFAULT) };
    }
    ldviz::perf::init();
    let args = Cli::parse();
    let result = match args.cmd {
        None => cli::app::run(args.app),
        Some(Cmd::Train(a)) => cli::train::run(*a),
        Some(Cmd::Probes(a)) => cli::probes::run(*a),
        Some(Cmd::Logprob(a)) => cli::logprob::run(a),
        Some(Cmd::Inspect(a)) => cli::inspect::run(a),
        Some(Cmd::Export(a)) => cli::export::run(a),
        Some(Cmd::Bench(a)) => cli::bench::run(a),
        Some(Cmd::Pretrain(a)) => cli::pretrain::run(*a),
        Some(Cmd::Squeeze(a)) => cli::squeeze::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
