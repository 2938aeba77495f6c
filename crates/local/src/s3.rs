//! The embedded S3: s3s's protocol layer over its filesystem backend (`s3s-fs`), on loopback.
//!
//! Owns starting and stopping the server ([`EmbeddedS3::start`]), its credentials, and building
//! SDK clients for any S3 endpoint ([`s3_client`]). What the backend does and does not do
//! (checked by `crates/local/tests/s3.rs`):
//!
//! - PutObject with a CRC-64/NVME checksum (as an algorithm or a value, header or trailer) is
//!   verified and stored; HeadObject returns it as `ChecksumCRC64NVME` (with or without
//!   `ChecksumMode=ENABLED`) — what the control plane's validator reads.
//! - `If-None-Match: *` on PutObject answers 412 PreconditionFailed when the key exists (the
//!   ledger's write-once rule).
//! - Unlike S3, an object uploaded with no checksum at all gets no CRC-64/NVME, and a
//!   multipart upload gets no full-object checksum: the validator then stream-hashes the
//!   object (its fallback). The local checkpoint sync always sends CRC-64/NVME, so checkpoints
//!   written through the local service carry it as they would in S3.
//!
//! Any other S3 endpoint (LocalStack, MinIO, AWS) can be used instead: the service only talks
//! to S3 through the SDK.

use std::net::SocketAddr;
use std::path::Path;

use aws_sdk_s3::config::{Credentials, Region};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use crate::http::{serve, Server};

/// Access key the embedded S3 accepts (and the local clients use).
pub const ACCESS_KEY: &str = "test";
/// Its secret key.
pub const SECRET_KEY: &str = "test";

/// Why the embedded S3 could not start.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The backend's root is unusable.
    #[error("embedded S3 root {path}: {message}")]
    Root {
        /// The root.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The port could not be bound.
    #[error("embedded S3 cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running embedded S3.
pub struct EmbeddedS3 {
    server: Server,
}

impl EmbeddedS3 {
    /// Serves the directory `root` (one sub-directory per bucket) on `addr` (port 0: any).
    pub async fn start(root: &Path, addr: SocketAddr) -> Result<EmbeddedS3, S3Error> {
        std::fs::create_dir_all(root).map_err(|e| S3Error::Root {
            path: root.display().to_string(),
            message: e.to_string(),
        })?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| S3Error::Root {
            path: root.display().to_string(),
            message: format!("{e:?}"),
        })?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| S3Error::Bind { addr, source })?;
        let server = serve(listener, service).map_err(|source| S3Error::Bind { addr, source })?;
        Ok(EmbeddedS3 { server })
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

/// Static test credentials for local endpoints.
pub fn local_credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "spotcheck-local")
}

/// An S3 client for `endpoint` (path-style addressing, the local credentials unless the
/// environment's are wanted).
pub fn s3_client(endpoint: &str, region: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(local_credentials())
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates a bucket unless it exists.
pub async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), String> {
    if s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
            if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists") {
                Ok(())
            } else {
                Err(format!("creating bucket {bucket}: {text}"))
            }
        }
    }
}
