//! One AWS call as bake makes it ([`Call`]): asked again through the eventual-consistency window
//! AWS documents for it ([`Settle`]), and on failure a [`CallError`] that says what bake was doing
//! and where, with the SDK's error as its source.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tokio::time::{Instant, sleep};

use super::answer::{code, describe, transient};
use crate::poll::{self, Check, Schedule};

/// An AWS call that failed: what bake was doing, where, and what AWS answered. The SDK's error,
/// when there is one, is its source.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} in {region}: {message}")]
pub struct CallError {
    pub action: String,
    pub region: String,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CallError {
    /// A failure bake found in an answer (no SDK error): "AWS answered without the version".
    pub fn new(
        action: impl Into<String>,
        region: impl Into<String>,
        message: impl Into<String>,
    ) -> CallError {
        CallError {
            action: action.into(),
            region: region.into(),
            message: message.into(),
            source: None,
        }
    }
}

/// An SDK error and the region the call went to: what a caller looks at (its code) before it
/// decides the call failed ([`Failed::or_fail`]).
#[derive(Debug)]
pub struct Failed<E> {
    pub region: String,
    pub error: SdkError<E, HttpResponse>,
}

impl<E> Failed<E>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    /// The service's error code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        code(&self.error)
    }

    /// Whether the code is one of `codes`; a code ending in `*` matches every code it starts.
    pub fn is(&self, codes: &[&str]) -> bool {
        self.code().is_some_and(|c| {
            codes.iter().any(|want| match want.strip_suffix('*') {
                Some(prefix) => c.starts_with(prefix),
                None => c == *want,
            })
        })
    }

    /// The service's message with its code, as [`describe`] gives it.
    pub fn describe(&self) -> String {
        describe(&self.error)
    }

    /// Whether AWS said "not now" rather than "no" ([`transient`]).
    pub fn transient(&self) -> bool {
        transient(&self.error)
    }

    /// The failure as bake reports it: "cannot ACTION in REGION: CODE: message".
    pub fn or_fail(self, action: impl FnOnce() -> String) -> CallError {
        CallError {
            action: action(),
            region: self.region,
            message: describe(&self.error),
            source: Some(Box::new(self.error)),
        }
    }
}

/// One AWS call: `send` makes the request, asked again within the [`Settle`] window when one is
/// given (none by default: the SDK's own retries only). Made by [`super::Clients::call`].
pub struct Call<'a, F> {
    region: &'a str,
    send: F,
    settle: Option<(Settle, Option<Instant>)>,
}

impl<'a, F, Fut, T, E> Call<'a, F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    /// A call to `region`.
    pub fn new(region: &'a str, send: F) -> Self {
        Call {
            region,
            send,
            settle: None,
        }
    }

    /// The region the call goes to.
    pub fn region(&self) -> &'a str {
        self.region
    }

    /// Asks again while AWS answers one of `window`'s codes or a transient error, until the
    /// window has passed since now.
    pub fn settle(mut self, window: &Settle) -> Self {
        self.settle = Some((*window, None));
        self
    }

    /// [`Call::settle`] with the window's end given: for a resource created a while ago, it ends
    /// `window.within` after its creation, not after this call.
    pub fn settle_until(mut self, window: &Settle, deadline: Instant) -> Self {
        self.settle = Some((*window, Some(deadline)));
        self
    }

    /// AWS's answer, for a caller that looks at the error's code before it fails.
    pub async fn answer(self) -> Result<T, Failed<E>> {
        self.send_as("AWS answered").await
    }

    /// The answer, or a [`CallError`] saying what the call was about: `action` names it ("delete
    /// target group arn:...").
    pub async fn or_fail(self, action: impl FnOnce() -> String) -> Result<T, CallError> {
        let action = action();
        self.send_as(&action)
            .await
            .map_err(|e| e.or_fail(|| action))
    }

    /// [`Call::or_fail`], with the codes that mean "there is none" answered as `None`.
    pub async fn or_none(
        self,
        absent: &[&str],
        action: impl FnOnce() -> String,
    ) -> Result<Option<T>, CallError> {
        match self.answer().await {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.is(absent) => Ok(None),
            Err(e) => Err(e.or_fail(action)),
        }
    }

    /// Sends, asking again within the window; `what` names the call in the debug log.
    async fn send_as(mut self, what: &str) -> Result<T, Failed<E>> {
        let answer = match self.settle {
            None => (self.send)().await,
            Some((window, deadline)) => {
                let deadline = deadline.unwrap_or_else(|| poll::deadline(window.within));
                settle_until(&window, deadline, what, self.send).await
            }
        };
        answer.map_err(|error| Failed {
            region: self.region.to_owned(),
            error,
        })
    }
}

/// What a failed AWS call inside a wait means: a transient answer (throttling, 5xx, timeout) is
/// `Pending` — the SDK's retries ran dry in a burst, and the wait's own deadline decides — while
/// any other error is `Failed` with `failed(err)`.
pub fn unless_transient<T, F, E>(
    err: &SdkError<E, HttpResponse>,
    failed: impl FnOnce(&SdkError<E, HttpResponse>) -> F,
) -> Check<T, F>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if transient(err) {
        Check::Pending(format!("{} (transient; asking again)", describe(err)))
    } else {
        Check::Failed(failed(err))
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

impl Settle {
    /// A window of `within` in which `codes` mean "not yet", asked again on [`SETTLE_SCHEDULE`].
    pub const fn new(what: &'static str, codes: &'static [&'static str], within: Duration) -> Self {
        Settle {
            what,
            codes,
            within,
            schedule: SETTLE_SCHEDULE,
        }
    }
}

/// Asking again after 1 s, then every 2 s, growing to 10 s: the windows below are seconds long
/// usually and minutes at worst.
const SETTLE_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(2))
    .first_after(Duration::from_secs(1))
    .dense_for(Duration::from_secs(20))
    .growing(1.5, Duration::from_secs(10));

/// "Eventual consistency in the Amazon EC2 API": an id returned by RunInstances may be unknown to
/// the next calls for a few seconds, rarely up to a minute; 2 minutes is a broken region.
pub const NEW_INSTANCE: Settle = Settle::new(
    "EC2 to learn of the new instance",
    &["InvalidInstanceID.NotFound"],
    Duration::from_secs(120),
);
/// The same documented window for a security group that CreateSecurityGroup just returned.
pub const NEW_SECURITY_GROUP: Settle = Settle::new(
    "EC2 to learn of the new security group",
    &["InvalidGroup.NotFound", "InvalidGroupId.NotFound"],
    Duration::from_secs(120),
);
/// The same documented window for an AMI that CreateImage or CopyImage just returned.
pub const NEW_IMAGE: Settle = Settle::new(
    "EC2 to learn of the new image",
    &["InvalidAMIID.NotFound"],
    Duration::from_secs(120),
);
/// GetCommandInvocation answers InvocationDoesNotExist until the command reaches the instance's
/// queue, usually within seconds of SendCommand.
pub const NEW_INVOCATION: Settle = Settle::new(
    "SSM to record the command's invocation",
    &["InvocationDoesNotExist"],
    Duration::from_secs(60),
);
/// DeleteSnapshot answers InvalidSnapshot.InUse while a just-deregistered AMI still holds the
/// snapshot; the deregistration settles in seconds to a few minutes.
pub const SNAPSHOT_RELEASE: Settle = Settle::new(
    "EC2 to release the snapshot from the deregistered image",
    &["InvalidSnapshot.InUse"],
    Duration::from_secs(300),
);
/// After DeleteLoadBalancer, its target groups answer ResourceInUse and its security groups
/// DependencyViolation while its network interfaces are released: tens of seconds, sometimes
/// minutes (Terraform's provider waits up to 10 minutes for the same).
pub const LOAD_BALANCER_RELEASE: Settle = Settle::new(
    "the load balancer's network interfaces to be released",
    &["ResourceInUse", "DependencyViolation"],
    Duration::from_secs(600),
);
/// A terminated instance's network interface holds its security groups for a minute or two;
/// until then DeleteSecurityGroup answers DependencyViolation.
pub const INSTANCE_RELEASE: Settle = Settle::new(
    "terminated instances to release the security group",
    &["DependencyViolation"],
    Duration::from_secs(300),
);

/// No window of eventual consistency: only transient answers (throttling, 5xx, timeouts) are
/// asked again. AWS throttles in bursts per account and region that can outlast the SDK's own
/// retries; a burst lasts seconds to a minute, so 2 minutes covers it.
pub const THROTTLE_BURST: Settle =
    Settle::new("the throttling to pass", &[], Duration::from_secs(120));

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
    settle_until(settle, poll::deadline(settle.within), what, call).await
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
        if !retryable || poll::deadline(wait) > deadline {
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

    #[test]
    fn a_throttle_inside_a_wait_is_pending_and_a_refusal_fails_it() {
        let throttled: Check<(), String> =
            unless_transient(&answer(503, "RequestLimitExceeded"), describe);
        assert!(
            matches!(&throttled, Check::Pending(s) if s.contains("RequestLimitExceeded")),
            "{throttled:?}"
        );
        let refused: Check<(), String> =
            unless_transient(&answer(400, "UnauthorizedOperation"), describe);
        assert!(
            matches!(&refused, Check::Failed(s) if s.starts_with("UnauthorizedOperation")),
            "{refused:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_asks_again_within_its_window_and_fails_naming_its_action_and_cause() {
        let calls = Cell::new(0);
        let got = Call::new("eu-west-1", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1 => Err(answer(400, "InvalidGroup.NotFound")),
                    _ => Err(answer(400, "UnauthorizedOperation")),
                }
            }
        })
        .settle(&NEW_SECURITY_GROUP)
        .or_fail(|| "open port 80 on sg-1".into())
        .await;
        let err: CallError = match got {
            Ok(()) => panic!("the call succeeded"),
            Err(e) => e,
        };
        assert_eq!(
            calls.get(),
            2,
            "asked again through the window, not past a refusal"
        );
        assert_eq!(
            err.to_string(),
            "cannot open port 80 on sg-1 in eu-west-1: UnauthorizedOperation: m (the call needs \
             IAM permission ec2:TerminateInstances; `bake iam-policy` prints the policy)"
        );
        let source = std::error::Error::source(&err).expect("the SDK error is the source");
        assert!(
            source
                .downcast_ref::<SdkError<TerminateInstancesError, HttpResponse>>()
                .is_some()
        );
    }

    #[test]
    fn a_refused_call_names_the_iam_actions_its_operation_needs() {
        let refused = describe(&answer(403, "UnauthorizedOperation"));
        assert!(
            refused.starts_with("UnauthorizedOperation: m (")
                && refused.contains("needs IAM permission ec2:TerminateInstances"),
            "{refused}"
        );
        assert!(!describe(&answer(400, "InvalidInstanceID.NotFound")).contains("IAM"));
    }

    #[tokio::test]
    async fn codes_that_mean_none_answer_none_and_a_star_matches_a_prefix() {
        let none: Option<()> = Call::new("eu-west-1", || async {
            Err(answer(400, "InvalidAMIID.Unavailable"))
        })
        .or_none(&["InvalidAMIID*"], || "describe ami-1".into())
        .await
        .unwrap();
        assert!(none.is_none());
        let other = Call::new("eu-west-1", || async {
            Err::<(), _>(answer(400, "InvalidAMIIDs"))
        })
        .or_none(&["InvalidAMIID."], || "describe ami-1".into())
        .await;
        assert!(other.is_err());
    }
}
