//! The event-replay suite: spotcheck's control plane against emulated AWS over HTTP.
//!
//! One test binary (one link of the SDKs); each module is one concern. Which emulator serves
//! which assertion (details in `docs/replay-tests.md`):
//!
//! | module | asserts | served by |
//! |---|---|---|
//! | [`routing`] | each fixture (and held-out events) is routed by the rule patterns of `infra/template.yaml` to the right function or to none: TestEventPattern, and PutEvents delivered to SQS taps | LocalStack EventBridge + SQS |
//! | [`handlers`] | `SageMakerHandler` on real job lifecycles: relaunch configuration and lineage tags, ledger records and lineage summary, spotcheck's events, nothing done twice on replay | local SageMaker service (jobs, states, `ResourceInUse`, billable seconds), LocalStack S3 (checkpoints, ledger), EventBridge → SQS (delivery and spotcheck's events) |
//! | [`handlers`] (`moto_…`) | the tag gate and Describe against a second SageMaker implementation; moto's gaps | moto server |
//! | [`ec2`] | `Ec2Handler` for instances launched with a run's tags: DescribeTags maps them to the run, the checkpoints are validated, the continuation is created once from the S3 request template (managed spot, same checkpoint URI, resume step), the give-up policy without a checkpoint, records and announcements | LocalStack EC2 (instances, tags), S3 (checkpoints, template, ledger), EventBridge → SQS; local SageMaker service (the continuation, `ResourceInUse`) |
//! | [`checkpoints`] | checkpoints written by the real trainer to S3 are judged valid, torn and corrupted variants as such, with no data-object GET | LocalStack S3, the `train` binary |
//! | [`pytorch`] | a checkpoint written by the Python package from a real PyTorch run is judged valid in S3, with no data-object GET | LocalStack S3, `.venv-torch` (scripts/python-tests.sh) |
//! | [`mirror`] | the trainer's own S3 mirror under faults: a hung upload does not hold the final checkpoint back on a stop; a failed download leaves no checkpoint behind, and the next start still resumes from the newest one in S3 | fault proxy in front of LocalStack S3, the `train` binary |
//! | [`faults`] | throttling, 5xx and hangs are retried by the SDK (counted), persistent ones end in a transient `Err`, redelivery completes the action exactly once | fault proxy in front of LocalStack and the local SageMaker service |
//! | [`lambda_runtime`] | the real `sagemaker-events` binary in the Lambda runtime loop: responses, error reports with `errorType` | cargo-lambda's runtime API emulator |
//! | [`redrive`] | `spotcheck redrive`: dead-letter messages of every shape invoked into the real function, deleted only when it handled them, refusals and transient failures kept and completed by a second run, nothing done twice | LocalStack SQS (the DLQ), cargo-lambda's Invoke endpoint, local SageMaker service behind the fault proxy, LocalStack S3 and EventBridge |
//! | [`report`] | `spotcheck report`'s reader over ledgers the handler wrote: a real lineage's figures and counterfactual against what the service ran; 20 000 records read page by page with bounded reads; older and odd objects read or skipped with counts | local SageMaker service, LocalStack S3, the local service's embedded S3 |
//!
//! Every test needs the emulators (`scripts/test-all.sh` starts them) and fails, saying so,
//! without them.

mod checkpoints;
mod ec2;
mod faults;
mod handlers;
mod lambda_runtime;
mod mirror;
mod pytorch;
mod redrive;
mod report;
mod routing;
