//! The local SageMaker service (`spotcheck-local`) on loopback, for the SageMaker behaviour
//! moto lacks: `ResourceInUse` on a duplicate name, jobs that are interrupted, wait for spot
//! capacity and end Stopped/MaxWaitTimeExceeded, Stopped/Stopped or Failed, and
//! `TrainingTimeInSeconds`/`BillableTimeInSeconds`.
//!
//! Owns starting a [`TrainingService`] with its SageMaker JSON endpoint
//! ([`SageMakerServer`]), its S3 (checkpoint sync, model upload) in LocalStack, a spot market
//! given as a trace of outages, simulated time running [`Options::time_scale`] times faster
//! than the wall clock with idle waits skipped, and one training "image": a shell script
//! ([`train_script`]) whose behaviour the job's `Environment` chooses, so a relaunch (which
//! copies the environment) behaves as its parent would on the same instance type.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use spotcheck_control::Timestamp;
use spotcheck_local::clock::SimClock;
use spotcheck_local::market::{MarketConfig, Trace, TraceOutage};
use spotcheck_local::server::SageMakerServer;
use spotcheck_local::service::{JobView, ServiceConfig, TrainingService};

use crate::emulators::REGION;

/// Environment variable of a job: a shell `case` pattern of the instance types on which the
/// training script completes (after [`COMPLETE_AFTER`]); on any other type it runs until
/// killed, ignoring SIGTERM (so an interrupted or stopping job stays in that state for the
/// whole grace period). Unset: it completes everywhere.
pub const COMPLETE_ON: &str = "SPOTCHECK_TEST_COMPLETE_ON";

/// Environment variable of a job: when set, the training script writes `/opt/ml/output/failure`
/// and exits with this code at once (an algorithm error).
pub const EXIT_WITH: &str = "SPOTCHECK_TEST_EXIT";

/// Wall time the script trains before completing.
pub const COMPLETE_AFTER: &str = "0.3";

/// The training script, written once per test process (never rewritten: writing an
/// executable while other threads spawn processes risks ETXTBSY).
pub fn train_script() -> PathBuf {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("spotcheck-replay-image-")
                .tempdir()
                .expect("a temporary directory")
                .keep();
            let path = dir.join("train.sh");
            let script = format!(
                "#!/bin/sh\n\
                 # spotcheck replay tests: a training image that completes on the instance types\n\
                 # matching ${COMPLETE_ON} and otherwise runs until killed.\n\
                 if [ -n \"${EXIT_WITH}\" ]; then\n\
                   echo \"replay test failure (exit ${EXIT_WITH})\" > \"$SPOTCHECK_OPT_ML/output/failure\"\n\
                   exit \"${EXIT_WITH}\"\n\
                 fi\n\
                 case \"$SM_CURRENT_INSTANCE_TYPE\" in\n\
                   ${{{COMPLETE_ON}:-*}}) sleep {COMPLETE_AFTER}; echo done > \"$SM_MODEL_DIR/model.txt\"; exit 0 ;;\n\
                 esac\n\
                 trap '' TERM\n\
                 while :; do sleep 0.05; done\n"
            );
            std::fs::write(&path, script).expect("writing the training script");
            set_executable(&path);
            path
        })
        .clone()
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path)
        .expect("script metadata")
        .permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).expect("chmod the script");
}

/// How to run the service.
#[derive(Clone, Debug)]
pub struct Options {
    /// Simulated seconds per wall second.
    pub time_scale: f64,
    /// Spot outages: (instance type, start, duration), simulated seconds after the start.
    pub outages: Vec<(String, f64, f64)>,
    /// Subscribe to the state-change events as a tracked subscriber (every event must then be
    /// acknowledged with [`LocalSageMaker::ack`]; time is not fast-forwarded past an event not
    /// yet acknowledged).
    pub tracked_events: bool,
    /// Simulated seconds between SIGTERM and SIGKILL (SageMaker: 120). The training script
    /// ignores SIGTERM, so an interrupted or stopping job stays so this long.
    pub grace_seconds: f64,
    /// Whether the outages warn the training process (SIGTERM, then the grace period) or kill
    /// it at once.
    pub warned_reclaims: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_scale: 100.0,
            outages: Vec::new(),
            tracked_events: false,
            grace_seconds: 120.0,
            warned_reclaims: true,
        }
    }
}

/// A running local SageMaker service.
pub struct LocalSageMaker {
    /// The service.
    pub service: TrainingService,
    /// Its SageMaker endpoint.
    pub server: SageMakerServer,
    events: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Value>>,
    tracked: bool,
    _workdir: tempfile::TempDir,
}

impl LocalSageMaker {
    /// Starts the service with S3 at `s3_endpoint` (LocalStack).
    pub async fn start(s3_endpoint: &str, options: Options) -> LocalSageMaker {
        let workdir = tempfile::Builder::new()
            .prefix("spotcheck-replay-sagemaker-")
            .tempdir()
            .expect("a work directory");
        let mut config = ServiceConfig::new(workdir.path().to_owned(), train_script());
        config.time_scale = options.time_scale;
        config.fast_forward = true;
        config.grace_seconds = options.grace_seconds;
        config.sync_interval = Duration::from_millis(100);
        config.market = MarketConfig {
            trace: Some(Trace {
                outages: options
                    .outages
                    .iter()
                    .map(|(t, at, len)| TraceOutage {
                        at_seconds: *at,
                        duration_seconds: *len,
                        instance_type: Some(t.clone()),
                        warning: Some(options.warned_reclaims),
                    })
                    .collect(),
            }),
            ..MarketConfig::default()
        };
        let clock = Arc::new(SimClock::starting_now(options.time_scale));
        let s3 = spotcheck_local::s3::s3_client(s3_endpoint, REGION);
        let service = TrainingService::new(config, clock, s3);
        let events = service.subscribe(options.tracked_events);
        let server = SageMakerServer::start(service.clone(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("starting the local SageMaker endpoint");
        LocalSageMaker {
            service,
            server,
            events: tokio::sync::Mutex::new(events),
            tracked: options.tracked_events,
            _workdir: workdir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The service's simulated now, as the handler's decision time.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_epoch_ms(self.service.clock().now_ms()).expect("a valid clock")
    }

    /// The next state-change event (of any job), or `None` after `timeout`. With tracked
    /// events, call [`LocalSageMaker::ack`] once it is handled.
    pub async fn next_event(&self, timeout: Duration) -> Option<Value> {
        let mut rx = self.events.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Acknowledges one tracked event.
    pub fn ack(&self) {
        if self.tracked {
            self.service.ack();
        }
    }

    /// Skips events until one for `job` with this status/secondary status arrives
    /// (acknowledging the skipped ones); panics after `timeout`.
    pub async fn event_for(
        &self,
        job: &str,
        status: &str,
        secondary: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_event(left).await else {
                panic!(
                    "no {status}/{secondary} event for {job} within {timeout:?}; jobs: {}",
                    self.summary()
                );
            };
            let d = &event["detail"];
            if d["TrainingJobName"] == job
                && d["TrainingJobStatus"] == status
                && d["SecondaryStatus"] == secondary
            {
                return event;
            }
            self.ack();
        }
    }

    /// Waits until `job` has this status; panics after `timeout`.
    pub async fn wait_status(&self, job: &str, status: &str, timeout: Duration) -> JobView {
        let ok = self
            .service
            .wait_until(timeout, |jobs| {
                jobs.iter()
                    .any(|j| j.name == job && j.state.status == status)
            })
            .await;
        assert!(
            ok,
            "{job} did not reach {status} within {timeout:?}; jobs: {}",
            self.summary()
        );
        self.job(job).expect("the job exists")
    }

    /// A job's view.
    pub fn job(&self, name: &str) -> Option<JobView> {
        self.service.jobs().into_iter().find(|j| j.name == name)
    }

    /// Every job's name and state, for failure messages.
    pub fn summary(&self) -> String {
        self.service
            .jobs()
            .iter()
            .map(|j| format!("{} {}/{}", j.name, j.state.status, j.state.secondary))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Creates a job through the service's API (as a user would with CreateTrainingJob).
    pub fn create(&self, request: &Value) -> String {
        self.service
            .call("CreateTrainingJob", request)
            .unwrap_or_else(|e| panic!("CreateTrainingJob: {e:?}"))["TrainingJobArn"]
            .as_str()
            .expect("an ARN")
            .to_owned()
    }
}

/// A CreateTrainingJob request of an opted-in job, in the shape users send: `image` is the
/// training image (any name runs [`train_script`]).
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// TrainingJobName.
    pub name: String,
    /// ResourceConfig.InstanceType.
    pub instance_type: String,
    /// Managed spot (with MaxWaitTimeInSeconds `max_wait`).
    pub spot: bool,
    /// StoppingCondition.MaxRuntimeInSeconds.
    pub max_runtime: u64,
    /// StoppingCondition.MaxWaitTimeInSeconds (spot only).
    pub max_wait: u64,
    /// CheckpointConfig.S3Uri.
    pub checkpoint_uri: Option<String>,
    /// OutputDataConfig.S3OutputPath.
    pub output_path: String,
    /// Tags besides `spotcheck:enabled=true`.
    pub tags: Vec<(String, String)>,
    /// Whether to tag `spotcheck:enabled=true`.
    pub opted_in: bool,
    /// [`COMPLETE_ON`]: where the script completes.
    pub complete_on: String,
    /// [`EXIT_WITH`]: fail at once with this exit code.
    pub exit_with: Option<i32>,
}

impl JobRequest {
    /// A spot job on `instance_type` that completes everywhere.
    pub fn spot(name: &str, instance_type: &str, output_bucket: &str) -> JobRequest {
        JobRequest {
            name: name.to_owned(),
            instance_type: instance_type.to_owned(),
            spot: true,
            max_runtime: 3600,
            max_wait: 7200,
            checkpoint_uri: None,
            output_path: format!("s3://{output_bucket}/models"),
            tags: Vec::new(),
            opted_in: true,
            complete_on: "*".into(),
            exit_with: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut tags: Vec<Value> = Vec::new();
        if self.opted_in {
            tags.push(json!({"Key": "spotcheck:enabled", "Value": "true"}));
        }
        tags.extend(self.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})));
        let mut stopping = json!({"MaxRuntimeInSeconds": self.max_runtime});
        if self.spot {
            stopping["MaxWaitTimeInSeconds"] = json!(self.max_wait);
        }
        let mut body = json!({
            "TrainingJobName": self.name,
            "AlgorithmSpecification": {
                "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotcheck-trainer:replay",
                "TrainingInputMode": "File"
            },
            "RoleArn": "arn:aws:iam::000000000000:role/SageMakerTrainingRole",
            "HyperParameters": {"epochs": "3", "batch_size": "32"},
            "OutputDataConfig": {"S3OutputPath": self.output_path},
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": self.spot,
            "Environment": {COMPLETE_ON: self.complete_on},
            "Tags": tags,
        });
        if let Some(code) = self.exit_with {
            body["Environment"][EXIT_WITH] = json!(code.to_string());
        }
        if let Some(uri) = &self.checkpoint_uri {
            body["CheckpointConfig"] = json!({"S3Uri": uri, "LocalPath": "/opt/ml/checkpoints"});
        }
        body
    }
}
