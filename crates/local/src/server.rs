//! The SageMaker JSON 1.1 protocol over HTTP: what the AWS SDKs and the AWS CLI speak.
//!
//! Owns the wire: `POST /` with `X-Amz-Target: SageMaker.<Operation>` and an
//! `application/x-amz-json-1.1` body in; `200` with a JSON body, or an error status with
//! `{"__type": "<Code>", "message": "…"}` and the `x-amzn-ErrorType` header, out. Requests are
//! not authenticated (any SigV4 signature is accepted). The operations themselves are
//! [`TrainingService::call`]'s.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::api::ApiError;
use crate::http::{serve, Server};
use crate::service::TrainingService;

/// Largest request body accepted.
const MAX_BODY: usize = 8 << 20;

/// A running SageMaker endpoint.
pub struct SageMakerServer {
    server: Server,
}

impl SageMakerServer {
    /// Serves `service` on `addr` (port 0: any free port).
    pub async fn start(
        service: TrainingService,
        addr: SocketAddr,
    ) -> std::io::Result<SageMakerServer> {
        let listener = TcpListener::bind(addr).await?;
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let service = service.clone();
            async move { Ok::<_, Infallible>(handle(&service, req).await) }
        });
        Ok(SageMakerServer {
            server: serve(listener, svc)?,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

fn respond(status: u16, body: &serde_json::Value, error: Option<&str>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", uuid_like());
    if let Some(code) = error {
        builder = builder.header("x-amzn-errortype", code);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    respond(e.status, &e.body(), Some(e.code))
}

/// One request → one response (never an HTTP-level failure).
pub async fn handle(service: &TrainingService, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST {
        return error(&ApiError::serialization(
            "only POST / is supported (SageMaker JSON 1.1)",
        ));
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(operation) = target.as_deref().and_then(|t| t.strip_prefix("SageMaker.")) else {
        return error(&ApiError::unknown_operation(
            target.as_deref().unwrap_or("(no X-Amz-Target)"),
        ));
    };
    let operation = operation.to_owned();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(&ApiError::serialization(format!(
                "cannot read the request body: {e}"
            )))
        }
    };
    let value = if body.is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(&ApiError::serialization(format!(
                    "the request body is not JSON: {e}"
                )))
            }
        }
    };
    match service.call(&operation, &value) {
        Ok(out) => respond(200, &out, None),
        Err(e) => error(&e),
    }
}
