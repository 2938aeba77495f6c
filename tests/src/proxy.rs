//! A fault-injecting HTTP proxy in front of an emulator, counting every request.
//!
//! Owns [`FaultProxy`]: it listens on loopback, forwards each request to its upstream (LocalStack,
//! the local SageMaker service) unchanged, and records it. A test points an SDK client at
//! [`FaultProxy::endpoint`] and injects [`FaultRule`]s: for the requests a rule matches — by
//! operation (`X-Amz-Target` for the JSON protocols, method and path for S3) — it answers with
//! the fault instead, a given number of times or for ever:
//!
//! - an error response in the service's own wire format ([`Fault::json_error`] for SageMaker
//!   and EventBridge: `400 ThrottlingException`, `500 InternalFailure`…; [`Fault::s3_error`]:
//!   `503 SlowDown`, `500 InternalError`…), the request never reaching the emulator;
//! - [`Fault::ForwardThenFail`]: the request is carried out upstream, then the answer is lost
//!   (an error status is returned instead) — the case that doubles actions if retries are not
//!   idempotent;
//! - [`Fault::Hang`]: no answer at all, until the client gives up.
//!
//! A rule can also require a string in the request body ([`FaultRule::with_body_containing`]),
//! to fault the calls about one resource only. Forwarded answers can be rewritten
//! ([`FaultProxy::rewrite_replies`]), e.g. to turn an emulator's wire format into the
//! service's. Everything it sees is kept ([`FaultProxy::seen`]) so tests can count attempts
//! per operation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::http::Reply;

/// What the proxy knows about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The query string (without `?`).
    pub query: String,
    /// `X-Amz-Target` (JSON protocols), e.g. `SageMaker.CreateTrainingJob`.
    pub target: Option<String>,
}

impl RequestInfo {
    /// The API operation: the `X-Amz-Target` operation, or for S3 (path style) one of
    /// `ListObjectsV2`, `GetObject`, `HeadObject`, `PutObject`, `DeleteObject`, `CreateBucket`,
    /// else `METHOD /path`.
    pub fn operation(&self) -> String {
        if let Some(t) = &self.target {
            return t.rsplit('.').next().unwrap_or(t).to_owned();
        }
        let key = self.s3_key();
        let op = match (self.method.as_str(), key.is_some()) {
            ("GET", false) if self.query.contains("list-type=2") => "ListObjectsV2",
            ("PUT", false) => "CreateBucket",
            ("GET", true) => "GetObject",
            ("HEAD", true) => "HeadObject",
            ("PUT", true) => "PutObject",
            ("DELETE", true) => "DeleteObject",
            _ => return format!("{} {}", self.method, self.path),
        };
        op.to_owned()
    }

    /// The object key of a path-style S3 request (`/bucket/key` → `key`), if any.
    pub fn s3_key(&self) -> Option<String> {
        let rest = self.path.strip_prefix('/')?;
        let (_, key) = rest.split_once('/')?;
        (!key.is_empty()).then(|| key.to_owned())
    }
}

/// A fault.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this instead of forwarding.
    Respond {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
    /// Forward, then answer this status with an empty body instead of the real answer.
    ForwardThenFail(u16),
    /// Never answer.
    Hang,
}

impl Fault {
    /// An AWS JSON 1.1 error (SageMaker, EventBridge): `{"__type": code}` and
    /// `x-amzn-ErrorType`.
    pub fn json_error(status: u16, code: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![
                ("content-type".into(), "application/x-amz-json-1.1".into()),
                ("x-amzn-errortype".into(), code.into()),
                ("x-amzn-requestid".into(), "fault-proxy".into()),
            ],
            body: serde_json::json!({"__type": code, "message": "injected by the fault proxy"})
                .to_string(),
        }
    }

    /// An S3 REST-XML error.
    pub fn s3_error(status: u16, code: &str) -> Fault {
        Fault::Respond {
            status,
            headers: vec![
                ("content-type".into(), "application/xml".into()),
                ("x-amz-request-id".into(), "fault-proxy".into()),
            ],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the fault proxy</Message><RequestId>fault-proxy</RequestId>\
                 </Error>"
            ),
        }
    }
}

type Matcher = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

/// A rewrite of forwarded answers.
type Rewrite = Arc<dyn Fn(&RequestInfo, Reply) -> Reply + Send + Sync>;

/// "Answer requests matching this with that fault, n times (or always)".
#[derive(Clone)]
pub struct FaultRule {
    matches: Matcher,
    fault: Fault,
    remaining: Option<usize>,
    label: String,
    body_contains: Option<Vec<u8>>,
}

impl std::fmt::Debug for FaultRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultRule")
            .field("label", &self.label)
            .field("fault", &self.fault)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl FaultRule {
    /// Requests of the API operation `operation` (see [`RequestInfo::operation`]).
    pub fn operation(operation: &str, fault: Fault) -> FaultRule {
        let op = operation.to_owned();
        FaultRule {
            label: op.clone(),
            matches: Arc::new(move |r: &RequestInfo| r.operation() == op),
            fault,
            remaining: None,
            body_contains: None,
        }
    }

    /// Requests for which `pred` holds.
    pub fn when(
        label: &str,
        pred: impl Fn(&RequestInfo) -> bool + Send + Sync + 'static,
        fault: Fault,
    ) -> FaultRule {
        FaultRule {
            label: label.to_owned(),
            matches: Arc::new(pred),
            fault,
            remaining: None,
            body_contains: None,
        }
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: usize) -> FaultRule {
        self.remaining = Some(n);
        self
    }

    /// Only requests whose body contains `needle` (e.g. one job's name).
    pub fn with_body_containing(mut self, needle: &str) -> FaultRule {
        self.label = format!("{} ({needle})", self.label);
        self.body_contains = Some(needle.as_bytes().to_vec());
        self
    }
}

/// What happened to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the upstream's status.
    Forwarded(u16),
    /// Answered with a fault (its label).
    Faulted(String),
    /// The upstream could not be reached.
    UpstreamFailed(String),
}

/// A request and its outcome.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request.
    pub info: RequestInfo,
    /// What the proxy did.
    pub outcome: Outcome,
}

#[derive(Default)]
struct State {
    rules: Vec<FaultRule>,
    rewrite: Option<Rewrite>,
    seen: Vec<Seen>,
}

/// The proxy (see the module doc). Stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
];

impl FaultProxy {
    /// A proxy on `127.0.0.1:<any>` in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("binding the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state: Arc<Mutex<State>> = Arc::default();
        let upstream = crate::emulators::authority(upstream).to_owned();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        let upstream = upstream.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(&st, &upstream, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a fault rule (rules are tried in the order added).
    pub fn inject(&self, rule: FaultRule) {
        lock(&self.state).rules.push(rule);
    }

    /// Passes every forwarded answer through `rewrite` from now on.
    pub fn rewrite_replies(
        &self,
        rewrite: impl Fn(&RequestInfo, Reply) -> Reply + Send + Sync + 'static,
    ) {
        lock(&self.state).rewrite = Some(Arc::new(rewrite));
    }

    /// Removes every fault rule: from now on everything is forwarded.
    pub fn clear(&self) {
        lock(&self.state).rules.clear();
    }

    /// Forgets the requests seen so far.
    pub fn reset_seen(&self) {
        lock(&self.state).seen.clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }

    /// How many requests of `operation` were seen.
    pub fn count(&self, operation: &str) -> usize {
        lock(&self.state)
            .seen
            .iter()
            .filter(|s| s.info.operation() == operation)
            .count()
    }

    /// How many requests of `operation` reached the upstream.
    pub fn forwarded(&self, operation: &str) -> usize {
        lock(&self.state)
            .seen
            .iter()
            .filter(|s| {
                s.info.operation() == operation && matches!(s.outcome, Outcome::Forwarded(_))
            })
            .count()
    }
}

fn info(req: &Request<Incoming>) -> RequestInfo {
    RequestInfo {
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        target: req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Picks the fault for a request, consuming one use of a counted rule.
fn pick(state: &Mutex<State>, info: &RequestInfo, body: &[u8]) -> Option<(String, Fault)> {
    let mut st = lock(state);
    let in_body = |needle: &Option<Vec<u8>>| {
        needle
            .as_ref()
            .is_none_or(|n| n.is_empty() || body.windows(n.len()).any(|w| w == n.as_slice()))
    };
    let rule = st
        .rules
        .iter_mut()
        .find(|r| r.remaining != Some(0) && (r.matches)(info) && in_body(&r.body_contains))?;
    if let Some(n) = &mut rule.remaining {
        *n -= 1;
    }
    Some((rule.label.clone(), rule.fault.clone()))
}

fn record(state: &Mutex<State>, info: RequestInfo, outcome: Outcome) {
    lock(state).seen.push(Seen { info, outcome });
}

fn plain(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn handle(
    state: &Mutex<State>,
    upstream: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let info = info(&req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let fault = pick(state, &info, &body);
    match fault {
        Some((
            label,
            Fault::Respond {
                status,
                headers,
                body,
            },
        )) => {
            record(state, info, Outcome::Faulted(label));
            let mut r = plain(status, body);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        Some((label, Fault::Hang)) => {
            record(state, info, Outcome::Faulted(label));
            // Longer than any client waits; the runtime drops this when the test ends.
            tokio::time::sleep(Duration::from_secs(600)).await;
            plain(504, "")
        }
        Some((label, Fault::ForwardThenFail(status))) => {
            let forwarded = forward(upstream, &parts, body).await;
            let outcome = match forwarded {
                Ok(_) => Outcome::Faulted(label),
                Err(e) => Outcome::UpstreamFailed(e),
            };
            record(state, info, outcome);
            plain(status, "")
        }
        None => match forward(upstream, &parts, body).await {
            Ok(reply) => {
                let rewrite = lock(state).rewrite.clone();
                let reply = match rewrite {
                    Some(rewrite) => rewrite(&info, reply),
                    None => reply,
                };
                record(state, info, Outcome::Forwarded(reply.status));
                response(reply)
            }
            Err(e) => {
                record(state, info, Outcome::UpstreamFailed(e.clone()));
                plain(502, e)
            }
        },
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = plain(reply.status, reply.body);
    for (k, v) in &reply.headers {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        r.headers_mut().append(k, v.clone());
    }
    r
}

async fn forward(
    upstream: &str,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<Reply, String> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut builder = Request::builder().method(parts.method.clone()).uri(path);
    for (k, v) in &parts.headers {
        if HOP_BY_HOP.contains(&k.as_str()) || k == CONTENT_LENGTH {
            continue;
        }
        builder = builder.header(k, v);
    }
    if !body.is_empty() || parts.headers.contains_key(CONTENT_LENGTH) {
        builder = builder.header(CONTENT_LENGTH, body.len());
    }
    let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    crate::http::send(upstream, req)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, query: &str, target: Option<&str>) -> RequestInfo {
        RequestInfo {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            target: target.map(str::to_owned),
        }
    }

    #[test]
    fn operations_are_named_from_the_target_or_the_s3_request() {
        let table = [
            (
                req("POST", "/", "", Some("SageMaker.CreateTrainingJob")),
                "CreateTrainingJob",
            ),
            (
                req("POST", "/", "", Some("AWSEvents.PutEvents")),
                "PutEvents",
            ),
            (
                req("GET", "/b", "list-type=2&prefix=x", None),
                "ListObjectsV2",
            ),
            (req("GET", "/b/", "list-type=2", None), "ListObjectsV2"),
            (req("GET", "/b/k/manifest.json", "", None), "GetObject"),
            (req("HEAD", "/b/k", "", None), "HeadObject"),
            (req("PUT", "/b/k", "", None), "PutObject"),
            (req("PUT", "/b", "", None), "CreateBucket"),
            (req("DELETE", "/b/k", "", None), "DeleteObject"),
        ];
        for (r, op) in table {
            assert_eq!(r.operation(), op, "{r:?}");
        }
        assert_eq!(
            req("GET", "/b/a/b", "", None).s3_key().as_deref(),
            Some("a/b")
        );
    }
}
