//! `ldviz bench`: the training-step, probe-evaluation, preset and app-frame benchmarks.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N (the training-step benchmark and --preset).
    #[arg(long, default_value = "cpu")]
    device: crate::device::DeviceSpec,
    /// f32 or bf16 (the training-step benchmark and --preset).
    #[arg(long, default_value = "f32")]
    dtype: crate::device::Precision,
    /// Instead: a GPU-sized model of this shape (random init): one DPO step (4 pairs x 512
    /// tokens: reference log-probs, policy forward + backward, AdamW) and one probe evaluation
    /// (32 prompts x 13 responses x 384 tokens, no grad), median of --reps after 2 warm-ups.
    #[arg(long, value_enum)]
    preset: Option<crate::bench::Preset>,
    /// With --preset: timed repetitions.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The training-step benchmark's architecture (same sizes; tools/bench_torch.py --arch
    /// builds the same model in transformers).
    #[arg(long, value_enum, default_value = "llama")]
    arch: crate::bench::BenchArch,
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
    /// Instead: on the embedded demo (DPO, batch 4, the default observed set), the time of a
    /// plain update against an influence record on top of one (medians of --steps after 2
    /// warm-ups); the JSON line is {"update_ms", "influence_ms", "ratio"}.
    #[arg(long)]
    influence: bool,
    /// With --influence: also time the flat-gradient reference path (slow).
    #[arg(long, requires = "influence")]
    flat: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.influence {
        let (r, flat) = crate::bench::influence(a.steps.clamp(1, 100), a.flat)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "influence on the default demo (DPO, batch 4, 8 probes x 5 families): update {:.1} ms, influence record {:.1} ms: {:.2}x an update (medians of {})",
                r.update_ms,
                r.influence_ms,
                r.ratio,
                a.steps.clamp(1, 100)
            );
            if let Some(f) = flat {
                println!(
                    "flat-gradient reference: {f:.1} ms ({:.1}x the batched record)",
                    f / r.influence_ms
                );
            }
        }
        return Ok(());
    }
    if a.frame {
        return bench_frame(&a);
    }
    if a.load {
        let spec = crate::synth::SynthSpec {
            eval_every: a.eval_every.max(1),
            ..Default::default()
        };
        let path =
            std::env::temp_dir().join(format!("ldviz-bench-load-{}.jsonl", std::process::id()));
        let r = crate::bench::load_run(spec, &path)?;
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
        let r = crate::bench::probe_eval(a.steps.clamp(1, 100))?;
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
        let dev = crate::device::open(a.device, a.dtype)?;
        let r = crate::bench::preset(p, &dev, a.dtype, a.reps)?;
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
    let dev = crate::device::open(a.device, a.dtype)?;
    let r = crate::bench::train_step_on(a.steps.max(1), &dev, a.dtype, a.arch)?;
    let peak = if a.peak {
        Some(crate::bench::matmul_peak()?)
    } else {
        None
    };
    let rss = crate::bench::peak_rss_mib();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["arch"] = serde_json::to_value(a.arch)?;
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
            "{:?} 8x256 (vocab 8192), batch 8x64, AdamW, f32: step {:.1} ms (forward {:.1}, backward {:.1}, optimizer {:.1}), {:.0} tokens/s, {:.1} GFLOP/s",
            a.arch,
            r.step_ms,
            r.forward_ms,
            r.backward_ms,
            r.optimizer_ms,
            r.tokens_per_s,
            r.gflops
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

#[cfg(feature = "gui")]
fn bench_frame(a: &BenchArgs) -> Result<()> {
    let spec = crate::synth::SynthSpec {
        eval_every: a.eval_every.max(1),
        ..Default::default()
    };
    let r = crate::app::bench::frame_times(spec, 200)?;
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
    anyhow::bail!("--frame needs the app (build with the default \"gui\" feature)")
}
