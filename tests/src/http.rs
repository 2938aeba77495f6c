//! A minimal HTTP/1 client on hyper: one connection per request, whole bodies. For the calls
//! that have no SDK crate in the workspace (SQS) and for the proxy's upstream side.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A whole response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("HTTP exchange with {addr}: {source}")]
    Exchange {
        /// `host:port`.
        addr: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
}

/// Sends `req` to `addr` (`host:port`); the request's URI should be origin-form (`/path?q`).
pub async fn send(addr: &str, req: Request<Full<Bytes>>) -> Result<Reply, HttpError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let exchange = |source| HttpError::Exchange {
        addr: addr.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(exchange)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(req).await.map_err(exchange)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(exchange)?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// POSTs an AWS JSON-protocol call (`X-Amz-Target`) to `endpoint` and returns the JSON answer,
/// or the error's status and body.
pub async fn aws_json(
    endpoint: &str,
    content_type: &str,
    target: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let addr = crate::emulators::authority(endpoint);
    let req = Request::post("/")
        .header("host", addr)
        .header("content-type", content_type)
        .header("x-amz-target", target)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let reply = send(addr, req).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    if reply.status != 200 {
        return Err(format!("{target}: HTTP {}: {text}", reply.status));
    }
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(&text).map_err(|e| format!("{target}: {e}: {text}"))
}
