//! The SQS and Lambda adapters: [`SqsQueue`] and [`LambdaFunction`], thin wrappers of
//! aws-sdk-sqs and aws-sdk-lambda behind [`DeadLetterQueue`] and [`Function`].
//!
//! Owns the SDK calls and their settings, nothing else: ReceiveMessage (one message, a 1 s
//! long poll, all message attributes), DeleteMessage, ChangeMessageVisibility (to 0),
//! GetQueueAttributes (the two approximate counts), and Lambda Invoke (`RequestResponse`).
//! Endpoints come from the standard variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`,
//! `AWS_ENDPOINT_URL_LAMBDA`), region and credentials from the usual chain.
//!
//! Why a 1 s long poll rather than none: a short poll (0 s) asks a sample of SQS's servers
//! and may answer "empty" while messages exist — AWS says to repeat it — and the redrive stops
//! on an empty answer. A long poll asks all of them and returns as soon as one message is
//! there, so only the final, empty receive waits its second.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::run::{ApiError, DeadLetterQueue, Depth, Function, Received};
use crate::verdict::Invoked;

/// Seconds ReceiveMessage waits for a message (see the module doc).
pub const RECEIVE_WAIT_SECONDS: i32 = 1;

/// Attempts per call, the first included (the SDK's standard mode: throttling, 5xx and
/// connection errors retried with backoff).
pub const MAX_ATTEMPTS: u32 = 3;

/// How long one Invoke attempt may take: Lambda's maximum function timeout plus a margin.
pub const INVOKE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(910);

/// Loads the configuration from the environment (region, credentials, endpoint overrides)
/// with the redrive's retry settings and a 3 s connect timeout.
pub async fn load_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

fn api_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = match err.as_service_error() {
        Some(e) => format!(
            "{}: {}",
            e.code().unwrap_or("(no code)"),
            e.message().unwrap_or("(no message)")
        ),
        None => DisplayErrorContext(&err).to_string(),
    };
    ApiError { operation, message }
}

/// A dead-letter queue, by URL.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url` (as the stack's `…DlqUrl` output gives it).
    pub fn new(config: &SdkConfig, url: &str) -> Self {
        SqsQueue {
            client: aws_sdk_sqs::Client::new(config),
            url: url.to_owned(),
        }
    }
}

impl DeadLetterQueue for SqsQueue {
    async fn receive(&self, visibility_timeout: Duration) -> Result<Option<Received>, ApiError> {
        let visibility = i32::try_from(visibility_timeout.as_secs()).unwrap_or(i32::MAX);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(1)
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .visibility_timeout(visibility)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| api_error("ReceiveMessage", e))?;
        let Some(message) = out.messages.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let missing = |what: &str| ApiError {
            operation: "ReceiveMessage",
            message: format!("SQS answered a message without {what}"),
        };
        let attributes: BTreeMap<String, String> = message
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
            .collect();
        Ok(Some(Received {
            message_id: message.message_id.ok_or_else(|| missing("a message id"))?,
            receipt_handle: message
                .receipt_handle
                .ok_or_else(|| missing("a receipt handle"))?,
            body: message.body.unwrap_or_default(),
            attributes,
        }))
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), ApiError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| api_error("DeleteMessage", e))?;
        Ok(())
    }

    async fn release(&self, receipt_handle: &str) -> Result<(), ApiError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Its visibility timeout ran out already: it is visible, which is all we want.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_message_not_inflight()) =>
            {
                Ok(())
            }
            Err(e) => Err(api_error("ChangeMessageVisibility", e)),
        }
    }

    async fn depth(&self) -> Result<Depth, ApiError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| api_error("GetQueueAttributes", e))?;
        let attributes = out.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| -> Result<u64, ApiError> {
            let text = attributes.get(&name).ok_or_else(|| ApiError {
                operation: "GetQueueAttributes",
                message: format!("no {} in the answer", name.as_str()),
            })?;
            text.parse().map_err(|_| ApiError {
                operation: "GetQueueAttributes",
                message: format!("{} is not a count: {text:?}", name.as_str()),
            })
        };
        Ok(Depth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages)?,
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        })
    }
}

/// A Lambda function, by name or ARN.
#[derive(Clone, Debug)]
pub struct LambdaFunction {
    client: aws_sdk_lambda::Client,
    name: String,
}

impl LambdaFunction {
    /// The function `name` (a name, an ARN or a partial ARN, as Invoke takes it). Its attempts
    /// may take [`INVOKE_ATTEMPT_TIMEOUT`], whatever `config` says.
    pub fn new(config: &SdkConfig, name: &str) -> Self {
        let timeouts = config
            .timeout_config()
            .cloned()
            .unwrap_or_else(TimeoutConfig::disabled)
            .to_builder()
            .operation_attempt_timeout(INVOKE_ATTEMPT_TIMEOUT)
            .build();
        let conf = aws_sdk_lambda::config::Builder::from(config)
            .timeout_config(timeouts)
            .build();
        LambdaFunction {
            client: aws_sdk_lambda::Client::from_conf(conf),
            name: name.to_owned(),
        }
    }
}

impl Function for LambdaFunction {
    async fn invoke(&self, payload: Vec<u8>) -> Result<Invoked, ApiError> {
        let out = self
            .client
            .invoke()
            .function_name(&self.name)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| api_error("Invoke", e))?;
        Ok(Invoked {
            status: out.status_code(),
            function_error: out.function_error().map(str::to_owned),
            payload: out
                .payload()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
        })
    }
}
