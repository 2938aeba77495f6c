//! Points in time, parsed from every shape AWS prints them in.
//!
//! Owns [`Timestamp`] (UTC, millisecond precision) and its tolerant parser: epoch milliseconds as
//! a string (`"1583831889050"`, the documented SageMaker event), numbers (epoch milliseconds, or
//! epoch seconds with a fraction, as the AWS CLI prints DescribeTrainingJob with
//! `--cli-timestamp-format none`), and RFC 3339 strings (`2024-05-01T12:00:00.123+00:00`).
//! It never reads the clock: "now" is always passed in by the caller.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant with millisecond precision, between years 1 and 9999.
///
/// Stored as epoch milliseconds so that comparing two instants (staleness, deadlines) is exact.
/// Serialises as an RFC 3339 string; deserialises from any shape [`Timestamp::from_json`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// 0001-01-01T00:00:00Z in epoch milliseconds.
const MIN_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in epoch milliseconds.
const MAX_MS: i64 = 253_402_300_799_999;
/// Numbers at or above this magnitude are epoch milliseconds (1973 onwards); below it, epoch
/// seconds (up to year 5138). No real training job sits on the other side of either boundary.
const MS_THRESHOLD: f64 = 1e11;

/// Why a value could not be read as a [`Timestamp`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The string is neither an epoch number nor RFC 3339.
    #[error("{0:?} is neither an epoch number nor an RFC 3339 time")]
    Unrecognised(String),
    /// The value parses but lies outside years 1..=9999 (or is not finite).
    #[error("time {0} is outside the years 1..=9999")]
    OutOfRange(String),
    /// The JSON value is not a string or a number.
    #[error("a time must be a string or a number, not {0}")]
    WrongType(&'static str),
}

impl Timestamp {
    /// An instant from epoch milliseconds; rejects values outside years 1..=9999.
    pub fn from_epoch_ms(ms: i64) -> Result<Self, TimeError> {
        if (MIN_MS..=MAX_MS).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(TimeError::OutOfRange(ms.to_string()))
        }
    }

    /// An instant from (possibly fractional) epoch seconds, rounded to the millisecond.
    pub fn from_epoch_seconds(seconds: f64) -> Result<Self, TimeError> {
        let ms = (seconds * 1000.0).round();
        if ms.is_finite() && ms >= MIN_MS as f64 && ms <= MAX_MS as f64 {
            Ok(Self(ms as i64))
        } else {
            Err(TimeError::OutOfRange(seconds.to_string()))
        }
    }

    /// Parses a string: an epoch number (see the module doc for the ms/seconds rule) or RFC 3339
    /// (a space instead of the `T` is tolerated, as Python's `str(datetime)` prints it).
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let text = text.trim();
        if looks_numeric(text) {
            if let Ok(n) = text.parse::<i64>() {
                return Self::from_epoch_number(n);
            }
            return match text.parse::<f64>() {
                Ok(f) => Self::from_epoch_float(f),
                Err(_) => Err(TimeError::Unrecognised(text.to_owned())),
            };
        }
        let normalised;
        let candidate =
            if text.len() > 10 && text.as_bytes()[10] == b' ' && text.is_char_boundary(11) {
                normalised = format!("{}T{}", &text[..10], &text[11..]);
                normalised.as_str()
            } else {
                text
            };
        let parsed = OffsetDateTime::parse(candidate, &Rfc3339)
            .map_err(|_| TimeError::Unrecognised(text.to_owned()))?;
        let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        let ms = i64::try_from(ms).map_err(|_| TimeError::OutOfRange(text.to_owned()))?;
        Self::from_epoch_ms(ms)
    }

    /// Reads a JSON value: a string ([`Timestamp::parse`]) or a number (ms or seconds).
    pub fn from_json(value: &Value) -> Result<Self, TimeError> {
        match value {
            Value::String(s) => Self::parse(s),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Self::from_epoch_number(i)
                } else if let Some(f) = n.as_f64() {
                    Self::from_epoch_float(f)
                } else {
                    Err(TimeError::OutOfRange(n.to_string()))
                }
            }
            Value::Null => Err(TimeError::WrongType("null")),
            Value::Bool(_) => Err(TimeError::WrongType("a boolean")),
            Value::Array(_) => Err(TimeError::WrongType("an array")),
            Value::Object(_) => Err(TimeError::WrongType("an object")),
        }
    }

    /// Epoch milliseconds.
    pub fn epoch_ms(self) -> i64 {
        self.0
    }

    /// Whole seconds from `self` to `later` (negative when `later` is earlier).
    pub fn seconds_until(self, later: Timestamp) -> i64 {
        (later.0 - self.0).div_euclid(1000)
    }

    /// This instant plus `seconds`, saturating at the supported range.
    pub fn plus_seconds(self, seconds: u64) -> Timestamp {
        let delta = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        Timestamp(self.0.saturating_add(delta).clamp(MIN_MS, MAX_MS))
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
    pub fn to_rfc3339(self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            // Unreachable for values built by the constructors above; still no panic.
            Err(_) => self.0.to_string(),
        }
    }

    fn from_epoch_number(n: i64) -> Result<Self, TimeError> {
        if n.unsigned_abs() as f64 >= MS_THRESHOLD {
            Self::from_epoch_ms(n)
        } else {
            Self::from_epoch_ms(n * 1000)
        }
    }

    fn from_epoch_float(f: f64) -> Result<Self, TimeError> {
        if !f.is_finite() {
            return Err(TimeError::OutOfRange(f.to_string()));
        }
        if f.abs() >= MS_THRESHOLD {
            Self::from_epoch_seconds(f / 1000.0)
        } else {
            Self::from_epoch_seconds(f)
        }
    }
}

/// `-?digits(.digits)?` — what an epoch number printed as a string looks like.
fn looks_numeric(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    let mut parts = body.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Timestamp::from_json(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: i64 = 1_583_831_889_050; // 2020-03-10T09:18:09.050Z

    #[test]
    fn every_documented_shape_gives_the_same_instant() {
        let shapes = [
            json!("1583831889050"),
            json!(1_583_831_889_050_i64),
            json!(1_583_831_889.05),
            json!("1583831889.05"),
            json!("2020-03-10T09:18:09.050Z"),
            json!("2020-03-10T09:18:09.050000+00:00"),
            json!("2020-03-10T10:18:09.05+01:00"),
            json!("2020-03-10 09:18:09.050000+00:00"),
        ];
        for shape in shapes {
            assert_eq!(Timestamp::from_json(&shape), Ok(Timestamp(T)), "{shape}");
        }
    }

    #[test]
    fn small_integers_are_seconds() {
        assert_eq!(
            Timestamp::from_json(&json!(1_583_831_889))
                .unwrap()
                .epoch_ms(),
            1_583_831_889_000
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            json!("yesterday"),
            json!(""),
            json!("1.2.3"),
            json!("-"),
            json!(true),
            json!(null),
            json!([1]),
            json!(1e300),
            json!("99999999999999999999999"),
            json!("2020-13-40T00:00:00Z"),
        ] {
            assert!(Timestamp::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_rfc3339_and_round_trips() {
        let t = Timestamp(T);
        assert_eq!(t.to_rfc3339(), "2020-03-10T09:18:09.050Z");
        assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
        let min = Timestamp::from_epoch_ms(MIN_MS).unwrap();
        assert_eq!(min.to_rfc3339(), "0001-01-01T00:00:00.000Z");
        let max = Timestamp::from_epoch_ms(MAX_MS).unwrap();
        assert_eq!(Timestamp::parse(&max.to_rfc3339()), Ok(max));
    }

    #[test]
    fn arithmetic_saturates_and_floors() {
        let t = Timestamp(T);
        assert_eq!(t.seconds_until(t.plus_seconds(90)), 90);
        assert_eq!(t.plus_seconds(90).seconds_until(t), -90);
        assert_eq!(t.plus_seconds(u64::MAX).epoch_ms(), MAX_MS);
    }
}
