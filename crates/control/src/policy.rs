//! The recovery policy: how hard, where and how to relaunch.
//!
//! Owns [`Policy`], its defaults, and the three ways to set it: environment variables (the
//! Lambda's configuration), a JSON file (the CLI's `--policy`), and per-job tags that override
//! either. Every value is validated; an invalid one is a [`PolicyError`], never a silent default.
//! It does not apply the policy: the decision module does.
//!
//! | Environment variable | Tag | JSON field | Meaning (default) |
//! |---|---|---|---|
//! | `SPOTCHECK_MAX_ATTEMPTS` | `spotcheck:max-attempts` | `max_attempts` | total attempts in a lineage, first job included (10) |
//! | `SPOTCHECK_INSTANCE_LADDER` | `spotcheck:instance-ladder` | `instance_ladder` | comma list of `ml.*` types, first = the job's own; capacity failures move one rung down (empty: stay on the job's type) |
//! | `SPOTCHECK_ON_DEMAND_AFTER_INTERRUPTIONS` | `spotcheck:on-demand-after` | `on_demand_after_interruptions` | relaunch on-demand once the lineage saw this many spot interruptions, an attempt whose spot capacity never arrived counting as one (`none`) |
//! | `SPOTCHECK_ON_DEMAND_WHEN_DEADLINE_WITHIN_SECONDS` | `spotcheck:on-demand-within` | `on_demand_when_deadline_within_seconds` | relaunch on-demand when the deadline is this close (`none`) |
//! | `SPOTCHECK_DEADLINE` | `spotcheck:deadline` | `deadline` | RFC 3339 deadline of the run (`none`) |
//! | `SPOTCHECK_RETRIES_ON_USER_ERROR` | `spotcheck:retries-on-error` | `retries_on_user_error` | relaunches after the user's own errors, counted apart from preemption recoveries (0) |
//! | `SPOTCHECK_WITHOUT_CHECKPOINT` | `spotcheck:without-checkpoint` | `without_checkpoint` | `restart-from-scratch` or `give-up` when no checkpoint is valid (`restart-from-scratch`) |
//! | `SPOTCHECK_CRASH_LOOP_ATTEMPTS` | `spotcheck:crash-loop-attempts` | `crash_loop_attempts` | give up after this many consecutive attempts that trained without checkpoint progress (3) |
//! | `SPOTCHECK_MAX_WAIT_SECONDS` | `spotcheck:max-wait` | `max_wait_seconds` | MaxWaitTimeInSeconds of relaunched spot jobs (`none`: keep the job's) |
//! | `SPOTCHECK_RELAUNCH_AFTER_MAX_RUNTIME` | `spotcheck:relaunch-after-max-runtime` | `relaunch_after_max_runtime` | after MaxRuntimeExceeded, relaunch with a fresh runtime budget (`false`: the job's MaxRuntimeInSeconds is the lineage's budget, and hitting it ends the lineage) |
//!
//! The operator's ceilings — environment (stack parameters) or policy file only, no tag can
//! set them:
//!
//! | Environment variable | JSON field | Meaning (default) |
//! |---|---|---|
//! | `SPOTCHECK_MAX_ATTEMPTS_LIMIT` | `max_attempts_limit` | the most attempts a `spotcheck:max-attempts` tag may ask for (`none`: `max_attempts` itself, so tags can only lower it) |
//! | `SPOTCHECK_ALLOWED_INSTANCE_TYPES` | `allowed_instance_types` | comma list of the `ml.*` types spotcheck may launch; ladders (environment or tag) must stay within it, and a job on another type is not relaunched (empty: any type) |
//! | `SPOTCHECK_ALLOW_ON_DEMAND` | `allow_on_demand` | whether relaunches may run on-demand (`true`); when `false`, no on-demand setting may be given and an on-demand job is not relaunched |
//!
//! Tags may tighten the policy but never exceed the ceilings: a tag that does is a
//! [`PolicyError::Exceeds`], which the engine reports as an invalid policy (the lineage gives
//! up), exactly as for a malformed tag.
//!
//! Optional numbers accept `none` or `off` to unset them. An empty environment variable or tag
//! value counts as not set (deployment templates pass empty strings for unset parameters).
//! Other `SPOTCHECK_*` variables are left to the Lambda that owns them.

use serde::{Deserialize, Serialize};

use crate::tags::{keys, Tags};
use crate::timestamp::Timestamp;

/// What to do when a relaunch would have no valid checkpoint to resume from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithoutCheckpoint {
    /// Relaunch anyway and train from step 0 (what SageMaker itself does after an interruption).
    #[default]
    RestartFromScratch,
    /// Do not relaunch; report that recovery gave up.
    GiveUp,
}

/// The recovery policy (see the module doc for each field's variable, tag and default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Total attempts in a lineage, the first job included (≥ 1).
    pub max_attempts: u32,
    /// Fallback ladder of `ml.*` instance types; the first is the job's own.
    pub instance_ladder: Vec<String>,
    /// Relaunch on-demand once the lineage has seen this many spot interruptions.
    pub on_demand_after_interruptions: Option<u32>,
    /// Relaunch on-demand when [`Policy::deadline`] is at most this many seconds away.
    pub on_demand_when_deadline_within_seconds: Option<u64>,
    /// When the run must be done by.
    pub deadline: Option<Timestamp>,
    /// Relaunches allowed after the user's own errors (SkyPilot's `max_restarts_on_errors`).
    pub retries_on_user_error: u32,
    /// What to do without a valid checkpoint.
    pub without_checkpoint: WithoutCheckpoint,
    /// Consecutive attempts that trained without checkpoint progress before giving up (≥ 1).
    pub crash_loop_attempts: u32,
    /// MaxWaitTimeInSeconds for relaunched spot jobs (≥ 1); `None` keeps the job's own.
    pub max_wait_seconds: Option<u64>,
    /// Relaunch after MaxRuntimeExceeded, with a fresh runtime budget (opt-in).
    pub relaunch_after_max_runtime: bool,
    /// Ceiling on `max_attempts` for tags (`None`: `max_attempts` itself).
    pub max_attempts_limit: Option<u32>,
    /// The only instance types spotcheck may launch (empty: any).
    pub allowed_instance_types: Vec<String>,
    /// Whether relaunches may run on-demand.
    pub allow_on_demand: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 10,
            instance_ladder: Vec::new(),
            on_demand_after_interruptions: None,
            on_demand_when_deadline_within_seconds: None,
            deadline: None,
            retries_on_user_error: 0,
            without_checkpoint: WithoutCheckpoint::RestartFromScratch,
            crash_loop_attempts: 3,
            max_wait_seconds: None,
            relaunch_after_max_runtime: false,
            max_attempts_limit: None,
            allowed_instance_types: Vec::new(),
            allow_on_demand: true,
        }
    }
}

/// Where an invalid policy value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// An environment variable.
    Env,
    /// A job tag.
    Tag,
    /// The JSON policy file.
    File,
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicySource::Env => "environment variable",
            PolicySource::Tag => "tag",
            PolicySource::File => "policy file field",
        })
    }
}

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A value does not parse or is out of range.
    #[error("{source_kind} {key} = {value:?} is invalid: expected {expected}")]
    Invalid {
        /// Where the value came from.
        source_kind: PolicySource,
        /// The variable, tag or field name.
        key: String,
        /// The offending value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A tag asks for more than the operator's ceiling allows.
    #[error("tag {key} = {value:?} exceeds the operator's limit: {limit}")]
    Exceeds {
        /// The tag.
        key: String,
        /// The offending value.
        value: String,
        /// The ceiling, in words.
        limit: String,
    },
    /// The operator's settings contradict each other (e.g. an on-demand switch while on-demand
    /// is not allowed).
    #[error("{source_kind}s contradict each other: {message}")]
    Inconsistent {
        /// Where the settings came from.
        source_kind: PolicySource,
        /// What contradicts what.
        message: String,
    },
    /// The policy file is not JSON, has unknown fields, or has wrongly typed ones.
    #[error("policy file is invalid: {0}")]
    File(#[source] serde_json::Error),
}

#[derive(Clone, Copy)]
enum Setting {
    MaxAttempts,
    InstanceLadder,
    OnDemandAfter,
    OnDemandWithin,
    Deadline,
    RetriesOnError,
    WithoutCheckpoint,
    CrashLoopAttempts,
    MaxWait,
    RelaunchAfterMaxRuntime,
    MaxAttemptsLimit,
    AllowedInstanceTypes,
    AllowOnDemand,
}

/// Each setting with its environment variable and tag (`""`: the operator's alone, no tag).
const SETTINGS: [(Setting, &str, &str); 13] = [
    (
        Setting::MaxAttempts,
        "SPOTCHECK_MAX_ATTEMPTS",
        keys::MAX_ATTEMPTS,
    ),
    (
        Setting::InstanceLadder,
        "SPOTCHECK_INSTANCE_LADDER",
        keys::INSTANCE_LADDER,
    ),
    (
        Setting::OnDemandAfter,
        "SPOTCHECK_ON_DEMAND_AFTER_INTERRUPTIONS",
        keys::ON_DEMAND_AFTER,
    ),
    (
        Setting::OnDemandWithin,
        "SPOTCHECK_ON_DEMAND_WHEN_DEADLINE_WITHIN_SECONDS",
        keys::ON_DEMAND_WITHIN,
    ),
    (Setting::Deadline, "SPOTCHECK_DEADLINE", keys::DEADLINE),
    (
        Setting::RetriesOnError,
        "SPOTCHECK_RETRIES_ON_USER_ERROR",
        keys::RETRIES_ON_ERROR,
    ),
    (
        Setting::WithoutCheckpoint,
        "SPOTCHECK_WITHOUT_CHECKPOINT",
        keys::WITHOUT_CHECKPOINT,
    ),
    (
        Setting::CrashLoopAttempts,
        "SPOTCHECK_CRASH_LOOP_ATTEMPTS",
        keys::CRASH_LOOP_ATTEMPTS,
    ),
    (
        Setting::MaxWait,
        "SPOTCHECK_MAX_WAIT_SECONDS",
        keys::MAX_WAIT,
    ),
    (
        Setting::RelaunchAfterMaxRuntime,
        "SPOTCHECK_RELAUNCH_AFTER_MAX_RUNTIME",
        keys::RELAUNCH_AFTER_MAX_RUNTIME,
    ),
    (
        Setting::MaxAttemptsLimit,
        "SPOTCHECK_MAX_ATTEMPTS_LIMIT",
        "",
    ),
    (
        Setting::AllowedInstanceTypes,
        "SPOTCHECK_ALLOWED_INSTANCE_TYPES",
        "",
    ),
    (Setting::AllowOnDemand, "SPOTCHECK_ALLOW_ON_DEMAND", ""),
];

impl Policy {
    /// Defaults overridden by `SPOTCHECK_*` environment variables. Pass `std::env::vars()` in the
    /// Lambda, or any map in tests.
    pub fn from_env<I, K, V>(vars: I) -> Result<Policy, PolicyError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut policy = Policy::default();
        for (name, value) in vars {
            if let Some((setting, env, _)) =
                SETTINGS.iter().find(|(_, env, _)| *env == name.as_ref())
            {
                policy.apply(*setting, value.as_ref(), PolicySource::Env, env)?;
            }
        }
        policy.check_consistent(PolicySource::Env)?;
        Ok(policy)
    }

    /// A policy from a JSON file: unknown fields are errors, missing fields take the defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, PolicyError> {
        let policy: Policy = serde_json::from_slice(bytes).map_err(PolicyError::File)?;
        policy.validate()?;
        Ok(policy)
    }

    /// This policy with the job's `spotcheck:*` policy tags applied on top. A tag may tighten
    /// the policy but not exceed this policy's ceilings ([`PolicyError::Exceeds`]).
    pub fn with_tag_overrides(&self, tags: &Tags) -> Result<Policy, PolicyError> {
        let mut policy = self.clone();
        for (setting, _, tag) in SETTINGS {
            if tag.is_empty() {
                continue;
            }
            if let Some(value) = tags.get(tag) {
                policy.apply(setting, value, PolicySource::Tag, tag)?;
                self.check_ceiling(&policy, setting, tag, value)?;
            }
        }
        Ok(policy)
    }

    /// Whether spotcheck may launch `instance_type` (see `allowed_instance_types`).
    pub fn permits_instance_type(&self, instance_type: &str) -> bool {
        self.allowed_instance_types.is_empty()
            || self
                .allowed_instance_types
                .iter()
                .any(|t| t == instance_type)
    }

    /// The most attempts a tag may ask for.
    pub fn attempts_ceiling(&self) -> u32 {
        self.max_attempts_limit.unwrap_or(self.max_attempts)
    }

    /// Whether `tagged` (this policy with one tag applied) still lies within this policy's
    /// ceilings.
    fn check_ceiling(
        &self,
        tagged: &Policy,
        setting: Setting,
        tag: &str,
        value: &str,
    ) -> Result<(), PolicyError> {
        let exceeds = |limit: String| {
            Err(PolicyError::Exceeds {
                key: tag.to_owned(),
                value: value.to_owned(),
                limit,
            })
        };
        match setting {
            Setting::MaxAttempts if tagged.max_attempts > self.attempts_ceiling() => {
                exceeds(format!("at most {} attempts", self.attempts_ceiling()))
            }
            Setting::InstanceLadder => match tagged
                .instance_ladder
                .iter()
                .find(|t| !self.permits_instance_type(t))
            {
                Some(bad) => exceeds(format!(
                    "{bad} is not among the allowed instance types ({})",
                    self.allowed_instance_types.join(",")
                )),
                None => Ok(()),
            },
            Setting::OnDemandAfter | Setting::OnDemandWithin
                if !self.allow_on_demand
                    && (tagged.on_demand_after_interruptions.is_some()
                        || tagged.on_demand_when_deadline_within_seconds.is_some()) =>
            {
                exceeds("on-demand relaunches are not allowed".to_owned())
            }
            _ => Ok(()),
        }
    }

    /// The operator's own settings must respect their own ceilings.
    fn check_consistent(&self, source_kind: PolicySource) -> Result<(), PolicyError> {
        let inconsistent = |message: String| {
            Err(PolicyError::Inconsistent {
                source_kind,
                message,
            })
        };
        if let Some(limit) = self.max_attempts_limit {
            if self.max_attempts > limit {
                return inconsistent(format!(
                    "max_attempts {} is above max_attempts_limit {limit}",
                    self.max_attempts
                ));
            }
        }
        if let Some(bad) = self
            .instance_ladder
            .iter()
            .find(|t| !self.permits_instance_type(t))
        {
            return inconsistent(format!(
                "the instance ladder's {bad} is not among allowed_instance_types"
            ));
        }
        if !self.allow_on_demand
            && (self.on_demand_after_interruptions.is_some()
                || self.on_demand_when_deadline_within_seconds.is_some())
        {
            return inconsistent(
                "an on-demand switch is set but allow_on_demand is false".to_owned(),
            );
        }
        Ok(())
    }

    /// Checks the ranges a deserialised policy could violate.
    fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field: &str, value: String, expected| {
            Err(PolicyError::Invalid {
                source_kind: PolicySource::File,
                key: field.to_owned(),
                value,
                expected,
            })
        };
        if self.max_attempts == 0 {
            return invalid("max_attempts", "0".into(), "an integer ≥ 1");
        }
        if self.crash_loop_attempts == 0 {
            return invalid("crash_loop_attempts", "0".into(), "an integer ≥ 1");
        }
        if self.max_wait_seconds == Some(0) {
            return invalid("max_wait_seconds", "0".into(), "an integer ≥ 1");
        }
        if let Some(bad) = self.instance_ladder.iter().find(|t| !is_instance_type(t)) {
            return invalid("instance_ladder", bad.clone(), LADDER_EXPECTED);
        }
        if let Some(bad) = self
            .allowed_instance_types
            .iter()
            .find(|t| !is_instance_type(t))
        {
            return invalid("allowed_instance_types", bad.clone(), LADDER_EXPECTED);
        }
        if self.max_attempts_limit == Some(0) {
            return invalid("max_attempts_limit", "0".into(), "an integer ≥ 1");
        }
        self.check_consistent(PolicySource::File)
    }

    fn apply(
        &mut self,
        setting: Setting,
        raw: &str,
        source_kind: PolicySource,
        key: &str,
    ) -> Result<(), PolicyError> {
        let value = raw.trim();
        if value.is_empty() {
            return Ok(());
        }
        let invalid = |expected: &'static str| PolicyError::Invalid {
            source_kind,
            key: key.to_owned(),
            value: raw.to_owned(),
            expected,
        };
        let positive = |expected| match value.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(invalid(expected)),
        };
        let unset = value.eq_ignore_ascii_case("none") || value.eq_ignore_ascii_case("off");
        let flag = |expected| match value.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid(expected)),
        };
        let types = || -> Result<Vec<String>, PolicyError> {
            let list: Vec<String> = value.split(',').map(|t| t.trim().to_owned()).collect();
            if list.iter().any(|t| !is_instance_type(t)) {
                return Err(invalid(LADDER_EXPECTED));
            }
            Ok(list)
        };
        match setting {
            Setting::MaxAttempts => self.max_attempts = positive("an integer ≥ 1")?,
            Setting::CrashLoopAttempts => self.crash_loop_attempts = positive("an integer ≥ 1")?,
            Setting::RetriesOnError => {
                self.retries_on_user_error =
                    value.parse().map_err(|_| invalid("an integer ≥ 0"))?;
            }
            Setting::InstanceLadder => self.instance_ladder = types()?,
            Setting::AllowedInstanceTypes => self.allowed_instance_types = types()?,
            Setting::RelaunchAfterMaxRuntime => {
                self.relaunch_after_max_runtime = flag("true or false")?;
            }
            Setting::AllowOnDemand => self.allow_on_demand = flag("true or false")?,
            Setting::MaxAttemptsLimit => {
                self.max_attempts_limit = if unset {
                    None
                } else {
                    Some(positive("an integer ≥ 1, or none")?)
                };
            }
            Setting::OnDemandAfter => {
                self.on_demand_after_interruptions = if unset {
                    None
                } else {
                    Some(
                        value
                            .parse()
                            .map_err(|_| invalid("an integer ≥ 0, or none"))?,
                    )
                };
            }
            Setting::OnDemandWithin => {
                self.on_demand_when_deadline_within_seconds = if unset {
                    None
                } else {
                    Some(
                        value
                            .parse()
                            .map_err(|_| invalid("seconds as an integer ≥ 0, or none"))?,
                    )
                };
            }
            Setting::MaxWait => {
                self.max_wait_seconds = if unset {
                    None
                } else {
                    match value.parse::<u64>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => return Err(invalid("seconds as an integer ≥ 1, or none")),
                    }
                };
            }
            Setting::Deadline => {
                self.deadline = if unset {
                    None
                } else {
                    Some(
                        Timestamp::parse(value)
                            .map_err(|_| invalid("an RFC 3339 time, or none"))?,
                    )
                };
            }
            Setting::WithoutCheckpoint => {
                self.without_checkpoint = match value.to_ascii_lowercase().as_str() {
                    "restart-from-scratch" => WithoutCheckpoint::RestartFromScratch,
                    "give-up" => WithoutCheckpoint::GiveUp,
                    _ => return Err(invalid("restart-from-scratch or give-up")),
                };
            }
        }
        Ok(())
    }
}

const LADDER_EXPECTED: &str =
    "a comma-separated list of SageMaker instance types such as ml.p3.2xlarge";

/// `ml.<family>.<size>`, with the characters instance types use.
fn is_instance_type(text: &str) -> bool {
    let mut parts = text.split('.');
    parts.next() == Some("ml")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_sets_every_field() {
        let env: HashMap<String, String> = [
            ("SPOTCHECK_MAX_ATTEMPTS", "4"),
            ("SPOTCHECK_INSTANCE_LADDER", "ml.p3.2xlarge, ml.g5.2xlarge"),
            ("SPOTCHECK_ON_DEMAND_AFTER_INTERRUPTIONS", "3"),
            ("SPOTCHECK_ON_DEMAND_WHEN_DEADLINE_WITHIN_SECONDS", "7200"),
            ("SPOTCHECK_DEADLINE", "2030-01-01T00:00:00Z"),
            ("SPOTCHECK_RETRIES_ON_USER_ERROR", "1"),
            ("SPOTCHECK_WITHOUT_CHECKPOINT", "give-up"),
            ("SPOTCHECK_CRASH_LOOP_ATTEMPTS", "2"),
            ("SPOTCHECK_MAX_WAIT_SECONDS", "86400"),
            ("SPOTCHECK_RELAUNCH_AFTER_MAX_RUNTIME", "true"),
            ("SPOTCHECK_MAX_ATTEMPTS_LIMIT", "6"),
            (
                "SPOTCHECK_ALLOWED_INSTANCE_TYPES",
                "ml.p3.2xlarge,ml.g5.2xlarge,ml.g5.xlarge",
            ),
            ("SPOTCHECK_ALLOW_ON_DEMAND", "TRUE"),
            ("SPOTCHECK_BUCKET", "not-a-policy-variable"),
            ("PATH", "/usr/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let policy = Policy::from_env(&env).unwrap();
        assert_eq!(
            policy,
            Policy {
                max_attempts: 4,
                instance_ladder: vec!["ml.p3.2xlarge".into(), "ml.g5.2xlarge".into()],
                on_demand_after_interruptions: Some(3),
                on_demand_when_deadline_within_seconds: Some(7200),
                deadline: Some(Timestamp::parse("2030-01-01T00:00:00Z").unwrap()),
                retries_on_user_error: 1,
                without_checkpoint: WithoutCheckpoint::GiveUp,
                crash_loop_attempts: 2,
                max_wait_seconds: Some(86400),
                relaunch_after_max_runtime: true,
                max_attempts_limit: Some(6),
                allowed_instance_types: vec![
                    "ml.p3.2xlarge".into(),
                    "ml.g5.2xlarge".into(),
                    "ml.g5.xlarge".into()
                ],
                allow_on_demand: true,
            }
        );
    }

    #[test]
    fn invalid_values_are_errors_not_defaults() {
        for (name, value) in [
            ("SPOTCHECK_MAX_ATTEMPTS", "0"),
            ("SPOTCHECK_MAX_ATTEMPTS", "-1"),
            ("SPOTCHECK_MAX_ATTEMPTS", "ten"),
            ("SPOTCHECK_INSTANCE_LADDER", "p3.2xlarge"),
            ("SPOTCHECK_INSTANCE_LADDER", "ml.p3.2xlarge,,ml.g5.xlarge"),
            ("SPOTCHECK_ON_DEMAND_AFTER_INTERRUPTIONS", "many"),
            ("SPOTCHECK_DEADLINE", "next friday"),
            ("SPOTCHECK_WITHOUT_CHECKPOINT", "shrug"),
            ("SPOTCHECK_CRASH_LOOP_ATTEMPTS", "0"),
            ("SPOTCHECK_MAX_WAIT_SECONDS", "0"),
            ("SPOTCHECK_RELAUNCH_AFTER_MAX_RUNTIME", "yes"),
            ("SPOTCHECK_MAX_ATTEMPTS_LIMIT", "0"),
            ("SPOTCHECK_ALLOWED_INSTANCE_TYPES", "p3.2xlarge"),
            ("SPOTCHECK_ALLOW_ON_DEMAND", "1"),
        ] {
            let err = Policy::from_env([(name, value)]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn the_operators_settings_must_respect_their_own_ceilings() {
        for env in [
            vec![
                ("SPOTCHECK_MAX_ATTEMPTS", "12"),
                ("SPOTCHECK_MAX_ATTEMPTS_LIMIT", "8"),
            ],
            vec![
                ("SPOTCHECK_INSTANCE_LADDER", "ml.p3.2xlarge,ml.g5.2xlarge"),
                ("SPOTCHECK_ALLOWED_INSTANCE_TYPES", "ml.p3.2xlarge"),
            ],
            vec![
                ("SPOTCHECK_ON_DEMAND_AFTER_INTERRUPTIONS", "2"),
                ("SPOTCHECK_ALLOW_ON_DEMAND", "false"),
            ],
        ] {
            let err = Policy::from_env(env.clone()).unwrap_err();
            assert!(
                matches!(err, PolicyError::Inconsistent { .. }),
                "{env:?}: {err}"
            );
        }
        assert!(Policy::from_json(
            br#"{"allow_on_demand": false, "on_demand_after_interruptions": 1}"#
        )
        .is_err());
        assert!(Policy::from_json(br#"{"allowed_instance_types": ["ml.g5.xlarge"], "instance_ladder": ["ml.p3.2xlarge"]}"#).is_err());
    }

    /// Regression: tags used to override the operator's policy whatever they asked for.
    #[test]
    fn tags_may_tighten_but_never_exceed_the_ceilings() {
        let operator = Policy::from_env([
            ("SPOTCHECK_MAX_ATTEMPTS", "4"),
            (
                "SPOTCHECK_ALLOWED_INSTANCE_TYPES",
                "ml.g5.xlarge,ml.g5.2xlarge",
            ),
            ("SPOTCHECK_ALLOW_ON_DEMAND", "false"),
        ])
        .unwrap();
        let exceeds = |pairs: &[(&str, &str)]| {
            let tags: Tags = pairs.iter().copied().collect();
            match operator.with_tag_overrides(&tags) {
                Err(PolicyError::Exceeds { key, limit, .. }) => (key, limit),
                other => panic!("{pairs:?}: expected Exceeds, got {other:?}"),
            }
        };
        let (key, limit) = exceeds(&[(keys::MAX_ATTEMPTS, "50")]);
        assert_eq!(
            (key.as_str(), limit.as_str()),
            (keys::MAX_ATTEMPTS, "at most 4 attempts")
        );
        let (_, limit) = exceeds(&[(keys::INSTANCE_LADDER, "ml.g5.xlarge,ml.p4d.24xlarge")]);
        assert!(limit.contains("ml.p4d.24xlarge"), "{limit}");
        exceeds(&[(keys::ON_DEMAND_AFTER, "1")]);
        exceeds(&[(keys::ON_DEMAND_WITHIN, "3600")]);
        // Tightening is fine.
        let tags: Tags = [
            (keys::MAX_ATTEMPTS, "2"),
            (keys::INSTANCE_LADDER, "ml.g5.2xlarge"),
            (keys::ON_DEMAND_AFTER, "none"),
        ]
        .into_iter()
        .collect();
        let tightened = operator.with_tag_overrides(&tags).unwrap();
        assert_eq!(tightened.max_attempts, 2);
        assert_eq!(tightened.instance_ladder, ["ml.g5.2xlarge"]);
        // An explicit limit lets tags go above the default up to it, not beyond.
        let generous = Policy {
            max_attempts_limit: Some(20),
            ..Policy::default()
        };
        let tags: Tags = [(keys::MAX_ATTEMPTS, "20")].into_iter().collect();
        assert_eq!(generous.with_tag_overrides(&tags).unwrap().max_attempts, 20);
        let tags: Tags = [(keys::MAX_ATTEMPTS, "21")].into_iter().collect();
        assert!(generous.with_tag_overrides(&tags).is_err());
        // The ceilings themselves have no tags.
        let tags: Tags = [
            ("spotcheck:allow-on-demand", "true"),
            ("spotcheck:allowed-instance-types", "ml.p5.48xlarge"),
            ("spotcheck:max-attempts-limit", "99"),
        ]
        .into_iter()
        .collect();
        assert_eq!(operator.with_tag_overrides(&tags).unwrap(), operator);
        assert!(operator.permits_instance_type("ml.g5.xlarge"));
        assert!(!operator.permits_instance_type("ml.p5.48xlarge"));
        assert!(Policy::default().permits_instance_type("ml.p5.48xlarge"));
    }

    #[test]
    fn empty_means_unset_and_none_clears() {
        let policy = Policy::from_env([("SPOTCHECK_MAX_ATTEMPTS", " ")]).unwrap();
        assert_eq!(policy, Policy::default());
        let base = Policy {
            on_demand_after_interruptions: Some(2),
            ..Policy::default()
        };
        let tags: Tags = [(keys::ON_DEMAND_AFTER, "none")].into_iter().collect();
        assert_eq!(
            base.with_tag_overrides(&tags)
                .unwrap()
                .on_demand_after_interruptions,
            None
        );
    }

    #[test]
    fn tags_override_and_are_validated() {
        let tags: Tags = [
            (keys::MAX_ATTEMPTS, "2"),
            (keys::INSTANCE_LADDER, "ml.g5.xlarge,ml.g5.2xlarge"),
        ]
        .into_iter()
        .collect();
        let policy = Policy::default().with_tag_overrides(&tags).unwrap();
        assert_eq!(policy.max_attempts, 2);
        assert_eq!(policy.instance_ladder.len(), 2);
        let bad: Tags = [(keys::RETRIES_ON_ERROR, "1.5")].into_iter().collect();
        let err = Policy::default().with_tag_overrides(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                PolicyError::Invalid {
                    source_kind: PolicySource::Tag,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn json_file_denies_unknown_fields_and_validates() {
        let policy = Policy::from_json(
            br#"{"max_attempts": 3, "without_checkpoint": "give-up", "deadline": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.without_checkpoint, WithoutCheckpoint::GiveUp);
        assert_eq!(policy.crash_loop_attempts, 3);
        assert!(matches!(
            Policy::from_json(br#"{"max_attempt": 3}"#),
            Err(PolicyError::File(_))
        ));
        let err = Policy::from_json(br#"{"crash_loop_attempts": 0}"#).unwrap_err();
        assert!(err.to_string().contains("crash_loop_attempts"), "{err}");
        assert!(Policy::from_json(br#"{"instance_ladder": ["p3"]}"#).is_err());
        // A policy round-trips through its own JSON form.
        let text = serde_json::to_vec(&policy).unwrap();
        assert_eq!(Policy::from_json(&text).unwrap(), policy);
    }
}
