//! Decisions for training on your own EC2 spot instances (the pure part).
//!
//! Owns what to do about an "EC2 Spot Instance Interruption Warning" or an "EC2 Instance
//! Rebalance Recommendation", given the instance's tags:
//!
//! | Instance tags / signal | Decision |
//! |---|---|
//! | no `spotcheck:run` | Ignore: not a spotcheck-managed run |
//! | rebalance recommendation | Record, advisory: it is early and noisy, so nothing else |
//! | interruption, `terminate`, `spotcheck:continue-on` set | Record + a [`ContinuationPlan`] named from the run and the instance |
//! | interruption, `terminate`, no `continue-on` | Record |
//! | interruption, `stop` / `hibernate` / absent / unknown action | Record; no continuation, because a stopped or hibernated instance comes back with its volumes and would run twice |
//!
//! The checkpoint on the instance itself is the trainer's job (it polls IMDS); this module only
//! plans. It never calls AWS.

use serde::Serialize;

use crate::decision::{Decision, Record};
use crate::naming;
use crate::plan::ContinuationPlan;
use crate::status::SpotAction;
use crate::tags::{keys, Tags};

/// The payload of [`Record::InstanceInterruption`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceInterruption {
    /// The instance (from the event's `detail`, not its ARN).
    pub instance_id: String,
    /// The run it belongs to (`spotcheck:run`).
    pub run: String,
    /// `instance-action` of a warning; `None` for a rebalance recommendation or when absent.
    pub action: Option<SpotAction>,
    /// `true` for a rebalance recommendation: no interruption is certain.
    pub advisory: bool,
    /// `spotcheck:checkpoint-uri`, if tagged.
    pub checkpoint_uri: Option<String>,
    /// Where and under which name to continue the run, when the run asks for it.
    pub continuation: Option<ContinuationPlan>,
}

fn run_of(tags: &Tags) -> Option<&str> {
    tags.get(keys::RUN).map(str::trim).filter(|r| !r.is_empty())
}

fn tag_text(tags: &Tags, key: &str) -> Option<String> {
    tags.get(key)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn not_managed(instance_id: &str) -> Decision {
    Decision::ignore(format!(
        "instance {instance_id} has no {} tag: not a spotcheck-managed run",
        keys::RUN
    ))
}

/// A two-minute interruption warning for `instance_id`.
pub(crate) fn interruption(
    instance_id: &str,
    action: Option<&SpotAction>,
    tags: &Tags,
) -> Decision {
    let Some(run) = run_of(tags) else {
        return not_managed(instance_id);
    };
    let action_text = action.map_or("(no action given)", SpotAction::as_str);
    let checkpoint_uri = tag_text(tags, keys::CHECKPOINT_URI);
    let continue_on = tag_text(tags, keys::CONTINUE_ON);
    let (continuation, plan_text) = match (action, continue_on) {
        (Some(SpotAction::Terminate), Some(continue_on)) => {
            let name = naming::continuation_name(run, instance_id);
            let text = format!(
                "; continuing run {run} as {name} on {continue_on} (from {})",
                checkpoint_uri
                    .as_deref()
                    .unwrap_or("scratch: no spotcheck:checkpoint-uri tag")
            );
            let plan = ContinuationPlan {
                name,
                run: run.to_owned(),
                instance_id: instance_id.to_owned(),
                continue_on,
                checkpoint_uri: checkpoint_uri.clone(),
            };
            (Some(plan), text)
        }
        (Some(SpotAction::Terminate), None) => {
            (None, format!("; the run names no {}", keys::CONTINUE_ON))
        }
        (_, Some(_)) => (
            None,
            format!(
                "; no continuation for action {action_text}: only a terminated instance is gone \
                 for good, a stopped or hibernated one comes back and would run twice"
            ),
        ),
        (_, None) => (None, String::new()),
    };
    Decision::record(
        Record::InstanceInterruption(InstanceInterruption {
            instance_id: instance_id.to_owned(),
            run: run.to_owned(),
            action: action.cloned(),
            advisory: false,
            checkpoint_uri,
            continuation,
        }),
        format!(
            "instance {instance_id} of run {run}: spot interruption warning ({action_text}); \
             recorded{plan_text}"
        ),
    )
}

/// A rebalance recommendation for `instance_id`.
pub(crate) fn rebalance(instance_id: &str, tags: &Tags) -> Decision {
    let Some(run) = run_of(tags) else {
        return not_managed(instance_id);
    };
    Decision::record(
        Record::InstanceInterruption(InstanceInterruption {
            instance_id: instance_id.to_owned(),
            run: run.to_owned(),
            action: None,
            advisory: true,
            checkpoint_uri: tag_text(tags, keys::CHECKPOINT_URI),
            continuation: None,
        }),
        format!(
            "instance {instance_id} of run {run}: rebalance recommendation, advisory only (often \
             hours early and often not followed by an interruption); recorded, the run keeps going"
        ),
    )
}
