//! `spotcheck run -- CMD ARGS…`: a small launcher meant to be a training container's PID 1.
//!
//! It starts the training command in its own process group and stays beside it: SIGTERM and
//! SIGINT are forwarded to it; spot interruption notices and rebalance recommendations from
//! IMDS are written to a notice file (its path is in the child's `SPOTCHECK_NOTICE_FILE`) and
//! announced with a signal (SIGTERM for a spot notice, SIGUSR1 for a rebalance when the child
//! catches SIGUSR1); orphans are reaped (it is PID 1, or a child subreaper otherwise); the
//! group is SIGKILLed when the grace time after the first stop request is over; it exits with
//! the child's code (128 + signal for a signalled child) and writes SageMaker's failure file
//! when the child failed on its own. The contract is in docs/pytorch.md.
//!
//! [`supervise`] holds every rule as a pure state machine; [`process`] is the shell that
//! carries out its actions; [`imds`] polls for notices by the shared rules of
//! `spotcheck-notices`.

#![warn(missing_docs)]

pub mod imds;
pub mod process;
pub mod supervise;

pub use process::{failure_file, run, Config};
pub use supervise::{ChildExit, Event, Notices, StopSignal, Supervisor};

/// The environment variable that tells the training process where the notice file is.
pub const NOTICE_FILE_ENV: &str = "SPOTCHECK_NOTICE_FILE";
