//! The service clients (their config is `sdk.rs`'s), and how bake reads AWS's answers: what
//! failed, what is worth retrying, and the eventual-consistency windows AWS documents.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tokio::time::{Instant, sleep};

use crate::poll::Schedule;

/// The clients bake needs, sharing one SDK config.
#[derive(Clone, Debug)]
pub struct Clients {
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    /// The region the clients talk to, for messages.
    pub region: String,
}

/// Where to connect: `--profile`, `--region`, then the config's `region`; the endpoint comes from
/// the standard `AWS_ENDPOINT_URL` variables. [`crate::sdk`] builds the SDK config from it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub config_region: Option<String>,
    /// How long the command may run at worst: credentials the SDK cannot refresh that expire
    /// sooner get a warning at start.
    pub runs_for: Duration,
}

impl Clients {
    /// Loads the SDK config (profile, region, credentials, timeouts) and builds the clients.
    pub async fn load(target: &Target) -> Result<Clients, Error> {
        let sdk = crate::sdk::load(target).await?;
        Ok(Clients::from_sdk(&sdk))
    }

    /// Clients from an SDK config (tests pass one of their own).
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Clients {
        Clients {
            autoscaling: aws_sdk_autoscaling::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            region: sdk.region().map_or_else(String::new, ToString::to_string),
        }
    }
}

impl Clients {
    /// An SSM client like this one (credentials, retries, timeouts) for another region.
    pub fn ssm_in(&self, region: &str) -> aws_sdk_ssm::Client {
        let config = self
            .ssm
            .config()
            .to_builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// A failed call, described for the person reading the error.
    pub fn failed(&self, action: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError {
            action: action.into(),
            region: self.region.clone(),
            message: message.into(),
        }
    }
}

/// An AWS call that failed: what bake was doing, where, and what AWS answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} in {region}: {message}")]
pub struct CallError {
    pub action: String,
    pub region: String,
    pub message: String,
}

/// Why the AWS clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no AWS region: pass --region, set AWS_REGION or a region in the profile, or `region = ...` \
         at the top of the config"
    )]
    NoRegion,
    #[error("no AWS credentials{0}")]
    NoCredentials(String),
    #[error("{variable} is not an RFC 3339 time (like 2026-01-31T12:00:00Z): {value:?}")]
    BadExpiration {
        variable: &'static str,
        value: String,
    },
    #[error(
        "the session credentials from {from} {when}: bake does not start with them, as nothing \
         this run created could be cleaned up once they expire; get new credentials and run again"
    )]
    Expiring { from: String, when: String },
}

/// Codes for credentials that expired (EC2 and STS, then the JSON protocols' spelling).
const EXPIRED_CODES: &[&str] = &["ExpiredToken", "ExpiredTokenException"];
/// What an expired-credentials answer means for the run.
const EXPIRED: &str = "the AWS credentials expired during the run and cannot be refreshed: \
    whatever this run created and could not remove is tagged with its bake:run-id; get new \
    credentials and run `bake gc` to delete it";

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
            _ => described,
        };
    }
    // A request that got no answer (see `sdk`'s HTTP client) describes itself in one paragraph.
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(unreachable) = e.downcast_ref::<crate::sdk::Unreachable>() {
            return unreachable.to_string();
        }
        next = e.source();
    }
    chain(err)
}

/// An error's message followed by its sources' (`dispatch failure: io error: ...`), each said
/// once: what `DisplayErrorContext` prints, without its `Debug` dump of the whole error.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let message = e.to_string();
        // A wrapper that already quotes its source ("tcp connect error: refused") says it once.
        if !message.is_empty() && !parts.last().is_some_and(|last| last.contains(&message)) {
            parts.push(message);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// [`chain`] of what lies below the first error in `error`'s chain that `from` picks (below
/// `error` itself when none does): the specific cause under generic wrappers.
pub fn chain_below(
    error: &(dyn std::error::Error + 'static),
    from: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> String {
    let mut next = Some(error);
    while let Some(e) = next {
        if from(e) {
            break;
        }
        next = e.source();
    }
    match next.unwrap_or(error).source() {
        Some(below) => chain(below),
        None => chain(next.unwrap_or(error)),
    }
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

/// An answer AWS documents as temporary right after a change (eventual consistency): the error
/// codes that mean "not yet", and how long AWS may take to stop giving them.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    /// What is catching up, for messages ("EC2 learning of a new instance").
    pub what: &'static str,
    /// The error codes that mean "not yet" during the window.
    pub codes: &'static [&'static str],
    /// How long to keep asking before the answer is taken as final.
    pub within: Duration,
    /// When to ask again.
    pub schedule: Schedule,
}

/// Asking again after 1 s, then every 2 s, growing to 10 s: the windows below are seconds long
/// usually and minutes at worst.
const SETTLE_SCHEDULE: Schedule = Schedule {
    first: Duration::from_secs(1),
    interval: Duration::from_secs(2),
    dense: Duration::from_secs(20),
    factor: 1.5,
    cap: Duration::from_secs(10),
};

/// "Eventual consistency in the Amazon EC2 API": an id returned by RunInstances may be unknown to
/// the next calls for a few seconds, rarely up to a minute; 2 minutes is a broken region.
pub const NEW_INSTANCE: Settle = Settle {
    what: "EC2 to learn of the new instance",
    codes: &["InvalidInstanceID.NotFound"],
    within: Duration::from_secs(120),
    schedule: SETTLE_SCHEDULE,
};
/// The same documented window for a security group that CreateSecurityGroup just returned.
pub const NEW_SECURITY_GROUP: Settle = Settle {
    what: "EC2 to learn of the new security group",
    codes: &["InvalidGroup.NotFound", "InvalidGroupId.NotFound"],
    within: Duration::from_secs(120),
    schedule: SETTLE_SCHEDULE,
};
/// The same documented window for an AMI that CreateImage or CopyImage just returned.
pub const NEW_IMAGE: Settle = Settle {
    what: "EC2 to learn of the new image",
    codes: &["InvalidAMIID.NotFound"],
    within: Duration::from_secs(120),
    schedule: SETTLE_SCHEDULE,
};
/// GetCommandInvocation answers InvocationDoesNotExist until the command reaches the instance's
/// queue, usually within seconds of SendCommand.
pub const NEW_INVOCATION: Settle = Settle {
    what: "SSM to record the command's invocation",
    codes: &["InvocationDoesNotExist"],
    within: Duration::from_secs(60),
    schedule: SETTLE_SCHEDULE,
};
/// DeleteSnapshot answers InvalidSnapshot.InUse while a just-deregistered AMI still holds the
/// snapshot; the deregistration settles in seconds to a few minutes.
pub const SNAPSHOT_RELEASE: Settle = Settle {
    what: "EC2 to release the snapshot from the deregistered image",
    codes: &["InvalidSnapshot.InUse"],
    within: Duration::from_secs(300),
    schedule: SETTLE_SCHEDULE,
};
/// After DeleteLoadBalancer, its target groups answer ResourceInUse and its security groups
/// DependencyViolation while its network interfaces are released: tens of seconds, sometimes
/// minutes (Terraform's provider waits up to 10 minutes for the same).
pub const LOAD_BALANCER_RELEASE: Settle = Settle {
    what: "the load balancer's network interfaces to be released",
    codes: &["ResourceInUse", "DependencyViolation"],
    within: Duration::from_secs(600),
    schedule: SETTLE_SCHEDULE,
};
/// A terminated instance's network interface holds its security groups for a minute or two;
/// until then DeleteSecurityGroup answers DependencyViolation.
pub const INSTANCE_RELEASE: Settle = Settle {
    what: "terminated instances to release the security group",
    codes: &["DependencyViolation"],
    within: Duration::from_secs(300),
    schedule: SETTLE_SCHEDULE,
};

/// No window of eventual consistency: only transient answers (throttling, 5xx, timeouts) are
/// asked again. AWS throttles in bursts per account and region that can outlast the SDK's own
/// retries; a burst lasts seconds to a minute, so 2 minutes covers it.
pub const THROTTLE_BURST: Settle = Settle {
    what: "the throttling to pass",
    codes: &[],
    within: Duration::from_secs(120),
    schedule: SETTLE_SCHEDULE,
};

/// Calls `call` until it succeeds, fails for good, or `settle.within` passes. An answer in
/// `settle.codes`, or a transient one (throttling, 5xx, timeout), is asked again on the settle
/// schedule; anything else, or the last answer at the deadline, is returned as it is.
pub async fn settle<T, E, F, Fut>(
    settle: &Settle,
    what: &str,
    call: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    settle_until(settle, crate::poll::deadline(settle.within), what, call).await
}

/// [`settle`] with the window's end given: for a resource created a while ago, the window ends
/// `settle.within` after its creation, not after this call.
pub async fn settle_until<T, E, F, Fut>(
    settle: &Settle,
    deadline: Instant,
    what: &str,
    mut call: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut waits = settle.schedule.waits();
    loop {
        let err = match call().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let retryable = transient(&err) || code(&err).is_some_and(|c| settle.codes.contains(&c));
        let wait = waits.next().unwrap_or(settle.schedule.cap);
        if !retryable || crate::poll::deadline(wait) > deadline {
            return Err(err);
        }
        tracing::debug!(
            "{what}: {} (waiting for {}; again in {wait:?})",
            describe(&err),
            settle.what
        );
        sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use std::cell::Cell;

    fn answer(status: u16, code: &str) -> SdkError<TerminateInstancesError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        SdkError::service_error(
            TerminateInstancesError::generic(meta),
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn chains_say_each_cause_once_and_never_dump_debug() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "dispatch failure: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(refused())), "dispatch failure: refused");
        assert_eq!(chain_below(&Outer(refused()), |_| false), "refused");
        let io = refused();
        assert_eq!(chain(&io), "refused");
    }

    #[test]
    fn throttles_and_server_errors_are_transient_and_refusals_are_not() {
        assert!(transient(&answer(503, "RequestLimitExceeded")));
        assert!(transient(&answer(400, "Throttling")));
        assert!(transient(&answer(500, "Whatever")));
        assert!(!transient(&answer(400, "InvalidInstanceID.NotFound")));
        assert!(!transient(&answer(400, "UnauthorizedOperation")));
    }

    #[tokio::test(start_paused = true)]
    async fn settle_asks_again_while_the_answer_is_in_the_window() {
        let calls = Cell::new(0);
        let got = settle(&NEW_INSTANCE, "terminate i-1", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1 => Err(answer(400, "InvalidInstanceID.NotFound")),
                    2 => Err(answer(503, "RequestLimitExceeded")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_returns_other_errors_at_once() {
        let calls = Cell::new(0);
        let got: Result<(), _> = settle(&NEW_INSTANCE, "terminate i-1", || {
            calls.set(calls.get() + 1);
            async { Err(answer(400, "UnauthorizedOperation")) }
        })
        .await;
        assert_eq!(code(&got.unwrap_err()), Some("UnauthorizedOperation"));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_gives_the_last_answer_when_the_window_passes() {
        let start = Instant::now();
        let got: Result<(), _> = settle(&NEW_INVOCATION, "get invocation", || async {
            Err(answer(400, "InvocationDoesNotExist"))
        })
        .await;
        assert_eq!(code(&got.unwrap_err()), Some("InvocationDoesNotExist"));
        let waited = start.elapsed();
        assert!(
            waited <= NEW_INVOCATION.within
                && waited >= NEW_INVOCATION.within - Duration::from_secs(10),
            "{waited:?}"
        );
    }
}
