//! Training: configuration, losses (SFT and the DPO family), optimizers, and the trainer loop
//! that runs on its own thread and reports through Events.

pub mod influence;
pub mod loss;
pub mod onpolicy;
pub mod optim;
pub mod options;
pub mod trainer;

pub use crate::schema::config;
pub use config::{
    Algo, Duration, InfluenceTarget, OptimConfig, OptimKind, PhaseConfig, TrainConfig,
};
pub use options::TrainOptions;
pub use trainer::{Command, InfluenceBench, Session, TrainerHandle, spawn};
