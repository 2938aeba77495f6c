//! One ledger object → a typed record, or the reason it is skipped.
//!
//! Owns [`parse`] (pure: the key relative to the ledger prefix and the object's bytes in) and
//! the record types a report reads. The key's folder says which kind of record to expect
//! ([`Kind::of_key`], the layout of `spotcheck_aws::ledger::keys`); the body must be JSON of
//! that kind's shape, and a `kind` field, when present, must agree with the folder. Unknown
//! fields are ignored. Fields added later (`lineage` on the handler's entries, `job` on
//! give-ups, `attempt`/`interruptions`/`sagemaker_restarts` on job savings, `attempts` on
//! lineage summaries) are optional: a record written before they existed is read, and flagged
//! as of an older shape ([`Parsed::older_shape`]) so the report can say how many there were.
//! Anything else — another folder, not JSON, a shape no spotcheck version wrote — is
//! [`Skipped`] with a [`Skip`] reason, never an error: one bad object must not hide the rest.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spotcheck_control::savings::{AttemptFacts, LineageSummary, SavingsRecord};
use spotcheck_control::Timestamp;

/// The record kinds, by ledger folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `savings/jobs/<job>.json`: a completed job's savings.
    JobSavings,
    /// `savings/lineages/<root>.json`: a completed lineage's savings and attempts.
    LineageSavings,
    /// `interruptions/jobs/<job>/<n>.json`: a SageMaker job's n-th spot interruption.
    JobInterruption,
    /// `interruptions/runs/<run>/<instance>/<event>.json`: an EC2 warning or rebalance advice.
    InstanceInterruption,
    /// `stops/jobs/<job>.json`: the user stopped the job.
    UserStop,
    /// `give-ups/<root>/<job>.json`: recovery of the lineage stopped at this job.
    GiveUp,
    /// `checkpoint-validations/<job or run>/<checkpoint>.json`: corrupt checkpoints found.
    CheckpointValidation,
}

impl Kind {
    /// The kind a key (relative to the ledger prefix) holds, from its folder and depth.
    pub fn of_key(key: &str) -> Option<Kind> {
        let stem = key.strip_suffix(".json")?;
        let parts: Vec<&str> = stem.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        match parts.as_slice() {
            ["savings", "jobs", _] => Some(Kind::JobSavings),
            ["savings", "lineages", _] => Some(Kind::LineageSavings),
            ["interruptions", "jobs", _, _] => Some(Kind::JobInterruption),
            ["interruptions", "runs", _, _, _] => Some(Kind::InstanceInterruption),
            ["stops", "jobs", _] => Some(Kind::UserStop),
            ["give-ups", _, _] => Some(Kind::GiveUp),
            ["checkpoint-validations", _, _] => Some(Kind::CheckpointValidation),
            _ => None,
        }
    }

    /// The `kind` values the handlers write for this folder (none for the savings records,
    /// which carry no `kind`).
    fn entry_kinds(self) -> &'static [&'static str] {
        match self {
            Kind::JobSavings | Kind::LineageSavings => &[],
            Kind::JobInterruption => &["job_interruption"],
            Kind::InstanceInterruption => {
                &["spot_interruption_warning", "rebalance_recommendation"]
            }
            Kind::UserStop => &["user_stopped"],
            Kind::GiveUp => &["recovery_gave_up"],
            Kind::CheckpointValidation => &["checkpoint_validation_failed"],
        }
    }
}

/// The lineage a handler entry belongs to (`lineage` in the entry; absent in older records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRef {
    /// The lineage's root job, or the EC2 run.
    pub root: String,
    /// The job's attempt number (SageMaker only).
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// A SageMaker job's spot interruption.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct JobInterruption {
    /// The interrupted job.
    pub job_name: String,
    /// Its interruptions so far, this one included.
    pub interruptions: u32,
    /// Its lineage.
    #[serde(default)]
    pub lineage: Option<LineageRef>,
    /// When it was recorded.
    #[serde(default)]
    pub recorded_at: Option<Timestamp>,
}

/// An EC2 spot interruption warning or rebalance recommendation for an instance of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInterruption {
    /// The run (`spotcheck:run`).
    pub run: String,
    /// The instance.
    pub instance_id: String,
    /// A rebalance recommendation (advice), not a warning.
    pub advisory: bool,
    /// The continuation planned for the run, by name.
    pub continuation: Option<String>,
    /// When it was recorded.
    pub recorded_at: Option<Timestamp>,
}

/// The user stopped a job.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UserStop {
    /// The stopped job.
    pub job_name: String,
    /// Its lineage.
    #[serde(default)]
    pub lineage: Option<LineageRef>,
    /// When it was recorded.
    #[serde(default)]
    pub recorded_at: Option<Timestamp>,
}

/// Recovery of a lineage (or an EC2 run) stopped.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GiveUp {
    /// The job (or continuation) at which it stopped.
    pub job_name: String,
    /// The lineage's root (the run, for EC2).
    pub root: String,
    /// The job's attempt number.
    pub attempt: u32,
    /// Why, as the engine names it (`attempts_exhausted`, `crash_loop`, …).
    pub cause: String,
    /// The decision's reason.
    #[serde(default)]
    pub reason: String,
    /// What the job that gave up ran and cost (absent in older records and for EC2 runs).
    #[serde(default)]
    pub job: Option<AttemptFacts>,
    /// When it was recorded.
    #[serde(default)]
    pub recorded_at: Option<Timestamp>,
}

/// A checkpoint validation that found corrupt (or torn) checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    /// The job or run whose prefix was validated (the key's folder).
    pub subject: String,
    /// The checkpoint prefix.
    pub uri: String,
    /// The newest step that validated.
    pub latest_valid_step: Option<u64>,
    /// The newest judged checkpoint that did not validate: (name, step).
    pub newest_unusable: Option<(String, u64)>,
    /// Judged checkpoints that did not validate.
    pub unusable: u32,
    /// Its lineage.
    pub lineage: Option<LineageRef>,
    /// When it was recorded.
    pub recorded_at: Option<Timestamp>,
}

impl Validation {
    /// Checkpointed steps this validation made unusable: the newest unusable checkpoint's step
    /// minus the newest valid one (0 when none is valid: the run starts over).
    pub fn lost_steps(&self) -> u64 {
        self.newest_unusable.as_ref().map_or(0, |(_, step)| {
            step.saturating_sub(self.latest_valid_step.unwrap_or(0))
        })
    }
}

/// A ledger record.
#[derive(Clone, Debug, PartialEq)]
pub enum LedgerRecord {
    /// `savings/jobs/…`.
    JobSavings(Box<SavingsRecord>),
    /// `savings/lineages/…`.
    LineageSavings(Box<LineageSummary>),
    /// `interruptions/jobs/…`.
    JobInterruption(JobInterruption),
    /// `interruptions/runs/…`.
    InstanceInterruption(InstanceInterruption),
    /// `stops/jobs/…`.
    UserStop(UserStop),
    /// `give-ups/…`.
    GiveUp(Box<GiveUp>),
    /// `checkpoint-validations/…`.
    CheckpointValidation(Validation),
}

/// A record read, and whether it is of an older shape (lacks fields added since).
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The record.
    pub record: LedgerRecord,
    /// Written before the report's optional fields existed (read all the same).
    pub older_shape: bool,
}

/// Why an object is not read as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// The key is not in a ledger folder (or not `.json`).
    UnknownKey,
    /// The object is larger than any record.
    TooLarge,
    /// The body is not JSON.
    NotJson,
    /// The body's `kind` is not one this folder holds.
    WrongKind,
    /// JSON of no shape any spotcheck version wrote for this folder.
    UnknownShape,
    /// Listed, but gone when read.
    Vanished,
}

impl Skip {
    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Skip::UnknownKey => "not a ledger record key",
            Skip::TooLarge => "larger than any ledger record",
            Skip::NotJson => "not JSON",
            Skip::WrongKind => "a record kind this folder does not hold",
            Skip::UnknownShape => "JSON of an unknown shape",
            Skip::Vanished => "deleted between listing and reading",
        }
    }
}

/// An object that was not read, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The reason.
    pub reason: Skip,
    /// Details (the parser's message).
    pub detail: String,
}

fn skipped(reason: Skip, detail: impl Into<String>) -> Skipped {
    Skipped {
        reason,
        detail: detail.into(),
    }
}

fn shape<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Skipped> {
    serde_json::from_value(value).map_err(|e| skipped(Skip::UnknownShape, e.to_string()))
}

#[derive(Deserialize)]
struct RawInstanceInterruption {
    kind: String,
    #[serde(default)]
    recorded_at: Option<Timestamp>,
    interruption: RawInterruption,
}

#[derive(Deserialize)]
struct RawInterruption {
    instance_id: String,
    run: String,
    #[serde(default)]
    advisory: bool,
    #[serde(default)]
    continuation: Option<RawContinuation>,
}

#[derive(Deserialize)]
struct RawContinuation {
    name: String,
}

#[derive(Deserialize)]
struct RawValidation {
    uri: String,
    #[serde(default)]
    summary: RawSummary,
    #[serde(default)]
    checkpoints: Vec<RawJudged>,
    #[serde(default)]
    lineage: Option<LineageRef>,
    #[serde(default)]
    recorded_at: Option<Timestamp>,
}

#[derive(Default, Deserialize)]
struct RawSummary {
    #[serde(default)]
    latest_valid_step: Option<u64>,
}

#[derive(Deserialize)]
struct RawJudged {
    name: String,
    step: u64,
    status: String,
}

/// Reads one ledger object: `key` relative to the ledger prefix, `bytes` its body (pure).
pub fn parse(key: &str, bytes: &[u8]) -> Result<Parsed, Skipped> {
    let kind = Kind::of_key(key).ok_or_else(|| skipped(Skip::UnknownKey, key))?;
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| skipped(Skip::NotJson, e.to_string()))?;
    if !value.is_object() {
        return Err(skipped(Skip::UnknownShape, "not a JSON object"));
    }
    let allowed = kind.entry_kinds();
    match value.get("kind") {
        None if allowed.is_empty() => {}
        None => return Err(skipped(Skip::UnknownShape, "no `kind` field")),
        Some(k) => match k.as_str() {
            Some(k) if allowed.contains(&k) => {}
            _ => return Err(skipped(Skip::WrongKind, format!("kind {k} in {key}"))),
        },
    }
    let has = |field: &str| value.get(field).is_some_and(|v| !v.is_null());
    let lineage_known = has("lineage");
    let parsed = match kind {
        Kind::JobSavings => {
            let record: SavingsRecord = shape(value)?;
            Parsed {
                older_shape: record.attempt.is_none(),
                record: LedgerRecord::JobSavings(Box::new(record)),
            }
        }
        Kind::LineageSavings => {
            let older_shape = !has("attempts");
            let record: LineageSummary = shape(value)?;
            Parsed {
                older_shape,
                record: LedgerRecord::LineageSavings(Box::new(record)),
            }
        }
        Kind::JobInterruption => Parsed {
            record: LedgerRecord::JobInterruption(shape(value)?),
            older_shape: !lineage_known,
        },
        Kind::InstanceInterruption => {
            let raw: RawInstanceInterruption = shape(value)?;
            Parsed {
                record: LedgerRecord::InstanceInterruption(InstanceInterruption {
                    run: raw.interruption.run,
                    instance_id: raw.interruption.instance_id,
                    advisory: raw.interruption.advisory || raw.kind == "rebalance_recommendation",
                    continuation: raw.interruption.continuation.map(|c| c.name),
                    recorded_at: raw.recorded_at,
                }),
                older_shape: !lineage_known,
            }
        }
        Kind::UserStop => Parsed {
            record: LedgerRecord::UserStop(shape(value)?),
            older_shape: !lineage_known,
        },
        Kind::GiveUp => {
            let record: GiveUp = shape(value)?;
            // EC2 give-ups carry no job facts (there is no SageMaker job yet).
            let older_shape = !lineage_known;
            Parsed {
                record: LedgerRecord::GiveUp(Box::new(record)),
                older_shape,
            }
        }
        Kind::CheckpointValidation => {
            let subject = key.split('/').nth(1).unwrap_or_default().to_owned();
            let raw: RawValidation = shape(value)?;
            let unusable: Vec<&RawJudged> = raw
                .checkpoints
                .iter()
                .filter(|c| c.status != "valid")
                .collect();
            let newest_unusable = unusable
                .iter()
                .max_by_key(|c| c.step)
                .map(|c| (c.name.clone(), c.step));
            Parsed {
                record: LedgerRecord::CheckpointValidation(Validation {
                    subject,
                    uri: raw.uri,
                    latest_valid_step: raw.summary.latest_valid_step,
                    newest_unusable,
                    unusable: u32::try_from(unusable.len()).unwrap_or(u32::MAX),
                    lineage: raw.lineage,
                    recorded_at: raw.recorded_at,
                }),
                older_shape: !lineage_known,
            }
        }
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn keys_map_to_kinds_and_nothing_else() {
        for (key, kind) in [
            ("savings/jobs/j.json", Some(Kind::JobSavings)),
            ("savings/lineages/r.json", Some(Kind::LineageSavings)),
            ("interruptions/jobs/j/2.json", Some(Kind::JobInterruption)),
            (
                "interruptions/runs/run/i-1/ec2-abc.json",
                Some(Kind::InstanceInterruption),
            ),
            ("stops/jobs/j.json", Some(Kind::UserStop)),
            ("give-ups/r/j.json", Some(Kind::GiveUp)),
            (
                "checkpoint-validations/j/algo-1_step-000000000100.json",
                Some(Kind::CheckpointValidation),
            ),
            ("savings/jobs/j.txt", None),
            ("savings/jobs/a/b.json", None),
            ("savings/jobs/.json", None),
            ("interruptions/jobs/j.json", None),
            ("other/x.json", None),
            ("", None),
        ] {
            assert_eq!(Kind::of_key(key), kind, "{key}");
        }
    }

    #[test]
    fn bad_objects_are_skipped_with_a_reason() {
        let skip = |key: &str, body: &[u8]| parse(key, body).unwrap_err().reason;
        assert_eq!(skip("notes/readme.json", b"{}"), Skip::UnknownKey);
        assert_eq!(skip("stops/jobs/j.json", b"{\"kind\":"), Skip::NotJson);
        assert_eq!(skip("stops/jobs/j.json", b"[1,2]"), Skip::UnknownShape);
        assert_eq!(
            skip("stops/jobs/j.json", b"{\"job_name\":\"j\"}"),
            Skip::UnknownShape
        );
        assert_eq!(
            skip(
                "stops/jobs/j.json",
                &bytes(json!({"kind": "job_interruption", "job_name": "j", "interruptions": 1}))
            ),
            Skip::WrongKind
        );
        assert_eq!(
            skip("savings/jobs/j.json", &bytes(json!({"job_name": "j"}))),
            Skip::UnknownShape
        );
        assert_eq!(
            skip(
                "interruptions/jobs/j/1.json",
                &bytes(json!({"kind": "job_interruption", "job_name": 7}))
            ),
            Skip::UnknownShape
        );
    }

    #[test]
    fn validations_measure_the_checkpointed_steps_they_discard() {
        let body = json!({
            "kind": "checkpoint_validation_failed", "recorded_at": "2026-11-01T00:00:00.000Z",
            "event_key": "e", "reason": "r", "uri": "s3://b/ck",
            "summary": {"latest_valid_step": 1200, "any_corrupt": true, "finished": false},
            "latest_valid": "algo-1/step-000000001200",
            "checkpoints": [
                {"name": "algo-1/step-000000001400", "namespace": "algo-1", "step": 1400, "status": "incomplete", "reason": "torn"},
                {"name": "algo-1/step-000000001300", "namespace": "algo-1", "step": 1300, "status": "corrupt", "reason": "crc"},
                {"name": "algo-1/step-000000001200", "namespace": "algo-1", "step": 1200, "status": "valid", "reason": null}],
            "not_judged": 3, "size_only": []});
        let parsed = parse(
            "checkpoint-validations/job-1/algo-1_step-000000001300.json",
            &bytes(body),
        )
        .unwrap();
        assert!(parsed.older_shape, "no lineage: written before it existed");
        let LedgerRecord::CheckpointValidation(v) = parsed.record else {
            panic!("a validation")
        };
        assert_eq!(v.subject, "job-1");
        assert_eq!(v.unusable, 2);
        assert_eq!(v.lost_steps(), 200);
        assert_eq!(
            v.newest_unusable,
            Some(("algo-1/step-000000001400".into(), 1400))
        );
    }
}
