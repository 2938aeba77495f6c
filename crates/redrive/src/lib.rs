//! Redriving the control plane's dead-letter queues: `spotcheck redrive`.
//!
//! Events that the `sagemaker-events` or `ec2-spot-events` function failed on (or that
//! EventBridge could not deliver) end in the function's SQS dead-letter queue. They cannot be
//! put back on the bus — EventBridge refuses `PutEvents` entries with an `aws.*` source, since
//! only AWS services may emit those — so the redrive hands each one straight to the function
//! with a synchronous Lambda `Invoke` and deletes the message only when the function handled
//! it. The functions are idempotent (deterministic relaunch names, write-once ledger records),
//! so an event that was partly handled before it was dead-lettered is completed, never done
//! twice.
//!
//! | module | holds |
//! |---|---|
//! | [`message`] | message body → Invoke payload (pure): the event itself, or a Lambda on-failure record unwrapped |
//! | [`verdict`] | Invoke answer → handled (delete) or failed (keep) (pure) |
//! | [`run`] | the loop over the narrow traits [`DeadLetterQueue`] and [`Function`] |
//! | [`sdk`] | their aws-sdk-sqs and aws-sdk-lambda implementations |
//!
//! The AWS SDK crates for SQS and Lambda are dependencies of this crate alone, so the Lambda
//! functions never build them.

#![warn(missing_docs)]

pub mod message;
pub mod run;
pub mod sdk;
pub mod verdict;

pub use run::{
    redrive, ApiError, DeadLetterQueue, Depth, Function, MessageReport, Options, Outcome, Received,
    Summary, DEFAULT_VISIBILITY_TIMEOUT,
};
pub use sdk::{load_config, LambdaFunction, SqsQueue};
pub use verdict::{judge, Invoked, Verdict};
