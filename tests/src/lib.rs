//! Support code for the event-replay suite (`tests/replay/`): everything the tests need to
//! talk to the emulators over HTTP, and nothing that decides anything.
//!
//! - [`emulators`] — the endpoints from the environment (`scripts/emulators.sh env`), failing
//!   loudly when they are absent; SDK configurations with the Lambdas' retry and timeout
//!   settings pointed at one endpoint; unique resource names.
//! - [`fixtures`] — the event corpus in `tests/fixtures/events/`.
//! - [`template`] — the EventBridge rules of `infra/template.yaml`, read from the YAML.
//! - [`http`] — a minimal HTTP/1 client (hyper), for what has no SDK crate in the workspace.
//! - [`sqs`] — SQS queues as EventBridge taps (LocalStack's SQS, JSON protocol).
//! - [`proxy`] — a fault-injecting HTTP proxy that counts every request.
//! - [`local`] — the local SageMaker service (`spotcheck-local`) on loopback, with S3 in
//!   LocalStack, and training "images" that are small shell scripts.
//! - [`checkpoints`] — checkpoints in S3: writing, uploading, mutating, and a counting
//!   [`CheckpointStore`](spotcheck_aws::CheckpointStore).
//! - [`lambda`] — the Lambda runtime API: cargo-lambda's emulator and the function binary.
//! - [`ledger`] — ledger records written in bulk by the real handler over an in-memory
//!   SageMaker, for reports.
//! - [`browser`] — headless Chromium driven over the DevTools protocol, to check a page renders.
//!
//! Tests that need an emulator fail (never skip) when its variable is missing, with a message
//! saying to run them through `scripts/test-all.sh`.

#![warn(missing_docs)]

pub mod browser;
pub mod checkpoints;
pub mod emulators;
pub mod fixtures;
pub mod http;
pub mod lambda;
pub mod ledger;
pub mod local;
pub mod proxy;
pub mod sqs;
pub mod template;

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(".."))
}
