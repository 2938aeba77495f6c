//! Resource tags, and the `spotcheck:*` tag keys the engine reads and writes.
//!
//! Owns [`Tags`], parsed from both shapes AWS uses (a `{"k": "v"}` map in the documented event,
//! a `[{"Key": .., "Value": ..}]` list in the schema registry and in ListTags), and the [`keys`]
//! every other module refers to. It does not interpret tag values: policy and lineage do.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The tag keys spotcheck understands (all under `spotcheck:`).
pub mod keys {
    /// `true` opts a training job in; nothing else is ever touched.
    pub const ENABLED: &str = "spotcheck:enabled";
    /// Name of the first job of a lineage (set on relaunches).
    pub const ROOT: &str = "spotcheck:root";
    /// 1-based attempt number within the lineage (absent = 1).
    pub const ATTEMPT: &str = "spotcheck:attempt";
    /// Name of the job this one was relaunched from.
    pub const PARENT: &str = "spotcheck:parent";
    /// Spot interruptions seen by earlier attempts of the lineage.
    pub const INTERRUPTIONS: &str = "spotcheck:interruptions";
    /// Relaunches already spent on the user's own errors.
    pub const ERROR_RETRIES: &str = "spotcheck:error-retries";
    /// Checkpoint step this attempt resumed from (`none` = from scratch).
    pub const RESUME_STEP: &str = "spotcheck:resume-step";
    /// Consecutive earlier attempts that trained without checkpoint progress.
    pub const STALLED: &str = "spotcheck:stalled";
    /// Seconds of the lineage's runtime budget used by earlier attempts (their
    /// `TrainingTimeInSeconds`): a relaunch's `MaxRuntimeInSeconds` is what is left.
    pub const RUNTIME_USED: &str = "spotcheck:runtime-used";
    /// Policy override: total attempts allowed in the lineage.
    pub const MAX_ATTEMPTS: &str = "spotcheck:max-attempts";
    /// Policy override: comma-separated instance-type ladder.
    pub const INSTANCE_LADDER: &str = "spotcheck:instance-ladder";
    /// Policy override: interruptions after which relaunches go on-demand.
    pub const ON_DEMAND_AFTER: &str = "spotcheck:on-demand-after";
    /// Policy override: seconds before the deadline at which relaunches go on-demand.
    pub const ON_DEMAND_WITHIN: &str = "spotcheck:on-demand-within";
    /// Policy override: RFC 3339 deadline of the training run.
    pub const DEADLINE: &str = "spotcheck:deadline";
    /// Policy override: relaunches allowed after the user's own errors.
    pub const RETRIES_ON_ERROR: &str = "spotcheck:retries-on-error";
    /// Policy override: `restart-from-scratch` or `give-up` when no checkpoint is valid.
    pub const WITHOUT_CHECKPOINT: &str = "spotcheck:without-checkpoint";
    /// Policy override: attempts without checkpoint progress before giving up.
    pub const CRASH_LOOP_ATTEMPTS: &str = "spotcheck:crash-loop-attempts";
    /// Policy override: MaxWaitTimeInSeconds for relaunched spot jobs.
    pub const MAX_WAIT: &str = "spotcheck:max-wait";
    /// Policy override: relaunch after MaxRuntimeExceeded with a fresh runtime budget.
    pub const RELAUNCH_AFTER_MAX_RUNTIME: &str = "spotcheck:relaunch-after-max-runtime";
    /// EC2: the training run an instance belongs to (marks the instance as managed).
    pub const RUN: &str = "spotcheck:run";
    /// EC2: where the run's checkpoints live.
    pub const CHECKPOINT_URI: &str = "spotcheck:checkpoint-uri";
    /// EC2: what to continue the run on when the instance is reclaimed.
    pub const CONTINUE_ON: &str = "spotcheck:continue-on";
    /// EC2: which continuation of the run the instance belongs to (absent = 0, the run as first
    /// launched). Every instance of one run carries the same value, so a reclaim of several of
    /// them continues the run once; the continuation is generation + 1.
    pub const GENERATION: &str = "spotcheck:generation";

    /// Lineage bookkeeping keys: recomputed for every relaunch, never copied from the parent.
    pub const LINEAGE: [&str; 8] = [
        ROOT,
        ATTEMPT,
        PARENT,
        INTERRUPTIONS,
        ERROR_RETRIES,
        RESUME_STEP,
        STALLED,
        RUNTIME_USED,
    ];
}

/// Why a tag set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TagsError {
    /// The bytes are not JSON.
    #[error("tags are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither a map nor a list of `{Key, Value}` (nor a ListTags response).
    #[error("tags must be a map or a list of {{Key, Value}}, not {0}")]
    Shape(&'static str),
    /// A list entry has no string `Key`.
    #[error("tag entry {0} has no string \"Key\"")]
    MissingKey(usize),
    /// A value is an object or array, which no AWS API produces.
    #[error("tag {0:?} has a non-scalar value")]
    NonScalarValue(String),
}

/// Tag key → value, ordered by key so that everything derived from tags is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    /// No tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// All tags in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every tag of `other`; `other` wins on conflicts (later, more authoritative sources
    /// are merged last).
    pub fn merge(&mut self, other: &Tags) {
        for (k, v) in other.iter() {
            self.insert(k, v);
        }
    }

    /// Whether the job opted in with `spotcheck:enabled=true` (case-insensitive, trimmed).
    pub fn is_enabled(&self) -> bool {
        self.get(keys::ENABLED)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Parses a ListTags response (`{"Tags": [...], "NextToken": ..}`) or a bare map or list.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TagsError> {
        let value: Value = serde_json::from_slice(bytes)?;
        match &value {
            Value::Object(map) if matches!(map.get("Tags"), Some(Value::Array(_))) => {
                Self::from_value(&map["Tags"])
            }
            _ => Self::from_value(&value),
        }
    }

    /// Reads a map (`{"k": "v"}`) or a list (`[{"Key": "k", "Value": "v"}]`). Scalar values are
    /// kept as their text; `null` values and a `null` tag set mean "no tag".
    pub fn from_value(value: &Value) -> Result<Self, TagsError> {
        let mut tags = Tags::new();
        match value {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    if let Some(text) = scalar_text(k, v)? {
                        tags.insert(k.clone(), text);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(entry) = item else {
                        return Err(TagsError::MissingKey(i));
                    };
                    let Some(Value::String(key)) = entry.get("Key") else {
                        return Err(TagsError::MissingKey(i));
                    };
                    let text = match entry.get("Value") {
                        Some(v) => scalar_text(key, v)?,
                        None => Some(String::new()),
                    };
                    if let Some(text) = text {
                        tags.insert(key.clone(), text);
                    }
                }
            }
            Value::String(_) => return Err(TagsError::Shape("a string")),
            Value::Number(_) => return Err(TagsError::Shape("a number")),
            Value::Bool(_) => return Err(TagsError::Shape("a boolean")),
        }
        Ok(tags)
    }
}

fn scalar_text(key: &str, value: &Value) -> Result<Option<String>, TagsError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => Err(TagsError::NonScalarValue(key.to_owned())),
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Tags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Tags(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Tags::from_value(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn map_and_list_shapes_agree() {
        let map = Tags::from_value(&json!({"spotcheck:enabled": "true", "team": "ml"})).unwrap();
        let list = Tags::from_value(&json!([
            {"Key": "spotcheck:enabled", "Value": "true"},
            {"Key": "team", "Value": "ml"}
        ]))
        .unwrap();
        assert_eq!(map, list);
        assert!(map.is_enabled());
    }

    #[test]
    fn list_tags_response_is_unwrapped() {
        let tags =
            Tags::from_json(br#"{"Tags":[{"Key":"a","Value":"1"}],"NextToken":null}"#).unwrap();
        assert_eq!(tags.get("a"), Some("1"));
        // A map that merely has a tag called "Tags" stays a map.
        let tags = Tags::from_json(br#"{"Tags":"x"}"#).unwrap();
        assert_eq!(tags.get("Tags"), Some("x"));
    }

    #[test]
    fn scalars_are_text_and_bad_shapes_are_errors() {
        let tags = Tags::from_value(&json!({"n": 3, "b": true, "gone": null})).unwrap();
        assert_eq!(tags.get("n"), Some("3"));
        assert_eq!(tags.get("b"), Some("true"));
        assert_eq!(tags.get("gone"), None);
        assert!(Tags::from_value(&json!("x")).is_err());
        assert!(Tags::from_value(&json!([{"Value": "v"}])).is_err());
        assert!(Tags::from_value(&json!({"k": {"nested": 1}})).is_err());
    }

    #[test]
    fn enabled_means_exactly_true() {
        for (value, enabled) in [
            ("true", true),
            (" TRUE ", true),
            ("yes", false),
            ("", false),
        ] {
            let tags: Tags = [(keys::ENABLED, value)].into_iter().collect();
            assert_eq!(tags.is_enabled(), enabled, "{value:?}");
        }
        assert!(!Tags::new().is_enabled());
    }
}
