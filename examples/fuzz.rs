//! Fuzzes every reader with mutated real inputs (see examples/fuzz/engine.rs):
//!
//! ```text
//! cargo run --release --example fuzz -- --target data|run|model --iters N --seed S [--json]
//! cargo run --release --example fuzz -- --target model --seed S --replay I [--out DIR]
//! ```
//!
//! Input I of seed S is generated from S + I alone; `--replay I` writes it to a file (a model
//! folder for `model`) and runs it once with panics uncaught. The exit code is non-zero when an
//! input panicked or ran over 2 s. With `--json` the last line of stdout is
//! `{"target":…,"iters":…,"panics":…,"hangs":…,"slowest_ms":…}`.

#[path = "fuzz/engine.rs"]
mod engine;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static ALLOC: engine::CappedAlloc = engine::CappedAlloc;

#[derive(Parser)]
#[command(about = "Fuzz ldviz's dataset, run-file and model-folder readers")]
struct Args {
    /// data, run or model
    #[arg(long)]
    target: engine::Target,
    /// Number of inputs.
    #[arg(long, default_value_t = 10_000)]
    iters: u64,
    /// Input I is generated from seed + I.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the summary as one JSON line, last on stdout.
    #[arg(long)]
    json: bool,
    /// Only regenerate input I, write it under --out and run it once.
    #[arg(long)]
    replay: Option<u64>,
    /// Where --replay writes the input.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 30)]
    progress: u64,
}

fn main() {
    let a = Args::parse();
    ldviz::perf::init();
    if let Some(i) = a.replay {
        match engine::replay(a.target, a.seed, i, &a.out) {
            Ok((path, result)) => {
                println!("input {i} written to {}", path.display());
                println!("{result}");
            }
            Err(e) => {
                eprintln!("fuzz: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let o = engine::Options {
        target: a.target,
        iters: a.iters,
        seed: a.seed,
        threads: a.threads,
        progress: Some(Duration::from_secs(a.progress.max(1))),
    };
    let report = match engine::run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", report.describe());
    if let (Some(peak), Some(now)) = (rss_mb("VmHWM:"), rss_mb("VmRSS:")) {
        println!("resident memory: peak {peak:.0} MB, at the end {now:.0} MB");
    }
    if a.json {
        println!("{}", report.json_line());
    }
    if report.panics > 0 || report.hangs > 0 {
        std::process::exit(1);
    }
}

/// Resident memory of this process from /proc/self/status (`VmHWM:` peak, `VmRSS:` now), in MB.
fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
