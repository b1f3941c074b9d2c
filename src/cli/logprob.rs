//! `ldviz logprob`: the summed (and per-token) log-probs of chosen and rejected for every record.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use crate::data::DataFormat;
use crate::probe::Lengths;

#[derive(Args)]
pub struct LogprobArgs {
    #[arg(long, default_value = "default")]
    model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: crate::device::DeviceSpec,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: crate::device::Precision,
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

pub fn run(a: LogprobArgs) -> Result<()> {
    use crate::probe::{Batch, Seq, logprob::token_logps};
    let dir = crate::train::trainer::resolve_model(&a.model)?;
    let mut model = crate::model::Model::load(&dir, &crate::device::open(a.device, a.dtype)?)?;
    model.set_precision(a.dtype);
    let chat =
        crate::data::ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    let ds = crate::data::load_dataset(
        &crate::train::trainer::resolve_data(&a.data)?,
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
