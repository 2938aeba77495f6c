//! Reading the ledger: the [`LedgerStore`] trait, its S3 implementation, and the paging reader.
//!
//! Owns the two calls a report makes — ListObjectsV2 (one page of keys at a time) and
//! GetObject — behind [`LedgerStore`], and [`read_ledger`], which feeds the pure
//! [`Aggregator`]. Memory is bounded by design: one page of keys (S3 returns at most 1000) and
//! at most [`ReadOptions::concurrency`] bodies of at most [`ReadOptions::max_record_bytes`]
//! each are held at a time; each body is parsed, added and dropped. An object is only read when
//! the listing says it was written inside `--since`/`--until` (S3's `LastModified`: ledger
//! records are written once) and, for keys that name their lineage (`savings/lineages/<root>`,
//! `give-ups/<root>/…`), when that lineage is wanted. It never writes.

use std::future::Future;

use futures::stream::{self, StreamExt};
use spotcheck_aws::ledger::keys::segment;
use spotcheck_aws::{AwsError, ErrorKind};
use spotcheck_control::Timestamp;

use crate::aggregate::{Aggregator, Filter};
use crate::record::{parse, Skip, Skipped};

/// One object of a listing page, its key relative to the ledger prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The key without the prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// S3's `LastModified`: when the record was written.
    pub last_modified: Option<Timestamp>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The objects, in key order.
    pub objects: Vec<Listed>,
    /// The token of the next page, if any.
    pub next: Option<String>,
}

/// The ledger's objects: list a page, read one.
pub trait LedgerStore {
    /// One page of keys under the ledger prefix, after `token` (`None`: the first page).
    fn list(&self, token: Option<String>) -> impl Future<Output = Result<Page, AwsError>> + Send;

    /// The object at `key` (relative to the prefix), at most `max_bytes` of it.
    fn get(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>, AwsError>> + Send;
}

/// Why an `s3://` ledger location is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not s3://BUCKET[/PREFIX]")]
pub struct BadLocation(pub String);

/// `s3://bucket[/prefix]` → (bucket, prefix ending in `/` or empty).
pub fn parse_location(uri: &str) -> Result<(String, String), BadLocation> {
    let bad = || BadLocation(uri.to_owned());
    let rest = uri.strip_prefix("s3://").ok_or_else(bad)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains(['*', '?']) {
        return Err(bad());
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

/// [`LedgerStore`] over S3: ListObjectsV2 and GetObject under `s3://bucket/prefix`.
#[derive(Clone, Debug)]
pub struct S3LedgerStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3LedgerStore {
    /// The ledger at `s3://bucket[/prefix]` (the stack's `LedgerBucket` and `LedgerPrefix`).
    pub fn new(client: aws_sdk_s3::Client, location: &str) -> Result<Self, BadLocation> {
        let (bucket, prefix) = parse_location(location)?;
        Ok(S3LedgerStore {
            client,
            bucket,
            prefix,
        })
    }
}

fn timestamp(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<Timestamp> {
    t.and_then(|t| t.to_millis().ok())
        .and_then(|ms| Timestamp::from_epoch_ms(ms).ok())
}

impl LedgerStore for S3LedgerStore {
    async fn list(&self, token: Option<String>) -> Result<Page, AwsError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListObjectsV2", e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(&self.prefix)?.to_owned();
                Some(Listed {
                    key,
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: timestamp(o.last_modified()),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(Page { objects, next })
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .range(format!("bytes=0-{}", max_bytes.saturating_sub(1)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetObject", e))?;
        let bytes = out.body.collect().await.map_err(|e| {
            AwsError::new(
                "GetObject",
                ErrorKind::Transient,
                format!("reading {key}: {e}"),
            )
        })?;
        Ok(bytes.into_bytes().to_vec())
    }
}

/// How [`read_ledger`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// GetObject calls in flight at once.
    pub concurrency: usize,
    /// Objects larger than this are skipped unread (records are a few KiB).
    pub max_record_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            concurrency: 16,
            max_record_bytes: 1 << 20,
        }
    }
}

/// Why the ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A listing or read failed (after the SDK's retries).
    #[error("reading the ledger: {0}")]
    Aws(#[from] AwsError),
}

/// Whether a key names a lineage other than the one wanted (so it need not be read).
fn names_another_lineage(key: &str, filter: &Filter) -> bool {
    let Some(wanted) = &filter.lineage else {
        return false;
    };
    let wanted = segment(wanted);
    let named = if let Some(rest) = key.strip_prefix("savings/lineages/") {
        rest.strip_suffix(".json")
    } else if let Some(rest) = key.strip_prefix("give-ups/") {
        rest.split('/').next()
    } else {
        None
    };
    named.is_some_and(|n| n != wanted)
}

/// Pages through the ledger and aggregates every record `filter` admits (see the module doc).
pub async fn read_ledger<S: LedgerStore + Sync>(
    store: &S,
    filter: &Filter,
    options: ReadOptions,
) -> Result<Aggregator, ReadError> {
    let mut agg = Aggregator::new();
    let mut token = None;
    loop {
        let page = store.list(token).await?;
        let mut wanted = Vec::new();
        for object in page.objects {
            agg.listed();
            if !filter.admits_time(object.last_modified)
                || names_another_lineage(&object.key, filter)
            {
                agg.filtered_out();
            } else if object.size == 0 {
                agg.skip(&Skipped {
                    reason: Skip::NotJson,
                    detail: format!("{} is empty", object.key),
                });
            } else if object.size > options.max_record_bytes {
                agg.skip(&Skipped {
                    reason: Skip::TooLarge,
                    detail: format!("{} is {} bytes", object.key, object.size),
                });
            } else {
                wanted.push(object);
            }
        }
        let max = options.max_record_bytes;
        let mut reads = stream::iter(wanted)
            .map(|object| async move {
                let got = store.get(&object.key, max).await;
                (object, got)
            })
            .buffer_unordered(options.concurrency.max(1));
        while let Some((object, got)) = reads.next().await {
            match got {
                Ok(bytes) => match parse(&object.key, &bytes) {
                    Ok(parsed) => agg.add(parsed, bytes.len() as u64),
                    Err(skipped) => agg.skip(&skipped),
                },
                Err(e) if e.kind == ErrorKind::NotFound => agg.skip(&Skipped {
                    reason: Skip::Vanished,
                    detail: object.key,
                }),
                Err(e) => return Err(e.into()),
            }
        }
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(agg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_say_so() {
        assert_eq!(
            parse_location("s3://ledger/spotcheck").unwrap(),
            ("ledger".into(), "spotcheck/".into())
        );
        assert_eq!(
            parse_location("s3://ledger/a/b/").unwrap(),
            ("ledger".into(), "a/b/".into())
        );
        assert_eq!(
            parse_location("s3://ledger").unwrap(),
            ("ledger".into(), String::new())
        );
        for bad in [
            "ledger/x",
            "s3://",
            "s3:///x",
            "https://ledger/x",
            "s3://l*/x",
        ] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_naming_another_lineage_are_not_read() {
        let filter = Filter {
            lineage: Some("train".into()),
            ..Filter::default()
        };
        assert!(names_another_lineage(
            "savings/lineages/other.json",
            &filter
        ));
        assert!(names_another_lineage("give-ups/other/j.json", &filter));
        assert!(!names_another_lineage(
            "savings/lineages/train.json",
            &filter
        ));
        assert!(!names_another_lineage("give-ups/train/j.json", &filter));
        assert!(!names_another_lineage("savings/jobs/other.json", &filter));
        assert!(!names_another_lineage(
            "savings/lineages/other.json",
            &Filter::default()
        ));
    }
}
