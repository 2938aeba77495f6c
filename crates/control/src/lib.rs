//! The pure core of the spotcheck control plane.
//!
//! Events in, decisions out: this crate parses EventBridge events and DescribeTrainingJob output,
//! reads the recovery policy and a job's lineage from configuration and tags, and decides whether
//! to relaunch, record, ignore or give up — as data. It never does I/O, never calls AWS, never
//! reads the clock (`now` is passed in) and never panics on input. The Lambdas, the CLI and the
//! AWS adapter are the imperative shell around it.
//!
//! Modules, in the order data flows through them:
//! [`events`] (envelope → [`Signal`]), [`job`] ([`JobFacts`]), [`tags`], [`status`],
//! [`timestamp`], [`policy`], [`lineage`], [`checkpoint`], [`failure`], [`decision`]
//! ([`decide`]), [`ec2`], [`naming`], [`plan`], [`savings`], [`outputs`].

#![warn(missing_docs)]

pub mod checkpoint;
pub mod decision;
pub mod ec2;
pub mod events;
pub mod failure;
pub mod job;
pub mod lineage;
pub mod naming;
pub mod outputs;
pub mod plan;
pub mod policy;
pub mod savings;
pub mod status;
pub mod tags;
pub mod timestamp;

pub use checkpoint::{CheckpointSummary, Validation};
pub use decision::{decide, Action, Decision, DecisionInput, GiveUp, GiveUpCause, Record};
pub use events::{parse_event, Event, EventKey, Parsed, Signal};
pub use job::JobFacts;
pub use lineage::{AttemptRecord, Lineage};
pub use plan::{ContinuationPlan, RelaunchCause, RelaunchPlan};
pub use policy::{Policy, WithoutCheckpoint};
pub use savings::{LineageSummary, PriceTable, SavingsRecord};
pub use tags::Tags;
pub use timestamp::Timestamp;

/// Any input [`decide_from_json`] could not use. None is retryable: the same bytes fail again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event is malformed.
    #[error(transparent)]
    Event(#[from] events::EventError),
    /// The DescribeTrainingJob JSON is malformed.
    #[error(transparent)]
    Job(#[from] job::JobError),
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A lineage tag is invalid.
    #[error(transparent)]
    Lineage(#[from] lineage::LineageError),
}

/// The CLI's one-shot: decide on an event given as JSON bytes.
///
/// `job` is DescribeTrainingJob output (with an optional `Tags` field); without it the event's
/// detail stands in for the facts and staleness cannot be detected. `checkpoints` defaults to
/// "no valid checkpoint known", `policy` (a policy file) to [`Policy::default`]. An event of an
/// unrelated kind is an [`Action::Ignore`] whose reason starts with "irrelevant event".
pub fn decide_from_json(
    event: &[u8],
    job: Option<&[u8]>,
    checkpoints: Option<CheckpointSummary>,
    policy: Option<&[u8]>,
    now: Timestamp,
) -> Result<Decision, Error> {
    let event = match parse_event(event)? {
        Parsed::Relevant(event) => event,
        Parsed::Irrelevant(other) => {
            return Ok(Decision {
                event_key: Some(other.key),
                ..Decision::ignore(format!(
                    "irrelevant event: source {:?}, detail-type {:?}",
                    other.envelope.source, other.envelope.detail_type
                ))
            })
        }
    };
    let job = job.map(JobFacts::from_describe_json).transpose()?;
    let policy = policy
        .map(Policy::from_json)
        .transpose()?
        .unwrap_or_default();
    let input = DecisionInput::new(
        event,
        job,
        &Tags::new(),
        checkpoints.unwrap_or_default(),
        &[],
        policy,
        now,
    )?;
    Ok(decide(&input))
}
