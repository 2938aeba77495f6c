//! The savings and interruption ledger: JSON records at deterministic S3 keys, written once.
//!
//! Owns the [`Ledger`] trait, its S3 implementation [`S3Ledger`], and the key of every record
//! kind ([`keys`]). Idempotency rule: **first write wins**. Each write is a PutObject with
//! `If-None-Match: *`; S3 answers 412 when the key exists, which [`Written::AlreadyPresent`]
//! reports as success. A redelivered event therefore rewrites nothing, and two concurrent
//! invocations cannot both write (S3's 409 `ConditionalRequestConflict` is transient and
//! retried). First-write-wins rather than overwrite-if-identical because a record's content
//! may legitimately differ between deliveries (prices, the time it was recorded) and the
//! ledger bucket is versioned: overwriting would pile up versions of the same fact.
//!
//! A PutObject whose answer is lost is retried by the SDK and meets 412 from its own write.
//! To report that as [`Written::New`] (so its EMF metric is still printed once), every write
//! carries a random id in its object metadata (`x-amz-meta-spotcheck-write-id`); on 412 a
//! HeadObject compares it: our id → `New`, another → `AlreadyPresent`.
//!
//! Keys are relative to the configured prefix (`SPOTCHECK_LEDGER_PREFIX`); every variable
//! segment is reduced to `[A-Za-z0-9._-]` (others become `_`) so that tag-supplied run names
//! cannot escape their folder.

use std::future::Future;

use crate::error::{AwsError, ErrorKind};

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Written {
    /// The record was written now.
    New,
    /// A record already sits at the key (an earlier delivery wrote it); left untouched.
    AlreadyPresent,
}

/// Write-once JSON records.
pub trait Ledger {
    /// Writes `body` at `key` (relative to the ledger prefix) unless something is already there.
    fn write_once(
        &self,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Written, AwsError>> + Send;
}

/// The deterministic keys of every record kind (pure).
pub mod keys {
    /// A key segment reduced to `[A-Za-z0-9._-]`; never empty, `.` or `..`.
    pub fn segment(name: &str) -> String {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        match safe.as_str() {
            "" | "." | ".." => format!("_{safe}"),
            _ => safe,
        }
    }

    /// `interruptions/jobs/<job>/<n>.json`: the n-th spot interruption of a SageMaker job
    /// (n from its status transitions, so every delivery of the same interruption agrees).
    pub fn job_interruption(job: &str, interruptions: u32) -> String {
        format!("interruptions/jobs/{}/{interruptions}.json", segment(job))
    }

    /// `interruptions/runs/<run>/<instance>/<event key>.json`: one EC2 warning or rebalance
    /// recommendation, by the event's [`EventKey`](spotcheck_control::EventKey) (the EventBridge
    /// id repeats only on redelivery).
    pub fn instance_interruption(run: &str, instance_id: &str, event_key: &str) -> String {
        format!(
            "interruptions/runs/{}/{}/{}.json",
            segment(run),
            segment(instance_id),
            segment(event_key)
        )
    }

    /// `stops/jobs/<job>.json`: the user stopped the job.
    pub fn user_stop(job: &str) -> String {
        format!("stops/jobs/{}.json", segment(job))
    }

    /// `give-ups/<root>/<job>.json`: recovery of the lineage stopped at this job.
    pub fn give_up(root: &str, job: &str) -> String {
        format!("give-ups/{}/{}.json", segment(root), segment(job))
    }

    /// `checkpoint-validations/<job or run>/unavailable.json`: the checkpoints could not be
    /// validated (AccessDenied, no such bucket, not `s3://`); the decision went on without them.
    /// Once per job or run: the first failure is the one to fix.
    pub fn checkpoint_unavailable(name: &str) -> String {
        format!("checkpoint-validations/{}/unavailable.json", segment(name))
    }

    /// `checkpoint-validations/<job or run>/<newest corrupt checkpoint>.json`: a validation
    /// that found corrupt checkpoints. Keyed by what was found, not by the event, so the several
    /// events SageMaker may send for one state change record it once; a checkpoint that turns
    /// corrupt later is a new record.
    pub fn checkpoint_validation(name: &str, newest_corrupt: &str) -> String {
        format!(
            "checkpoint-validations/{}/{}.json",
            segment(name),
            segment(newest_corrupt)
        )
    }
}

/// [`Ledger`] over S3: `s3://<bucket>/<prefix><key>`.
#[derive(Clone, Debug)]
pub struct S3Ledger {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Ledger {
    /// A ledger in `bucket` under `prefix` (`SPOTCHECK_LEDGER_BUCKET`, `SPOTCHECK_LEDGER_PREFIX`;
    /// a non-empty prefix gets a trailing `/` if it lacks one).
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>, prefix: &str) -> Self {
        let prefix = match prefix {
            "" => String::new(),
            p if p.ends_with('/') => p.to_owned(),
            p => format!("{p}/"),
        };
        S3Ledger {
            client,
            bucket: bucket.into(),
            prefix,
        }
    }
}

/// The object metadata key (without `x-amz-meta-`) holding a write's id.
pub const WRITE_ID_METADATA: &str = "spotcheck-write-id";

impl Ledger for S3Ledger {
    async fn write_once(&self, key: &str, body: Vec<u8>) -> Result<Written, AwsError> {
        let key = format!("{}{key}", self.prefix);
        let write_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .metadata(WRITE_ID_METADATA, &write_id)
            .if_none_match("*")
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await;
        match sent.map_err(|e| AwsError::from_sdk("PutObject", e)) {
            Ok(_) => Ok(Written::New),
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("HeadObject", e))?;
                let found = head.metadata().and_then(|m| m.get(WRITE_ID_METADATA));
                Ok(if found == Some(&write_id) {
                    Written::New
                } else {
                    Written::AlreadyPresent
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keys::*;

    #[test]
    fn segments_cannot_escape() {
        assert_eq!(segment("job-1"), "job-1");
        assert_eq!(segment("a/../b"), "a_.._b");
        assert_eq!(segment(".."), "_..");
        assert_eq!(segment(""), "_");
        assert_eq!(user_stop("x"), "stops/jobs/x.json");
        assert_eq!(give_up("r/1", "j"), "give-ups/r_1/j.json");
        assert_eq!(
            checkpoint_validation("job", "algo-1/step-000000001300"),
            "checkpoint-validations/job/algo-1_step-000000001300.json"
        );
    }
}
