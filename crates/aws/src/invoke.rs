//! One Lambda invocation around a handler, shared by both functions' `main`s.
//!
//! Owns what is the same in both: the payload back to bytes (the handlers parse events
//! themselves, tolerantly), the decision time from the system clock, the response (the
//! outcome) and, for a handler error, the error type and message Lambda reports (see
//! [`HandlerError::error_type`]). The `main`s keep only their clients and the runtime loop.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use spotcheck_control::Timestamp;

use crate::handler::{Ec2Handler, Handled, HandlerError, SageMakerHandler, StdoutLog};
use crate::{CheckpointStore, EventSink, InstanceTags, Ledger, TrainingJobs};

/// An event handler a Lambda drives: [`SageMakerHandler`] or [`Ec2Handler`].
pub trait EventHandler {
    /// Handles one event's raw JSON at decision time `now`, logging to `log`.
    fn handle_event(
        &self,
        event: &[u8],
        now: Timestamp,
        log: &StdoutLog,
    ) -> impl Future<Output = Result<Handled, HandlerError>>;
}

impl<J, C, L, E> EventHandler for SageMakerHandler<J, C, L, E>
where
    J: TrainingJobs + Sync,
    C: CheckpointStore + Sync,
    L: Ledger + Sync,
    E: EventSink + Sync,
{
    fn handle_event(
        &self,
        event: &[u8],
        now: Timestamp,
        log: &StdoutLog,
    ) -> impl Future<Output = Result<Handled, HandlerError>> {
        self.handle(event, now, log)
    }
}

impl<I, J, C, L, E> EventHandler for Ec2Handler<I, J, C, L, E>
where
    I: InstanceTags + Sync,
    J: TrainingJobs + Sync,
    C: CheckpointStore + Sync,
    L: Ledger + Sync,
    E: EventSink + Sync,
{
    fn handle_event(
        &self,
        event: &[u8],
        now: Timestamp,
        log: &StdoutLog,
    ) -> impl Future<Output = Result<Handled, HandlerError>> {
        self.handle(event, now, log)
    }
}

/// What Lambda reports for a failed invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `Transient` (Lambda's retries may help), `Refused` or `InvalidTemplate` (fix, then
    /// redrive from the DLQ), `Encode`, or `Clock`.
    pub error_type: String,
    /// The error's message.
    pub message: String,
}

impl Failure {
    fn new(error_type: &str, error: &dyn std::fmt::Display) -> Self {
        Failure {
            error_type: error_type.to_owned(),
            message: error.to_string(),
        }
    }
}

/// Handles one invocation's payload: `{"outcome": …}` when handled (acknowledged events
/// included), a [`Failure`] for the handler's errors, so Lambda retries them and finally
/// dead-letters them.
pub async fn invoke(handler: &impl EventHandler, payload: &Value) -> Result<Value, Failure> {
    let bytes = serde_json::to_vec(payload).map_err(|e| Failure::new("Encode", &e))?;
    let now = system_now().map_err(|e| Failure::new("Clock", &e))?;
    // Boxed: the handlers' futures are deeply nested types, and one more layer of nesting
    // in every `main` overflows the compiler's query depth.
    match Box::pin(handler.handle_event(&bytes, now, &StdoutLog)).await {
        Ok(handled) => Ok(json!({ "outcome": handled.outcome })),
        Err(e) => Err(Failure::new(e.error_type(), &e)),
    }
}

/// The system clock as a decision time.
fn system_now() -> Result<Timestamp, String> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|e| e.to_string())?;
    Timestamp::from_epoch_ms(ms).map_err(|e| e.to_string())
}
