//! AWS failures, classified by what the handler should do about them.
//!
//! Owns [`AwsError`] and the pure classification of an AWS error code and HTTP status into an
//! [`ErrorKind`]: transient (throttling, 5xx, timeouts, connection failures: retry), access
//! denied, not found, already exists (a deterministic name or key that is taken: the work was
//! done), or rejected (anything else: retrying the same request cannot help). Every adapter maps
//! its SDK errors through [`AwsError::from_sdk`], so the handlers decide on kinds, never on SDK
//! types. The SDK's own retry configuration has already retried transient failures by the time
//! an [`AwsError`] exists; a transient one here means "still failing, let the event be retried".

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What kind of failure an AWS call ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Throttling, a 5xx, a timeout or a connection failure: the same call may succeed later.
    Transient,
    /// The caller's IAM role may not do this (or, for a tag-conditioned grant, the resource
    /// is not opted in).
    AccessDenied,
    /// The resource does not exist.
    NotFound,
    /// The resource already exists (CreateTrainingJob's `ResourceInUse`, S3's 412 on an
    /// `If-None-Match: *` write).
    AlreadyExists,
    /// Any other refusal (validation, quota, bad configuration): the same call fails again.
    Rejected,
}

/// A failed AWS call: which operation, what kind of failure, and AWS's own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({kind:?}): {message}")]
pub struct AwsError {
    /// The API operation, e.g. `DescribeTrainingJob`.
    pub operation: &'static str,
    /// What the handler should do about it.
    pub kind: ErrorKind,
    /// The error code and message as AWS or the SDK reported them.
    pub message: String,
}

impl AwsError {
    /// An error of `kind` for `operation` (fakes and adapters' own checks use this).
    pub fn new(operation: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        AwsError {
            operation,
            kind,
            message: message.into(),
        }
    }

    /// Classifies an SDK error. All service crates share these `SdkError`/`HttpResponse` types.
    pub fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let kind = match &err {
            SdkError::ConstructionFailure(_) => ErrorKind::Rejected,
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
            // A response that could not be read (truncated, garbled) is worth another try.
            SdkError::ResponseError(_) => ErrorKind::Transient,
            SdkError::ServiceError(service) => classify(
                service.err().code(),
                service.err().message(),
                Some(service.raw().status().as_u16()),
            ),
            _ => ErrorKind::Transient,
        };
        let message = match err.as_service_error() {
            Some(e) => format!(
                "{}: {}",
                e.code().unwrap_or("(no code)"),
                e.message().unwrap_or("(no message)")
            ),
            None => aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
        };
        AwsError {
            operation,
            kind,
            message,
        }
    }

    /// True for [`ErrorKind::Transient`].
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Error codes that mean "try again later" across S3, SageMaker, EventBridge and EC2.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    // S3: a conditional write raced another write to the same key.
    "ConditionalRequestConflict",
    // Credentials expired mid-invocation; the provider refreshes them on the next try.
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
];

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthorizationError",
];

const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchKey",
    "NotFound",
    "ResourceNotFound",
    "ResourceNotFoundException",
    "InvalidInstanceID.NotFound",
];

const ALREADY_EXISTS_CODES: &[&str] = &["ResourceInUse", "PreconditionFailed"];

/// Classifies an AWS error from its code, message and HTTP status (pure; unit-tested).
///
/// SageMaker answers DescribeTrainingJob and ListTags for a missing job with a
/// `ValidationException` whose message says "not found", so that one is read from the message.
/// A HEAD response has no body, hence no code: its status alone decides (403, 404, 412).
pub fn classify(code: Option<&str>, message: Option<&str>, status: Option<u16>) -> ErrorKind {
    let code = code.unwrap_or("");
    let is = |codes: &[&str]| codes.contains(&code);
    if is(TRANSIENT_CODES) {
        return ErrorKind::Transient;
    }
    if is(ACCESS_DENIED_CODES) {
        return ErrorKind::AccessDenied;
    }
    if is(NOT_FOUND_CODES) {
        return ErrorKind::NotFound;
    }
    if is(ALREADY_EXISTS_CODES) {
        return ErrorKind::AlreadyExists;
    }
    if code == "ValidationException" {
        let message = message.unwrap_or("").to_ascii_lowercase();
        if message.contains("not found") || message.contains("does not exist") {
            return ErrorKind::NotFound;
        }
    }
    match status {
        Some(429) => ErrorKind::Transient,
        Some(s) if s >= 500 => ErrorKind::Transient,
        Some(403) if code.is_empty() => ErrorKind::AccessDenied,
        Some(404) if code.is_empty() => ErrorKind::NotFound,
        Some(412) if code.is_empty() => ErrorKind::AlreadyExists,
        _ => ErrorKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<u16>, ErrorKind);
        let cases: &[Case] = &[
            (
                Some("ThrottlingException"),
                None,
                Some(400),
                ErrorKind::Transient,
            ),
            (Some("SlowDown"), None, Some(503), ErrorKind::Transient),
            (None, None, Some(500), ErrorKind::Transient),
            (None, None, Some(429), ErrorKind::Transient),
            (
                Some("ConditionalRequestConflict"),
                None,
                Some(409),
                ErrorKind::Transient,
            ),
            (
                Some("AccessDeniedException"),
                None,
                Some(400),
                ErrorKind::AccessDenied,
            ),
            (
                Some("AccessDenied"),
                None,
                Some(403),
                ErrorKind::AccessDenied,
            ),
            (None, None, Some(403), ErrorKind::AccessDenied),
            (None, None, Some(404), ErrorKind::NotFound),
            (Some("NoSuchKey"), None, Some(404), ErrorKind::NotFound),
            (
                Some("ValidationException"),
                Some("Requested resource not found."),
                Some(400),
                ErrorKind::NotFound,
            ),
            (
                Some("ValidationException"),
                Some("1 validation error detected"),
                Some(400),
                ErrorKind::Rejected,
            ),
            (
                Some("ResourceInUse"),
                None,
                Some(400),
                ErrorKind::AlreadyExists,
            ),
            (
                Some("PreconditionFailed"),
                None,
                Some(412),
                ErrorKind::AlreadyExists,
            ),
            (None, None, Some(412), ErrorKind::AlreadyExists),
            (
                Some("ResourceLimitExceeded"),
                None,
                Some(400),
                ErrorKind::Rejected,
            ),
            (Some("NoSuchBucket"), None, Some(404), ErrorKind::Rejected),
        ];
        for (code, message, status, want) in cases {
            assert_eq!(
                classify(*code, *message, *status),
                *want,
                "{code:?} {status:?}"
            );
        }
    }
}
