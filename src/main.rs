//! The `ldviz` command line: train, logprob, inspect, export, bench. Every failure is one line
//! on stderr and a non-zero exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use ldviz::data::DataFormat;
use ldviz::export::plot::PlotOptions;
use ldviz::probe::Lengths;
use ldviz::run::{Band, Event, Quantity, XAxis, YMode};
use ldviz::train::{TrainConfig, TrainOptions};

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
    app: AppArgs,
}

/// With no subcommand: the desktop app.
#[derive(Args, Default)]
struct AppArgs {
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

#[derive(Subcommand)]
enum Cmd {
    /// Finetune a model and record the learning dynamics into a run file.
    Train(Box<TrainArgs>),
    /// Print the summed log-prob of chosen and rejected for every record, one JSON object per line.
    Logprob(LogprobArgs),
    /// Summarize a run file: per family, the mean over probes at the first and last evaluation.
    Inspect {
        run: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export a run's data (CSV) and plots (PNG, SVG).
    Export(ExportArgs),
    /// Time training steps on a fixed llama config (median of 10 after 3 warm-ups).
    Bench(BenchArgs),
    /// Make the embedded default model: train a BPE tokenizer and a small llama on a corpus.
    Pretrain(Box<PretrainArgs>),
    /// The squeezing effect on one softmax: gradient steps on a class's log-prob.
    Squeeze(SqueezeArgs),
}

#[derive(Args)]
struct SqueezeArgs {
    /// The distribution before the step, comma-separated (must sum to 1).
    #[arg(long, value_delimiter = ',', required_unless_present = "classes")]
    probs: Vec<f64>,
    /// Instead of --probs: V classes with geometric probabilities π_i ∝ ratio^i.
    #[arg(long, conflicts_with = "probs")]
    classes: Option<usize>,
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    /// Push this class's log-prob down (0-based index); with --positive both steps are taken
    /// at once.
    #[arg(long, required_unless_present = "positive")]
    negative: Option<usize>,
    /// Push this class's log-prob up (0-based index); with --negative both steps are taken at
    /// once.
    #[arg(long)]
    positive: Option<usize>,
    /// Step size η' on the logits.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Number of steps.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
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

#[derive(Args)]
struct ExportArgs {
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
enum PlotKind {
    Families,
}

#[derive(Args)]
struct LogprobArgs {
    #[arg(long, default_value = "default")]
    model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ldviz::device::DeviceSpec,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: ldviz::device::Precision,
    #[arg(long, default_value = "default")]
    data: String,
    /// Dataset format [default: detected from the first record].
    #[arg(long, value_enum)]
    format: Option<DataFormat>,
    /// Also print each response's tokens with their log-probs.
    #[arg(long)]
    tokens: bool,
    #[arg(long, default_value_t = 256)]
    max_prompt_len: usize,
    #[arg(long, default_value_t = 512)]
    max_len: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N (the training-step benchmark and --preset).
    #[arg(long, default_value = "cpu")]
    device: ldviz::device::DeviceSpec,
    /// f32 or bf16 (the training-step benchmark and --preset).
    #[arg(long, default_value = "f32")]
    dtype: ldviz::device::Precision,
    /// Instead: a GPU-sized model of this shape (random init): one DPO step (4 pairs x 512
    /// tokens: reference log-probs, policy forward + backward, AdamW) and one probe evaluation
    /// (32 prompts x 13 responses x 384 tokens, no grad), median of --reps after 2 warm-ups.
    #[arg(long, value_enum)]
    preset: Option<ldviz::bench::Preset>,
    /// With --preset: timed repetitions.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Timed steps (median reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Instead: the app's frame CPU time while scrubbing a synthetic 10,000-step run of
    /// 13 families x 64 probes (an evaluation every --eval-every steps).
    #[arg(long)]
    frame: bool,
    /// With --frame: steps between evaluations of the synthetic run.
    #[arg(long, default_value_t = 10)]
    eval_every: usize,
    /// Also measure the f32 matmul peak (2048³) and report the step's share of it.
    #[arg(long)]
    peak: bool,
    /// Instead: write a synthetic 10,000-step run (13 families x 64 probes, per-token data,
    /// an evaluation every --eval-every steps) and time loading it into the app's store.
    #[arg(long)]
    load: bool,
    /// Instead: time one probe evaluation of the default demo with the prompt's keys/values
    /// shared across its responses, against a padded batch per prompt and one forward per
    /// (prompt, response) pair (median of --steps repetitions, the three ways interleaved).
    #[arg(long)]
    probes: bool,
}

/// Every option defaults to the recipe of the shipped assets/model
/// (`ldviz::pretrain::PretrainConfig::default()`).
#[derive(Args)]
struct PretrainArgs {
    /// Training text: paragraphs separated by blank lines [default: assets/corpus.txt].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Held-out text for perplexity [default: assets/corpus_heldout.txt].
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Model folder to write.
    #[arg(long, default_value = "assets/model")]
    out: PathBuf,
    #[arg(long)]
    vocab: Option<usize>,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    intermediate: Option<usize>,
    /// Share the input embedding with the output layer (`--tie-embeddings true`) or give the
    /// model its own `lm_head` [default: false, as in Pythia].
    #[arg(long)]
    tie_embeddings: Option<bool>,
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    if std::env::var_os(ldviz::perf::SPIN_ENV).is_none() {
        // SAFETY: nothing else runs yet (no thread has been started), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var(ldviz::perf::SPIN_ENV, ldviz::perf::SPIN_DEFAULT) };
    }
    ldviz::perf::init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => run_app(cli.app),
        Some(Cmd::Train(a)) => train(*a),
        Some(Cmd::Logprob(a)) => logprob(a),
        Some(Cmd::Inspect { run, json }) => inspect(&run, json),
        Some(Cmd::Export(a)) => export(a),
        Some(Cmd::Bench(a)) => bench(a),
        Some(Cmd::Pretrain(a)) => pretrain(*a),
        Some(Cmd::Squeeze(a)) => squeeze(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    a.options.to_config()
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

fn train(a: TrainArgs) -> Result<()> {
    let cfg = train_config(&a)?;
    check_outputs(&a)?;
    let handle = ldviz::train::spawn(cfg, Some(a.out.clone()));
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

fn logprob(a: LogprobArgs) -> Result<()> {
    use ldviz::probe::{Batch, Seq, logprob::token_logps};
    let dir = ldviz::train::trainer::resolve_model(&a.model)?;
    let mut model = ldviz::model::Model::load(&dir, &ldviz::device::open(a.device, a.dtype)?)?;
    model.set_precision(a.dtype);
    let chat =
        ldviz::data::ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    let ds = ldviz::data::load_dataset(
        &ldviz::train::trainer::resolve_data(&a.data)?,
        a.format,
        chat.as_ref(),
    )?;
    let lim = Lengths {
        max_prompt: a.max_prompt_len,
        max_total: a.max_len,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for r in &ds.records {
        let ctx = || format!("{}:{}", ds.path.display(), r.line);
        let c = Seq::encode(&model.tok, &r.prompt, &r.chosen, lim).with_context(ctx)?;
        let j = Seq::encode(&model.tok, &r.prompt, &r.rejected, lim).with_context(ctx)?;
        let batch = Batch::new(&[&c, &j], &model.device).with_context(ctx)?;
        let logits = model.forward_eval(&batch.ids)?;
        let (per_tok, summed) = token_logps(&logits, &batch)?;
        let summed: Vec<f32> = summed.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        let mut obj =
            serde_json::json!({"index": r.index, "chosen": summed[0], "rejected": summed[1]});
        if a.tokens {
            let rows: Vec<Vec<f32>> = per_tok.to_dtype(candle_core::DType::F32)?.to_vec2()?;
            let toks = |row: usize, s: &Seq| -> Vec<serde_json::Value> {
                let (start, n) = batch.spans[row];
                (0..n)
                    .map(|m| {
                        serde_json::json!({"id": s.response[m], "text": model.tok.token_text(s.response[m]), "logp": rows[row][start + m]})
                    })
                    .collect()
            };
            obj["tokens"] = serde_json::json!({"prompt": c.prompt, "chosen": toks(0, &c), "rejected": toks(1, &j)});
        }
        writeln!(out, "{obj}").context("stdout")?;
    }
    Ok(())
}

fn inspect(path: &std::path::Path, json: bool) -> Result<()> {
    let run = ldviz::run::read_run(path)?;
    let s = ldviz::run::summary::summarize(&run);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", ldviz::run::summary::render_text(&run, &s));
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    if a.csv.is_none() && a.png.is_none() && a.svg.is_none() {
        bail!("nothing to export: pass --csv FILE, --png FILE and/or --svg FILE");
    }
    let run = ldviz::run::read_run(&a.run)?;
    if let Some(csv) = &a.csv {
        let m = ldviz::export::csv::write_csv(&run, csv)?;
        eprintln!("wrote {} and {}", csv.display(), m.display());
    }
    let families = match &a.families {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| {
                let k = k.trim();
                let f = ldviz::data::Family::from_key(k)
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
        && quantity != ldviz::run::Quantity::LogProb
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
        ldviz::export::plot::write_png(&run, p, &o)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.svg {
        ldviz::export::plot::write_svg(&run, p, &o)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.frame {
        return bench_frame(&a);
    }
    if a.load {
        let spec = ldviz::synth::SynthSpec {
            eval_every: a.eval_every.max(1),
            ..Default::default()
        };
        let path =
            std::env::temp_dir().join(format!("ldviz-bench-load-{}.jsonl", std::process::id()));
        let r = ldviz::bench::load_run(spec, &path)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "load a {}-step run ({} evaluations x {} families x {} probes, per-token data): {:.1} MiB, {:.3} s (median of 3)",
                r.steps, r.evaluations, r.families, r.probes, r.file_mib, r.load_s
            );
        }
        return Ok(());
    }
    if a.probes {
        let r = ldviz::bench::probe_eval(a.steps.clamp(1, 100))?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "probe evaluation of the default demo ({} probes x {} families, {} sequences): shared prompt KV {:.3} s, padded batch per prompt {:.3} s, one forward per pair {:.3} s: {:.2}x faster than per pair",
                r.probes, r.families, r.sequences, r.shared_s, r.padded_s, r.per_pair_s, r.speedup
            );
            println!(
                "transfer matrix ({0} x {0}): shared {1:.3} s, per pair {2:.3} s; max |Δ log-prob| shared vs per pair {3:.1e}",
                r.transfer_prompts, r.transfer_shared_s, r.transfer_per_pair_s, r.max_abs_diff
            );
        }
        return Ok(());
    }
    if let Some(p) = a.preset {
        let dev = ldviz::device::open(a.device, a.dtype)?;
        let r = ldviz::bench::preset(p, &dev, a.dtype, a.reps)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{} on {} ({}), {} params: DPO step {:.1} ms (reference {:.1}, forward+backward {:.1}, AdamW {:.1}; {} tokens); probe evaluation {:.1} ms with shared prompt KV, {:.1} ms padded ({} tokens; max |Δ| {:.1e})",
                serde_json::to_value(r.preset)?.as_str().unwrap_or("preset"),
                a.device,
                r.dtype,
                r.params,
                r.dpo_step_ms,
                r.dpo_reference_ms,
                r.dpo_forward_backward_ms,
                r.dpo_optimizer_ms,
                r.dpo_tokens,
                r.probe_eval_ms,
                r.probe_eval_padded_ms,
                r.eval_tokens,
                r.probe_eval_max_abs_diff
            );
        }
        return Ok(());
    }
    let dev = ldviz::device::open(a.device, a.dtype)?;
    let r = ldviz::bench::train_step_on(a.steps.max(1), &dev, a.dtype)?;
    let peak = if a.peak {
        Some(ldviz::bench::matmul_peak()?)
    } else {
        None
    };
    let rss = ldviz::bench::peak_rss_mib();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(p) = peak {
            v["peak_gflops"] = serde_json::json!(p);
            v["utilization"] = serde_json::json!(r.gflops / p);
        }
        if let Some(m) = rss {
            v["peak_rss_mib"] = serde_json::json!(m);
        }
        println!("{v}");
    } else {
        println!(
            "llama 8x256 (vocab 8192), batch 8x64, AdamW, f32: step {:.1} ms (forward {:.1}, backward {:.1}, optimizer {:.1}), {:.0} tokens/s, {:.1} GFLOP/s",
            r.step_ms, r.forward_ms, r.backward_ms, r.optimizer_ms, r.tokens_per_s, r.gflops
        );
        if let Some(p) = peak {
            println!(
                "f32 matmul peak (2048^3): {p:.1} GFLOP/s; the step achieves {:.0}% of it",
                100.0 * r.gflops / p
            );
        }
        if let Some(m) = rss {
            println!("peak RSS: {m:.0} MiB");
        }
    }
    Ok(())
}

fn pretrain(a: PretrainArgs) -> Result<()> {
    let d = ldviz::pretrain::PretrainConfig::default();
    let c = ldviz::pretrain::PretrainConfig {
        corpus: a.corpus.unwrap_or(d.corpus),
        heldout: a.heldout.unwrap_or(d.heldout),
        vocab_size: a.vocab.unwrap_or(d.vocab_size),
        hidden_size: a.hidden.unwrap_or(d.hidden_size),
        num_hidden_layers: a.layers.unwrap_or(d.num_hidden_layers),
        num_attention_heads: a.heads.unwrap_or(d.num_attention_heads),
        num_key_value_heads: a.kv_heads.unwrap_or(d.num_key_value_heads),
        intermediate_size: a.intermediate.unwrap_or(d.intermediate_size),
        tie_word_embeddings: a.tie_embeddings.unwrap_or(d.tie_word_embeddings),
        seq_len: a.seq_len.unwrap_or(d.seq_len),
        batch_size: a.batch_size.unwrap_or(d.batch_size),
        steps: a.steps.unwrap_or(d.steps),
        lr: a.lr.unwrap_or(d.lr),
        warmup: a.warmup.unwrap_or(d.warmup),
        weight_decay: a.weight_decay.unwrap_or(d.weight_decay),
        seed: a.seed.unwrap_or(d.seed),
    };
    let bar = (!a.quiet).then(|| {
        let pb = indicatif::ProgressBar::new(c.steps as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let report = ldviz::pretrain::pretrain(&c, &a.out, |s, loss| {
        if let Some(pb) = &bar {
            pb.set_position(s as u64);
            pb.set_message(format!("loss {loss:.4}"));
        }
    })?;
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(feature = "gui")]
fn run_app(a: AppArgs) -> Result<()> {
    ldviz::app::run(ldviz::app::Launch {
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
fn run_app(_a: AppArgs) -> Result<()> {
    bail!(
        "this ldviz was built without the app (feature \"gui\"); use the subcommands (ldviz --help) or rebuild with default features"
    )
}

#[cfg(feature = "gui")]
fn bench_frame(a: &BenchArgs) -> Result<()> {
    let spec = ldviz::synth::SynthSpec {
        eval_every: a.eval_every.max(1),
        ..Default::default()
    };
    let r = ldviz::app::bench::frame_times(spec, 200)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "app frame CPU time, {} steps / {} evaluations x {} families x {} probes, {} scrubbing frames per tab: curves median {:.2} ms (p95 {:.2}), tokens {:.2} ms, TRL metrics {:.2} ms; first frame (statistics computed) {:.1} ms",
            r.steps,
            r.evals,
            r.families,
            r.probes,
            r.frames,
            r.curves_median_ms,
            r.curves_p95_ms,
            r.tokens_median_ms,
            r.metrics_median_ms,
            r.first_frame_ms
        );
    }
    Ok(())
}

#[cfg(not(feature = "gui"))]
fn bench_frame(_a: &BenchArgs) -> Result<()> {
    bail!("--frame needs the app (build with the default \"gui\" feature)")
}

fn squeeze(a: SqueezeArgs) -> Result<()> {
    use ldviz::squeeze::{Sign, check_probs, geometric, ratios, step_many};
    let p0 = match a.classes {
        Some(v) if v < 2 => bail!("--classes must be at least 2"),
        Some(v) => geometric(v, a.ratio),
        None => check_probs(&a.probs).context("--probs")?,
    };
    let mut terms = Vec::new();
    if let Some(c) = a.positive {
        terms.push((c, Sign::Positive));
    }
    if let Some(c) = a.negative {
        terms.push((c, Sign::Negative));
    }
    if terms.is_empty() {
        bail!("give --negative I or --positive I (or both)");
    }
    for &(c, sign) in &terms {
        let flag = if sign == Sign::Negative {
            "--negative"
        } else {
            "--positive"
        };
        if c >= p0.len() {
            bail!(
                "{flag}: class {c} is out of range: there are {} classes (0-based)",
                p0.len()
            );
        }
    }
    if let (Some(i), Some(j)) = (a.positive, a.negative)
        && i == j
    {
        bail!("--positive and --negative name the same class {i}: the two steps cancel");
    }
    if !(a.eta.is_finite() && a.eta >= 0.0) {
        bail!("--eta must be a non-negative number");
    }
    let mut p = p0.clone();
    let mut history = Vec::new();
    for _ in 0..a.steps.max(1) {
        p = step_many(&p, &terms, a.eta);
        history.push(p.clone());
    }
    let alpha = ratios(&p0, &p);
    let sign_name = |sign: Sign| {
        if sign == Sign::Negative {
            "negative"
        } else {
            "positive"
        }
    };
    if a.json {
        let changes: Vec<serde_json::Value> = terms
            .iter()
            .map(|&(c, sign)| {
                serde_json::json!({"class": c, "step": sign_name(sign), "before": p0[c], "after": p[c], "alpha": alpha[c]})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"before": p0, "after": p, "alpha": alpha, "steps": history, "changes": changes})
        );
        return Ok(());
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = terms
        .iter()
        .map(|&(c, sign)| format!("{} step(s) on class {c}", sign_name(sign)))
        .collect::<Vec<_>>()
        .join(" and ");
    println!("before: [{}]", fmt(&p0));
    println!(
        "after {} {what} with eta {}: [{}]",
        a.steps.max(1),
        a.eta,
        fmt(&p)
    );
    for &(c, sign) in &terms {
        println!(
            "class {c} ({}): {:.4} -> {:.4} (alpha {:.4})",
            sign_name(sign),
            p0[c],
            p[c],
            alpha[c]
        );
    }
    println!("alpha (after / before): [{}]", fmt(&alpha));
    println!(
        "rose: {:?} (argmax before: {})",
        ldviz::squeeze::rose(&alpha),
        ldviz::squeeze::argmax(&p0)
    );
    Ok(())
}
