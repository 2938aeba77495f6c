//! Everything wired together on loopback: the embedded S3 (or a given S3 endpoint), the
//! training service and its SageMaker endpoint, and — when a policy is given — the control
//! plane behind the in-process bus (optionally mirrored to an EventBridge endpoint).
//!
//! Owns start-up order and the clients that talk to the stack ([`Stack::sagemaker_client`],
//! [`Stack::s3_client`]). `spotcheck local serve`, the demo and the tests all start a [`Stack`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::Region;
use spotcheck_control::Policy;

use crate::clock::SimClock;
use crate::control::{run_bus, ControlPlane, Delivery, LEDGER_BUCKET};
use crate::pattern::{rules_from_template, Rule, TemplateError};
use crate::s3::{ensure_bucket, local_credentials, s3_client, EmbeddedS3, S3Error};
use crate::server::SageMakerServer;
use crate::service::{ServiceConfig, TrainingService};

/// The infra template whose EventBridge rules the bus applies.
pub const INFRA_TEMPLATE: &str = include_str!("../../../infra/template.yaml");

/// How to start a [`Stack`].
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The training service.
    pub service: ServiceConfig,
    /// Address of the SageMaker endpoint (port 0: any).
    pub sagemaker_addr: SocketAddr,
    /// Address of the embedded S3 (port 0: any); ignored with `s3_endpoint`.
    pub s3_addr: SocketAddr,
    /// Use this S3 endpoint instead of the embedded one (it must accept the local
    /// credentials `test`/`test`, as LocalStack does).
    pub s3_endpoint: Option<String>,
    /// Root of the embedded S3's files (default `<workdir>/s3`).
    pub s3_root: Option<PathBuf>,
    /// Run the control plane with this base policy.
    pub control_plane: Option<Policy>,
    /// Also send every state-change event to this EventBridge endpoint (PutEvents).
    pub eventbridge_endpoint: Option<String>,
    /// Print the control plane's decision lines to stderr.
    pub echo_decisions: bool,
    /// Buckets to create at start.
    pub buckets: Vec<String>,
}

impl StackConfig {
    /// Loopback, any ports, embedded S3, no control plane.
    pub fn new(service: ServiceConfig) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        StackConfig {
            service,
            sagemaker_addr: any,
            s3_addr: any,
            s3_endpoint: None,
            s3_root: None,
            control_plane: None,
            eventbridge_endpoint: None,
            echo_decisions: false,
            buckets: Vec::new(),
        }
    }
}

/// Why the stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The embedded S3 failed.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The SageMaker endpoint could not listen.
    #[error("SageMaker endpoint cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A bucket could not be created.
    #[error("{0}")]
    Bucket(String),
    /// The template's rules could not be read.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The work directory is unusable.
    #[error("work directory {path}: {source}")]
    Workdir {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running stack.
pub struct Stack {
    /// The training service.
    pub service: TrainingService,
    /// The SageMaker endpoint.
    pub sagemaker: SageMakerServer,
    /// The embedded S3, unless an endpoint was given.
    pub s3: Option<EmbeddedS3>,
    /// The S3 endpoint in use.
    pub s3_endpoint: String,
    /// The control plane, when running.
    pub control: Option<Arc<ControlPlane>>,
    /// The bus's rules.
    pub rules: Vec<Rule>,
    /// Every delivery so far.
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    region: String,
    _stop_bus: tokio::sync::oneshot::Sender<()>,
}

impl Stack {
    /// Starts everything; `observe` sees every delivery as it happens.
    pub async fn start(
        config: StackConfig,
        observe: impl FnMut(&Delivery) + Send + 'static,
    ) -> Result<Stack, StackError> {
        let workdir = config.service.workdir.clone();
        std::fs::create_dir_all(&workdir).map_err(|source| StackError::Workdir {
            path: workdir.clone(),
            source,
        })?;
        let region = config.service.region.clone();
        let (s3, s3_endpoint) = match &config.s3_endpoint {
            Some(e) => (None, e.clone()),
            None => {
                let root = config.s3_root.clone().unwrap_or_else(|| workdir.join("s3"));
                let s3 = EmbeddedS3::start(&root, config.s3_addr).await?;
                let endpoint = s3.endpoint();
                (Some(s3), endpoint)
            }
        };
        let s3_sdk = s3_client(&s3_endpoint, &region);
        let mut buckets = config.buckets.clone();
        if config.control_plane.is_some() {
            buckets.push(LEDGER_BUCKET.into());
        }
        for b in &buckets {
            ensure_bucket(&s3_sdk, b)
                .await
                .map_err(StackError::Bucket)?;
        }
        let clock = Arc::new(SimClock::starting_now(config.service.time_scale));
        let service = TrainingService::new(config.service.clone(), clock, s3_sdk);
        let sagemaker = SageMakerServer::start(service.clone(), config.sagemaker_addr)
            .await
            .map_err(|source| StackError::Bind {
                addr: config.sagemaker_addr,
                source,
            })?;
        let rules = rules_from_template(INFRA_TEMPLATE, &config.service.account)?;
        let control = config.control_plane.clone().map(|policy| {
            Arc::new(ControlPlane::new(
                &sagemaker.endpoint(),
                &s3_endpoint,
                &region,
                policy,
                &config.service,
                config.echo_decisions,
            ))
        });
        let eventbridge = config.eventbridge_endpoint.as_ref().map(|e| {
            let conf = aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(Region::new(region.clone()))
                .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                    local_credentials(),
                ))
                .endpoint_url(e)
                .build();
            spotcheck_aws::EventBridgeSink::new(&conf)
        });
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let kept = deliveries.clone();
        let mut observe = observe;
        // The handler's futures are not provably `Send` (trait methods returning `impl
        // Future`), so the bus runs on a thread of its own with a current-thread runtime, as the
        // Lambda runtime does. Dropping the stack stops it.
        let (stop_bus, stopped) = tokio::sync::oneshot::channel::<()>();
        let bus_service = service.clone();
        let bus_rules = rules.clone();
        let bus_control = control.clone();
        let events = service.subscribe(true);
        std::thread::Builder::new()
            .name("spotcheck-bus".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = run_bus(bus_service, events, bus_rules, bus_control, eventbridge, move |d| {
                            observe(&d);
                            if let Ok(mut all) = kept.lock() {
                                all.push(d);
                            }
                        }) => {}
                    }
                });
            })
            .map_err(|source| StackError::Bind {
                addr: config.sagemaker_addr,
                source,
            })?;
        Ok(Stack {
            service,
            sagemaker,
            s3,
            s3_endpoint,
            control,
            rules,
            deliveries,
            region,
            _stop_bus: stop_bus,
        })
    }

    /// An SDK client for the local SageMaker endpoint.
    pub fn sagemaker_client(&self) -> aws_sdk_sagemaker::Client {
        let conf = aws_sdk_sagemaker::Config::builder()
            .behavior_version(aws_sdk_sagemaker::config::BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(local_credentials())
            .endpoint_url(self.sagemaker.endpoint())
            .build();
        aws_sdk_sagemaker::Client::from_conf(conf)
    }

    /// An SDK client for the S3 endpoint in use.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.s3_endpoint, &self.region)
    }
}
