//! How bake reads AWS's answers: the service's own message (never a `Debug` dump), its error
//! code, and whether it says "not now" (throttling, 5xx, timeouts) rather than "no".

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::sdk::chain;

/// Codes for credentials that expired (EC2 and STS, then the JSON protocols' spelling).
const EXPIRED_CODES: &[&str] = &["ExpiredToken", "ExpiredTokenException"];
/// What an expired-credentials answer means for the run.
const EXPIRED: &str = "the AWS credentials expired during the run and cannot be refreshed: \
    whatever this run created and could not remove is tagged with its bake:run-id; get new \
    credentials and run `bake gc` to delete it";

/// Codes for a request IAM refused (EC2, the query services and S3, the JSON services).
const DENIED_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];

/// What a refused call needs, named from the operation bake was calling (its error type names
/// it): "the call needs IAM permission ec2:RunInstances (with ec2:CreateTags, iam:PassRole)".
fn denied(error_type: &str) -> String {
    match crate::iam::needed_by(error_type) {
        [] => "the credentials lack the IAM permission for this call; `bake iam-policy` prints \
               the policy bake needs"
            .to_owned(),
        [own] => {
            format!("the call needs IAM permission {own}; `bake iam-policy` prints the policy")
        }
        [own, implied @ ..] => format!(
            "the call needs IAM permission {own}, and with it {} for what it implies (tags on \
             create, a role passed); `bake iam-policy` prints the policy",
            implied.join(", ")
        ),
    }
}

/// The service's message for an SDK error, including its code (`InvalidParameterValue: ...`); for
/// a request that got no answer, which service at which endpoint and what to check. Never a Rust
/// `Debug` dump.
pub fn describe<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_ec2::error::SdkError;
    if let SdkError::ServiceError(service) = err {
        let e = service.err();
        let described = match (e.code(), e.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => chain(err),
        };
        return match e.code() {
            Some(code) if EXPIRED_CODES.contains(&code) => format!("{described} ({EXPIRED})"),
            Some(code) if DENIED_CODES.contains(&code) => {
                format!("{described} ({})", denied(std::any::type_name::<E>()))
            }
            _ => described,
        };
    }
    // A request that got no answer (see `sdk`'s HTTP client) describes itself in one paragraph.
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(unreachable) = e.downcast_ref::<super::sdk::Unreachable>() {
            return unreachable.to_string();
        }
        next = e.source();
    }
    chain(err)
}

/// The error code of an SDK error, when the service sent one.
pub fn code<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(aws_sdk_ec2::error::ProvideErrorMetadata::code)
}

/// Error codes AWS services use for throttling; the SDK's standard retry classifier knows the
/// same list. A throttle inside a wait means "look again later", never "failed".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Error codes AWS services use for a failure on their side that a later call may not meet.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "Unavailable",
];

/// True when the error says "not now" rather than "no": throttling, a 5xx answer, or a request
/// that timed out. The SDK already retried it; a caller with a deadline of its own (a wait, a
/// cleanup) should look again later instead of failing.
pub fn transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(failure) => failure.is_timeout(),
        SdkError::ResponseError(response) => response.raw().status().is_server_error(),
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || service
                    .err()
                    .code()
                    .is_some_and(|c| THROTTLING_CODES.contains(&c) || TRANSIENT_CODES.contains(&c))
        }
        _ => false,
    }
}
