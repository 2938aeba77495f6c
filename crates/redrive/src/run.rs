//! The redrive loop: receive one message, invoke, delete only on success, until the queue is
//! empty.
//!
//! Owns [`redrive`], generic over the two narrow traits it needs ([`DeadLetterQueue`],
//! [`Function`]); the SDK implementations are in [`crate::sdk`], tests use in-memory fakes.
//! What to do with each message is decided by the pure [`crate::message::payload`] and
//! [`crate::verdict::judge`]; this module only sequences the calls.
//!
//! The rules, in order:
//!
//! 1. Messages are received **one at a time**, each hidden from other consumers for the
//!    visibility timeout, which must cover one Invoke (the functions' timeout is 120 s;
//!    Lambda's maximum is 900 s, the default here). One at a time, so that no received message
//!    waits behind other invocations while its visibility timeout runs out.
//! 2. A body that is not JSON is never invoked; it is reported and left in the queue.
//! 3. Otherwise the function is invoked synchronously with the payload; the message is deleted
//!    only when [`judge`](crate::verdict::judge) says the function handled it. A function error
//!    leaves it in the queue, reported with the function's error type and message.
//! 4. A message seen before in this run (it became visible again after a long run) is not
//!    invoked twice; a receive that brings nothing new ends the run, as does an empty receive
//!    or `max` messages processed.
//! 5. An error of the Lambda or SQS API itself (the function does not exist, access denied,
//!    throttling after the SDK's retries, a failed delete) stops the run: it would fail for
//!    every message alike. The message in hand is left in the queue.
//! 6. At the end every message received and not deleted is made visible again at once
//!    (visibility timeout 0), so a rerun after the fix can take it; then the queue's depth is
//!    read for the summary.
//!
//! With `dry_run`, steps 3 and 5's Invoke are skipped: each message is reported with the
//! payload it would be sent, and all are made visible again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::message::{self, DeadLettered, EventSummary, Shape};
use crate::verdict::{judge, Invoked, Verdict};

/// One received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// SQS's message id (stable across receives).
    pub message_id: String,
    /// The handle of this receive (delete and visibility changes need the latest one).
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// String values of the message attributes, by name.
    pub attributes: BTreeMap<String, String>,
}

/// How many messages a queue holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// `ApproximateNumberOfMessages`: available to receive.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: received by someone and not yet deleted.
    pub in_flight: u64,
}

/// A failed SQS or Lambda API call (not a function error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct ApiError {
    /// The API operation, e.g. `Invoke`.
    pub operation: &'static str,
    /// What the SDK or the service said.
    pub message: String,
}

/// The dead-letter queue: the four SQS calls the redrive makes.
pub trait DeadLetterQueue {
    /// Receives at most one message, hiding it for `visibility_timeout`; `None` when the
    /// queue has nothing visible.
    fn receive(
        &self,
        visibility_timeout: Duration,
    ) -> impl Future<Output = Result<Option<Received>, ApiError>> + Send;
    /// Deletes the message received with `receipt_handle`.
    fn delete(&self, receipt_handle: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Makes the message received with `receipt_handle` visible again now.
    fn release(&self, receipt_handle: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// How many messages the queue holds.
    fn depth(&self) -> impl Future<Output = Result<Depth, ApiError>> + Send;
}

/// The function the events belong to: one synchronous Invoke.
pub trait Function {
    /// Invokes the function with `payload` and waits for its answer.
    fn invoke(&self, payload: Vec<u8>) -> impl Future<Output = Result<Invoked, ApiError>> + Send;
}

/// How to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Process at most this many messages (`None`: until the queue is empty).
    pub max: Option<u64>,
    /// Report what would be sent; invoke nothing, delete nothing.
    pub dry_run: bool,
    /// How long a received message stays hidden: at least one Invoke.
    pub visibility_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max: None,
            dry_run: false,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
        }
    }
}

/// Lambda's maximum function timeout: one Invoke of any function fits.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(900);

/// What happened to one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The function handled it; the message was deleted.
    Redriven {
        /// The function's outcome.
        outcome: String,
    },
    /// Not redriven; the message stays in the queue.
    Failed {
        /// The function's error type, or the redrive's own (`Unreadable`,
        /// `NotForThisFunction`, `UnexpectedResponse`, `UnexpectedStatus`, `InvokeFailed`,
        /// `DeleteFailed`).
        error_type: String,
        /// What went wrong.
        message: String,
    },
    /// Dry run: this payload would be sent.
    WouldRedrive,
}

/// The report line of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageReport {
    /// SQS's message id.
    pub message_id: String,
    /// The body's shape (absent when it is not JSON).
    pub shape: Option<Shape>,
    /// The event's id, source and detail-type.
    pub event: Option<EventSummary>,
    /// Why it was dead-lettered, as recorded with it.
    pub dead_lettered: Option<DeadLettered>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The run's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Messages handled by the function and deleted.
    pub redriven: u64,
    /// Messages that stay in the queue because they failed (see their report lines).
    pub failed: u64,
    /// Dry run: messages that would be sent.
    pub would_redrive: u64,
    /// Messages in the queue after the run (visible + in flight, SQS's approximate count);
    /// absent if it could not be read.
    pub left: Option<u64>,
    /// Why the run stopped early (an SQS or Lambda API error), if it did.
    pub stopped: Option<String>,
    /// Calls after the run that failed (making messages visible again, reading the depth).
    pub warnings: Vec<String>,
}

impl Summary {
    /// True when every message processed was redriven (or, dry run, readable), the run was
    /// not stopped and nothing after it failed.
    pub fn all_redriven(&self) -> bool {
        self.failed == 0 && self.stopped.is_none() && self.warnings.is_empty()
    }
}

/// What one message came to, and whether the run must stop after it.
struct Step {
    report: MessageReport,
    deleted: bool,
    stop: Option<String>,
}

async fn process<F: Function, Q: DeadLetterQueue>(
    queue: &Q,
    function: &F,
    message: &Received,
    dry_run: bool,
) -> Step {
    let mut report = MessageReport {
        message_id: message.message_id.clone(),
        shape: None,
        event: None,
        dead_lettered: message::dead_lettered(&message.attributes, &message.body),
        outcome: Outcome::WouldRedrive,
    };
    let failed = |error_type: &str, message: String| Outcome::Failed {
        error_type: error_type.to_owned(),
        message,
    };
    let step = |report, deleted, stop| Step {
        report,
        deleted,
        stop,
    };
    let payload = match message::payload(&message.body) {
        Ok(p) => p,
        Err(e) => {
            report.outcome = failed("Unreadable", e.to_string());
            return step(report, false, None);
        }
    };
    report.shape = Some(payload.shape);
    report.event = Some(payload.event);
    if dry_run {
        return step(report, false, None);
    }
    let verdict = match function.invoke(payload.bytes).await {
        Ok(invoked) => judge(&invoked),
        Err(e) => {
            let why = e.to_string();
            report.outcome = failed("InvokeFailed", why.clone());
            return step(report, false, Some(why));
        }
    };
    match verdict {
        Verdict::Failed {
            error_type,
            message,
        } => {
            report.outcome = failed(&error_type, message);
            step(report, false, None)
        }
        Verdict::Handled { outcome } => match queue.delete(&message.receipt_handle).await {
            Ok(()) => {
                report.outcome = Outcome::Redriven { outcome };
                step(report, true, None)
            }
            Err(e) => {
                // The function has done its work; the message stays and a later redrive
                // sends it again, which the functions treat as the duplicate it is.
                report.outcome = failed(
                    "DeleteFailed",
                    format!("the function handled it (outcome `{outcome}`), but {e}"),
                );
                step(report, false, Some(e.to_string()))
            }
        },
    }
}

/// Redrives `queue` into `function` (see the module doc), handing each message's report to
/// `on_message` as it is done, and returns the totals.
pub async fn redrive<Q, F>(
    queue: &Q,
    function: &F,
    options: &Options,
    mut on_message: impl FnMut(&MessageReport),
) -> Summary
where
    Q: DeadLetterQueue,
    F: Function,
{
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    // Messages received and not deleted: id → latest receipt handle, in first-seen order.
    let mut kept: HashMap<String, String> = HashMap::new();
    let mut kept_order: Vec<String> = Vec::new();
    let mut processed: u64 = 0;
    loop {
        if options.max.is_some_and(|max| processed >= max) {
            break;
        }
        let message = match queue.receive(options.visibility_timeout).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                summary.stopped = Some(e.to_string());
                break;
            }
        };
        if let Some(handle) = kept.get_mut(&message.message_id) {
            // Seen before in this run: nothing new is left to take.
            *handle = message.receipt_handle;
            break;
        }
        processed += 1;
        let step = process(queue, function, &message, options.dry_run).await;
        match &step.report.outcome {
            Outcome::Redriven { .. } => summary.redriven += 1,
            Outcome::Failed { .. } => summary.failed += 1,
            Outcome::WouldRedrive => summary.would_redrive += 1,
        }
        on_message(&step.report);
        if !step.deleted {
            kept_order.push(message.message_id.clone());
            kept.insert(message.message_id, message.receipt_handle);
        }
        if let Some(why) = step.stop {
            summary.stopped = Some(why);
            break;
        }
    }
    for id in &kept_order {
        if let Err(e) = queue.release(&kept[id]).await {
            summary
                .warnings
                .push(format!("message {id} stays hidden until its timeout: {e}"));
        }
    }
    match queue.depth().await {
        Ok(depth) => summary.left = Some(depth.visible + depth.in_flight),
        Err(e) => summary.warnings.push(e.to_string()),
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// An SQS queue in memory: visible messages in order, in-flight ones by receipt handle.
    #[derive(Default)]
    struct FakeQueue {
        state: Mutex<QueueState>,
    }

    #[derive(Default)]
    struct QueueState {
        visible: VecDeque<(String, String)>,
        in_flight: BTreeMap<String, (String, String)>,
        receipts: u64,
        calls: Vec<String>,
        fail: BTreeMap<&'static str, String>,
        /// Receives after which in-flight messages time out and become visible again.
        expire_after_receives: Option<u64>,
    }

    impl FakeQueue {
        fn with(bodies: &[(&str, &str)]) -> FakeQueue {
            let q = FakeQueue::default();
            q.state.lock().unwrap().visible = bodies
                .iter()
                .map(|(id, body)| (id.to_string(), body.to_string()))
                .collect();
            q
        }
        fn fail(&self, op: &'static str, why: &str) {
            self.state.lock().unwrap().fail.insert(op, why.into());
        }
        fn ids(&self) -> Vec<String> {
            let s = self.state.lock().unwrap();
            let mut ids: Vec<String> = s
                .visible
                .iter()
                .map(|(id, _)| id.clone())
                .chain(s.in_flight.values().map(|(id, _)| id.clone()))
                .collect();
            ids.sort();
            ids
        }
        fn in_flight(&self) -> usize {
            self.state.lock().unwrap().in_flight.len()
        }
        fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }
        fn check(s: &mut QueueState, op: &'static str) -> Result<(), ApiError> {
            s.calls.push(op.to_owned());
            match s.fail.get(op) {
                Some(why) => Err(ApiError {
                    operation: op,
                    message: why.clone(),
                }),
                None => Ok(()),
            }
        }
    }

    impl DeadLetterQueue for FakeQueue {
        async fn receive(&self, timeout: Duration) -> Result<Option<Received>, ApiError> {
            assert_eq!(timeout, Duration::from_secs(60));
            let mut s = self.state.lock().unwrap();
            Self::check(&mut s, "ReceiveMessage")?;
            s.receipts += 1;
            if s.expire_after_receives.is_some_and(|n| s.receipts > n) {
                let back: Vec<_> = std::mem::take(&mut s.in_flight).into_values().collect();
                for m in back.into_iter().rev() {
                    s.visible.push_front(m);
                }
            }
            let Some((id, body)) = s.visible.pop_front() else {
                return Ok(None);
            };
            let handle = format!("rh-{}", s.receipts);
            s.in_flight
                .insert(handle.clone(), (id.clone(), body.clone()));
            let mut attributes = BTreeMap::new();
            attributes.insert("RequestID".to_owned(), format!("req-{id}"));
            Ok(Some(Received {
                message_id: id,
                receipt_handle: handle,
                body,
                attributes,
            }))
        }
        async fn delete(&self, handle: &str) -> Result<(), ApiError> {
            let mut s = self.state.lock().unwrap();
            Self::check(&mut s, "DeleteMessage")?;
            s.in_flight.remove(handle).expect("a live receipt handle");
            Ok(())
        }
        async fn release(&self, handle: &str) -> Result<(), ApiError> {
            let mut s = self.state.lock().unwrap();
            Self::check(&mut s, "ChangeMessageVisibility")?;
            // A handle whose message already timed out: it is visible, as wanted (the SQS
            // adapter treats SQS's MessageNotInflight the same way).
            if let Some(m) = s.in_flight.remove(handle) {
                s.visible.push_back(m);
            }
            Ok(())
        }
        async fn depth(&self) -> Result<Depth, ApiError> {
            let mut s = self.state.lock().unwrap();
            Self::check(&mut s, "GetQueueAttributes")?;
            Ok(Depth {
                visible: s.visible.len() as u64,
                in_flight: s.in_flight.len() as u64,
            })
        }
    }

    /// A function answering by the payload's `detail.answer`: `ok` → relaunched, `irrelevant`,
    /// `refuse` → a Refused function error, `deny` → an API error; records each payload.
    #[derive(Default)]
    struct FakeFunction {
        payloads: Mutex<Vec<String>>,
    }

    impl Function for FakeFunction {
        async fn invoke(&self, payload: Vec<u8>) -> Result<Invoked, ApiError> {
            let text = String::from_utf8(payload).unwrap();
            self.payloads.lock().unwrap().push(text.clone());
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let (function_error, body) = match v.pointer("/detail/answer").and_then(|a| a.as_str())
            {
                Some("ok") => (None, r#"{"outcome":"relaunched"}"#),
                Some("irrelevant") => (None, r#"{"outcome":"irrelevant"}"#),
                Some("refuse") => (
                    Some("Unhandled".to_owned()),
                    r#"{"errorType":"Refused","errorMessage":"CreateTrainingJob failed (Rejected)"}"#,
                ),
                Some("deny") => {
                    return Err(ApiError {
                        operation: "Invoke",
                        message: "AccessDeniedException: not allowed".into(),
                    })
                }
                _ => (None, r#"{"outcome":"malformed"}"#),
            };
            Ok(Invoked {
                status: 200,
                function_error,
                payload: body.as_bytes().to_vec(),
            })
        }
    }

    fn event(answer: &str) -> String {
        format!(
            r#"{{"id":"ev-{answer}","source":"aws.sagemaker","detail-type":"SageMaker Training Job State Change","detail":{{"answer":"{answer}"}}}}"#
        )
    }

    fn options() -> Options {
        Options {
            visibility_timeout: Duration::from_secs(60),
            ..Options::default()
        }
    }

    async fn run(q: &FakeQueue, f: &FakeFunction, o: &Options) -> (Summary, Vec<MessageReport>) {
        let mut reports = Vec::new();
        let summary = redrive(q, f, o, |r| reports.push(r.clone())).await;
        (summary, reports)
    }

    fn results(reports: &[MessageReport]) -> Vec<(String, String)> {
        reports
            .iter()
            .map(|r| {
                let what = match &r.outcome {
                    Outcome::Redriven { outcome } => format!("redriven {outcome}"),
                    Outcome::Failed { error_type, .. } => format!("failed {error_type}"),
                    Outcome::WouldRedrive => "would".to_owned(),
                };
                (r.message_id.clone(), what)
            })
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn deletes_only_what_the_function_handled_and_releases_the_rest() {
        let (ok, irrelevant, refuse, malformed) = (
            event("ok"),
            event("irrelevant"),
            event("refuse"),
            event("x"),
        );
        let q = FakeQueue::with(&[
            ("m1", &ok),
            ("m2", "not json"),
            ("m3", &refuse),
            ("m4", &irrelevant),
            ("m5", &malformed),
        ]);
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert_eq!(
            results(&reports),
            pairs(&[
                ("m1", "redriven relaunched"),
                ("m2", "failed Unreadable"),
                ("m3", "failed Refused"),
                ("m4", "failed NotForThisFunction"),
                ("m5", "redriven malformed"),
            ])
        );
        assert_eq!(q.ids(), vec!["m2", "m3", "m4"], "only handled ones deleted");
        assert_eq!(q.in_flight(), 0, "the kept ones are visible again");
        // The unreadable body was never sent; every other one exactly once, as it came.
        assert_eq!(
            *f.payloads.lock().unwrap(),
            vec![ok, refuse.clone(), irrelevant, malformed]
        );
        let Outcome::Failed { message, .. } = &reports[2].outcome else {
            panic!()
        };
        assert_eq!(message, "CreateTrainingJob failed (Rejected)");
        assert_eq!(
            reports[2].dead_lettered.as_ref().map(|d| d.by),
            Some("lambda")
        );
        assert_eq!(
            summary,
            Summary {
                dry_run: false,
                redriven: 2,
                failed: 3,
                would_redrive: 0,
                left: Some(3),
                stopped: None,
                warnings: vec![],
            }
        );
        assert!(!summary.all_redriven());

        // A rerun meets the same three again, once each, and stops.
        let (again, reports) = run(&q, &f, &options()).await;
        assert_eq!(reports.len(), 3);
        assert_eq!((again.redriven, again.failed, again.left), (0, 3, Some(3)));
    }

    #[tokio::test]
    async fn an_empty_queue_is_a_clean_run() {
        let q = FakeQueue::default();
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert!(reports.is_empty());
        assert!(summary.all_redriven());
        assert_eq!(summary.left, Some(0));
        assert_eq!(
            q.calls(),
            vec!["ReceiveMessage", "GetQueueAttributes"],
            "one empty receive ends it"
        );
    }

    #[tokio::test]
    async fn dry_run_invokes_and_deletes_nothing() {
        let (ok, refuse) = (event("ok"), event("refuse"));
        let q = FakeQueue::with(&[("m1", &ok), ("m2", "{"), ("m3", &refuse)]);
        let f = FakeFunction::default();
        let o = Options {
            dry_run: true,
            ..options()
        };
        let (summary, reports) = run(&q, &f, &o).await;
        assert_eq!(
            results(&reports),
            pairs(&[
                ("m1", "would"),
                ("m2", "failed Unreadable"),
                ("m3", "would")
            ])
        );
        assert_eq!(
            reports[0].event.as_ref().unwrap().id.as_deref(),
            Some("ev-ok")
        );
        assert!(f.payloads.lock().unwrap().is_empty());
        assert_eq!(q.ids(), vec!["m1", "m2", "m3"]);
        assert_eq!(q.in_flight(), 0);
        assert_eq!((summary.would_redrive, summary.failed), (2, 1));
        assert!(!q.calls().contains(&"DeleteMessage".to_owned()));
    }

    #[tokio::test]
    async fn max_bounds_the_messages_processed() {
        let ok = event("ok");
        let q = FakeQueue::with(&[("m1", &ok), ("m2", &ok), ("m3", &ok)]);
        let f = FakeFunction::default();
        let o = Options {
            max: Some(2),
            ..options()
        };
        let (summary, reports) = run(&q, &f, &o).await;
        assert_eq!(reports.len(), 2);
        assert_eq!(q.ids(), vec!["m3"]);
        assert_eq!(
            q.calls().iter().filter(|c| *c == "ReceiveMessage").count(),
            2,
            "no third message is received (and hidden) beyond the limit"
        );
        assert_eq!((summary.redriven, summary.left), (2, Some(1)));
        assert!(summary.all_redriven());
    }

    #[tokio::test]
    async fn an_invoke_api_error_stops_the_run_and_keeps_the_message() {
        let (ok, deny) = (event("ok"), event("deny"));
        let q = FakeQueue::with(&[("m1", &deny), ("m2", &ok)]);
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert_eq!(results(&reports), pairs(&[("m1", "failed InvokeFailed")]));
        assert_eq!(
            summary.stopped.as_deref(),
            Some("Invoke failed: AccessDeniedException: not allowed")
        );
        assert_eq!(
            q.ids(),
            vec!["m1", "m2"],
            "nothing deleted, m2 never received"
        );
        assert_eq!(q.in_flight(), 0);
        assert_eq!(summary.left, Some(2));
    }

    #[tokio::test]
    async fn a_failed_delete_stops_the_run_and_says_the_work_was_done() {
        let ok = event("ok");
        let q = FakeQueue::with(&[("m1", &ok), ("m2", &ok)]);
        q.fail("DeleteMessage", "AccessDenied");
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert_eq!(results(&reports), pairs(&[("m1", "failed DeleteFailed")]));
        let Outcome::Failed { message, .. } = &reports[0].outcome else {
            panic!()
        };
        assert!(message.contains("outcome `relaunched`"), "{message}");
        assert_eq!(summary.failed, 1);
        assert_eq!(
            summary.stopped.as_deref(),
            Some("DeleteMessage failed: AccessDenied")
        );
        assert_eq!(q.ids(), vec!["m1", "m2"]);
    }

    #[tokio::test]
    async fn a_receive_error_stops_the_run() {
        let q = FakeQueue::default();
        q.fail("ReceiveMessage", "AWS.SimpleQueueService.NonExistentQueue");
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert!(reports.is_empty());
        assert_eq!(
            summary.stopped.as_deref(),
            Some("ReceiveMessage failed: AWS.SimpleQueueService.NonExistentQueue")
        );
        assert!(!summary.all_redriven());
    }

    #[tokio::test]
    async fn messages_coming_back_in_a_long_run_are_not_invoked_twice() {
        let (refuse, ok) = (event("refuse"), event("ok"));
        let q = FakeQueue::with(&[("m1", &refuse), ("m2", &refuse), ("m3", &ok)]);
        // After the second receive, the first two time out and come back before m3.
        q.state.lock().unwrap().expire_after_receives = Some(2);
        let f = FakeFunction::default();
        let (summary, reports) = run(&q, &f, &options()).await;
        assert_eq!(
            results(&reports),
            pairs(&[("m1", "failed Refused"), ("m2", "failed Refused")]),
            "a receive bringing an already-seen message ends the run"
        );
        assert_eq!(f.payloads.lock().unwrap().len(), 2);
        assert_eq!(q.in_flight(), 0, "all released, with their latest handles");
        assert_eq!(summary.left, Some(3));
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    }

    #[tokio::test]
    async fn failures_after_the_run_are_warnings() {
        let refuse = event("refuse");
        let q = FakeQueue::with(&[("m1", &refuse)]);
        q.fail("ChangeMessageVisibility", "throttled");
        q.fail("GetQueueAttributes", "denied");
        let f = FakeFunction::default();
        let (summary, _) = run(&q, &f, &options()).await;
        assert_eq!(summary.left, None);
        assert_eq!(summary.warnings.len(), 2, "{:?}", summary.warnings);
        assert!(summary.warnings[0].contains("m1 stays hidden"));
    }

    #[test]
    fn a_report_line_is_flat_json() {
        let r = MessageReport {
            message_id: "m1".into(),
            shape: Some(Shape::Event),
            event: None,
            dead_lettered: None,
            outcome: Outcome::Failed {
                error_type: "Refused".into(),
                message: "no".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"message_id": "m1", "shape": "event", "event": null,
                "dead_lettered": null, "result": "failed", "error_type": "Refused", "message": "no"})
        );
    }
}
