//! The run file's schema: the training configuration a run records in its header, every record
//! type of a run file, the probe file of `ldviz probes`, and the per-token traces and
//! diagnostics an evaluation carries.
//!
//! A leaf of the crate: it builds only on the value types of [`crate::data`] (families, dataset
//! formats, probe counts) and [`crate::device`] (device and precision). The trainer
//! ([`crate::train`]) writes these types, the run reader and store ([`crate::run`]) read them,
//! and neither depends on the other.

pub mod config;
pub mod event;
pub mod nonfinite;
pub mod probe_file;
pub mod trace;

pub use config::{
    Algo, Duration, InfluenceTarget, Lengths, OptimConfig, OptimKind, PhaseConfig, TrainConfig,
};
pub use event::{EndReason, EvalRecord, Event, RunHeader, StepRecord};
pub use trace::{Diag, Greedy, ProbeTrace, TokenTrace};
