//! `ldviz pretrain`: make the embedded default model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Every option defaults to the recipe of the shipped assets/model
/// (`crate::pretrain::PretrainConfig::default()`).
#[derive(Args)]
pub struct PretrainArgs {
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

pub fn run(a: PretrainArgs) -> Result<()> {
    let d = crate::pretrain::PretrainConfig::default();
    let c = crate::pretrain::PretrainConfig {
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
    let report = crate::pretrain::pretrain(&c, &a.out, |s, loss| {
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
