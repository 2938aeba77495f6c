//! The trainer state saved in every checkpoint as `trainer_state.json`: everything besides the
//! tensors that an exact continuation needs.

use serde::{Deserialize, Serialize};

use crate::backend::Compute;
use crate::model::NetConfig;
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;

/// Version of this JSON document.
pub const STATE_VERSION: u32 = 1;

/// The data-order generator: ChaCha8 seeded by the run seed, one stream per epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RngState {
    /// Algorithm name, for readers in other languages.
    pub algorithm: String,
    /// Seed.
    pub seed: u64,
    /// Stream (epoch + 1).
    pub stream: u64,
}

/// Trainer state at a step boundary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Version of this document.
    pub version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u32,
    /// Images of this epoch's order already consumed.
    pub position: usize,
    /// Total steps the run will take.
    pub total_steps: u64,
    /// The data-order generator.
    pub rng: RngState,
    /// Learning-rate schedule (a pure function of the step).
    pub schedule: Schedule,
    /// The rate the next update will use.
    pub next_learning_rate: f64,
    /// Optimizer settings; the update count equals `step`.
    pub optimizer: OptimizerConfig,
    /// Architecture.
    pub model: NetConfig,
    /// Times this run was resumed from a checkpoint.
    pub restarts: u32,
    /// Seconds spent training across all attempts (for the observed interruption rate).
    pub train_seconds: f64,
    /// Last reported training loss.
    pub last_loss: Option<f64>,
    /// Digest of the hyperparameters the run started with.
    pub hyperparameters_sha256: String,
    /// What computed the state (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub compute: Option<Compute>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let s = TrainerState {
            version: STATE_VERSION,
            step: 7,
            epoch: 1,
            position: 64,
            total_steps: 100,
            rng: RngState {
                algorithm: "chacha8".into(),
                seed: 1,
                stream: 2,
            },
            schedule: Schedule {
                kind: crate::hyper::ScheduleKind::Cosine,
                peak: 0.1,
                warmup: 0,
                total: 100,
                step_every: 1,
                gamma: 1.0,
            },
            next_learning_rate: 0.05,
            optimizer: crate::optim::OptimizerConfig::from_hyper(&Default::default()),
            model: NetConfig {
                channels: 1,
                height: 2,
                width: 2,
                depth: 0,
                base_width: 1,
                hidden: 0,
                classes: 2,
            },
            restarts: 0,
            train_seconds: 1.5,
            last_loss: None,
            hyperparameters_sha256: "x".into(),
            compute: Some(Compute {
                backend: "cpu".into(),
                device: "cpu".into(),
                threads: 2,
                cpu_features: vec!["avx2".into()],
            }),
        };
        let j = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<TrainerState>(&j).unwrap(), s);
        // A state written before `compute` existed still reads.
        let mut old: serde_json::Value = serde_json::from_slice(&j).unwrap();
        old.as_object_mut().unwrap().remove("compute");
        let back: TrainerState = serde_json::from_value(old).unwrap();
        assert_eq!(back.compute, None);
    }
}
