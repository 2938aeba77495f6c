//! The spotcheck control plane, in-process: the same handler code the `sagemaker-events`
//! Lambda runs, fed by an in-process event bus that applies the infra template's rules.
//!
//! Owns [`ControlPlane`] (a `SageMakerHandler` whose SDK clients point at the local SageMaker
//! endpoint and the S3 endpoint: DescribeTrainingJob, ListTags, CreateTrainingJob, checkpoint
//! validation and the ledger all go over the wire, exactly as in AWS), the recording
//! [`EventSink`] and [`LogSink`] that keep spotcheck's own events and decision lines for
//! reports, and [`run_bus`], the delivery loop. Optionally the state-change events are also
//! sent to a real EventBridge endpoint (`PutEvents`, e.g. LocalStack).

use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::Region;
use serde_json::Value;
use spotcheck_aws::{
    EventBridgeSink, EventSink, Handled, HandlerConfig, LogSink, S3Checkpoints, S3Ledger,
    SageMakerHandler, SdkTrainingJobs,
};
use spotcheck_control::outputs::EventEntry;
use spotcheck_control::{Policy, Timestamp};

use crate::pattern::{matches, Rule};
use crate::s3::{local_credentials, s3_client};
use crate::service::TrainingService;

/// The function the template's SageMaker rule targets.
pub const SAGEMAKER_FUNCTION: &str = "SageMakerEventsFunction";

/// spotcheck's own events (relaunch planned, savings, give-up…), kept for reports.
#[derive(Clone, Default)]
pub struct RecordingSink {
    entries: Arc<Mutex<Vec<(String, Value)>>>,
}

impl RecordingSink {
    /// Every event published so far: (detail-type, detail).
    pub fn entries(&self) -> Vec<(String, Value)> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for RecordingSink {
    async fn publish(&self, entries: &[EventEntry]) -> Result<(), spotcheck_aws::AwsError> {
        if let Ok(mut all) = self.entries.lock() {
            for e in entries {
                let detail = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
                all.push((e.detail_type.to_owned(), detail));
            }
        }
        Ok(())
    }
}

/// The handler's decision lines (and EMF lines), kept; optionally echoed to stderr.
#[derive(Clone, Default)]
pub struct RecordingLog {
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl RecordingLog {
    /// A log that also prints each line to stderr when `echo`.
    pub fn new(echo: bool) -> Self {
        RecordingLog {
            lines: Arc::default(),
            echo,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl LogSink for RecordingLog {
    fn line(&self, line: &str) {
        if self.echo {
            use std::io::Write;
            // A closed terminal or pipe must not take the service down.
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line.to_owned());
        }
    }
}

/// The in-process control plane.
pub struct ControlPlane {
    handler: SageMakerHandler<SdkTrainingJobs, S3Checkpoints, S3Ledger, RecordingSink>,
    /// spotcheck's published events.
    pub events: RecordingSink,
    /// The decision lines.
    pub log: RecordingLog,
}

/// The ledger bucket the local control plane writes to.
pub const LEDGER_BUCKET: &str = "spotcheck-ledger";

impl ControlPlane {
    /// A control plane calling SageMaker at `sagemaker_endpoint` and S3 at `s3_endpoint`.
    pub fn new(
        sagemaker_endpoint: &str,
        s3_endpoint: &str,
        region: &str,
        policy: Policy,
        config: &crate::service::ServiceConfig,
        echo: bool,
    ) -> Self {
        let sm = aws_sdk_sagemaker::Config::builder()
            .behavior_version(aws_sdk_sagemaker::config::BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(local_credentials())
            .endpoint_url(sagemaker_endpoint)
            .build();
        let s3 = s3_client(s3_endpoint, region);
        let events = RecordingSink::default();
        let log = RecordingLog::new(echo);
        let mut handler_config = HandlerConfig::new(policy);
        handler_config.prices = config.on_demand_prices.clone();
        ControlPlane {
            handler: SageMakerHandler {
                jobs: SdkTrainingJobs::from_client(aws_sdk_sagemaker::Client::from_conf(sm)),
                checkpoints: S3Checkpoints::new(s3.clone()),
                ledger: S3Ledger::new(s3, LEDGER_BUCKET, "spotcheck/"),
                events: events.clone(),
                config: handler_config,
            },
            events,
            log,
        }
    }

    /// Handles one event as the Lambda would; `now` is the decision time.
    pub async fn handle(&self, event: &Value, now: Timestamp) -> Result<Handled, String> {
        let bytes = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        self.handler
            .handle(&bytes, now, &self.log)
            .await
            .map_err(|e| e.to_string())
    }
}

/// One delivery, as observers see it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event.
    pub event: Value,
    /// The rules it matched.
    pub rules: Vec<String>,
    /// What the handler did (when a rule targets it).
    pub handled: Option<Result<Handled, String>>,
}

/// Delivers every event of `rx` (a tracked subscription of `service`) to the targets of the matching
/// `rules` — the control plane for the SageMaker function — and, when given, to EventBridge;
/// each delivery is then passed to `observe`. Runs until the service is dropped.
pub async fn run_bus(
    service: TrainingService,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    rules: Vec<Rule>,
    control: Option<Arc<ControlPlane>>,
    eventbridge: Option<EventBridgeSink>,
    mut observe: impl FnMut(Delivery) + Send,
) {
    while let Some(event) = rx.recv().await {
        let matched: Vec<&Rule> = rules
            .iter()
            .filter(|r| matches(&r.pattern, &event))
            .collect();
        let mut handled = None;
        if let Some(cp) = &control {
            if matched
                .iter()
                .any(|r| r.targets.iter().any(|t| t == SAGEMAKER_FUNCTION))
            {
                let now = Timestamp::from_epoch_ms(service.clock().now_ms());
                handled = Some(match now {
                    Ok(now) => cp.handle(&event, now).await,
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        if let Some(eb) = &eventbridge {
            let entry = EventEntry {
                source: spotcheck_control::events::SOURCE_SAGEMAKER,
                detail_type: spotcheck_control::events::TRAINING_JOB_STATE_CHANGE,
                detail: event["detail"].to_string(),
                resources: event["resources"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            if let Err(e) = eb.publish(&[entry]).await {
                tracing::warn!(error = %e, "PutEvents to the EventBridge endpoint failed");
            }
        }
        observe(Delivery {
            rules: matched.iter().map(|r| r.name.clone()).collect(),
            event,
            handled,
        });
        service.ack();
    }
}
