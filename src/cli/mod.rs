//! The `ldviz` subcommands: each file holds one command's arguments (clap `Args`) and its `run`.
//! src/main.rs parses the command line and dispatches here; every failure comes back as one
//! error that main prints on one line.

pub mod app;
pub mod bench;
pub mod export;
pub mod inspect;
pub mod logprob;
pub mod pretrain;
pub mod probes;
pub mod squeeze;
pub mod train;
