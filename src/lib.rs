//! ldviz: watch an LLM learn. A library (and CLI) that finetunes a small language model with
//! SFT or DPO-family losses and records, step by step, how the log-probabilities of many kinds
//! of responses change (Ren & Sutherland, "Learning Dynamics of LLM Finetuning", ICLR 2025).
//!
//! Modules, in data-flow order (none of them depends on a GUI):
//! - [`data`]: preference datasets in five formats → records → the [`data::ProbeSet`] of
//!   response families;
//! - [`model`]: our own differentiable transformers (llama, qwen2, gpt_neox, gpt2) on candle,
//!   loaded from and saved to Hugging Face folders;
//! - [`probe`]: batched scoring without a graph: summed and per-token log-probs, entropy,
//!   top-k, y*;
//! - [`train`]: losses, optimizers and the trainer thread (Events out, Commands in);
//! - [`run`]: the append-only run file (writer, reader, inspect summary);
//! - [`export`]: CSV export of runs;
//! - [`pretrain`]: the recipe that makes the embedded default model from assets/corpus.txt.

#[cfg(feature = "gui")]
pub mod app;
pub mod assets;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod export;
pub mod model;
pub mod perf;
pub mod pretrain;
pub mod probe;
pub mod run;
pub mod schema;
pub mod squeeze;
pub mod stats;
pub mod synth;
pub mod train;
