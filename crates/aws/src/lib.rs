//! The imperative shell of the spotcheck control plane.
//!
//! The decision engine (`spotcheck-control`) is pure; this crate does the I/O around it. Each AWS
//! dependency sits behind a narrow trait with one SDK implementation, constructible from an
//! [`aws_config::SdkConfig`] (see [`sdk`] for emulator setups):
//!
//! | trait | SDK implementation | calls |
//! |---|---|---|
//! | [`TrainingJobs`] | [`SdkTrainingJobs`] | DescribeTrainingJob, ListTags, CreateTrainingJob |
//! | [`CheckpointStore`] | [`S3Checkpoints`] | ListObjectsV2, ranged GetObject, HeadObject (ChecksumMode=ENABLED) |
//! | [`Ledger`] | [`S3Ledger`] | PutObject with `If-None-Match: *` |
//! | [`EventSink`] | [`EventBridgeSink`] | PutEvents |
//! | [`InstanceTags`] | `Ec2InstanceTags` (feature `ec2`) | DescribeTags |
//!
//! The [`handler`] module runs the flow — parse, gather inputs, decide, act, log one line — as
//! code generic over those traits, so the two Lambdas, the tests (with in-memory fakes) and a
//! future local service share it. Pure pieces are separate functions: [`relaunch_request`]
//! (DescribeTrainingJob output + plan → CreateTrainingJob input, minus what
//! [`create_rules`] says CreateTrainingJob refuses), [`continuation_request`]
//! (an EC2 run's request template + plan → CreateTrainingJob input), [`job_facts`],
//! [`error::classify`], the ledger [`keys`](ledger::keys).

#![warn(missing_docs)]

pub mod checkpoints;
pub mod config;
pub mod continuation;
pub mod create_rules;
pub mod error;
pub mod events;
pub mod handler;
pub mod instances;
pub mod invoke;
pub mod ledger;
pub mod sagemaker;
pub mod sdk;

pub use checkpoints::{
    validate_checkpoints, CheckpointStore, CheckpointValidation, HeadResult, ListedObject,
    S3Checkpoints, ValidationOptions,
};
pub use config::Settings;
pub use continuation::{continuation_request, parse_template, Template, TemplateError};
pub use error::{AwsError, ErrorKind};
pub use events::{EventBridgeSink, EventSink};
pub use handler::{
    Ec2Handler, Handled, HandlerConfig, HandlerError, LogSink, Outcome, SageMakerHandler, StdoutLog,
};
#[cfg(feature = "ec2")]
pub use instances::Ec2InstanceTags;
pub use instances::InstanceTags;
pub use invoke::{invoke, Failure};
pub use ledger::{Ledger, S3Ledger, Written};
pub use sagemaker::{
    job_facts, relaunch_request, Created, Described, SdkTrainingJobs, TrainingJobs,
};
