//! Whether one Invoke handled the event, hence whether its message may be deleted (pure).
//!
//! Owns [`judge`]: the answer of a synchronous (`RequestResponse`) Invoke in, a [`Verdict`]
//! out. Lambda answers a *function* error with HTTP 200 and the `X-Amz-Function-Error` header
//! (`Unhandled` for a runtime's error report), the payload being `{"errorType",
//! "errorMessage"}`; only errors that kept the function from running at all (permissions,
//! throttling, a missing function) are API errors, and those never reach this module.
//!
//! spotcheck's functions answer a handled event with `{"outcome": …}` (`crates/aws/src/invoke.rs`)
//! and fail with their error type (`Transient`, `Refused`, `InvalidTemplate`, …). Deleting a
//! dead-letter message loses the event for good, so only an answer that says the function
//! handled it counts: an `outcome` other than `irrelevant` (which the functions answer for
//! events that are not theirs — the queue of the other function was named), with no function
//! error and status 200. Everything else leaves the message in the queue.

use serde::Serialize;
use serde_json::Value;

/// The answer of one synchronous Invoke that the Lambda API accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoked {
    /// HTTP status of the Invoke (200 for `RequestResponse`).
    pub status: i32,
    /// `X-Amz-Function-Error`: `Unhandled` or `Handled` when the function failed.
    pub function_error: Option<String>,
    /// The function's response, or its error report.
    pub payload: Vec<u8>,
}

/// What the answer means for the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The function handled the event (`outcome`, e.g. `relaunched`, `malformed`): delete.
    Handled {
        /// The function's outcome.
        outcome: String,
    },
    /// The function failed: keep the message (fix the cause, redrive again).
    Failed {
        /// The function's `errorType` (e.g. `Transient`, `Refused`), or spotcheck-redrive's
        /// own for answers it cannot accept: `NotForThisFunction`, `UnexpectedResponse`,
        /// `UnexpectedStatus`.
        error_type: String,
        /// What went wrong.
        message: String,
    },
}

impl Verdict {
    /// Whether the message may be deleted.
    pub fn deletes(&self) -> bool {
        matches!(self, Verdict::Handled { .. })
    }
}

/// At most this much of a response goes into a report.
const MAX_QUOTED: usize = 1024;

fn quoted(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

fn failed(error_type: &str, message: String) -> Verdict {
    Verdict::Failed {
        error_type: error_type.to_owned(),
        message,
    }
}

/// Judges one Invoke's answer (see the module doc).
pub fn judge(invoked: &Invoked) -> Verdict {
    let response: Option<Value> = serde_json::from_slice(&invoked.payload).ok();
    let field = |key: &str| {
        response
            .as_ref()
            .and_then(|r| r.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(kind) = &invoked.function_error {
        return Verdict::Failed {
            error_type: field("errorType").unwrap_or_else(|| kind.clone()),
            message: field("errorMessage").unwrap_or_else(|| quoted(&invoked.payload)),
        };
    }
    if invoked.status != 200 {
        return failed(
            "UnexpectedStatus",
            format!(
                "Invoke answered HTTP {} (a synchronous invocation answers 200): {}",
                invoked.status,
                quoted(&invoked.payload)
            ),
        );
    }
    match field("outcome") {
        Some(outcome) if outcome == "irrelevant" => failed(
            "NotForThisFunction",
            "the function acknowledged the event as not its own (outcome `irrelevant`): is this \
             queue the dead-letter queue of that function? The message is kept"
                .to_owned(),
        ),
        Some(outcome) => Verdict::Handled { outcome },
        None => failed(
            "UnexpectedResponse",
            format!(
                "the response has no `outcome`, so it is not a spotcheck function's answer; the \
                 message is kept: {}",
                quoted(&invoked.payload)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(payload: &str) -> Invoked {
        Invoked {
            status: 200,
            function_error: None,
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn verdicts_table() {
        let handled = |o: &str| Verdict::Handled {
            outcome: o.to_owned(),
        };
        let cases: Vec<(Invoked, Result<Verdict, &str>)> = vec![
            (ok(r#"{"outcome":"relaunched"}"#), Ok(handled("relaunched"))),
            (
                ok(r#"{"outcome":"already_relaunched"}"#),
                Ok(handled("already_relaunched")),
            ),
            // The function looked at it and will never do more: done with it.
            (ok(r#"{"outcome":"malformed"}"#), Ok(handled("malformed"))),
            (
                ok(r#"{"outcome":"not_opted_in"}"#),
                Ok(handled("not_opted_in")),
            ),
            (ok(r#"{"outcome":"irrelevant"}"#), Err("NotForThisFunction")),
            (ok(r#"{"result":"ok"}"#), Err("UnexpectedResponse")),
            (ok("null"), Err("UnexpectedResponse")),
            (ok(""), Err("UnexpectedResponse")),
            (ok(r#"{"outcome": 3}"#), Err("UnexpectedResponse")),
            (
                Invoked {
                    status: 200,
                    function_error: Some("Unhandled".into()),
                    payload: br#"{"errorType":"Refused","errorMessage":"AWS refused"}"#.to_vec(),
                },
                Err("Refused"),
            ),
            (
                Invoked {
                    status: 200,
                    function_error: Some("Unhandled".into()),
                    // A function error wins even when the payload looks like a success.
                    payload: br#"{"outcome":"relaunched"}"#.to_vec(),
                },
                Err("Unhandled"),
            ),
            (
                Invoked {
                    status: 200,
                    function_error: Some("Handled".into()),
                    payload: b"garbage".to_vec(),
                },
                Err("Handled"),
            ),
            (
                Invoked {
                    status: 202,
                    function_error: None,
                    payload: br#"{"outcome":"relaunched"}"#.to_vec(),
                },
                Err("UnexpectedStatus"),
            ),
        ];
        for (invoked, want) in cases {
            let verdict = judge(&invoked);
            match (&verdict, want) {
                (v, Ok(w)) => assert_eq!(*v, w, "{invoked:?}"),
                (Verdict::Failed { error_type, .. }, Err(w)) => {
                    assert_eq!(error_type, w, "{invoked:?}");
                    assert!(!verdict.deletes());
                }
                (v, Err(w)) => panic!("{invoked:?}: {v:?}, want a failure {w}"),
            }
        }
    }

    #[test]
    fn a_function_error_keeps_its_message_and_a_long_answer_is_cut() {
        let v = judge(&Invoked {
            status: 200,
            function_error: Some("Unhandled".into()),
            payload: br#"{"errorType":"Transient","errorMessage":"ListTags failed (Transient)"}"#
                .to_vec(),
        });
        assert_eq!(
            v,
            Verdict::Failed {
                error_type: "Transient".into(),
                message: "ListTags failed (Transient)".into()
            }
        );
        let long = "x".repeat(5000);
        let Verdict::Failed { message, .. } = judge(&ok(&long)) else {
            panic!("not a failure")
        };
        assert!(message.chars().count() < 1300, "{}", message.len());
        assert!(message.ends_with('…'));
    }
}
