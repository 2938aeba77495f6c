//! The spot market simulator: when each instance type's spot capacity is there, and what it
//! costs.
//!
//! Owns [`Market`]: per instance type, a schedule of capacity *outages* in simulated time. A
//! spot job running on a type is interrupted when an outage starts and can restart only when it
//! ends; a job waiting for a type waits while it lasts. On-demand capacity is always there.
//!
//! Outages come from a seeded random process or from a trace file:
//!
//! - **Random**: per type, an independent ChaCha8 stream seeded by `sha256(seed, type)`, so a
//!   type's schedule never depends on which other types were asked about or in which order.
//!   Gaps between outages are exponential with rate [`MarketConfig::interruptions_per_hour`];
//!   an outage is *long* with probability [`MarketConfig::long_outage_probability`] (uniform
//!   between the two `long_outage_seconds` bounds, meant to outlast MaxWaitTimeInSeconds)
//!   and otherwise *short* (exponential, mean [`MarketConfig::short_outage_mean_seconds`]).
//! - **Trace**: a JSON file `{"outages": [{"at_seconds": 600, "duration_seconds": 120,
//!   "instance_type": "ml.g4dn.xlarge", "warning": false}]}`; times are simulated seconds after
//!   the market's start; an entry without `instance_type` hits every type.
//!
//! Each outage also says whether the running job gets a **warning** (SIGTERM and the grace
//! period) or is killed without one: AWS documents SIGTERM for a stop, not for a spot reclaim.
//! It is drawn with probability [`MarketConfig::reclaim_warning_probability`] from a stream of
//! its own (so the outage times do not depend on it), or given by the trace entry.
//!
//! Prices: on-demand USD/hour from the control plane's [`PriceTable`] (the same table the
//! ledger prices savings with); spot = on-demand × (1 − [`MarketConfig::spot_discount`]) unless
//! a spot price table (same file shape) names the type. A spot job's `BillableTimeInSeconds`
//! is its running time × spot/on-demand, as SageMaker bills managed spot at the on-demand rate
//! for fewer seconds. Everything here is pure and deterministic: no clock, no I/O.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spotcheck_control::PriceTable;

use crate::clock::EpochMs;

/// How outages are drawn (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarketConfig {
    /// Seed of the random process.
    pub seed: u64,
    /// Mean outages (spot interruptions) per simulated hour, per instance type; 0: none.
    pub interruptions_per_hour: f64,
    /// Mean length of a short outage, simulated seconds.
    pub short_outage_mean_seconds: f64,
    /// Probability that an outage is long.
    pub long_outage_probability: f64,
    /// Bounds of a long outage, simulated seconds.
    pub long_outage_seconds: (f64, f64),
    /// Fraction of the on-demand price saved on spot (0.7: spot costs 30 %).
    pub spot_discount: f64,
    /// Probability that a reclaim warns the process (SIGTERM, then the grace period) rather
    /// than killing it outright.
    pub reclaim_warning_probability: f64,
    /// A trace replacing the random process.
    pub trace: Option<Trace>,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            seed: 1,
            interruptions_per_hour: 0.0,
            short_outage_mean_seconds: 300.0,
            long_outage_probability: 0.3,
            long_outage_seconds: (4.0 * 3600.0, 8.0 * 3600.0),
            spot_discount: 0.7,
            reclaim_warning_probability: 0.5,
            trace: None,
        }
    }
}

/// A trace file: outages at fixed simulated times.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// The outages, in any order.
    pub outages: Vec<TraceOutage>,
}

/// One outage of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceOutage {
    /// Start, simulated seconds after the market's start.
    pub at_seconds: f64,
    /// Length, simulated seconds.
    pub duration_seconds: f64,
    /// The type it hits; every type when absent.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Whether a running job is warned (SIGTERM) before it is killed; drawn with the market's
    /// probability when absent.
    #[serde(default)]
    pub warning: Option<bool>,
}

/// Why a trace file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not JSON of the trace shape.
    #[error("trace file is invalid: {0}")]
    Json(#[from] serde_json::Error),
    /// A negative or non-finite time.
    #[error("trace outage {0}: times must be finite and not negative")]
    BadTime(usize),
}

impl Trace {
    /// Parses and checks a trace file.
    pub fn from_json(bytes: &[u8]) -> Result<Trace, TraceError> {
        let trace: Trace = serde_json::from_slice(bytes)?;
        for (i, o) in trace.outages.iter().enumerate() {
            let ok = |x: f64| x.is_finite() && x >= 0.0;
            if !ok(o.at_seconds) || !ok(o.duration_seconds) {
                return Err(TraceError::BadTime(i));
            }
        }
        Ok(trace)
    }
}

/// A stretch of simulated time without spot capacity, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Outage {
    /// First millisecond without capacity.
    pub start: EpochMs,
    /// First millisecond with capacity again.
    pub end: EpochMs,
    /// Whether a job running when it starts is warned (SIGTERM) before it is killed.
    pub warning: bool,
}

#[derive(Debug)]
struct Schedule {
    rng: ChaCha8Rng,
    /// Draws the warnings (a stream apart, so outage times do not depend on them).
    warnings: ChaCha8Rng,
    outages: Vec<Outage>,
    /// Outages are known up to here (random process).
    horizon: EpochMs,
}

/// The market (see the module doc).
#[derive(Debug)]
pub struct Market {
    config: MarketConfig,
    start: EpochMs,
    on_demand: PriceTable,
    spot: Option<PriceTable>,
    schedules: BTreeMap<String, Schedule>,
}

/// How far ahead a query may look (simulated): beyond it, "no outage".
const LOOKAHEAD_MS: i64 = 400 * 24 * 3600 * 1000;

impl Market {
    /// A market starting at `start` with on-demand prices `on_demand` and optional spot prices.
    pub fn new(
        config: MarketConfig,
        start: EpochMs,
        on_demand: PriceTable,
        spot: Option<PriceTable>,
    ) -> Self {
        Market {
            config,
            start,
            on_demand,
            spot,
            schedules: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MarketConfig {
        &self.config
    }

    /// On-demand USD/hour of a type.
    pub fn on_demand_usd_per_hour(&self, instance_type: &str) -> Option<f64> {
        self.on_demand.usd_per_hour(instance_type)
    }

    /// Spot USD/hour of a type.
    pub fn spot_usd_per_hour(&self, instance_type: &str) -> Option<f64> {
        self.spot
            .as_ref()
            .and_then(|s| s.usd_per_hour(instance_type))
            .or_else(|| {
                self.on_demand_usd_per_hour(instance_type)
                    .map(|p| p * (1.0 - self.config.spot_discount.clamp(0.0, 1.0)))
            })
    }

    /// Billable seconds per running second: spot / on-demand (1 for on-demand or unpriced
    /// types, where the discount alone applies to spot).
    pub fn billable_ratio(&self, instance_type: &str, spot: bool) -> f64 {
        if !spot {
            return 1.0;
        }
        match (
            self.spot_usd_per_hour(instance_type),
            self.on_demand_usd_per_hour(instance_type),
        ) {
            (Some(s), Some(o)) if o > 0.0 => (s / o).clamp(0.0, 1.0),
            _ => 1.0 - self.config.spot_discount.clamp(0.0, 1.0),
        }
    }

    fn schedule(&mut self, instance_type: &str, until: EpochMs) -> &[Outage] {
        let config = &self.config;
        let start = self.start;
        let schedule = self
            .schedules
            .entry(instance_type.to_owned())
            .or_insert_with(|| new_schedule(config, start, instance_type));
        if config.trace.is_none() {
            extend(config, schedule, until);
        }
        &schedule.outages
    }

    /// The outage covering `t` on `instance_type`, if capacity is gone at `t`.
    pub fn outage_at(&mut self, instance_type: &str, t: EpochMs) -> Option<Outage> {
        self.schedule(instance_type, t + 1)
            .iter()
            .find(|o| o.start <= t && t < o.end)
            .copied()
    }

    /// The next outage starting strictly after `t` (a running spot job's interruption).
    pub fn next_outage_after(&mut self, instance_type: &str, t: EpochMs) -> Option<Outage> {
        let mut until = t + 3_600_000;
        loop {
            if let Some(o) = self
                .schedule(instance_type, until)
                .iter()
                .find(|o| o.start > t)
            {
                return Some(*o);
            }
            if until - t > LOOKAHEAD_MS || self.config.trace.is_some() {
                return None;
            }
            until += (until - t) * 2;
        }
    }

    /// Every outage of a type known up to `until` (for reports).
    pub fn outages(&mut self, instance_type: &str, until: EpochMs) -> Vec<Outage> {
        self.schedule(instance_type, until)
            .iter()
            .filter(|o| o.start < until)
            .copied()
            .collect()
    }
}

fn stream(config: &MarketConfig, instance_type: &str, purpose: &[u8]) -> ChaCha8Rng {
    let digest = Sha256::new()
        .chain_update(config.seed.to_le_bytes())
        .chain_update(instance_type.as_bytes())
        .chain_update(purpose)
        .finalize();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&digest);
    ChaCha8Rng::from_seed(seed)
}

fn draw_warning(config: &MarketConfig, rng: &mut ChaCha8Rng) -> bool {
    rng.random::<f64>() < config.reclaim_warning_probability
}

fn new_schedule(config: &MarketConfig, start: EpochMs, instance_type: &str) -> Schedule {
    let mut warnings = stream(config, instance_type, b"warning");
    let mut outages = Vec::new();
    if let Some(trace) = &config.trace {
        outages = trace
            .outages
            .iter()
            .filter(|o| {
                o.instance_type
                    .as_deref()
                    .is_none_or(|t| t == instance_type)
            })
            .map(|o| Outage {
                start: start + (o.at_seconds * 1000.0) as i64,
                end: start + ((o.at_seconds + o.duration_seconds) * 1000.0) as i64,
                warning: o
                    .warning
                    .unwrap_or_else(|| draw_warning(config, &mut warnings)),
            })
            .filter(|o| o.end > o.start)
            .collect();
        outages.sort_by_key(|o| o.start);
    }
    Schedule {
        rng: stream(config, instance_type, b""),
        warnings,
        outages,
        horizon: start,
    }
}

/// Draws outages until the schedule covers `until`.
fn extend(config: &MarketConfig, s: &mut Schedule, until: EpochMs) {
    let rate = config.interruptions_per_hour;
    if !(rate.is_finite() && rate > 0.0) {
        return;
    }
    while s.horizon <= until {
        let gap_s = exponential(&mut s.rng, 3600.0 / rate);
        let long = s.rng.random::<f64>() < config.long_outage_probability;
        let (lo, hi) = config.long_outage_seconds;
        let duration_s = if long {
            lo + (hi - lo).max(0.0) * s.rng.random::<f64>()
        } else {
            exponential(&mut s.rng, config.short_outage_mean_seconds).max(1.0)
        };
        let start = s.horizon + (gap_s * 1000.0) as i64;
        let end = start + (duration_s * 1000.0) as i64;
        let warning = draw_warning(config, &mut s.warnings);
        s.outages.push(Outage {
            start,
            end,
            warning,
        });
        s.horizon = end;
    }
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.random::<f64>();
    -(1.0 - u).ln() * mean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(config: MarketConfig) -> Market {
        Market::new(config, 0, PriceTable::builtin(), None)
    }

    #[test]
    fn random_schedule_is_deterministic_per_type_and_order_free() {
        let config = MarketConfig {
            seed: 7,
            interruptions_per_hour: 2.0,
            ..Default::default()
        };
        let mut a = market(config.clone());
        let mut b = market(config);
        let _ = b.outages("ml.p3.2xlarge", 50 * 3_600_000);
        let day = 24 * 3_600_000;
        assert_eq!(
            a.outages("ml.g5.xlarge", day),
            b.outages("ml.g5.xlarge", day)
        );
        let outages = a.outages("ml.g5.xlarge", day);
        assert!(outages.len() > 10, "about 2/h for a day: {}", outages.len());
        assert!(outages.windows(2).all(|w| w[0].end <= w[1].start));
        let first = outages[0];
        assert_eq!(a.outage_at("ml.g5.xlarge", first.start), Some(first));
        assert_eq!(a.outage_at("ml.g5.xlarge", first.end), None);
        assert_eq!(a.next_outage_after("ml.g5.xlarge", 0), Some(first));
        // Half the reclaims warn, half do not (default probability 0.5).
        let warned = outages.iter().filter(|o| o.warning).count();
        assert!(
            warned > 0 && warned < outages.len(),
            "{warned}/{}",
            outages.len()
        );
    }

    #[test]
    fn no_rate_no_outages() {
        let mut m = market(MarketConfig::default());
        assert_eq!(m.next_outage_after("ml.g5.xlarge", 0), None);
        assert_eq!(m.outage_at("ml.g5.xlarge", 1000), None);
    }

    #[test]
    fn trace_outages_apply_per_type() {
        let trace = Trace::from_json(
            br#"{"outages": [{"at_seconds": 60, "duration_seconds": 30, "instance_type": "ml.g5.xlarge", "warning": false},
                            {"at_seconds": 10, "duration_seconds": 5}]}"#,
        )
        .unwrap();
        let mut m = market(MarketConfig {
            trace: Some(trace),
            interruptions_per_hour: 100.0,
            ..Default::default()
        });
        assert_eq!(
            m.next_outage_after("ml.g5.xlarge", 0).map(|o| o.start),
            Some(10_000)
        );
        let second = m.next_outage_after("ml.g5.xlarge", 10_000).unwrap();
        assert_eq!((second.start, second.warning), (60_000, false));
        assert_eq!(m.next_outage_after("ml.m5.large", 10_000), None);
        assert!(m.outage_at("ml.g5.xlarge", 89_999).is_some());
        assert!(m.outage_at("ml.g5.xlarge", 90_000).is_none());
        assert!(
            Trace::from_json(br#"{"outages": [{"at_seconds": -1, "duration_seconds": 1}]}"#)
                .is_err()
        );
        assert!(Trace::from_json(br#"{"outages": [], "x": 1}"#).is_err());
    }

    #[test]
    fn prices_and_billable_ratio() {
        let m = market(MarketConfig::default());
        let od = m.on_demand_usd_per_hour("ml.g5.xlarge").unwrap();
        let spot = m.spot_usd_per_hour("ml.g5.xlarge").unwrap();
        assert!((spot - od * 0.3).abs() < 1e-9);
        assert!((m.billable_ratio("ml.g5.xlarge", true) - 0.3).abs() < 1e-9);
        assert_eq!(m.billable_ratio("ml.g5.xlarge", false), 1.0);
        assert!((m.billable_ratio("ml.unknown.type", true) - 0.3).abs() < 1e-9);
    }
}
