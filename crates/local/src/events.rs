//! "SageMaker Training Job State Change" events in the real EventBridge shape.
//!
//! Owns [`state_change_event`]: from a DescribeTrainingJob answer to the event SageMaker
//! publishes — the envelope (`version`, `id`, `detail-type`, `source`, `account`, `time`,
//! `region`, `resources`) and a `detail` carrying most of Describe. Like the real service it
//! leaves out what the AWS notes say events do not reliably carry (`BillableTimeInSeconds`,
//! `TrainingTimeInSeconds`, `CheckpointConfig`, `EnableManagedSpotTraining`,
//! `MaxWaitTimeInSeconds`), so consumers must call DescribeTrainingJob as they must in AWS.
//! Times in the detail are epoch milliseconds (the documented example's shape); `Tags` is a
//! map. Pure.

use serde_json::{json, Map, Value};
use spotcheck_control::events::{SOURCE_SAGEMAKER, TRAINING_JOB_STATE_CHANGE};
use spotcheck_control::Timestamp;

use crate::clock::EpochMs;

/// Fields of Describe that the event does not carry.
const LEFT_OUT: [&str; 4] = [
    "BillableTimeInSeconds",
    "TrainingTimeInSeconds",
    "CheckpointConfig",
    "EnableManagedSpotTraining",
];

/// Describe fields that are timestamps (seconds there, milliseconds in the event).
const TIMES: [&str; 5] = [
    "CreationTime",
    "TrainingStartTime",
    "TrainingEndTime",
    "LastModifiedTime",
    "ProfilingStatus",
];

fn ms(v: &Value) -> Value {
    v.as_f64()
        .map_or(v.clone(), |s| json!((s * 1000.0).round() as i64))
}

/// The event for a job's current Describe output (see the module doc).
pub fn state_change_event(
    describe: &Value,
    tags: &[(String, String)],
    id: &str,
    time: EpochMs,
    region: &str,
    account: &str,
) -> Value {
    let mut detail: Map<String, Value> = describe.as_object().cloned().unwrap_or_default();
    for k in LEFT_OUT {
        detail.remove(k);
    }
    if let Some(sc) = detail
        .get_mut("StoppingCondition")
        .and_then(Value::as_object_mut)
    {
        sc.remove("MaxWaitTimeInSeconds");
    }
    for k in TIMES {
        if let Some(v) = detail.get_mut(k) {
            *v = ms(v);
        }
    }
    if let Some(Value::Array(ts)) = detail.get_mut("SecondaryStatusTransitions") {
        for t in ts.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["StartTime", "EndTime"] {
                if let Some(v) = t.get_mut(k) {
                    *v = ms(v);
                }
            }
        }
    }
    detail.insert(
        "Tags".into(),
        Value::Object(tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
    );
    let arn = describe
        .get("TrainingJobArn")
        .cloned()
        .unwrap_or(Value::Null);
    let time = Timestamp::from_epoch_ms(time)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    json!({
        "version": "0",
        "id": id,
        "detail-type": TRAINING_JOB_STATE_CHANGE,
        "source": SOURCE_SAGEMAKER,
        "account": account,
        "time": time,
        "region": region,
        "resources": [arn],
        "detail": detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotcheck_control::events::{parse_event, Parsed, Signal};

    #[test]
    fn the_event_parses_as_the_control_plane_expects() {
        let describe = json!({
            "TrainingJobName": "j", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:0:training-job/j",
            "TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxWaitTimeExceeded",
            "CreationTime": 1700000000.5, "BillableTimeInSeconds": 3, "EnableManagedSpotTraining": true,
            "StoppingCondition": {"MaxRuntimeInSeconds": 10, "MaxWaitTimeInSeconds": 20},
            "SecondaryStatusTransitions": [{"Status": "Starting", "StartTime": 1700000000.5, "StatusMessage": "m"}],
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}
        });
        let e = state_change_event(
            &describe,
            &[("spotcheck:enabled".into(), "true".into())],
            "id-1",
            1_700_000_001_000,
            "us-east-1",
            "000000000000",
        );
        assert_eq!(e["detail"]["CreationTime"], json!(1_700_000_000_500i64));
        assert!(e["detail"].get("BillableTimeInSeconds").is_none());
        assert!(e["detail"]["StoppingCondition"]
            .get("MaxWaitTimeInSeconds")
            .is_none());
        assert_eq!(e["detail"]["Tags"]["spotcheck:enabled"], "true");
        let Parsed::Relevant(parsed) = parse_event(&serde_json::to_vec(&e).unwrap()).unwrap()
        else {
            panic!("relevant");
        };
        let Signal::TrainingJobStateChange { job } = parsed.signal else {
            panic!("state change");
        };
        assert_eq!(job.name, "j");
        assert_eq!(job.tags.get("spotcheck:enabled"), Some("true"));
    }
}
