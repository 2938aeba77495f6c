//! spotcheck on one machine: a local SageMaker-compatible training service with an embedded
//! S3, a spot-market simulator and the control plane in-process.
//!
//! Modules, from the pure core out:
//!
//! - [`clock`] — simulated time (scale factor, fast-forward).
//! - [`market`] — the spot market: seeded outages or a trace, spot and on-demand prices.
//! - [`job`] — the training-job state machine, a pure `step(spec, state, input, now)`.
//! - [`api`] — SageMaker request validation, Describe/List shapes, the error shape.
//! - [`events`] — "SageMaker Training Job State Change" events.
//! - [`pattern`] — EventBridge patterns and the infra template's rules.
//! - [`sync`] — SageMaker's checkpoint sync (download, upload with markers, deletes).
//! - [`runner`] — the `/opt/ml` tree and the training process.
//! - [`s3`] — the embedded S3 (s3s + s3s-fs).
//! - [`service`] — the job registry and drivers; [`server`] — the JSON 1.1 endpoint.
//! - [`control`] — the Lambda's handler code behind an in-process bus.
//! - [`stack`] — everything wired together; [`demo`], [`report`], [`html`] — the demo.
//!
//! Documentation for users: `docs/local-service.md`.

#![warn(missing_docs)]

pub mod api;
pub mod clock;
pub mod control;
pub mod demo;
pub mod events;
pub mod html;
mod http;
pub mod job;
pub mod market;
pub mod pattern;
pub mod report;
pub mod runner;
pub mod s3;
pub mod server;
pub mod service;
pub mod stack;
pub mod sync;

/// `path` made absolute against the current directory (unchanged if that cannot be read). The
/// service runs each training process in its instance directory, so every path handed to a
/// child must be absolute.
pub fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
