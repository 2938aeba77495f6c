//! spotcheck's trainer: a SageMaker training container that checkpoints weights, optimizer
//! state, data position and RNG often and cheaply, checkpoints at once on SIGTERM or a spot
//! notice, and resumes exactly where it stopped.
//!
//! The binary (`train`) only wires; the modules hold the parts: [`hyper`] (hyperparameters),
//! [`sagemaker`] (the container contract), [`data`] and [`sampler`] (what each step sees),
//! [`model`], [`params`] and [`optim`] (the math), [`snapshot`], [`persist`], [`resume`] and
//! [`retention`] (checkpoints), [`interval`] (when to checkpoint; the stop and notice flags
//! come from `spotcheck-notices`), [`train`] (the loop).
#![warn(missing_docs)]

pub mod backend;
pub mod data;
pub mod hostmem;
pub mod hyper;
pub mod interval;
pub mod model;
pub mod optim;
pub mod params;
pub mod persist;
pub mod report;
pub mod resume;
pub mod retention;
pub mod s3sync;
pub mod sagemaker;
pub mod sampler;
pub mod schedule;
pub mod snapshot;
pub mod state;
pub mod train;
