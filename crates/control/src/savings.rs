//! What managed spot training saved, per job and per lineage: pure arithmetic.
//!
//! Owns the savings formulas, the on-demand [`PriceTable`] (a built-in list-price snapshot,
//! overridable by a JSON file), and the records the shell stores ([`SavingsRecord`],
//! [`LineageSummary`]) under deterministic S3 keys. It reads no clock, no S3, no pricing API.
//!
//! # Formulas
//!
//! Per job, with T = `TrainingTimeInSeconds`, B = `BillableTimeInSeconds`, N = `InstanceCount`,
//! P = the instance type's on-demand USD/hour:
//!
//! - seconds saved = T − B (negative only if AWS ever reported B > T; kept as reported);
//! - savings % = (1 − B / T) × 100 (what SageMaker and its SDK print);
//! - billed compute = B × N instance-seconds;
//! - on-demand cost = T × N × P / 3600 (the same work on-demand);
//! - spot cost ≈ B × N × P / 3600 = on-demand cost × (1 − savings % / 100), because SageMaker
//!   bills managed spot as billable seconds at the on-demand rate (the spot discount is what
//!   makes B smaller than T);
//! - dollars saved = on-demand cost − spot cost = (T − B) × N × P / 3600.
//!
//! Per lineage (our definition): sum T and B across the lineage's jobs for the seconds and the
//! percentage, and price each job's T − B at that job's own N and P, then add. Dollars are
//! `None` when any included job's instance type has no price (listed in `unpriced_instance_types`)
//! rather than an understated sum.
//!
//! A job without `TrainingTimeInSeconds` or `BillableTimeInSeconds` (or `InstanceCount`) gets no
//! record and an error saying which, never a zero.
//!
//! # What the records carry for reports
//!
//! Besides the savings, a [`SavingsRecord`] carries the job's place in its lineage (`attempt`,
//! `resume_step`), its spot interruptions and [SageMaker restarts](sagemaker_restarts), and a
//! [`LineageSummary`] carries one [`AttemptFacts`] per attempt (times, price, outcome, phases),
//! so that `spotcheck report` and the counterfactual need nothing but the ledger. These fields
//! are optional: records written before they existed read as `None` / empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::JobFacts;
use crate::status::SecondaryStatus;
use crate::tags::keys;
use crate::timestamp::Timestamp;

/// The built-in price snapshot (see the file's `_comment`).
const BUILTIN_PRICES: &str = include_str!("../prices/on-demand-us-east-1.json");

/// Why no savings record could be made, or a price file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SavingsError {
    /// `TrainingTimeInSeconds` is missing.
    #[error("{job}: no TrainingTimeInSeconds, so no savings record")]
    MissingTrainingTime {
        /// The job.
        job: String,
    },
    /// `BillableTimeInSeconds` is missing.
    #[error("{job}: no BillableTimeInSeconds, so no savings record")]
    MissingBillableTime {
        /// The job.
        job: String,
    },
    /// `ResourceConfig.InstanceCount` is missing, so billed compute is unknown.
    #[error("{job}: no ResourceConfig.InstanceCount, so no savings record")]
    MissingInstanceCount {
        /// The job.
        job: String,
    },
    /// Training time is zero: no percentage exists.
    #[error("{name}: training time is 0 s, so there is no savings percentage")]
    ZeroTrainingTime {
        /// The job or lineage root.
        name: String,
    },
    /// No job of the lineage had the times needed.
    #[error("lineage {root}: no job has both training and billable times")]
    NoUsableJobs {
        /// The lineage root.
        root: String,
    },
    /// The price file is not JSON of the expected shape.
    #[error("price file is invalid: {0}")]
    PriceFile(#[source] serde_json::Error),
    /// A price is negative or not finite.
    #[error("price file: {instance_type} has an invalid price {price}")]
    InvalidPrice {
        /// The instance type.
        instance_type: String,
        /// The offending price.
        price: f64,
    },
    /// The price file is not in USD.
    #[error("price file: currency {0:?} is not USD")]
    Currency(String),
}

/// On-demand USD/hour by SageMaker instance type.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    region: Option<String>,
    as_of: Option<String>,
    usd_per_hour: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct PriceFile {
    currency: Option<String>,
    region: Option<String>,
    as_of: Option<String>,
    usd_per_hour: BTreeMap<String, f64>,
}

impl PriceTable {
    /// The shipped snapshot, `prices/on-demand-us-east-1.json` (list prices as of its date).
    pub fn builtin() -> Self {
        // The file is part of the crate and parsed by a unit test, so this cannot fail.
        Self::from_json(BUILTIN_PRICES.as_bytes()).expect("built-in price table is valid")
    }

    /// Reads a price file: `{"usd_per_hour": {"ml.p3.2xlarge": 3.825, …}}`, optionally with
    /// `currency` (must be `USD`), `region` and `as_of`; other fields (comments) are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SavingsError> {
        let file: PriceFile = serde_json::from_slice(bytes).map_err(SavingsError::PriceFile)?;
        if let Some(currency) = file.currency.filter(|c| c != "USD") {
            return Err(SavingsError::Currency(currency));
        }
        if let Some((instance_type, price)) = file
            .usd_per_hour
            .iter()
            .find(|(_, p)| !p.is_finite() || **p < 0.0)
        {
            return Err(SavingsError::InvalidPrice {
                instance_type: instance_type.clone(),
                price: *price,
            });
        }
        Ok(PriceTable {
            region: file.region,
            as_of: file.as_of,
            usd_per_hour: file.usd_per_hour,
        })
    }

    /// This table with `overrides`' prices replacing or adding to its own; the region and date
    /// become the override's when it names them.
    pub fn with_overrides(mut self, overrides: PriceTable) -> Self {
        self.usd_per_hour.extend(overrides.usd_per_hour);
        self.region = overrides.region.or(self.region);
        self.as_of = overrides.as_of.or(self.as_of);
        self
    }

    /// On-demand USD/hour of `instance_type`, if listed.
    pub fn usd_per_hour(&self, instance_type: &str) -> Option<f64> {
        self.usd_per_hour.get(instance_type).copied()
    }

    /// The date the prices were taken.
    pub fn as_of(&self) -> Option<&str> {
        self.as_of.as_deref()
    }

    /// The region the prices are for.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
}

/// The savings of one completed job, stored at [`SavingsRecord::s3_key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavingsRecord {
    /// The job.
    pub job_name: String,
    /// `ResourceConfig.InstanceType`.
    pub instance_type: Option<String>,
    /// `ResourceConfig.InstanceCount`.
    pub instance_count: u32,
    /// `TrainingTimeInSeconds`.
    pub training_seconds: u64,
    /// `BillableTimeInSeconds`.
    pub billable_seconds: u64,
    /// Training − billable.
    pub seconds_saved: i64,
    /// (1 − billable / training) × 100.
    pub savings_percent: f64,
    /// Billable × instance count.
    pub billed_compute_seconds: u64,
    /// On-demand USD/hour used; `None` when the type has no price.
    pub on_demand_usd_per_hour: Option<f64>,
    /// Cost of the same work on-demand.
    pub on_demand_cost_usd: Option<f64>,
    /// Estimated spot bill.
    pub spot_cost_usd: Option<f64>,
    /// On-demand cost − spot bill.
    pub dollars_saved: Option<f64>,
    /// `spotcheck:root` of the job, when it belongs to a lineage.
    pub lineage_root: Option<String>,
    /// `TrainingEndTime`.
    pub ended_at: Option<Timestamp>,
    /// Date of the prices used.
    pub prices_as_of: Option<String>,
    /// `spotcheck:attempt` (1 for a job spotcheck never relaunched).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// `spotcheck:resume-step`: the checkpoint step the job resumed from.
    #[serde(default)]
    pub resume_step: Option<u64>,
    /// Spot interruptions of the job (its `Interrupted` transitions).
    #[serde(default)]
    pub interruptions: Option<u32>,
    /// Interruptions after which SageMaker got the job an instance again.
    #[serde(default)]
    pub sagemaker_restarts: Option<u32>,
    /// `EnableManagedSpotTraining`.
    #[serde(default)]
    pub spot: Option<bool>,
    /// `CreationTime`.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
}

impl SavingsRecord {
    /// `savings/jobs/<job>.json`.
    pub fn s3_key(&self) -> String {
        format!("savings/jobs/{}.json", key_segment(&self.job_name))
    }
}

/// A job left out of a lineage summary, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedJob {
    /// The job.
    pub job_name: String,
    /// Why it was left out.
    pub reason: String,
}

/// The savings of a whole lineage, stored at [`LineageSummary::s3_key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineageSummary {
    /// The lineage's first job.
    pub root: String,
    /// The jobs included, in the order given.
    pub jobs: Vec<String>,
    /// Σ training seconds.
    pub training_seconds: u64,
    /// Σ billable seconds.
    pub billable_seconds: u64,
    /// Σ training − Σ billable.
    pub seconds_saved: i64,
    /// (1 − Σ billable / Σ training) × 100.
    pub savings_percent: f64,
    /// Σ billable × instance count.
    pub billed_compute_seconds: u64,
    /// Σ on-demand cost; `None` if any included type has no price.
    pub on_demand_cost_usd: Option<f64>,
    /// Σ estimated spot bill; `None` if any included type has no price.
    pub spot_cost_usd: Option<f64>,
    /// Σ dollars saved; `None` if any included type has no price.
    pub dollars_saved: Option<f64>,
    /// Instance types without a price.
    pub unpriced_instance_types: Vec<String>,
    /// Jobs left out for missing data.
    pub skipped: Vec<SkippedJob>,
    /// Date of the prices used.
    pub prices_as_of: Option<String>,
    /// Every attempt given, included or skipped, in the order given.
    #[serde(default)]
    pub attempts: Vec<AttemptFacts>,
}

impl LineageSummary {
    /// `savings/lineages/<root>.json`.
    pub fn s3_key(&self) -> String {
        format!("savings/lineages/{}.json", key_segment(&self.root))
    }
}

/// One secondary status of a job, from its `SecondaryStatusTransitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// The secondary status.
    pub status: String,
    /// When it was entered.
    pub start: Option<Timestamp>,
    /// When it was left (`None`: current when described).
    pub end: Option<Timestamp>,
}

/// One attempt of a lineage as a report needs it: what it ran on, how it ended, what it was
/// billed, where it resumed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFacts {
    /// The job.
    pub job_name: String,
    /// `spotcheck:attempt` (1 when untagged: the root).
    pub attempt: u32,
    /// `ResourceConfig.InstanceType`.
    pub instance_type: Option<String>,
    /// `ResourceConfig.InstanceCount`.
    pub instance_count: Option<u32>,
    /// `EnableManagedSpotTraining`.
    pub spot: Option<bool>,
    /// `TrainingJobStatus` when described.
    pub status: Option<String>,
    /// `SecondaryStatus` when described.
    pub secondary_status: Option<String>,
    /// `TrainingTimeInSeconds`.
    pub training_seconds: Option<u64>,
    /// `BillableTimeInSeconds`.
    pub billable_seconds: Option<u64>,
    /// On-demand USD/hour of the instance type, when priced.
    pub on_demand_usd_per_hour: Option<f64>,
    /// Spot interruptions (its `Interrupted` transitions).
    pub interruptions: u32,
    /// Interruptions after which SageMaker got the job an instance again.
    pub sagemaker_restarts: u32,
    /// `spotcheck:resume-step`: the checkpoint step it resumed from (`None`: from scratch).
    pub resume_step: Option<u64>,
    /// `StoppingCondition.MaxWaitTimeInSeconds`.
    pub max_wait_seconds: Option<u64>,
    /// `CreationTime`.
    pub created_at: Option<Timestamp>,
    /// `TrainingEndTime`, else `LastModifiedTime`.
    pub ended_at: Option<Timestamp>,
    /// `SecondaryStatusTransitions`, oldest first.
    pub phases: Vec<Phase>,
}

impl AttemptFacts {
    /// What the attempt was billed in USD (billable × count × price), when known.
    pub fn billed_usd(&self) -> Option<f64> {
        Some(dollars(
            self.billable_seconds? as f64,
            self.instance_count?,
            self.on_demand_usd_per_hour?,
        ))
    }

    /// What its training time costs on-demand in USD (training × count × price), when known.
    pub fn on_demand_usd(&self) -> Option<f64> {
        Some(dollars(
            self.training_seconds? as f64,
            self.instance_count?,
            self.on_demand_usd_per_hour?,
        ))
    }
}

/// Interruptions after which SageMaker got `job` an instance again: `Interrupted` transitions
/// followed later by `Downloading`, `DownloadingTrainingImage` or `Training`. An interruption
/// that ends in waiting (`Starting` → `Stopping`: MaxWaitTimeInSeconds ran out) is no restart.
pub fn sagemaker_restarts(job: &JobFacts) -> u32 {
    let ran = |s: &SecondaryStatus| {
        matches!(
            s,
            SecondaryStatus::Downloading
                | SecondaryStatus::DownloadingTrainingImage
                | SecondaryStatus::Training
        )
    };
    let mut restarts = 0u32;
    for (i, t) in job.transitions.iter().enumerate() {
        if t.status == SecondaryStatus::Interrupted
            && job.transitions[i + 1..]
                .iter()
                .any(|later| ran(&later.status))
        {
            restarts = restarts.saturating_add(1);
        }
    }
    restarts
}

fn tag_number<T: std::str::FromStr>(job: &JobFacts, key: &str) -> Option<T> {
    job.tags.get(key).and_then(|v| v.trim().parse().ok())
}

/// The [`AttemptFacts`] of one job (pure; missing fields stay `None`).
pub fn attempt_facts(job: &JobFacts, prices: &PriceTable) -> AttemptFacts {
    AttemptFacts {
        job_name: job.name.clone(),
        attempt: tag_number(job, keys::ATTEMPT).unwrap_or(1),
        instance_type: job.instance_type.clone(),
        instance_count: job.instance_count,
        spot: job.managed_spot,
        status: job.status.as_ref().map(|s| s.as_str().to_owned()),
        secondary_status: job.secondary_status.as_ref().map(|s| s.as_str().to_owned()),
        training_seconds: job.training_time_seconds,
        billable_seconds: job.billable_time_seconds,
        on_demand_usd_per_hour: job
            .instance_type
            .as_deref()
            .and_then(|it| prices.usd_per_hour(it)),
        interruptions: job.interruptions(),
        sagemaker_restarts: sagemaker_restarts(job),
        resume_step: tag_number(job, keys::RESUME_STEP),
        max_wait_seconds: job.max_wait_seconds,
        created_at: job.creation_time,
        ended_at: job.training_end_time.or(job.last_modified_time),
        phases: job
            .transitions
            .iter()
            .map(|t| Phase {
                status: t.status.as_str().to_owned(),
                start: t.start_time,
                end: t.end_time,
            })
            .collect(),
    }
}

/// Job names are already key-safe; tag-supplied roots may not be.
fn key_segment(name: &str) -> String {
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

struct Times {
    training: u64,
    billable: u64,
    count: u32,
}

fn times(job: &JobFacts) -> Result<Times, SavingsError> {
    let job_name = || job.name.clone();
    Ok(Times {
        training: job
            .training_time_seconds
            .ok_or_else(|| SavingsError::MissingTrainingTime { job: job_name() })?,
        billable: job
            .billable_time_seconds
            .ok_or_else(|| SavingsError::MissingBillableTime { job: job_name() })?,
        count: job
            .instance_count
            .ok_or_else(|| SavingsError::MissingInstanceCount { job: job_name() })?,
    })
}

fn percent(training: u64, billable: u64) -> f64 {
    (1.0 - billable as f64 / training as f64) * 100.0
}

fn signed_difference(a: u64, b: u64) -> i64 {
    i64::try_from(i128::from(a) - i128::from(b)).unwrap_or(if a > b { i64::MAX } else { i64::MIN })
}

/// USD for `seconds` × `count` instance-seconds at `usd_per_hour`.
fn dollars(seconds: f64, count: u32, usd_per_hour: f64) -> f64 {
    seconds * f64::from(count) * usd_per_hour / 3600.0
}

/// The savings of one job (see the module doc for the formulas).
pub fn job_savings(job: &JobFacts, prices: &PriceTable) -> Result<SavingsRecord, SavingsError> {
    let t = times(job)?;
    if t.training == 0 {
        return Err(SavingsError::ZeroTrainingTime {
            name: job.name.clone(),
        });
    }
    let price = job
        .instance_type
        .as_deref()
        .and_then(|it| prices.usd_per_hour(it));
    let on_demand = price.map(|p| dollars(t.training as f64, t.count, p));
    let spot = price.map(|p| dollars(t.billable as f64, t.count, p));
    Ok(SavingsRecord {
        job_name: job.name.clone(),
        instance_type: job.instance_type.clone(),
        instance_count: t.count,
        training_seconds: t.training,
        billable_seconds: t.billable,
        seconds_saved: signed_difference(t.training, t.billable),
        savings_percent: percent(t.training, t.billable),
        billed_compute_seconds: t.billable.saturating_mul(u64::from(t.count)),
        on_demand_usd_per_hour: price,
        on_demand_cost_usd: on_demand,
        spot_cost_usd: spot,
        dollars_saved: on_demand.zip(spot).map(|(o, s)| o - s),
        lineage_root: job.tags.get(keys::ROOT).map(str::to_owned),
        ended_at: job.training_end_time,
        prices_as_of: prices.as_of().map(str::to_owned),
        attempt: Some(tag_number(job, keys::ATTEMPT).unwrap_or(1)),
        resume_step: tag_number(job, keys::RESUME_STEP),
        interruptions: Some(job.interruptions()),
        sagemaker_restarts: Some(sagemaker_restarts(job)),
        spot: job.managed_spot,
        created_at: job.creation_time,
    })
}

/// The savings of a lineage from its jobs' facts (see the module doc). Jobs lacking times are
/// listed in `skipped`; zero-second jobs (e.g. a capacity failure) are included.
pub fn lineage_savings(
    root: &str,
    jobs: &[JobFacts],
    prices: &PriceTable,
) -> Result<LineageSummary, SavingsError> {
    let mut included = Vec::new();
    let mut skipped = Vec::new();
    let (mut training, mut billable, mut billed_compute) = (0u64, 0u64, 0u64);
    let (mut on_demand, mut spot) = (0.0f64, 0.0f64);
    let mut unpriced: Vec<String> = Vec::new();
    for job in jobs {
        let t = match times(job) {
            Ok(t) => t,
            Err(e) => {
                skipped.push(SkippedJob {
                    job_name: job.name.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        included.push(job.name.clone());
        training = training.saturating_add(t.training);
        billable = billable.saturating_add(t.billable);
        billed_compute =
            billed_compute.saturating_add(t.billable.saturating_mul(u64::from(t.count)));
        match job
            .instance_type
            .as_deref()
            .and_then(|it| prices.usd_per_hour(it))
        {
            Some(p) => {
                on_demand += dollars(t.training as f64, t.count, p);
                spot += dollars(t.billable as f64, t.count, p);
            }
            None => {
                let it = job
                    .instance_type
                    .clone()
                    .unwrap_or_else(|| "(unknown instance type)".to_owned());
                if !unpriced.contains(&it) {
                    unpriced.push(it);
                }
            }
        }
    }
    if included.is_empty() {
        return Err(SavingsError::NoUsableJobs {
            root: root.to_owned(),
        });
    }
    if training == 0 {
        return Err(SavingsError::ZeroTrainingTime {
            name: root.to_owned(),
        });
    }
    let priced = unpriced.is_empty();
    Ok(LineageSummary {
        root: root.to_owned(),
        jobs: included,
        training_seconds: training,
        billable_seconds: billable,
        seconds_saved: signed_difference(training, billable),
        savings_percent: percent(training, billable),
        billed_compute_seconds: billed_compute,
        on_demand_cost_usd: priced.then_some(on_demand),
        spot_cost_usd: priced.then_some(spot),
        dollars_saved: priced.then_some(on_demand - spot),
        unpriced_instance_types: unpriced,
        skipped,
        prices_as_of: prices.as_of().map(str::to_owned),
        attempts: jobs.iter().map(|j| attempt_facts(j, prices)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::FactsOrigin;
    use serde_json::json;

    fn job(name: &str, it: &str, count: u32, training: u64, billable: u64) -> JobFacts {
        JobFacts::from_value(
            &json!({"TrainingJobName": name, "ResourceConfig": {"InstanceType": it, "InstanceCount": count},
                    "TrainingTimeInSeconds": training, "BillableTimeInSeconds": billable}),
            FactsOrigin::DescribeTrainingJob,
            None,
        )
        .unwrap()
    }

    #[test]
    fn builtin_prices_parse_and_cover_the_common_types() {
        let prices = PriceTable::builtin();
        assert_eq!(prices.region(), Some("us-east-1"));
        assert!(prices.as_of().is_some());
        for it in [
            "ml.m5.xlarge",
            "ml.c5.xlarge",
            "ml.p3.2xlarge",
            "ml.p3.8xlarge",
            "ml.p3.16xlarge",
            "ml.g4dn.xlarge",
            "ml.g4dn.12xlarge",
            "ml.g5.xlarge",
            "ml.g5.2xlarge",
            "ml.g5.12xlarge",
            "ml.p4d.24xlarge",
            "ml.p5.48xlarge",
            "ml.trn1.32xlarge",
        ] {
            assert!(prices.usd_per_hour(it).is_some_and(|p| p > 0.0), "{it}");
        }
    }

    #[test]
    fn job_formula() {
        let prices = PriceTable::from_json(br#"{"usd_per_hour": {"ml.p3.2xlarge": 3.6}}"#).unwrap();
        let record = job_savings(&job("j", "ml.p3.2xlarge", 2, 3600, 900), &prices).unwrap();
        assert_eq!(record.seconds_saved, 2700);
        assert!((record.savings_percent - 75.0).abs() < 1e-9);
        assert_eq!(record.billed_compute_seconds, 1800);
        assert!((record.on_demand_cost_usd.unwrap() - 7.2).abs() < 1e-9);
        assert!((record.spot_cost_usd.unwrap() - 1.8).abs() < 1e-9);
        assert!((record.dollars_saved.unwrap() - 5.4).abs() < 1e-9);
        assert_eq!(record.s3_key(), "savings/jobs/j.json");
    }

    #[test]
    fn missing_times_are_errors_not_zeros() {
        let prices = PriceTable::builtin();
        let mut facts = job("j", "ml.p3.2xlarge", 1, 100, 30);
        facts.billable_time_seconds = None;
        assert!(matches!(
            job_savings(&facts, &prices),
            Err(SavingsError::MissingBillableTime { .. })
        ));
        facts.training_time_seconds = None;
        assert!(matches!(
            job_savings(&facts, &prices),
            Err(SavingsError::MissingTrainingTime { .. })
        ));
        let zero = job("z", "ml.p3.2xlarge", 1, 0, 0);
        assert!(matches!(
            job_savings(&zero, &prices),
            Err(SavingsError::ZeroTrainingTime { .. })
        ));
    }

    #[test]
    fn unknown_price_keeps_seconds_and_drops_dollars() {
        let record =
            job_savings(&job("j", "ml.x9.huge", 1, 100, 40), &PriceTable::builtin()).unwrap();
        assert_eq!(record.seconds_saved, 60);
        assert_eq!(record.dollars_saved, None);
    }

    #[test]
    fn lineage_sums_times_and_prices_each_job() {
        let prices = PriceTable::from_json(
            br#"{"usd_per_hour": {"ml.p3.2xlarge": 3.6, "ml.g5.2xlarge": 1.8}}"#,
        )
        .unwrap();
        let mut missing = job("r4", "ml.g5.2xlarge", 1, 1, 1);
        missing.training_time_seconds = None;
        let jobs = [
            job("r1", "ml.p3.2xlarge", 1, 3600, 1200),
            job("r2", "ml.p3.2xlarge", 1, 0, 0),
            job("r3", "ml.g5.2xlarge", 2, 7200, 3600),
            missing,
        ];
        let summary = lineage_savings("r/1", &jobs, &prices).unwrap();
        assert_eq!(summary.jobs, ["r1", "r2", "r3"]);
        assert_eq!(summary.skipped.len(), 1);
        assert_eq!(summary.training_seconds, 10800);
        assert_eq!(summary.billable_seconds, 4800);
        assert!((summary.savings_percent - (1.0 - 4800.0 / 10800.0) * 100.0).abs() < 1e-9);
        // 2400 s at 3.6/h + 3600 s × 2 at 1.8/h = 2.4 + 3.6
        assert!((summary.dollars_saved.unwrap() - 6.0).abs() < 1e-9);
        assert_eq!(summary.billed_compute_seconds, 1200 + 7200);
        assert_eq!(summary.s3_key(), "savings/lineages/r_1.json");

        let unpriced = lineage_savings("r", &[job("a", "ml.zz.big", 1, 10, 5)], &prices).unwrap();
        assert_eq!(unpriced.dollars_saved, None);
        assert_eq!(unpriced.unpriced_instance_types, ["ml.zz.big"]);
        assert!(matches!(
            lineage_savings("r", &[], &prices),
            Err(SavingsError::NoUsableJobs { .. })
        ));
    }

    /// Attempt 1 of a lineage: interrupted twice; SageMaker restarted it after the first, the
    /// wait ran out after the second.
    fn interrupted_twice() -> JobFacts {
        let t = |status: &str, start: i64| json!({"Status": status, "StartTime": start});
        JobFacts::from_value(
            &json!({"TrainingJobName": "train", "TrainingJobStatus": "Stopped",
                    "SecondaryStatus": "MaxWaitTimeExceeded", "EnableManagedSpotTraining": true,
                    "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 2},
                    "StoppingCondition": {"MaxWaitTimeInSeconds": 7200},
                    "TrainingTimeInSeconds": 1800, "BillableTimeInSeconds": 600,
                    "CreationTime": 1_700_000_000.0, "TrainingEndTime": 1_700_007_200.0,
                    "SecondaryStatusTransitions": [
                        t("Starting", 1_700_000_000), t("Downloading", 1_700_000_060),
                        t("Training", 1_700_000_120), t("Interrupted", 1_700_001_000),
                        t("Starting", 1_700_001_100), t("Downloading", 1_700_001_500),
                        t("Training", 1_700_001_560), t("Interrupted", 1_700_002_000),
                        t("Starting", 1_700_002_100), t("Stopping", 1_700_007_100),
                        t("MaxWaitTimeExceeded", 1_700_007_200)]}),
            FactsOrigin::DescribeTrainingJob,
            None,
        )
        .unwrap()
    }

    #[test]
    fn restarts_count_only_interruptions_that_ran_again() {
        let job = interrupted_twice();
        assert_eq!(job.interruptions(), 2);
        assert_eq!(sagemaker_restarts(&job), 1);
        let prices = PriceTable::from_json(br#"{"usd_per_hour": {"ml.p3.2xlarge": 3.6}}"#).unwrap();
        let facts = attempt_facts(&job, &prices);
        assert_eq!(facts.attempt, 1);
        assert_eq!((facts.interruptions, facts.sagemaker_restarts), (2, 1));
        assert_eq!(facts.phases.len(), 11);
        assert_eq!(facts.phases[3].status, "Interrupted");
        assert_eq!(
            facts.secondary_status.as_deref(),
            Some("MaxWaitTimeExceeded")
        );
        // 600 s × 2 instances at 3.6/h; 1800 s × 2 on-demand.
        assert!((facts.billed_usd().unwrap() - 1.2).abs() < 1e-9);
        assert!((facts.on_demand_usd().unwrap() - 3.6).abs() < 1e-9);
    }

    #[test]
    fn records_carry_lineage_facts_and_older_records_still_read() {
        let mut job = job("train-r2-abc", "ml.p3.2xlarge", 1, 100, 30);
        job.tags.insert("spotcheck:root", "train");
        job.tags.insert("spotcheck:attempt", "2");
        job.tags.insert("spotcheck:resume-step", "1200");
        let record = job_savings(&job, &PriceTable::builtin()).unwrap();
        assert_eq!(
            (record.attempt, record.resume_step, record.interruptions),
            (Some(2), Some(1200), Some(0))
        );
        let summary = lineage_savings(
            "train",
            &[interrupted_twice(), job.clone()],
            &PriceTable::builtin(),
        )
        .unwrap();
        let attempts: Vec<_> = summary
            .attempts
            .iter()
            .map(|a| (a.job_name.as_str(), a.attempt, a.resume_step))
            .collect();
        assert_eq!(
            attempts,
            [("train", 1, None), ("train-r2-abc", 2, Some(1200))]
        );
        let round_trip: LineageSummary =
            serde_json::from_slice(&serde_json::to_vec(&summary).unwrap()).unwrap();
        assert_eq!(round_trip.attempts, summary.attempts);

        // The shapes written before these fields existed.
        let old_job: SavingsRecord = serde_json::from_value(json!({
            "job_name": "j", "instance_type": "ml.p3.2xlarge", "instance_count": 1,
            "training_seconds": 100, "billable_seconds": 30, "seconds_saved": 70,
            "savings_percent": 70.0, "billed_compute_seconds": 30,
            "on_demand_usd_per_hour": 3.825, "on_demand_cost_usd": 0.1, "spot_cost_usd": 0.03,
            "dollars_saved": 0.07, "lineage_root": null, "ended_at": null, "prices_as_of": null}))
        .unwrap();
        assert_eq!((old_job.attempt, old_job.sagemaker_restarts), (None, None));
        let old_summary: LineageSummary = serde_json::from_value(json!({
            "root": "r", "jobs": ["r"], "training_seconds": 100, "billable_seconds": 30,
            "seconds_saved": 70, "savings_percent": 70.0, "billed_compute_seconds": 30,
            "on_demand_cost_usd": null, "spot_cost_usd": null, "dollars_saved": null,
            "unpriced_instance_types": [], "skipped": [], "prices_as_of": null}))
        .unwrap();
        assert!(old_summary.attempts.is_empty());
    }

    #[test]
    fn price_files_are_validated_and_override() {
        assert!(matches!(
            PriceTable::from_json(br#"{"usd_per_hour": {"ml.a.b": -1}}"#),
            Err(SavingsError::InvalidPrice { .. })
        ));
        assert!(matches!(
            PriceTable::from_json(br#"{"currency": "EUR", "usd_per_hour": {}}"#),
            Err(SavingsError::Currency(_))
        ));
        assert!(PriceTable::from_json(br#"{"usd_per_hr": {}}"#).is_err());
        let merged = PriceTable::builtin().with_overrides(
            PriceTable::from_json(br#"{"as_of": "2030-01-01", "usd_per_hour": {"ml.p3.2xlarge": 1.0, "ml.new.type": 2.0}}"#)
                .unwrap(),
        );
        assert_eq!(merged.usd_per_hour("ml.p3.2xlarge"), Some(1.0));
        assert_eq!(merged.usd_per_hour("ml.new.type"), Some(2.0));
        assert!(merged.usd_per_hour("ml.g5.xlarge").is_some());
        assert_eq!(merged.as_of(), Some("2030-01-01"));
    }
}
