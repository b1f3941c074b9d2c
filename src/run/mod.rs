//! Run files: the versioned, append-only JSON Lines record of a run (header, then one record per
//! event), its writer, its reader (tolerant of a cut last line), the follower of a file still
//! being written, Hugging Face `trainer_state.json` files read as runs of TRL metrics, and the
//! `inspect` summary.
//! The format is documented in RUNFILE.md.

pub mod follow;
pub mod hf_state;
pub mod reader;
pub mod store;
pub mod summary;
pub mod writer;

pub use crate::schema::{event, nonfinite};
pub use event::{EndReason, EvalRecord, Event, RunHeader, StepRecord};
pub use follow::{Follower, open_following};
pub use reader::{Run, looks_like_run_file, read_run, run_name};
pub use store::{Band, Quantity, RunStore, SeriesKey, Stats, XAxis, YMode};
pub use writer::Writer;
