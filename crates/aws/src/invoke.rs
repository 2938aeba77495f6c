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

use crate::handler::{Handled, HandlerError};

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

/// Handles one invocation's payload with `handle` (the event's bytes and the decision time
/// in; a handler's `handle` call out): `{"outcome": …}` when handled (acknowledged events
/// included), a [`Failure`] for the handler's errors, so Lambda retries them and finally
/// dead-letters them.
pub async fn invoke<F, Fut>(payload: &Value, handle: F) -> Result<Value, Failure>
where
    F: FnOnce(Vec<u8>, Timestamp) -> Fut,
    Fut: Future<Output = Result<Handled, HandlerError>>,
{
    let bytes = serde_json::to_vec(payload).map_err(|e| Failure::new("Encode", &e))?;
    let now = system_now().map_err(|e| Failure::new("Clock", &e))?;
    // Boxed: the handlers' futures are deeply nested types, and one more layer of nesting
    // in every `main` overflows the compiler's query depth.
    match Box::pin(handle(bytes, now)).await {
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
