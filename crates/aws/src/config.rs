//! The functions' configuration, read once at cold start from the environment.
//!
//! Owns the variable names (identical to `infra/template.yaml`'s `Environment.Variables`), their
//! validation, and loading the optional price table from S3. An invalid value is an error at
//! cold start — the function fails loudly instead of deciding with a default.

use spotcheck_control::ec2::CheckpointScope;
use spotcheck_control::{Policy, PriceTable};

use crate::checkpoints::{parse_s3_uri, CheckpointStore};
use crate::error::AwsError;

/// Bucket of the ledger (the stack creates it).
pub const LEDGER_BUCKET: &str = "SPOTCHECK_LEDGER_BUCKET";
/// Key prefix of the ledger records (e.g. `spotcheck/`).
pub const LEDGER_PREFIX: &str = "SPOTCHECK_LEDGER_PREFIX";
/// Optional `s3://bucket/key` of an on-demand price table replacing the built-in snapshot.
pub const PRICE_TABLE: &str = "SPOTCHECK_PRICE_TABLE";
/// The stack's checkpoint bucket (`CheckpointBucket`): EC2 runs' `spotcheck:checkpoint-uri`
/// must lie in it.
pub const CHECKPOINT_BUCKET: &str = "SPOTCHECK_CHECKPOINT_BUCKET";
/// The key prefix under it (`CheckpointPrefix`; empty: the whole bucket).
pub const CHECKPOINT_PREFIX: &str = "SPOTCHECK_CHECKPOINT_PREFIX";

/// Largest price table read.
const MAX_PRICE_TABLE_BYTES: u64 = 1 << 20;

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `SPOTCHECK_*` policy variable is invalid.
    #[error(transparent)]
    Policy(#[from] spotcheck_control::policy::PolicyError),
    /// A required variable is missing or empty.
    #[error("environment variable {0} must be set")]
    Missing(&'static str),
    /// `SPOTCHECK_PRICE_TABLE` is not `s3://bucket/key`.
    #[error("{PRICE_TABLE} = {0:?} is not s3://bucket/key")]
    PriceTableUri(String),
    /// The price table object is missing or unreadable.
    #[error("price table {uri}: {reason}")]
    PriceTable {
        /// The URI.
        uri: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading the price table failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// The environment, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The base recovery policy and the operator's ceilings (`SPOTCHECK_MAX_ATTEMPTS`, …,
    /// `SPOTCHECK_ALLOWED_INSTANCE_TYPES`; job tags may tighten it within the ceilings).
    pub policy: Policy,
    /// `SPOTCHECK_LEDGER_BUCKET`.
    pub ledger_bucket: String,
    /// `SPOTCHECK_LEDGER_PREFIX` (may be empty).
    pub ledger_prefix: String,
    /// `SPOTCHECK_PRICE_TABLE`, when set.
    pub price_table_uri: Option<String>,
    /// `SPOTCHECK_CHECKPOINT_BUCKET` and `_PREFIX`, when the bucket is set.
    pub checkpoint_scope: Option<CheckpointScope>,
}

impl Settings {
    /// Reads the settings from `vars` (`std::env::vars()` in the Lambdas). Empty values count
    /// as unset, as the template passes empty strings for unset parameters.
    pub fn from_env<I, K, V>(vars: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().trim().to_owned()))
            .collect();
        let get = |name: &str| {
            vars.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        let price_table_uri = get(PRICE_TABLE);
        if let Some(uri) = &price_table_uri {
            match parse_s3_uri(uri) {
                Some((_, key)) if !key.is_empty() => {}
                _ => return Err(ConfigError::PriceTableUri(uri.clone())),
            }
        }
        Ok(Settings {
            policy: Policy::from_env(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))?,
            ledger_bucket: get(LEDGER_BUCKET).ok_or(ConfigError::Missing(LEDGER_BUCKET))?,
            ledger_prefix: get(LEDGER_PREFIX).unwrap_or_default(),
            price_table_uri,
            checkpoint_scope: get(CHECKPOINT_BUCKET).map(|bucket| CheckpointScope {
                bucket,
                prefix: get(CHECKPOINT_PREFIX).unwrap_or_default(),
            }),
        })
    }
}

/// The built-in price snapshot, overridden by the table at `uri` when one is configured.
pub async fn load_prices<S: CheckpointStore>(
    store: &S,
    uri: Option<&str>,
) -> Result<PriceTable, ConfigError> {
    let builtin = PriceTable::builtin();
    let Some(uri) = uri else {
        return Ok(builtin);
    };
    let invalid = |reason: String| ConfigError::PriceTable {
        uri: uri.to_owned(),
        reason,
    };
    let (bucket, prefix) =
        parse_s3_uri(uri).ok_or_else(|| ConfigError::PriceTableUri(uri.to_owned()))?;
    let key = prefix.trim_end_matches('/');
    let bytes = store
        .get_head_bytes(&bucket, key, MAX_PRICE_TABLE_BYTES + 1)
        .await?
        .ok_or_else(|| invalid("no such object".into()))?;
    if bytes.len() as u64 > MAX_PRICE_TABLE_BYTES {
        return Err(invalid(format!("over {MAX_PRICE_TABLE_BYTES} bytes")));
    }
    let table = PriceTable::from_json(&bytes).map_err(|e| invalid(e.to_string()))?;
    Ok(builtin.with_overrides(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_env() {
        let s = Settings::from_env([
            (LEDGER_BUCKET, "ledger"),
            (LEDGER_PREFIX, "spotcheck/"),
            (PRICE_TABLE, ""),
            ("SPOTCHECK_MAX_ATTEMPTS", "4"),
            ("SPOTCHECK_DEADLINE", ""),
        ])
        .unwrap();
        assert_eq!(s.ledger_bucket, "ledger");
        assert_eq!(s.policy.max_attempts, 4);
        assert_eq!(s.price_table_uri, None);
        assert_eq!(s.checkpoint_scope, None);
        let s = Settings::from_env([
            (LEDGER_BUCKET, "ledger"),
            (CHECKPOINT_BUCKET, "ckpt"),
            (CHECKPOINT_PREFIX, "runs/"),
        ])
        .unwrap();
        assert_eq!(
            s.checkpoint_scope,
            Some(CheckpointScope {
                bucket: "ckpt".into(),
                prefix: "runs/".into()
            })
        );
        assert!(matches!(
            Settings::from_env([(LEDGER_PREFIX, "x/")]),
            Err(ConfigError::Missing(LEDGER_BUCKET))
        ));
        assert!(matches!(
            Settings::from_env([(LEDGER_BUCKET, "l"), ("SPOTCHECK_MAX_ATTEMPTS", "0")]),
            Err(ConfigError::Policy(_))
        ));
        assert!(matches!(
            Settings::from_env([(LEDGER_BUCKET, "l"), (PRICE_TABLE, "s3://bucket")]),
            Err(ConfigError::PriceTableUri(_))
        ));
    }
}
